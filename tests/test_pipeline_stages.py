"""The stages, run in-process on a tiny project: outputs, reports and MLflow contents."""

from __future__ import annotations

import csv
import json

import mlflow
from conftest import run_pipeline_in_process

from crackcls.data import manifest
from crackcls.tracking import lineage, store


def test_stages_produce_reports_and_register_a_challenger(tiny_project):
    results = run_pipeline_in_process(tiny_project)

    split_report = json.loads((tiny_project / "reports/split.json").read_text())
    assert split_report["total"] == 80
    assert split_report["train"]["total"] + split_report["val"]["total"] + split_report["test"]["total"] == 80
    parts = {name: manifest.read(manifest.manifest_path(name, tiny_project / "data/split")) for name in manifest.SPLITS}
    hashes = [{it.sha256 for it in items} for items in parts.values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])

    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "loss"):
        assert key in metrics
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == split_report["test"]["total"]

    with open(tiny_project / "reports/predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["n"]
    assert {r["actual"] for r in rows} == {"Positive", "Negative"}

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
    assert run.data.tags["stage"] == "train"
    client = store.client()
    losses = client.get_metric_history(info["run_id"], "loss")
    assert len(losses) == info["epochs_trained"]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    version = client.get_model_version_by_alias("crackcls", "challenger")
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
