"""What every benchmark part shares: the data, a fresh project, a measured child process and the result file.

A part is one script in ``bench/`` with its own ``--help``. It builds what it measures in
a fresh project under a temporary folder (``params.yaml`` as committed, its data and sizes
set), runs each measured step in a child process of its own so that each peak RSS is that
step's alone, and writes one JSON to ``bench/results/``. ``bench/run.py`` runs them all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_SAMPLE = SHARED_DATA / "concrete-crack-sample"
SHARED_SDNET = SHARED_DATA / "sdnet2018-sample"
SHARED_SDNET_PARENTS = SHARED_DATA / "sdnet2018-parents"  # every cracked tile of 165 parents, 24 whole grids
PAINTED_WALL = SHARED_DATA / "other-surfaces" / "painted-wall"
BUNDLED_SAMPLE = REPO_ROOT / "sample" / "mendeley"
RESULTS = REPO_ROOT / "bench" / "results"
FROZEN_WEIGHTS = "frozen_backbone.weights.h5"
SKIPPED = 77  # a part's exit status when what it needs is not here (a trained model, the shared data)


# ---------------------------------------------------------------- the command line and the result
def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A part's parser: its docstring as help, ``--out`` (bench/results/NAME.json) and ``--quick``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="where the JSON goes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: small images, few epochs, few files")
    return parser


def data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder with Positive/ and Negative/ (default: the shared 4,000-image sample, else sample/)")  # fmt: skip


def default_data(data: Path | None) -> Path:
    if data is not None:
        return data.resolve()
    return SHARED_SAMPLE if (SHARED_SAMPLE / "Positive").is_dir() else BUNDLED_SAMPLE


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()}


def write(result: dict, out: Path) -> None:
    """The part's JSON, whole or not at all, and its table on the screen."""
    result = {"machine": machine(), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(handle, "w") as staged:
        json.dump(result, staged, indent=2)
    os.replace(staging, out)
    if result.get("table"):
        print(result["table"])
    print(f"\nwritten: {out}")


def skip(reason: str) -> NoReturn:
    """Stop a part whose prerequisite is missing; ``bench/run.py`` records the reason and goes on."""
    print(f"skipped: {reason}", file=sys.stderr)
    raise SystemExit(SKIPPED)


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="crackcls-bench-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- a measured child process
def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM; ru_maxrss would keep a forking parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _child(connection: Any, function: Callable[..., dict], args: tuple) -> None:  # noqa: ANN401 - a multiprocessing Connection
    try:
        result = function(*args)
        connection.send(("ok", {**result, "peak_rss_mb": peak_rss_mb()}))
    except BaseException as failed:  # noqa: BLE001 - reported to the parent, which stops the part
        connection.send(("failed", f"{type(failed).__name__}: {failed}"))
        raise


def in_child(function: Callable[..., dict], *args: Any) -> dict:  # noqa: ANN401
    """``function(*args)`` in a fresh interpreter (spawned, not forked); its result and peak RSS."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args))
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "failed", "the child process died without a result"
    process.join()
    if status != "ok":
        raise SystemExit(f"benchmark step {function.__name__} failed: {payload} (exit {process.exitcode})")
    return payload


# ---------------------------------------------------------------- a fresh project
def make_project(root: Path, data: Path, size: int, epochs: int, batch: int) -> Path:
    """A project folder with the committed params.yaml, this data, a MobileNetV2 at ``size`` and no early stop."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["sources"] = [str(data)]
    params["data"]["download"]["mendeley"]["mirror_url"] = None
    params["model"].update({"backbone": "mobilenet_v2", "image_size": size, "fine_tune_layers": 0})
    params["train"].update({"epochs": epochs, "patience": epochs, "batch_size": batch})
    params["mlflow"] = {"experiment": "bench"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def update_params(project: Path, overrides: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def prepare(project: Path) -> dict:
    """The ``fetch`` and ``split`` stages; the split's counts."""
    from crackcls.config import load_config
    from crackcls.stages import fetch, split

    os.chdir(project)
    config = load_config(project / "params.yaml")
    fetch.run(config, project)
    return split.run(config, project)


def frozen_weights(project: Path) -> dict:
    """A random MobileNetV2 with BatchNorm statistics from training images, saved as a weights file.

    Stands in for ImageNet weights (not downloadable everywhere) on the frozen-feature path:
    without real statistics, a random backbone gives the same features for every image.
    """
    import keras

    from crackcls.config import load_config
    from crackcls.data import manifest
    from crackcls.data.pipeline import manifest_dataset
    from crackcls.model.build import build_model, calibrate_batchnorm
    from crackcls.model.settings import ModelConfig
    from crackcls.util import paths

    os.chdir(project)
    config = load_config(project / "params.yaml")
    keras.utils.set_random_seed(config.train.seed)
    model_cfg = ModelConfig(backbone=config.model.backbone, weights="none", image_size=config.model.image_size)
    crack = build_model(model_cfg, config.train)
    items = manifest.read(manifest.manifest_path("train", project / paths.SPLIT_DIR))
    images = manifest_dataset(items, model_cfg.image_size, config.train.batch_size, shuffle_seed=1, base=project)
    seen = calibrate_batchnorm(crack, (x for x, _ in images.take(8)))
    crack.backbone.save_weights(str(project / FROZEN_WEIGHTS))
    return {"weights": str(project / FROZEN_WEIGHTS), "calibration_images": seen}


@dataclass(frozen=True)
class Prepared:
    project: Path
    split_counts: dict[str, int]
    weights: str  # the frozen backbone's weights file, set in the project's params


def prepared_project(root: Path, data: Path, size: int, epochs: int, batch: int) -> Prepared:
    """A split project whose frozen-feature path uses :func:`frozen_weights`' file."""
    project = make_project(root, data, size, epochs, batch)
    split = in_child(prepare, project)
    weights = in_child(frozen_weights, project)["weights"]
    update_params(project, {"model": {"weights": weights}})
    return Prepared(project, {k: split[k]["total"] for k in ("train", "val", "test")}, weights)


def run_pipeline(project: Path, overrides: dict) -> tuple:
    """Fetch → split → features → train → evaluate in ``project``, as ``dvc repro`` runs them.

    Returns the config, the train stage's info, the seconds of features + train, and the
    test metrics.
    """
    from crackcls.config import load_config
    from crackcls.stages import evaluate, features, fetch, split, train

    os.chdir(project)
    update_params(project, overrides)
    config = load_config(project / "params.yaml")
    fetch.run(config, project)
    split.run(config, project)
    started = time.perf_counter()
    features.run(config, project)
    info = train.run(config, project)
    trained_s = time.perf_counter() - started
    return config, info, trained_s, evaluate.run(config, project)["test"].metrics


def sources_overrides(mendeley: Path, sdnet: Path | None, recipe: dict) -> dict:
    """Overrides for a from-scratch run on Mendeley images (and SDNET2018 tiles), the recipe's keys merged in."""
    sources: list = [{"name": "mendeley", "path": str(mendeley)}]
    if sdnet is not None:
        from crackcls.data.settings import SDNET_PARENT_PATTERN

        sources.append({"name": "sdnet2018", "path": str(sdnet), "parent_pattern": SDNET_PARENT_PATTERN})
    overrides: dict = {"data": {"sources": sources}, "model": {"backbone": "compact_cnn", "weights": "none"}}
    for section, values in recipe.items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def pipeline_by_source(project: Path, overrides: dict) -> dict:
    """One whole pipeline; per-source test metrics, training throughput and time."""
    from crackcls.data import manifest
    from crackcls.util import paths

    started = time.perf_counter()
    config, info, trained_s, _ = run_pipeline(project, overrides)
    train_images = len(manifest.read(manifest.manifest_path("train", project / paths.SPLIT_DIR)))
    reported = json.loads((project / "reports/metrics.json").read_text())
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "train_wall_s": round(trained_s, 1),
        "training_time_s": info.get("training_time_s"),
        "epochs_trained": info["epochs_trained"],
        "train_images": train_images,
        "train_img_s": round(train_images * info["epochs_trained"] / info["training_time_s"], 1),
        "image_size": config.model.image_size,
        "overall": {k: v for k, v in reported.items() if k != "sources"},
        "sources": reported.get("sources", {}),
        "split": json.loads((project / "reports/split.json").read_text())["sources"],
    }


def ci(metrics: dict, name: str) -> str:
    """A metric with its 95% interval, as the tables print it."""
    return f"{metrics[name]:.3f} [{metrics[name + '_ci_low']:.3f}, {metrics[name + '_ci_high']:.3f}]"


def mosaic_tools() -> tuple[Callable, Callable]:
    """The tests' mosaic builders: a crack path of Positive patches in a grid of Negative ones."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from conftest import build_mosaic, crack_path

    return build_mosaic, crack_path
