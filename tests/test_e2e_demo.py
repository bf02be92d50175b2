"""End to end: `make demo` in a fresh git + DVC copy of the repository.

Checks what a user sees: DVC metrics and plots, the MLflow run with params and
metrics, a registered version aliased ``champion``, a no-op second run, and
``make evaluate DATA=...`` on an arbitrary labelled folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import fresh_repo_copy, subprocess_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("git and make are needed")
    repo = tmp_path_factory.mktemp("e2e") / "crackcls"
    fresh_repo_copy(repo)
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "fresh clone"], repo)
    demo = _run(["make", "demo"], repo)
    (repo / "demo.log").write_text(demo.stdout + demo.stderr)
    return repo


def test_demo_writes_dvc_metrics_and_plots(demo_repo):
    metrics = json.loads((demo_repo / "reports/metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["loss"] > 0
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == metrics["n"] > 0
    split = json.loads((demo_repo / "reports/split.json").read_text())
    assert split["test"]["total"] == metrics["n"]
    assert split["duplicates_removed"] == 0

    shown = _run(["dvc", "metrics", "show", "--json"], demo_repo).stdout
    assert '"f1"' in shown
    for name in ("confusion_matrix.png", "roc_pr.png", "training_curves.png", "predictions.csv", "roc.csv"):
        assert (demo_repo / "reports" / name).stat().st_size > 0
    plots = _run(["dvc", "plots", "show", "--json"], demo_repo).stdout
    assert "reports/predictions.csv" in plots and "confusion" in plots


def test_demo_tracks_the_run_and_crowns_a_champion(demo_repo):
    store = f"sqlite:///{demo_repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry URI another test set
    champion = client.get_model_version_by_alias("crackcls", "champion")
    run = client.get_run(champion.run_id)
    assert run.data.params["data.source"] == "sample"
    assert run.data.params["model.weights"] == "none"
    for key in ("test_f1", "test_accuracy", "test_roc_auc", "loss", "val_loss", "training_time_s"):
        assert key in run.data.metrics, key
    assert run.data.tags["git_commit"] != "unknown"
    assert run.data.tags["git_dirty"] in ("true", "false")
    artifacts = {a.path for a in client.list_artifacts(champion.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert (demo_repo / "mlruns").is_dir(), "artifacts belong in ./mlruns"
    assert "PROMOTED" in (demo_repo / "demo.log").read_text()


def test_second_run_reruns_nothing(demo_repo):
    result = _run(["dvc", "repro"], demo_repo)
    assert "Running stage" not in result.stdout
    status = _run(["dvc", "status"], demo_repo).stdout
    assert "up to date" in status


def test_make_evaluate_on_a_labelled_folder(demo_repo, tmp_path):
    folder = tmp_path / "field_photos"
    for label in ("Positive", "Negative"):
        (folder / label).mkdir(parents=True)
        for image in sorted((demo_repo / "sample" / label).glob("*.jpg"))[:5]:
            shutil.copy(image, folder / label / image.name)
    result = _run(["make", "evaluate", f"DATA={folder}"], demo_repo)
    assert "accuracy" in result.stdout and "f1" in result.stdout
    assert "  n          10" in result.stdout
    champion = _run(["make", "evaluate", "MODEL=models:/crackcls@champion"], demo_repo)
    assert "recall" in champion.stdout
