"""The stages, run in-process on a tiny project: outputs, reports and MLflow contents."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
from conftest import SDNET_SURFACES, build_tiny_project, run_pipeline_in_process, use_project_store

from crackcls.data import manifest
from crackcls.model import runtime
from crackcls.model.inference import load_model_file
from crackcls.tracking import lineage, store


SDNET_PER_CLASS = 12  # tiles per class and surface: 40 + 40 Mendeley images and 72 SDNET2018 tiles


@pytest.fixture
def two_source_project(tmp_path, monkeypatch):
    """The bundled Mendeley and SDNET2018 samples, cut down, as the working directory."""
    project = build_tiny_project(tmp_path / "project", sdnet_per_class=SDNET_PER_CLASS)
    use_project_store(monkeypatch, project)
    return project


def test_stages_produce_reports_and_register_a_challenger(two_source_project):
    tiny_project = two_source_project
    results = run_pipeline_in_process(tiny_project)
    sources = ["decks", "mendeley", "pavements", "walls"]

    split_report = json.loads((tiny_project / "reports/split.json").read_text())
    total = 80 + 2 * 3 * SDNET_PER_CLASS
    assert split_report["total"] == total
    assert split_report["train"]["total"] + split_report["val"]["total"] + split_report["test"]["total"] == total
    assert sorted(split_report["sources"]) == sources
    assert split_report["sources"]["mendeley"]["total"] == 80 and "parents" not in split_report["sources"]["mendeley"]
    for surface in SDNET_SURFACES:
        counts = split_report["sources"][surface]
        assert counts["total"] == 2 * SDNET_PER_CLASS and counts["parents"] >= 2
        assert sum(counts[name]["total"] for name in manifest.SPLITS) == counts["total"]
    parts = {name: manifest.read(manifest.manifest_path(name, tiny_project / "data/split")) for name in manifest.SPLITS}
    hashes = [{it.sha256 for it in items} for items in parts.values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])
    parents = [{(it.source, it.parent) for it in items if it.parent} for items in parts.values()]
    assert not (parents[0] & parents[1] or parents[0] & parents[2] or parents[1] & parents[2])
    assert {it.source for it in parts["train"]} == set(sources)

    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "loss"):
        assert key in metrics
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == split_report["test"]["total"]
    tested = {it.source for it in parts["test"]}
    assert set(metrics["sources"]) == tested
    for source, values in metrics["sources"].items():
        assert values["n"] == split_report["sources"][source]["test"]["total"]
        assert values["balanced_accuracy_ci_low"] <= values["balanced_accuracy"] <= values["balanced_accuracy_ci_high"]
        assert (tiny_project / "reports/sources" / f"{source}_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert sum(values["n"] for values in metrics["sources"].values()) == metrics["n"]

    with open(tiny_project / "reports/predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["n"]
    assert {r["actual"] for r in rows} == {"Positive", "Negative"}
    assert {r["source"] for r in rows} == tested

    history = (tiny_project / "reports/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,phase,loss,accuracy,val_loss,val_accuracy")
    for png in ("training_curves.png", "confusion_matrix.png", "roc_pr.png"):
        assert (tiny_project / "reports" / png).read_bytes()[:4] == b"\x89PNG"

    info = results["train"]
    store.configure_uri_only()
    run = mlflow.get_run(info["run_id"])
    assert run.data.params["model.backbone"] == "compact_cnn"
    assert run.data.params["train.epochs"] == "3"
    assert "test_f1" in run.data.metrics and "val_loss" in run.data.metrics
    assert run.data.params["data.sources"] == "mendeley,sdnet2018"
    # from scratch on a CPU with bfloat16 instructions it trains in bfloat16; it is saved in float32 either way
    assert run.data.params["training_precision"] == ("mixed_bfloat16" if runtime.cpu_has_bfloat16() else "float32")
    assert load_model_file(tiny_project / "models/model.keras").dtype_policy.name == "float32"
    for source in tested:
        assert run.data.metrics[f"test_sources.{source}.accuracy"] == pytest.approx(metrics["sources"][source]["accuracy"])
    assert run.data.tags["stage"] == "train"
    client = store.client()
    losses = client.get_metric_history(info["run_id"], "loss")
    assert len(losses) == info["epochs_trained"]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert {f"evaluation/{source}_confusion.png" for source in tested} <= artifacts
    version = client.get_model_version_by_alias("crackcls", "challenger")
    for source in tested:
        assert version.tags[f"test_source_{source}"].startswith("accuracy ")
        assert f"| {source} | {metrics['sources'][source]['n']} |" in version.description
    assert version.run_id == info["run_id"]
    # the data it trained on: the three manifests, digest = DVC's hash of data/split
    split_hash = lineage.dir_hash(tiny_project / "data/split")
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {f"data/split/{name}.csv" for name in manifest.SPLITS}
    assert {i.dataset.digest for i in inputs.values()} == {split_hash} == {run.data.tags["dvc_split_md5"]}
    train_tags = {t.key: t.value for t in inputs["data/split/train.csv"].tags}
    assert train_tags["mlflow.data.context"] == "training"
    assert train_tags["dvc_file_md5"] == lineage.file_md5(tiny_project / "data/split/train.csv")
    assert "dvc_lock_md5" not in run.data.tags  # no dvc.lock outside DVC
