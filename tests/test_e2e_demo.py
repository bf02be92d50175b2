"""End to end: `make demo` in a fresh git + DVC copy of the repository.

Checks what a user sees: DVC metrics and plots (test metrics first, no load
warnings), no TensorFlow start-up lines in the stages' output, the MLflow run with
params, metrics and its data (the split manifests as dataset inputs whose digest is
DVC's hash of ``data/split``), a registered version aliased ``champion``, a no-op
second run, and ``make evaluate DATA=...`` on an arbitrary labelled folder.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import fresh_repo_copy, subprocess_env
from mlflow.tracking import MlflowClient

from crackcls.tracking import lineage
from crackcls.util import quiet

pytestmark = pytest.mark.e2e
# What is checked is the wiring a user sees, not the accuracy: a few epochs show all of it.
DEMO_EPOCHS = 1


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
    demo = _run(["make", "demo", f"DEMO_EPOCHS={DEMO_EPOCHS}"], repo)
    (repo.parent / "demo.log").write_text(demo.stdout + demo.stderr)
    return repo


def test_demo_leaves_only_what_a_dvc_user_commits(demo_repo):
    # data, models, reports and metrics are DVC outputs, ignored by the committed .gitignore files DVC writes
    changed = sorted(line[3:] for line in _run(["git", "status", "--porcelain"], demo_repo).stdout.splitlines())
    assert changed == ["dvc.lock", "params.yaml"], changed
    for output in ("reports/metrics.json", "reports/split.json", "models/model.keras", "data/split"):
        assert (demo_repo / output).exists() and _run(["git", "check-ignore", "-q", output], demo_repo).returncode == 0, output


def test_demo_writes_dvc_metrics_and_plots(demo_repo):
    metrics = json.loads((demo_repo / "reports/metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["loss"] > 0
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == metrics["n"] > 0
    assert 0 <= metrics["shift_p_value"] <= 1 and metrics["shift_n"] == metrics["n"]  # the test split as one set
    split = json.loads((demo_repo / "reports/split.json").read_text())
    assert split["test"]["total"] == metrics["n"]
    assert split["duplicates_removed"] == 0

    shown = _run(["dvc", "metrics", "show", "--json"], demo_repo).stdout
    assert '"f1"' in shown
    for name in ("confusion_matrix.png", "roc_pr.png", "training_curves.png", "predictions.csv", "roc.csv"):
        assert (demo_repo / "reports" / name).stat().st_size > 0
    plots = _run(["dvc", "plots", "show", "--json"], demo_repo).stdout
    assert "reports/predictions.csv" in plots and "confusion" in plots
    assert '"accuracy_ci_low"' in shown and '"ece"' in shown
    assert "Reliability (test)" in plots and "reports/reliability.csv" in (demo_repo / "dvc.yaml").read_text()
    assert "## Intended use" in (demo_repo / "reports/model_card.md").read_text()
    # both samples, SDNET2018 by surface and by parent photo, with metrics per source
    assert sorted(split["sources"]) == ["decks", "mendeley", "pavements", "walls"]
    assert all(split["sources"][s]["parents"] > 5 for s in ("decks", "pavements", "walls"))
    assert sorted(metrics["sources"]) == ["decks", "mendeley", "pavements", "walls"]
    assert '"balanced_accuracy_ci_low"' in shown and '"decks"' in shown
    log = (demo_repo.parent / "demo.log").read_text()
    assert "per source (95% intervals)" in log and re.search(r"^\s+decks\s+\d+\s+0\.\d{3} \[", log, re.M), log[-3000:]


def test_demo_tracks_the_run_and_crowns_a_champion(demo_repo):
    store = f"sqlite:///{demo_repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry URI another test set
    champion = client.get_model_version_by_alias("crackcls", "champion")
    run = client.get_run(champion.run_id)
    assert run.data.params["data.sources"] == "mendeley,sdnet2018"
    assert run.data.params["data.sources.sdnet2018.path"] == "sample/sdnet2018"
    assert run.data.params["model.weights"] == "none"
    for key in ("test_f1", "test_accuracy", "test_roc_auc", "loss", "val_loss", "training_time_s"):
        assert key in run.data.metrics, key
    assert run.data.tags["git_commit"] != "unknown"
    assert run.data.tags["git_dirty"] in ("true", "false")
    artifacts = {a.path for a in client.list_artifacts(champion.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert (demo_repo / "mlruns").is_dir(), "artifacts belong in ./mlruns"
    assert "PROMOTED" in (demo_repo.parent / "demo.log").read_text()


def test_second_run_reruns_nothing(demo_repo):
    result = _run(["dvc", "repro"], demo_repo)
    assert "Running stage" not in result.stdout
    status = _run(["dvc", "status"], demo_repo).stdout
    assert "up to date" in status


def test_make_evaluate_on_a_labelled_folder(demo_repo, tmp_path):
    folder = tmp_path / "field_photos"
    for label in ("Positive", "Negative"):
        (folder / label).mkdir(parents=True)
        for image in sorted((demo_repo / "sample" / "mendeley" / label).glob("*.jpg"))[:5]:
            shutil.copy(image, folder / label / image.name)
    result = _run(["make", "evaluate", f"DATA={folder}"], demo_repo)
    assert "accuracy" in result.stdout and "f1" in result.stdout
    assert re.search(r"^\s+n\s+10$", result.stdout, re.M), result.stdout
    assert re.search(r"^\s+recall\s+\S+\s+95% CI \[", result.stdout, re.M), result.stdout
    champion = _run(["make", "evaluate", "MODEL=models:/crackcls@champion"], demo_repo)
    assert "recall" in champion.stdout


def test_make_export_then_predict_on_onnx_runtime_gives_the_keras_labels(demo_repo):
    exported = _run(["make", "export"], demo_repo)
    folder = demo_repo / "models" / "export"
    for name in ("saved_model", "model.onnx", "model.tflite", "model.int8.tflite", "export.json"):
        assert (folder / name).exists(), exported.stdout
    assert "logged to run" in exported.stdout and "version 1 tagged" in exported.stdout
    assert "models/export/" not in _run(["git", "status", "--porcelain"], demo_repo).stdout  # models stay out of git
    images = str(demo_repo / "sample" / "mendeley" / "Positive")
    by_runtime = {
        runtime: _run(["make", "predict", f"IN={images}", f"RUNTIME={runtime}"], demo_repo) for runtime in ("keras", "onnx")
    }
    rows = {runtime: [line.split()[:2] for line in out.stdout.splitlines() if line.startswith("/")] for runtime, out in by_runtime.items()}
    assert rows["onnx"] == rows["keras"] and len(rows["onnx"]) == 500
    assert "(ONNX Runtime)" in by_runtime["onnx"].stderr
    assert "(ONNX Runtime)" in _run(["make", "predict", f"IN={images}"], demo_repo).stderr  # the champion has an export now


TEST_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc")
NOISE_MARKERS = ("cuInit", "oneDNN", "absl::InitializeLog", "cudart_stub", "cpu_feature_guard")


@pytest.mark.skipif(quiet.has_nvidia_device(), reason="CUDA lines are kept on a machine with a GPU")
def test_stage_output_has_no_tensorflow_start_up_lines(demo_repo):
    output = (demo_repo.parent / "demo.log").read_text()
    for stage in ("fetch", "split", "features", "train", "evaluate"):
        assert f"Running stage '{stage}'" in output
    assert "registered crackcls v1 as @challenger" in output and "PROMOTED" in output  # the stages' own lines still show
    assert not [m for m in NOISE_MARKERS if m in output], output[-6000:]
    assert "E0000" not in output


def test_dvc_metrics_show_leads_with_the_test_metrics(demo_repo):
    repo = demo_repo
    shown = _run(["dvc", "metrics", "show"], repo)
    assert "failed to load" not in shown.stderr + shown.stdout
    rows = [line.split()[0] for line in shown.stdout.splitlines()[1:] if line.strip()]
    assert rows == ["reports/metrics.json", "reports/split.json"]  # fetch.json is a record, not a metric
    as_json = json.loads(_run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(as_json.values()))["data"]
    assert list(files)[0] == "reports/metrics.json"
    split = files["reports/split.json"]["data"]
    assert all(isinstance(v, (int, float)) for v in flatten(split).values()), split  # numbers only

    _run(["git", "add", "dvc.lock", "params.yaml"], repo)  # the usual next step: keep the result
    _run(["git", "commit", "-qm", "first model"], repo)
    diff = _run(["dvc", "metrics", "diff"], repo)
    assert "failed to load" not in diff.stderr + diff.stdout
    # the committed metrics are read from DVC's cache by their hash in dvc.lock, not from git
    head = _run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    by_rev = json.loads(_run(["dvc", "metrics", "show", "--all-commits", "--json"], repo).stdout)
    committed = next(v for rev, v in by_rev.items() if head.startswith(rev) or rev.startswith(head[:7]))
    assert "f1" in committed["data"]["reports/metrics.json"]["data"], committed


def flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, inner in value.items():
        flat.update(flatten(inner, f"{prefix}{key}.") if isinstance(inner, dict) else {f"{prefix}{key}": inner})
    return flat


def test_dvc_exp_show_leads_with_the_test_metrics(demo_repo):
    shown = _run(["dvc", "exp", "show", "--csv"], demo_repo)
    assert "failed to load" not in shown.stderr
    header = next(csv.reader(io.StringIO(shown.stdout)))
    metrics = header[header.index("parent") + 1 :]
    first = metrics[: metrics.index("tp") + 1]  # reports/metrics.json's columns come first
    assert set(TEST_METRICS) <= set(first)
    assert "duplicates_removed" in metrics[len(first) :]
    assert "bytes" not in header  # the fetch record is no metric


def test_a_registered_version_leads_back_to_its_exact_data(demo_repo):
    repo = demo_repo
    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("crackcls", "champion")
    run = client.get_run(version.run_id)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    split_md5 = next(out["md5"] for out in lock["stages"]["split"]["outs"] if out["path"] == "data/split")
    assert run.data.tags["dvc_split_md5"] == split_md5
    exp_name = re.search(r"Ran experiment\(s\): (\S+)", (repo.parent / "demo.log").read_text()).group(1)
    assert run.data.tags["dvc_exp_name"] == exp_name
    assert len(run.data.tags["dvc_lock_md5"]) == 32

    inputs = {_context(i): i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    cache = repo / ".dvc" / "cache"
    listing = {e["relpath"]: e["md5"] for e in json.loads(lineage.cache_file(cache, split_md5).read_text())}
    for context, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        dataset_input = inputs[context]
        dataset = dataset_input.dataset
        assert dataset.digest == split_md5  # DVC's hash of data/split
        assert dataset.name == f"data/split/{split}.csv"
        assert json.loads(dataset.source)["uri"] == str(repo / "data" / "split" / f"{split}.csv")
        file_md5 = {t.key: t.value for t in dataset_input.tags}["dvc_file_md5"]
        assert listing[f"{split}.csv"] == file_md5
        # the manifest, straight from DVC's cache, is the one in the workspace
        cached = lineage.cache_file(cache, file_md5).read_bytes()
        assert cached == (repo / "data" / "split" / f"{split}.csv").read_bytes()
        assert json.loads(dataset.profile)["num_rows"] == cached.decode().count("\n") - 1


def _context(dataset_input) -> str:  # noqa: ANN001 - an mlflow DatasetInput
    return {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"]


def test_dir_hash_is_dvcs(demo_repo):
    repo = demo_repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage, path in (("split", "data/split"), ("fetch", "data/raw")):
        recorded = next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)
        assert lineage.dir_hash(repo / path) == recorded, path
