"""End to end: DVC's experiment queue and ``--temp`` runs log to the project's MLflow store.

In a fresh git + DVC copy of the repository with tiny params committed, two
experiments with different network widths are queued and run by DVC's queue worker (a
Celery worker on a file-system broker, started by ``dvc queue start``). Each runs
in its own copy under ``.dvc/tmp/exps/``; the runs must still land in
``<project>/mlflow.db`` with artifacts in ``<project>/mlruns``, and each must
register a model version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import deep_merge, fresh_repo_copy, subprocess_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e

# Two widths of the backbone that trains fastest from scratch: what is queued is the wiring, not a model.
QUEUED = {"q-narrow": "[8, 16]", "q-wide": "[16, 32]"}
TEMP_NAME = "temp-run"
QUEUE_TIMEOUT_S = 600
POLL_S = 5

TINY = {
    "data": {"sources": ["sample"], "max_per_class": 40},
    "model": {"backbone": "compact_cnn", "weights": "none", "image_size": 48, "compact": {"filters": [32, 64]}},
    "train": {"epochs": 2, "patience": 1, "batch_size": 16, "cache_views": 2},
}


def _run(args: list[str], cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def queue_statuses(repo: Path) -> tuple[dict[str, str], str]:
    """name → status (Queued, Running, Success, Failed) from ``dvc queue status``, and the raw text."""
    out = _run(["dvc", "queue", "status"], repo, timeout=120).stdout
    statuses = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in QUEUED:
            statuses[parts[1]] = parts[-1]
    return statuses, out


def queue_logs(repo: Path) -> str:
    logs = []
    for name in QUEUED:
        result = _run(["dvc", "queue", "logs", name], repo, timeout=120, check=False)
        logs.append(f"--- dvc queue logs {name} (rc {result.returncode})\n{result.stdout[-6000:]}{result.stderr[-2000:]}")
    return "\n".join(logs)


@pytest.fixture(scope="module")
def queue_repo(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is needed")
    repo = tmp_path_factory.mktemp("queue") / "crackcls"
    fresh_repo_copy(repo)
    params = deep_merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "fresh clone, tiny params"], repo)

    for name, filters in QUEUED.items():
        _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"model.compact.filters={filters}"], repo)
    statuses, text = queue_statuses(repo)
    assert statuses == {name: "Queued" for name in QUEUED}, text

    finished = False
    try:
        _run(["dvc", "queue", "start", "-j", "1"], repo)
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while True:
            statuses, text = queue_statuses(repo)
            if statuses and all(s in ("Success", "Failed") for s in statuses.values()) and len(statuses) == len(QUEUED):
                break
            if "Worker status: 0 active, 0 idle" in text and any(s == "Queued" for s in statuses.values()):
                pytest.fail(f"the queue worker exited with experiments still queued:\n{text}\n{queue_logs(repo)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{text}\n{queue_logs(repo)}")
            time.sleep(POLL_S)
        finished = True
        assert all(s == "Success" for s in statuses.values()), f"{text}\n{queue_logs(repo)}"
    finally:
        # Leave no worker behind: --kill only when something may still be running.
        _run(["dvc", "queue", "stop", *([] if finished else ["--kill"])], repo, timeout=120, check=False)
    return repo


@pytest.fixture(scope="module")
def temp_run(queue_repo) -> Path:
    """One ``dvc exp run --temp`` on top of the queued ones (fetch/split/features come from the run cache)."""
    _run(
        ["dvc", "exp", "run", "--temp", "-n", TEMP_NAME, "-S", "train.epochs=1"],
        queue_repo,
    )
    return queue_repo


def store(repo: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return MlflowClient()


def runs_by_exp_name(client: MlflowClient) -> dict[str, list]:
    experiment = client.get_experiment_by_name("crackcls")
    assert experiment is not None, "no 'crackcls' experiment in the project store"
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=100):
        found.setdefault(run.data.tags.get("dvc_exp_name", ""), []).append(run)
    return found


def stray_stores(repo: Path) -> list[Path]:
    """MLflow stores anywhere in the copy other than the project's own."""
    return [p for p in repo.rglob("mlflow.db") if p != repo / "mlflow.db"] + [
        p for p in repo.rglob("mlruns") if p != repo / "mlruns"
    ]


def test_exp_show_lists_both_queued_experiments_with_metrics(queue_repo):
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], queue_repo).stdout)
    experiments = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                experiments[rev.get("name")] = rev["data"]
    for name, filters in QUEUED.items():
        assert name in experiments, f"{name} missing from dvc exp show: {sorted(experiments, key=str)}"
        data = experiments[name]
        assert data["params"]["params.yaml"]["data"]["model"]["compact"]["filters"] == yaml.safe_load(filters)
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        for key in ("accuracy", "f1", "roc_auc"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert data["metrics"]["reports/split.json"]["data"]["total"] == 80


def test_queued_runs_land_in_the_project_store(queue_repo):
    assert (queue_repo / "mlflow.db").is_file()
    assert not stray_stores(queue_repo), "an MLflow store was created inside a DVC temp copy"
    client = store(queue_repo)
    experiment = client.get_experiment_by_name("crackcls")
    assert experiment.artifact_location == (queue_repo / "mlruns").resolve().as_uri()

    runs = runs_by_exp_name(client)
    versions = {v.run_id: v for v in client.search_model_versions("name='crackcls'")}
    queued_versions = []
    for name, filters in QUEUED.items():
        assert len(runs.get(name, [])) == 1, f"{name}: runs {[r.info.run_id for r in runs.get(name, [])]}"
        run = runs[name][0]
        assert yaml.safe_load(run.data.params["model.compact.filters"]) == yaml.safe_load(filters)
        assert run.data.params["model.image_size"] == "48"
        assert run.data.tags["stage"] == "train"
        for key in ("test_f1", "test_accuracy", "test_roc_auc", "loss", "val_loss"):
            assert key in run.data.metrics, (name, key)
        assert run.info.artifact_uri.startswith((queue_repo / "mlruns").resolve().as_uri() + "/")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/confusion_matrix.png" in artifacts
        assert run.info.run_id in versions, f"{name}: no registered version"
        version = versions[run.info.run_id]
        assert version.tags["backbone"] == "compact_cnn"
        queued_versions.append(version.version)
    assert len(set(queued_versions)) == 2
    # the second queued experiment registered last, so it holds @challenger until another run does
    challenger = client.get_model_version_by_alias("crackcls", "challenger")
    assert challenger.version in {v.version for v in versions.values()}


def test_temp_experiment_logs_to_the_same_store(temp_run):
    assert not stray_stores(temp_run)
    client = store(temp_run)
    runs = runs_by_exp_name(client)
    assert len(runs.get(TEMP_NAME, [])) == 1
    run = runs[TEMP_NAME][0]
    assert yaml.safe_load(run.data.params["model.compact.filters"]) == [32, 64]  # the committed params
    assert run.data.params["train.epochs"] == "1"
    assert "test_f1" in run.data.metrics
    assert run.info.artifact_uri.startswith((temp_run / "mlruns").resolve().as_uri() + "/")
    versions = client.search_model_versions("name='crackcls'")
    assert len(versions) == len(QUEUED) + 1
    assert client.get_model_version_by_alias("crackcls", "challenger").run_id == run.info.run_id
    shown = _run(["dvc", "exp", "show", "--json"], temp_run).stdout
    assert f'"name": "{TEMP_NAME}"' in shown
