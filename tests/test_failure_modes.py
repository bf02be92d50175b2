"""Fault injection: every failure ends in one clear message, and never in half-written outputs.

1. bad params.yaml values stop a stage before any work, with one ConfigError;
2. two trainings at once against one SQLite MLflow store both complete;
3. a stage interrupted (SIGINT, SIGTERM, SIGKILL) leaves its outputs absent or complete,
   and the next run (and ``dvc repro``) recovers;
4. promotion refuses a worse model, an unknown version and a corrupt artifact;
5. models load in Keras's safe mode: a Lambda layer is refused and never executed.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import keras
import mlflow
import numpy as np
import psutil
import pytest
from conftest import (
    REPO_ROOT,
    TINY_PARAMS,
    deep_merge,
    pretrained_params,
    run_pipeline_in_process,
    subprocess_env,
    write_params,
)
from mlflow.tracking import MlflowClient

from crackcls import cli
from crackcls.data import manifest
from crackcls.tracking import store
from crackcls.util import paths
from crackcls.model.settings import BACKBONES, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from crackcls.config import ConfigError, load_config, parse_config
from crackcls.util.errors import CrackclsError
from crackcls.model.build import build_backbone
from crackcls.model.inference import load_model_file

STAGES = ("fetch", "split", "features", "train", "evaluate")


# ---------------------------------------------------------------------------------------------
# helpers


def make_project(root: Path, override: dict | None = None, per_class: int = 40) -> Path:
    """The layout of conftest's ``tiny_project`` (dvc.yaml, params.yaml, a 40+40 sample) at ``root``."""
    root.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    for label in paths.LABELS:
        target = root / "sample" / "mendeley" / label
        target.mkdir(parents=True)
        for image in sorted((REPO_ROOT / "sample" / "mendeley" / label).glob("*.jpg"))[:per_class]:
            shutil.copy(image, target / image.name)
    write_params(root, deep_merge(TINY_PARAMS, override or {}))
    return root


def prepare(project: Path, until: str) -> None:
    """Run the stages up to and including ``until`` in-process (no MLflow involved before train)."""
    from crackcls.stages import features, fetch, split

    config = load_config(project / "params.yaml")
    for name, stage in (("fetch", fetch), ("split", split), ("features", features)):
        stage.run(config, project)
        if name == until:
            return


COPIES = 125  # hard links per sample image: 10,000 files to hash, a few seconds of work


def inflate_raw(project: Path, copies: int) -> int:
    """Hard-link every image in data/raw ``copies`` more times under new names (exact duplicates).

    The split has the same 80 unique images afterwards, but hashing takes seconds, long
    enough to interrupt the stage while it runs.
    """
    made = 0
    for label in paths.LABELS:
        folder = project / paths.RAW_DIR / "mendeley" / label
        for image in sorted(folder.glob("*.jpg")):
            for i in range(copies):
                os.link(image, folder / f"zz{i:04d}_{image.name}")
                made += 1
    return made


def staging_leftovers(parent: Path) -> list[str]:
    """atomic_dir/atomic_path scratch names (``.<name>.new.*``, ``.<name>.old.*``, ``.<name>.*.tmp``)."""
    if not parent.is_dir():
        return []
    return sorted(
        p.name
        for p in parent.iterdir()
        if p.name.startswith(".") and (".new." in p.name or ".old." in p.name or p.name.endswith(".tmp"))
    )


def split_snapshot(split_dir: Path) -> dict[str, str] | None:
    """The manifests' text, or None if data/split is absent; fails if it is present but incomplete."""
    if not split_dir.exists():
        return None
    names = sorted(p.name for p in split_dir.iterdir())
    assert names == ["test.csv", "train.csv", "val.csv"], f"data/split is incomplete or holds scratch files: {names}"
    items = [manifest.read(split_dir / name) for name in names]  # parses: header and every row
    assert sum(len(part) for part in items) == 80
    return {name: (split_dir / name).read_text() for name in names}


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited (rc={proc.returncode}) before {what}")
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def reading_under(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` (or a child) has a file under ``folder`` open right now."""
    prefix = str(folder.resolve()) + os.sep
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        return any(f.path.startswith(prefix) for proc in procs for f in proc.open_files())
    except psutil.Error:
        return False


def logged_process(args: list[str], cwd: Path, env: dict, log: Path, **kwargs) -> subprocess.Popen:
    """Start ``args`` with stdout and stderr going to ``log`` (a file: no pipe to fill up).

    SIGINT is reset to its default in the child: a suite started in the background of a
    non-interactive shell inherits it ignored, and Ctrl-C would then never reach the stage.
    """
    with log.open("w") as handle:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                preexec_fn=_default_sigint, **kwargs)  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stage_process(env: dict, project: Path, stage: str, log: Path) -> subprocess.Popen:
    return logged_process([sys.executable, "-m", f"crackcls.stages.{stage}"], project, env, log)


def interrupted_exit_code(signum: int) -> int:
    return 130 if signum == signal.SIGINT else 128 + signum


# ---------------------------------------------------------------------------------------------
# 1. invalid params.yaml values: one ConfigError naming the key and what is allowed


BAD_VALUES = [
    pytest.param(
        {"model": {"backbone": "vgg16"}},
        ["model.backbone", "'vgg16'", "allowed values", *BACKBONES],
        id="unknown-backbone",
    ),
    pytest.param({"train": {"epochs": 0}}, ["train.epochs", "greater than 0", "got 0"], id="zero-epochs"),
    pytest.param({"train": {"epochs": -5}}, ["train.epochs", "greater than 0", "got -5"], id="negative-epochs"),
    pytest.param(
        {"data": {"split": {"train": 0.8, "val": 0.15, "test": 0.15}}},
        ["data.split", "must sum to 1", "got 1.1"],
        id="split-ratios-sum-1.1",
    ),
    pytest.param(
        {"data": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}},
        ["data.split", "must sum to 1", "got 0.7"],
        id="split-ratios-sum-0.7",
    ),
    pytest.param(
        {"model": {"image_size": MIN_IMAGE_SIZE - 1}},
        ["model.image_size", f"between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}", f"got {MIN_IMAGE_SIZE - 1}"],
        id="image-size-too-small",
    ),
    pytest.param(
        {"model": {"image_size": MAX_IMAGE_SIZE + 1}},
        ["model.image_size", f"between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}"],
        id="image-size-too-large",
    ),
    pytest.param(
        {"model": {"weights": "weights/missing_backbone.h5"}},
        ["model.weights", "missing_backbone.h5", "'imagenet'", "'none'", "existing weights file"],
        id="missing-weights-file",
    ),
]


@pytest.mark.parametrize(("override", "expected"), BAD_VALUES)
def test_invalid_params_raise_one_config_error_naming_key_and_allowed_values(tiny_project, override, expected):
    write_params(tiny_project, deep_merge(TINY_PARAMS, override))
    with pytest.raises(ConfigError) as caught:
        load_config(tiny_project / "params.yaml")
    message = str(caught.value)
    assert message.startswith("params.yaml: ")
    assert "\n" not in message, "one error, on one line"
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # the same through parse_config on a plain mapping
    with pytest.raises(ConfigError):
        parse_config(deep_merge(TINY_PARAMS, override))


def test_several_bad_values_give_a_single_error(tiny_project):
    bad = {"model": {"backbone": "vgg16", "image_size": 5}, "train": {"epochs": 0}}
    with pytest.raises(ConfigError) as caught:
        parse_config(deep_merge(TINY_PARAMS, bad))
    assert "\n" not in str(caught.value)
    assert str(caught.value).count("params.yaml:") == 1


def test_empty_class_folder_is_a_config_error(tiny_project, tmp_path):
    source = tmp_path / "field_photos"
    (source / "Positive").mkdir(parents=True)
    (source / "Negative").mkdir()
    shutil.copy(next((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg")), source / "Positive" / "crack.jpg")
    (source / "Negative" / "notes.txt").write_text("not an image")  # a file, but no image
    write_params(tiny_project, deep_merge(TINY_PARAMS, {"data": {"sources": [str(source)]}}))
    with pytest.raises(ConfigError) as caught:
        load_config()
    message = str(caught.value)
    assert "data.source" in message and "Negative" in message and "zero images" in message


def test_every_backbone_accepts_the_smallest_allowed_image_size():
    """The config's bound is the real one: each Keras application builds at MIN_IMAGE_SIZE, none below."""
    for backbone in BACKBONES:
        config = parse_config({"model": {"backbone": backbone, "weights": "none", "image_size": MIN_IMAGE_SIZE}})
        model = build_backbone(config.model)
        assert min(model.output_shape[1:3]) >= 1, backbone
        keras.backend.clear_session()
        with pytest.raises(ValueError, match=f"at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}"):
            build_backbone(config.model.model_copy(update={"image_size": MIN_IMAGE_SIZE - 1}))
        with pytest.raises(ConfigError, match="model.image_size"):
            parse_config({"model": {"backbone": backbone, "image_size": MIN_IMAGE_SIZE - 1}})


def test_features_stage_offline_with_imagenet_weights_names_the_fixes(tiny_project, tmp_path, monkeypatch, capsys):
    """params.yaml's default (an ImageNet backbone) on a machine with no network: one clear error, no traceback."""
    import urllib.error

    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    from crackcls.stages import features

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    (tmp_path / "keras-home").mkdir()
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))  # an empty cache: Keras must download
    write_params(tiny_project, deep_merge(TINY_PARAMS, {"model": {"backbone": "mobilenet_v2", "weights": "imagenet"}}))
    with pytest.raises(SystemExit) as caught:
        features.main()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download the ImageNet weights of mobilenet_v2 from https://"), err
    assert "Temporary failure in name resolution" in err and "Traceback" not in err
    assert "model.weights: none" in err and "point model.weights at a weights file" in err
    cache = tmp_path / "keras-home" / "models"
    assert f"into Keras' cache folder, {cache}" in err
    _assert_untouched(tiny_project)


def _assert_untouched(project: Path) -> None:
    created = sorted(p.name for p in project.iterdir() if p.name not in {"params.yaml", "dvc.yaml", "sample"})
    assert created == [], f"a stage with bad params created {created}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_main_with_bad_params_exits_2_before_any_work(tiny_project, capsys, stage):
    write_params(tiny_project, deep_merge(TINY_PARAMS, {"model": {"backbone": "vgg16"}}))
    module = importlib.import_module(f"crackcls.stages.{stage}")
    with pytest.raises(SystemExit) as caught:
        module.main()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params.yaml: model.backbone: got 'vgg16'; allowed values:")
    assert "Traceback" not in err
    _assert_untouched(tiny_project)


def test_stage_process_with_bad_params_prints_no_traceback(tiny_project):
    write_params(tiny_project, deep_merge(TINY_PARAMS, {"train": {"epochs": 0}}))
    done = subprocess.run(
        [sys.executable, "-m", "crackcls.stages.train"],
        cwd=tiny_project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: params.yaml: train.epochs:")
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    _assert_untouched(tiny_project)


# ---------------------------------------------------------------------------------------------
# 2. two trainings at once against one SQLite store


STORE_RACER = """
import sys, time
from pathlib import Path
from crackcls.tracking import store
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():  # a barrier: every process past its imports, then all at once
    time.sleep(0.01)
experiment = store.configure("tests")
with store.mlflow.start_run(experiment_id=experiment) as run:
    store.mlflow.log_metrics({"loss": 1.0}, step=1)
print("ok", experiment, run.info.run_id)
"""


def test_fresh_sqlite_store_opened_by_several_processes_at_once(tmp_path):
    """MLflow migrates a new SQLite database without a cross-process lock; store.py adds one."""
    db = tmp_path / "fresh.db"
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STORE_RACER, str(flag), str(go)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for flag in ready
    ]
    try:
        wait_until(lambda: all(flag.exists() for flag in ready), 120, "every process to import MLflow")
        go.touch()
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
        assert output.strip().splitlines()[-1].startswith("ok ")
    assert len({output.strip().splitlines()[-1].split()[1] for output in outputs}) == 1, "one experiment for all"


TRAIN_EPOCHS = 6
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def test_two_trainings_at_once_share_one_sqlite_store(tmp_path):
    override = {"train": {"epochs": TRAIN_EPOCHS, "patience": TRAIN_EPOCHS}}
    first = make_project(tmp_path / "a", override)
    prepare(first, until="features")
    second = tmp_path / "b"
    shutil.copytree(first, second)  # same prepared data, a separate project folder
    projects = [first, second]

    db = tmp_path / "shared" / "shared.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    assert uri.startswith("sqlite:////")
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": uri}
    logs = [tmp_path / f"train_{p.name}.log" for p in projects]
    procs = [stage_process(env, p, "train", log) for p, log in zip(projects, logs)]
    try:
        codes = [proc.wait(timeout=400) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [log.read_text() for log in logs]
    for code, output in zip(codes, outputs):
        assert code == 0, output[-4000:]
        assert "database is locked" not in output, output[-4000:]

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    infos = [json.loads((p / paths.RUN_INFO_FILE).read_text()) for p in projects]
    assert infos[0]["run_id"] != infos[1]["run_id"]
    versions = set()
    for info in infos:
        assert info["tracking_uri"] == uri
        run = client.get_run(info["run_id"])
        assert run.info.status == "FINISHED"
        assert info["epochs_trained"] == TRAIN_EPOCHS
        for key in EPOCH_METRICS:
            history = client.get_metric_history(info["run_id"], key)
            assert sorted(m.step for m in history) == list(range(1, TRAIN_EPOCHS + 1)), key
        assert "training_time_s" in run.data.metrics
        version = client.get_model_version(info["registered_model"], info["registered_model_version"])
        assert version.run_id == info["run_id"]
        assert version.status == "READY"
        versions.add(str(version.version))
    assert versions == {"1", "2"}
    challenger = client.get_model_version_by_alias("crackcls", "challenger")
    assert str(challenger.version) in versions


# ---------------------------------------------------------------------------------------------
# 3. interrupted stages: outputs absent or complete, and the next run recovers


def test_split_interrupted_keeps_previous_manifests_and_reruns(tmp_path):
    project = make_project(tmp_path / "project")
    prepare(project, until="split")
    split_dir = project / paths.SPLIT_DIR
    before = split_snapshot(split_dir)
    assert before is not None
    inflate_raw(project, copies=COPIES)  # 10,000 duplicates: hashing takes seconds

    env = subprocess_env()
    for signum in (signal.SIGTERM, signal.SIGINT):
        log = tmp_path / f"split_{signum.name}.log"
        proc = stage_process(env, project, "split", log)
        try:
            # freeze the stage the moment hashing starts, so the signal lands mid-hashing on any machine
            wait_until(lambda: reading_under(proc.pid, project / paths.RAW_DIR), 60, "hashing to start", proc, poll=0.01)
            proc.send_signal(signal.SIGSTOP)
            assert proc.poll() is None, "the split ended before the signal"
            proc.send_signal(signum)
            proc.send_signal(signal.SIGCONT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = log.read_text()
        assert code == interrupted_exit_code(signum), output
        assert "interrupted" in output and "Traceback" not in output
        assert split_snapshot(split_dir) == before  # the previous complete set, untouched
        assert staging_leftovers(project / "data") == []
        assert staging_leftovers(project / paths.REPORTS_DIR) == []

    from crackcls.stages import split

    report = split.run(load_config(project / "params.yaml"), project)
    assert report["duplicates_removed"] == 80 * COPIES
    assert split_snapshot(split_dir) == before
    assert staging_leftovers(project / "data") == []


def test_sigterm_that_a_c_extension_turns_into_another_error_still_exits_as_sigterm(capsys):
    """A SIGTERM while TensorFlow traces can surface as SystemError; the exit is still 143, in one line."""
    from crackcls.util.errors import Terminated, user_errors_exit

    cleaned = []

    @user_errors_exit
    def stage() -> None:
        try:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Terminated:
                raise SystemError("Objects/listobject.c:338: bad argument to internal function") from None
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as exited:
        stage()
    assert exited.value.code == 128 + signal.SIGTERM and cleaned == [True]
    assert capsys.readouterr().err.strip() == "interrupted: terminated by SIGTERM"

    @user_errors_exit
    def broken() -> None:
        raise SystemError("a real bug")

    with pytest.raises(SystemError, match="a real bug"):  # without a signal, an error stays an error
        broken()


def test_features_killed_mid_extraction_keeps_previous_cache_and_reruns(tmp_path):
    from crackcls.model import features as feature_cache
    from crackcls.stages import features

    project = make_project(tmp_path / "project", pretrained_params(tmp_path / "weights"))
    prepare(project, until="features")
    cache = project / paths.FEATURES_DIR
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert {"meta.json", "train.npz", "val.npz", feature_cache.BACKBONE_WEIGHTS_FILE} <= set(before)

    env = subprocess_env()
    staged = lambda: [p for p in (project / "data").glob(".features.new.*") if (p / feature_cache.BACKBONE_WEIGHTS_FILE).is_file()]  # noqa: E731
    leftover = None
    for signum in (signal.SIGTERM, signal.SIGKILL):
        log = tmp_path / f"features_{signum.name}.log"
        proc = stage_process(env, project, "features", log)
        try:
            # freeze the stage the moment extraction starts, so the signal lands mid-extraction on any machine
            folder = wait_until(staged, 180, "feature extraction to start", proc, poll=0.01)[0]
            proc.send_signal(signal.SIGSTOP)
            assert proc.poll() is None and not (folder / "meta.json").exists(), "extraction ended before the signal"
            proc.send_signal(signum)
            proc.send_signal(signal.SIGCONT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # the previous cache is untouched: same files, same bytes
        assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
        if signum == signal.SIGTERM:
            output = log.read_text()
            assert code == 128 + signal.SIGTERM, output[-3000:]
            assert "interrupted: terminated by SIGTERM" in output and "Traceback" not in output
            assert staging_leftovers(project / "data") == [], "SIGTERM must remove the staging folder"
        else:
            assert code == -signal.SIGKILL
            leftover = staging_leftovers(project / "data")
            assert leftover and all(name.startswith(".features.new.") for name in leftover)

    # a leftover from a killed process is never read, and the next run removes it
    report = features.run(load_config(project / "params.yaml"), project)
    assert report["train_images"] == 56
    assert staging_leftovers(project / "data") == []
    assert sorted(p.name for p in cache.iterdir()) == sorted(before)
    config = load_config(project / "params.yaml")
    key = feature_cache.cache_key(config.model, config.train, project / paths.SPLIT_DIR)
    assert feature_cache.load(cache, "train", key).features.shape[0] == 56


def test_atomic_dir_interrupted_between_renames_puts_the_previous_output_back(tmp_path, monkeypatch):
    from crackcls.util import atomic

    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("previous")
    real_replace = os.replace

    def replace(src, dst):  # the second rename (staging -> target) is interrupted
        if Path(dst) == target and Path(src).name.startswith(".out.new."):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_dir(target) as staging:
            (staging / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "previous"
    assert staging_leftovers(tmp_path) == []


def test_atomic_dir_removes_staging_of_dead_processes_only(tmp_path):
    from crackcls.util import atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "out"
    stale = [tmp_path / f".out.new.{dead_pid}.abc", tmp_path / f".out.old.{dead_pid}.def"]
    live = tmp_path / f".out.new.{os.getppid()}.ghi"  # pytest's parent: alive, maybe another run
    other = tmp_path / f".other.new.{dead_pid}.jkl"  # a different target's staging
    for folder in (*stale, live, other):
        folder.mkdir()
        (folder / "partial.bin").write_bytes(b"\0" * 10)
    with atomic.atomic_dir(target) as staging:
        (staging / "done.txt").write_text("ok")
    assert (target / "done.txt").read_text() == "ok"
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()


def _git_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "ls-files"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("needs the project's git checkout to copy its tracked files")
    return [name for name in listed if (REPO_ROOT / name).is_file()]


def _dvc(repo: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )


def _split_stage_pid(dvc_pid: int) -> int | None:
    try:
        for child in psutil.Process(dvc_pid).children(recursive=True):
            if "crackcls.stages.split" in " ".join(child.cmdline()):
                return child.pid
    except psutil.Error:
        return None
    return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dvc_repro_recovers_after_split_interrupted(tmp_path, signum):
    repo = tmp_path / "repo"
    for name in _git_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    write_params(repo, TINY_PARAMS)
    env = subprocess_env()
    git = lambda *args: subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    # data/field comes from data.dvc; data/raw as the fetch stage leaves it (sample, 40+40)
    shutil.copytree(repo / "field", repo / paths.FIELD_DIR)
    for label in paths.LABELS:
        (repo / paths.RAW_DIR / "mendeley" / label).mkdir(parents=True)
        for image in sorted((repo / "sample" / "mendeley" / label).glob("*.jpg"))[:40]:
            os.link(image, repo / paths.RAW_DIR / "mendeley" / label / image.name)

    first = _dvc(repo, env, "repro", "--single-item", "split")
    assert first.returncode == 0, first.stdout + first.stderr
    split_dir = repo / paths.SPLIT_DIR
    before = split_snapshot(split_dir)
    assert before is not None

    inflate_raw(repo, copies=COPIES)
    log = tmp_path / "dvc.log"
    dvc = logged_process(
        [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "split"],
        repo,
        env,
        log,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        stage_pid = wait_until(lambda: _split_stage_pid(dvc.pid), 120, "dvc to start the split stage", dvc)
        wait_until(lambda: reading_under(stage_pid, repo / paths.RAW_DIR), 60, "hashing to start", dvc, poll=0.01)
        os.kill(stage_pid, signal.SIGSTOP)  # frozen mid-hashing, so the signal lands there on any machine
        wait_until(lambda: psutil.Process(stage_pid).status() == psutil.STATUS_STOPPED, 10, "the split stage to stop", dvc)
        os.killpg(dvc.pid, signum)  # the whole job, as Ctrl-C or a scheduler's SIGTERM would
        os.kill(stage_pid, signal.SIGCONT)
        dvc.wait(timeout=60)
        stage = psutil.Process(stage_pid) if psutil.pid_exists(stage_pid) else None
        if stage is not None:
            psutil.wait_procs([stage], timeout=60)
    finally:
        if dvc.poll() is None:
            os.killpg(dvc.pid, signal.SIGKILL)
            dvc.wait()
    assert dvc.returncode != 0, log.read_text()
    assert "Traceback" not in log.read_text()

    # absent (DVC removes a stage's outputs before running it) or the complete previous set
    assert split_snapshot(split_dir) in (before, None)
    assert staging_leftovers(repo / "data") == []

    again = _dvc(repo, env, "repro", "--single-item", "split")
    assert again.returncode == 0, again.stdout + again.stderr
    assert split_snapshot(split_dir) == before  # same 80 unique images, same seed
    status = _dvc(repo, env, "status", "split", "--json")
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == "{}", status.stdout


# ---------------------------------------------------------------------------------------------
# 4. promotion


def _artifact_dir(client: MlflowClient, name: str, version: str) -> Path:
    uri = client.get_model_version_download_uri(name, version)
    parsed = urlparse(uri)
    assert parsed.scheme in ("", "file"), uri
    return Path(unquote(parsed.path))


def _register(model: keras.Model, project: Path, alias: str | None = None) -> str:
    """Log ``model`` as a new version of the project's registered model; optionally alias it."""
    config = load_config(project / "params.yaml")
    store.configure(config.mlflow.experiment)
    with mlflow.start_run(run_name="fault-injection"):
        info = mlflow.keras.log_model(
            model, name="model", registered_model_name=config.registry.model_name, pip_requirements=["keras"]
        )
    version = str(info.registered_model_version)
    if alias:
        store.client().set_registered_model_alias(config.registry.model_name, alias, version)
    return version


def _always_negative(model: keras.Model) -> keras.Model:
    """The same network with its classifier zeroed and a large negative bias: recall and F1 are 0."""
    worse = keras.models.clone_model(model)
    worse.set_weights(model.get_weights())
    dense = worse.get_layer("crack_probability")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), np.full_like(bias, -20.0)])
    return worse


@pytest.fixture(scope="module")
def promoted_project(tmp_path_factory):
    """One pipeline run whose version 1 is promoted to champion (shared by the promotion tests)."""
    project = make_project(tmp_path_factory.mktemp("promotion") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        run_pipeline_in_process(project)
        from crackcls.jobs import promote

        outcome = promote.run()
        assert outcome.decision.promote and outcome.challenger_version == "1"
        assert outcome.challenger_score > 0, "the decent model must score above the always-negative one"
    return project


@pytest.fixture
def in_promoted(promoted_project, monkeypatch):
    monkeypatch.chdir(promoted_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    store.configure_uri_only()
    return promoted_project


def test_promote_refuses_a_worse_challenger_and_keeps_the_champion(in_promoted, capsys):
    project = in_promoted
    client = store.client()
    champion_before = client.get_model_version_by_alias("crackcls", "champion").version
    good = load_model_file(project / paths.MODEL_FILE)
    worse_version = _register(_always_negative(good), project, alias="challenger")
    capsys.readouterr()

    with pytest.raises(SystemExit) as caught:
        cli.main(["promote"])
    out = capsys.readouterr().out
    assert caught.value.code == 1, out
    assert "REFUSED" in out and f"challenger v{worse_version}: f1 0.0000" in out
    assert "only the challenger gets right" in out and "McNemar p=" in out

    client = store.client()
    assert client.get_model_version_by_alias("crackcls", "champion").version == champion_before
    tags = client.get_model_version("crackcls", worse_version).tags
    assert tags["promotion_decision"] == "refused"
    assert tags["promotion_f1"] == "0.0000"
    assert "needs an improvement" in tags["promotion_reason"]
    assert int(tags["promotion_only_champion_right"]) > int(tags["promotion_only_challenger_right"])
    assert float(tags["promotion_mcnemar_p"]) <= 1.0 and tags["promotion_f1_ci95"].startswith("[")


def test_promote_unknown_version_is_a_clear_error(in_promoted, capsys):
    champion_before = store.client().get_model_version_by_alias("crackcls", "champion").version
    with pytest.raises(SystemExit) as caught:
        cli.main(["promote", "--version", "999"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'crackcls' has no version 999 in sqlite:///")
    assert "Traceback" not in err
    assert store.client().get_model_version_by_alias("crackcls", "champion").version == champion_before


@pytest.mark.parametrize("version", ["abc", "0", "-1"])
def test_promote_malformed_version_is_a_clear_error(in_promoted, capsys, version):
    with pytest.raises(SystemExit) as caught:
        cli.main(["promote", "--version", version])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "crackcls" in err and version in err
    assert "Traceback" not in err


def test_promote_corrupt_model_artifact_is_a_clear_error(in_promoted, capsys):
    project = in_promoted
    client = store.client()
    champion_before = client.get_model_version_by_alias("crackcls", "champion").version
    version = _register(load_model_file(project / paths.MODEL_FILE), project)
    keras_files = sorted(_artifact_dir(client, "crackcls", version).rglob("*.keras"))
    assert keras_files, "the registered version holds a .keras file"
    for path in keras_files:
        path.write_bytes(b"this is not a keras archive\x00" * 64)
    capsys.readouterr()  # MLflow's logging while registering

    with pytest.raises(SystemExit) as caught:
        cli.main(["promote", "--version", version])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load model ") and "corrupt" in err
    assert "Traceback" not in err
    assert store.client().get_model_version_by_alias("crackcls", "champion").version == champion_before


# ---------------------------------------------------------------------------------------------
# 5. Keras safe mode: a Lambda layer is refused, never run


def _lambda_model(path: Path, marker: Path) -> Path:
    """A .keras file whose Lambda layer appends to ``marker`` whenever its code runs."""
    code = eval(f"lambda x: (open({str(marker)!r}, 'a').write('lambda ran\\n'), x)[1]")  # noqa: S307
    inputs = keras.Input(shape=(32, 32, 3), name="image")
    x = keras.layers.Lambda(code, name="payload")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    keras.Model(inputs, outputs).save(path)
    marker.unlink(missing_ok=True)  # building the model called the lambda once
    return path


def test_load_model_file_refuses_lambda_without_running_it(tmp_path):
    marker = tmp_path / "lambda_ran.txt"
    path = _lambda_model(tmp_path / "lambda.keras", marker)

    with pytest.raises(CrackclsError) as caught:
        load_model_file(path)
    assert "Lambda" in str(caught.value) and str(path) in str(caught.value)
    assert not marker.exists(), "safe mode must not execute the lambda's code"

    # control: loading the same file unsafely does run the code, so the check above is meaningful
    keras.saving.load_model(path, safe_mode=False, compile=False)
    assert marker.exists()


def test_crackcls_evaluate_refuses_lambda_model(tiny_project, tmp_path, capsys):
    marker = tmp_path / "lambda_ran.txt"
    path = _lambda_model(tmp_path / "lambda.keras", marker)
    with pytest.raises(SystemExit) as caught:
        cli.main(["evaluate", "--model", str(path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot load model {path}")
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (tiny_project / "mlflow.db").exists()
