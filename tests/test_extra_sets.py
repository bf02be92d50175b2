"""evaluate.extra_sets: other surfaces scored beside the test split, with a plain warning on shift."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
from conftest import REPO_ROOT, TINY_PARAMS, deep_merge, run_pipeline_in_process, write_params

from crackcls.tracking import store
from crackcls.model.evaluation import Evaluation
from crackcls.trust.metrics import classification_metrics
from crackcls.model.evaluation import domain_shift_warnings


def evaluation_with_recall(hits: int, positives: int = 10) -> Evaluation:
    y_true = np.array([1] * positives + [0] * positives)
    y_prob = np.array([0.9] * hits + [0.1] * (positives - hits) + [0.1] * positives)
    return Evaluation(classification_metrics(y_true, y_prob), [], y_true, y_prob, 0.5)


def test_a_large_recall_drop_is_reported_plainly():
    test = evaluation_with_recall(9)
    warnings = domain_shift_warnings(test, {"bridge_decks": evaluation_with_recall(1), "same_site": evaluation_with_recall(8)})
    assert len(warnings) == 1
    assert "DOMAIN SHIFT" in warnings[0] and "bridge_decks" in warnings[0]
    assert "0.100" in warnings[0] and "0.900" in warnings[0]


def test_extra_sets_get_their_own_metrics_in_dvc_and_mlflow(tiny_project):
    other = tiny_project / "other_surface"
    for label in ("Positive", "Negative"):
        (other / label).mkdir(parents=True)
        for image in sorted((REPO_ROOT / "sample" / "mendeley" / label).glob("*.jpg"))[-6:]:  # not in the tiny project's sample
            shutil.copy(image, other / label / image.name)
    write_params(tiny_project, deep_merge(TINY_PARAMS, {"evaluate": {"extra_sets": ["other_surface"]}}))

    results = run_pipeline_in_process(tiny_project)

    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    extra = metrics["extra_sets"]["other_surface"]
    assert extra["n"] == 12 and 0 <= extra["recall"] <= 1
    assert "f1" in metrics  # the test split's own metrics stay at the top level
    assert (tiny_project / "reports/extra/other_surface/confusion_matrix.png").is_file()
    assert json.loads((tiny_project / "reports/domain_shift.json").read_text())["warnings"] == results["evaluate"]["warnings"]

    store.configure_uri_only()
    run = mlflow.get_run(results["train"]["run_id"])
    assert run.data.metrics["other_surface_recall"] == extra["recall"]
    assert "test_recall" in run.data.metrics
