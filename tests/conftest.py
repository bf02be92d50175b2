"""Shared fixtures: a tiny offline project on the bundled sample, and the shared real data."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_SAMPLE = SHARED / "data" / "concrete-crack-sample"
# Shipped with the tests (five small archives; tests/fixtures/rar/README.md says how they were made).
RAR_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "rar"
BIN_DIR = Path(sys.executable).parent

# Small and fast: the compact backbone from scratch, small images, few epochs.
# At 48 px a strided stem leaves the three-epoch test model too few pixels to tell unseen
# in-domain images from unfamiliar ones; the tiny project keeps the full-resolution stem.
TINY_PARAMS = {
    "data": {"sources": ["sample"], "download": {"mendeley": {"mirror_url": None}}},
    "model": {"backbone": "compact_cnn", "weights": "none", "image_size": 48, "compact": {"stem_stride": 1}},
    "train": {"epochs": 3, "patience": 2, "batch_size": 16, "cache_views": 2},
    "mlflow": {"experiment": "tests"},
}


def pretrained_params(folder: Path, backbone: str = "mobilenet_v2", size: int = 48) -> dict:
    """Params for the pretrained path (frozen backbone, feature cache) with a weights file saved here.

    ImageNet weights cannot be downloaded in tests; a file of the same architecture takes
    the same code path as a user's own weights file.
    """
    from crackcls.model.settings import ModelConfig
    from crackcls.model.build import build_backbone

    weights = folder / f"{backbone}-{size}px.weights.h5"
    if not weights.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        build_backbone(ModelConfig(backbone=backbone, weights="none", image_size=size)).save_weights(str(weights))
    return {"model": {"backbone": backbone, "weights": str(weights), "image_size": size}}


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def committed_file_text(name: str) -> str:
    """A file as committed at HEAD (the working tree's copy where there is no git checkout).

    ``make demo`` is a ``dvc exp run``: it leaves its parameters in the working tree's
    params.yaml, so tests that need the project's defaults never read that copy.
    """
    shown = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=REPO_ROOT, capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else (REPO_ROOT / name).read_text(encoding="utf-8")


def committed_params() -> dict:
    return yaml.safe_load(committed_file_text("params.yaml"))


# What a pipeline run writes into the checkout; a fresh copy of the project holds none of it.
PIPELINE_OUTPUTS = ("dvc.lock", "reports/", "models/", "data/", "mlflow.db", "mlruns/", "mlartifacts/")


def write_params(project: Path, override: dict) -> dict:
    params = committed_params()
    params = deep_merge(params, override)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture(scope="session", autouse=True)
def decoded_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One decoded-image cache for the run (all xdist workers and the pipelines they start), never ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "decoded-image-cache"
    previous = os.environ.get("CRACKCLS_CACHE_DIR")
    os.environ["CRACKCLS_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CRACKCLS_CACHE_DIR", None)
    else:
        os.environ["CRACKCLS_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def isolated_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_tracking_uri() writes MLFLOW_*_URI into os.environ; undo it after each test."""
    clear_mlflow_env(monkeypatch)


def clear_mlflow_env(patch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        patch.setenv(name, "")
        patch.delenv(name)


def fresh_repo_copy(repo: Path) -> None:
    """This checkout as a fresh clone of it would be, with the working tree's code, copied to ``repo``.

    Tracked and untracked-but-not-ignored files, less what a pipeline run left behind
    (``make demo`` writes dvc.lock, metrics and models), with params.yaml as committed.
    """
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    tracked = set(
        subprocess.run(["git", "ls-files", "-c"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    )
    for name in filter(None, files):
        source = REPO_ROOT / name
        if not source.is_file() or (name not in tracked and name.startswith(PIPELINE_OUTPUTS)):
            continue
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, repo / name)
    (repo / "params.yaml").write_text(committed_file_text("params.yaml"), encoding="utf-8")


@pytest.fixture
def shared_sample() -> Path:
    if not (SHARED_SAMPLE / "Positive").is_dir():
        pytest.skip("shared real-data sample not available")
    return SHARED_SAMPLE


@pytest.fixture
def rar_fixtures() -> Path:
    return RAR_FIXTURES


SDNET_SURFACES = ("decks", "walls", "pavements")


TWO_SOURCES = {"data": {"sources": ["sample", "sdnet2018-sample"]}}


def build_tiny_project(project: Path, per_class: int = 40, sdnet_per_class: int = 0) -> Path:
    """A project folder: params.yaml (TINY_PARAMS), dvc.yaml and a per_class+per_class sample.

    ``sdnet_per_class`` > 0 adds that many tiles per class of each SDNET2018 surface (spread
    evenly over the name order, so over many parent photos) and lists both samples as sources.
    """
    project.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    copies = [("mendeley", per_class)] + [(f"sdnet2018/{s}", sdnet_per_class) for s in SDNET_SURFACES if sdnet_per_class]
    for folder, count in copies:
        for label in ("Positive", "Negative"):
            target = project / "sample" / folder / label
            target.mkdir(parents=True)
            images = sorted((REPO_ROOT / "sample" / folder / label).glob("*.jpg"))
            for image in (images[:: max(len(images) // count, 1)][:count] if folder != "mendeley" else images[:count]):
                shutil.copy(image, target / image.name)
    write_params(project, deep_merge(TINY_PARAMS, TWO_SOURCES) if sdnet_per_class else TINY_PARAMS)
    return project


def use_project_store(patch: pytest.MonkeyPatch, project: Path) -> None:
    """Work in ``project`` with MLflow on its own store, leaving no MLFLOW_* variables behind.

    ``mlflow.set_tracking_uri``/``set_registry_uri`` write them into os.environ; setting
    them here first makes the patch's undo remove them again.
    """
    patch.chdir(project)
    clear_mlflow_env(patch)


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 40+40 image project (MLflow store ``<project>/mlflow.db``) as the working directory."""
    project = build_tiny_project(tmp_path / "project")
    use_project_store(monkeypatch, project)
    return project


@contextlib.contextmanager
def trained_tiny_project(tmp_path_factory: pytest.TempPathFactory, name: str, params: dict | None = None) -> Iterator[Path]:
    """One pipeline run on a tiny project (model registered as @challenger), for a module-scoped fixture.

    ``params`` overrides TINY_PARAMS (deep-merged).
    """
    with pytest.MonkeyPatch.context() as patch:
        project = build_tiny_project(tmp_path_factory.mktemp(name) / "project")
        if params:
            write_params(project, deep_merge(TINY_PARAMS, params))
        use_project_store(patch, project)
        run_pipeline_in_process(project)
        yield project


def run_pipeline_in_process(project: Path) -> dict:
    """fetch → split → features → train → evaluate through each stage's run()."""
    from crackcls.config import load_config
    from crackcls.stages import evaluate, features, fetch, split, train

    config = load_config(project / "params.yaml")
    results = {}
    for name, stage in (("fetch", fetch), ("split", split), ("features", features), ("train", train), ("evaluate", evaluate)):
        results[name] = stage.run(config, project)
    return results


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.setdefault("GIT_AUTHOR_NAME", "crackcls-tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "crackcls-tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@localhost")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_server(command: list[str], cwd: Path, env: dict[str, str], health_url: str, log: Path, timeout_s: float) -> Iterator[None]:
    """Run a server on 127.0.0.1 until ``health_url`` answers 200; stop it and its workers afterwards.

    It runs in a new session, so the uvicorn/gunicorn workers MLflow starts are stopped with it.
    """
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(health_url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{health_url} did not answer in {timeout_s} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield
    finally:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


PATCH = 227  # the side of a sample patch, and the default scan tile


def crack_path(rng, rows: int, cols: int, length: int) -> list[tuple[int, int]]:
    """A connected walk of ``length`` distinct grid cells (4-neighbours), like a crack across patches."""
    while True:
        cells = [(int(rng.integers(rows)), int(rng.integers(cols)))]
        while len(cells) < length:
            r, c = cells[-1]
            options = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
                       if 0 <= r + dr < rows and 0 <= c + dc < cols and (r + dr, c + dc) not in cells]  # fmt: skip
            if not options:
                break
            cells.append(options[int(rng.integers(len(options)))])
        if len(cells) == length:
            return cells


def build_mosaic(sample: Path, rows: int, cols: int, crack_cells, seed: int, skip: int = 0):  # noqa: ANN001, ANN201
    """A photo-sized (rows x cols patches) RGB array of Negative sample patches, Positive ones at ``crack_cells``.

    Patches are drawn (with ``seed``) from the sample's files after the first ``skip`` of each class.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pools = {label: sorted((sample / label).glob("*.jpg"))[skip:] for label in ("Negative", "Positive")}
    mosaic = np.zeros((rows * PATCH, cols * PATCH, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            pool = pools["Positive" if (r, c) in crack_cells else "Negative"]
            with Image.open(pool[int(rng.integers(len(pool)))]) as patch:
                mosaic[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = np.asarray(patch.convert("RGB"))
    return mosaic


# The slowest files, slowest first (measured with --durations). Started first, they leave the
# quick files to fill in around them, so the two test processes of `make test` end together.
SLOWEST_FILES = (
    "test_queue.py", "test_e2e_demo.py", "test_team_server.py", "test_seed_configs.py", "test_failure_modes.py",
    "test_from_scratch.py", "test_mlflow_ui.py", "test_dvc_remote.py", "test_scan.py", "test_multi_worker.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))  # stable: order within a file kept
