"""A DVC remote round trip: what one person pushes, a teammate's fresh clone pulls and reuses.

The pipeline runs once in a git + DVC copy of the repository (tiny params), which
then pushes its data, features, model and run cache to a local-folder remote (a real
DVC remote type, like ``s3://`` or ``ssh://``). A fresh ``git clone`` pulls them:
its workspace is then up to date, ``dvc repro`` reruns no stage, and the pulled model
evaluates to exactly the numbers the original run reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import deep_merge, fresh_repo_copy, subprocess_env

pytestmark = pytest.mark.e2e

TINY = {
    "data": {"sources": ["sample"], "max_per_class": 20},
    "model": {"backbone": "compact_cnn", "weights": "none", "image_size": 48},
    "train": {"epochs": 2, "patience": 1, "batch_size": 16},
}
PULLED = ("data/raw", "data/field", "data/split", "data/features", "models/model.keras", "reports/predictions.csv")


def _run(args: list[str], cwd: Path, timeout: int = 600) -> str:
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> tuple[Path, Path, str]:
    """The original repository after ``dvc repro`` and ``dvc push --run-cache``; the remote; push's output."""
    if shutil.which("git") is None:
        pytest.skip("git is needed")
    root = tmp_path_factory.mktemp("dvc-remote")
    origin, storage = root / "origin", root / "storage"
    fresh_repo_copy(origin)
    params = deep_merge(yaml.safe_load((origin / "params.yaml").read_text()), TINY)
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], origin)
    _run(["dvc", "remote", "add", "-d", "storage", str(storage)], origin)
    _run(["dvc", "repro"], origin)
    _run(["git", "add", "-A"], origin)
    _run(["git", "commit", "-qm", "pipeline run, remote storage"], origin)
    return origin, storage, _run(["dvc", "push", "--run-cache"], origin)


@pytest.fixture(scope="module")
def clone(pushed, tmp_path_factory) -> tuple[Path, str]:
    """A teammate's fresh clone after ``dvc pull``; pull's output."""
    origin = pushed[0]
    clone = tmp_path_factory.mktemp("teammate") / "crackcls"
    _run(["git", "clone", "-q", str(origin), str(clone)], origin.parent)
    for path in PULLED:
        assert not (clone / path).exists(), f"{path} came with git"
    return clone, _run(["dvc", "pull"], clone)


def test_push_fills_the_remote(pushed):
    origin, storage, output = pushed
    assert "pushed" in output, output
    stored = [p for p in storage.rglob("*") if p.is_file()]
    assert len(stored) > 80, "the remote should hold the images, features, model and reports"
    assert (storage / "runs").is_dir(), "--run-cache pushes the run cache too"


def test_a_fresh_clone_pulls_everything_and_is_up_to_date(pushed, clone):
    origin = pushed[0]
    repo, output = clone
    assert "ERROR" not in output and "files fetched" in output, output
    for path in PULLED:
        assert (repo / path).exists(), f"{path} was not pulled"
    assert (repo / "models/model.keras").read_bytes() == (origin / "models/model.keras").read_bytes()
    assert sorted(p.name for p in (repo / "data/split").iterdir()) == sorted(p.name for p in (origin / "data/split").iterdir())
    status = _run(["dvc", "status"], repo)
    assert "Data and pipelines are up to date." in status, status


def test_repro_in_the_clone_reruns_no_stage(clone):
    repo = clone[0]
    output = _run(["dvc", "repro"], repo)
    assert "Running stage" not in output, output
    for stage in ("fetch", "split", "features", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in output, (stage, output)


def test_the_pulled_model_evaluates_to_the_original_numbers(pushed, clone):
    origin, repo = pushed[0], clone[0]
    output = _run(["crackcls", "evaluate"], repo)
    original = json.loads((origin / "reports/metrics.json").read_text())
    # "  accuracy   0.9833  95% CI [0.911, 0.997]": the name and the value lead each indented line
    printed = {line.split()[0]: line.split()[1] for line in output.splitlines() if line.startswith("  ") and len(line.split()) >= 2}
    assert int(printed["n"]) == original["n"] > 0
    for key in ("accuracy", "f1", "roc_auc"):
        assert float(printed[key]) == pytest.approx(original[key], abs=1e-4), key
