"""Two training workers on 127.0.0.1 (CPU), configured by TF_CONFIG, train one model in sync.

The tiny project is prepared up to the ``features`` stage, copied for the second
worker (as a second machine would hold its own checkout), and ``python -m
crackcls.stages.train`` runs in both with their own ``TF_CONFIG``. Both must take
part (same steps, same all-reduced losses each epoch), the chief alone writes the
model and logs one MLflow run, and that model loads and predicts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, build_tiny_project, free_port, subprocess_env, use_project_store, write_params

from crackcls.model import distributed

WORKERS = 2
TIMEOUT_S = 420
PARAMS = {
    "data": {"sources": ["sample"], "download": {"mendeley": {"mirror_url": None}}},
    "model": {"backbone": "compact_cnn", "weights": "none", "image_size": 48},
    "train": {"epochs": 3, "patience": 3, "batch_size": 8},
    "mlflow": {"experiment": "tests"},
}
DONE = re.compile(r"distributed: worker (\d) of (\d) done: (\d+) steps")
EPOCH = re.compile(r"distributed: worker (\d) epoch (\d+): (.*)")


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The chief's project, the second worker's copy, and each worker's output."""
    from crackcls.config import load_config
    from crackcls.stages import features, fetch, split

    root = tmp_path_factory.mktemp("multi-worker")
    chief = build_tiny_project(root / "chief", per_class=24)
    write_params(chief, PARAMS)
    with pytest.MonkeyPatch.context() as patch:
        use_project_store(patch, chief)
        config = load_config(chief / "params.yaml")
        for stage in (fetch, split, features):
            stage.run(config, chief)
    second = root / "worker1"
    shutil.copytree(chief, second)

    ports: list[int] = []
    while len(ports) < WORKERS:
        if (port := free_port()) not in ports:
            ports.append(port)
    processes, logs = [], []
    for index, workspace in enumerate((chief, second)):
        env = {**subprocess_env(), "TF_CONFIG": tf_config(ports, index), "CUDA_VISIBLE_DEVICES": ""}
        log = (root / f"worker{index}.log").open("w")
        logs.append(root / f"worker{index}.log")
        processes.append(subprocess.Popen([sys.executable, "-m", "crackcls.stages.train"], cwd=workspace, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT_S)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    outputs = [log.read_text() for log in logs]
    for index, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"worker {index} exited with {process.returncode}:\n{output[-6000:]}"
    return chief, second, outputs


def test_tf_config_decides_who_is_chief():
    ports = [1111, 2222]
    assert not distributed.multi_worker({})
    assert not distributed.multi_worker({"TF_CONFIG": tf_config(ports[:1], 0)})
    assert distributed.multi_worker({"TF_CONFIG": tf_config(ports, 1)})
    assert distributed.task({"TF_CONFIG": tf_config(ports, 0)}).is_chief
    assert not distributed.task({"TF_CONFIG": tf_config(ports, 1)}).is_chief
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}
    assert not distributed.task({"TF_CONFIG": json.dumps(with_chief)}).is_chief
    assert distributed.task({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})}).is_chief
    from crackcls.util.errors import CrackclsError

    for bad in ("{not json", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}})):
        with pytest.raises(CrackclsError, match="TF_CONFIG"):
            distributed.task({"TF_CONFIG": bad})


@pytest.mark.e2e
def test_both_workers_trained_in_sync(cluster_run):
    _, _, outputs = cluster_run
    done = [DONE.search(output) for output in outputs]
    assert all(done), outputs
    assert [(int(m[1]), int(m[2])) for m in done] == [(0, WORKERS), (1, WORKERS)]
    assert done[0][3] == done[1][3] and int(done[0][3]) > 0, "both workers ran the same number of steps"
    epochs = [{int(e): logs for w, e, logs in EPOCH.findall(output)} for output in outputs]
    assert len(epochs[0]) == PARAMS["train"]["epochs"]
    # the losses are all-reduced over both workers' shards: identical lines prove both took part in every epoch
    assert epochs[0] == epochs[1]


@pytest.mark.e2e
def test_only_the_chief_writes_the_model_and_one_mlflow_run(cluster_run):
    from mlflow.tracking import MlflowClient

    chief, second, _ = cluster_run
    assert (chief / "models/model.keras").is_file()
    assert (chief / "reports/train_history.csv").read_text().count("\n") == 1 + PARAMS["train"]["epochs"]
    assert not (second / "models").exists() and not (second / "mlflow.db").exists() and not (second / "mlruns").exists()

    store = f"sqlite:///{chief / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0].data
    assert run.tags["runtime.strategy"] == "MultiWorkerMirroredStrategy" and run.tags["runtime.workers"] == str(WORKERS)
    assert run.params["train.batch_size"] == "8" and run.metrics["epochs_trained"] == PARAMS["train"]["epochs"]
    info = json.loads((chief / "models/run.json").read_text())
    assert info["run_id"] == runs[0].info.run_id
    assert client.get_model_version_by_alias("crackcls", "challenger").run_id == runs[0].info.run_id


@pytest.mark.e2e
def test_the_model_loads_and_predicts(cluster_run):
    from crackcls.model.inference import score_files
    from crackcls.model.inference import load_model_file

    chief = cluster_run[0]
    model = load_model_file(chief / "models/model.keras")
    images = [*sorted((REPO_ROOT / "sample/mendeley/Positive").glob("*.jpg"))[:3], *sorted((REPO_ROOT / "sample/mendeley/Negative").glob("*.jpg"))[:3]]
    scores = score_files(model, images, 8, base=REPO_ROOT)
    assert scores.reasons == [None] * len(images)
    assert scores.probabilities.shape == (len(images),)
    assert ((scores.probabilities >= 0) & (scores.probabilities <= 1)).all()
