"""``make evaluate``: score any model (path or registry URI) on the test split or any labelled folder.

Each call is logged as a new MLflow run, nested under the run that produced the
model (when known), so evaluations on new data sit beside the training they test.
With ``--scan`` the folder holds whole photos: each is scanned tile by tile
(:mod:`crackcls.photos.scan`) and its verdict is scored; crack boxes per photo (``--tile-truth``)
add tile-level recall and precision.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np

from crackcls.config import Config, load_config
from crackcls.data import manifest
from crackcls.model.evaluation import Evaluation, evaluate_items, labelled_folder, write_reports
from crackcls.tracking import store
from crackcls.tracking.registry import load_model, log_to_mlflow
from crackcls.trust import companions, familiarity
from crackcls.trust.metrics import classification_metrics, json_safe
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError

DEFAULT_MODEL = str(paths.MODEL_FILE)
TILE_REPORT = "tile_metrics.json"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "eval"


def run(model_spec: str = DEFAULT_MODEL, data: str | None = None, out_dir: str | None = None) -> dict:
    config = load_config()
    workspace = paths.workspace_root()
    model, source_run = load_model(model_spec)
    if data:
        items = labelled_folder(paths.resolve(data, workspace))
        data_name = Path(data).resolve().name
    else:
        items = manifest.read(manifest.manifest_path("test", workspace / paths.SPLIT_DIR))
        data_name = "test_split"
    threshold = companions.threshold(model, None, config.evaluate.threshold)  # the model's own, when stored
    result = evaluate_items(model, items, threshold, config.evaluate.batch_size, base=workspace)
    if result.familiarity is not None:  # how many of these images the model finds unfamiliar
        result.metrics.update(familiarity.flagged_report(result.familiarity, result.correct))
    target = Path(out_dir) if out_dir else workspace / paths.REPORTS_DIR / "eval" / slug(f"{model_spec}-{data_name}")
    files = write_reports(result, target, extra={"model": model_spec, "data": data or "test split"})
    run_id = _log_run(config, model_spec, source_run, data, data_name, {"threshold": threshold},
                      lambda: log_to_mlflow(result, files, prefix="eval", artifact_path="evaluation"))  # fmt: skip
    return {"result": result, "files": files, "run_id": run_id, "out_dir": target}


def _log_run(config: Config, model_spec: str, source_run: str | None, data: str | None, data_name: str,
             params: dict, log) -> str:  # fmt: skip  # noqa: ANN001 - log: a callable run inside the run
    """A new MLflow run for this evaluation, nested under the model's run when it is known."""
    if source_run is None and model_spec == DEFAULT_MODEL:
        info_path = paths.workspace_root() / paths.RUN_INFO_FILE
        if info_path.is_file():
            source_run = json.loads(info_path.read_text(encoding="utf-8")).get("run_id")
    store.configure(config.mlflow.experiment)
    tags = {"stage": "evaluate", "evaluated_model": model_spec, "evaluated_data": data or "test split"}
    if source_run:
        tags["source_run_id"] = source_run
        tags["mlflow.parentRunId"] = source_run  # nests the evaluation under the model's run in the UI
    with mlflow.start_run(run_name=f"evaluate-{data_name}", tags=tags) as active:
        mlflow.log_params({"model": model_spec, "data": data or "test split", **params})
        log()
    return active.info.run_id


def run_scan(model_spec: str, data: str, out_dir: str | None = None, tile_truth: str | None = None) -> dict:
    """Photo-level metrics of scan verdicts on a folder of whole photos (Positive/, Negative/)."""
    from crackcls.jobs.scan import scan_paths, settings_from

    config = load_config()
    workspace = paths.workspace_root()
    folder = paths.resolve(data, workspace)
    truth = read_tile_truth(paths.resolve(tile_truth, workspace), folder) if tile_truth else None
    items = labelled_folder(folder)
    model, source_run = load_model(model_spec)
    settings = settings_from(config, model=model)
    scans, skipped = scan_paths(model, [Path(it.path) for it in items], settings, config.evaluate.batch_size)
    if not scans:
        raise CrackclsError("no photo could be read; see the skipped list")
    labels = {str(Path(it.path)): it.label for it in items}
    y_true = np.asarray([labels[scan.path] for scan in scans], int)
    y_score = np.asarray([scan.score for scan in scans])
    result = Evaluation(
        classification_metrics(y_true, y_score, settings.threshold), [scan.path for scan in scans],
        y_true, y_score, settings.threshold, skipped,
    )  # fmt: skip
    tile_metrics = tile_level_metrics(scans, truth, folder) if truth is not None else {}
    target = Path(out_dir) if out_dir else workspace / paths.REPORTS_DIR / "eval" / slug(f"scan-{model_spec}-{folder.name}")
    scan_info = {"scan_tile": settings.tile, "scan_stride": settings.step, "scan_min_crack_tiles": settings.min_crack_tiles}
    files = write_reports(result, target, extra={"model": model_spec, "data": data, **scan_info})
    if truth is not None:
        files["tiles"] = target / TILE_REPORT
        atomic.write_json(files["tiles"], json_safe(tile_metrics))

    def log() -> None:
        log_to_mlflow(result, files, prefix="scan", artifact_path="scan_evaluation")
        numeric = {f"scan_{key}": value for key, value in json_safe(tile_metrics).items() if value is not None}
        if numeric:
            mlflow.log_metrics(numeric)

    params = {"threshold": settings.threshold, **scan_info, "tile_truth": tile_truth or "none"}
    run_id = _log_run(config, model_spec, source_run, data, f"scan-{folder.name}", params, log)
    return {"result": result, "files": files, "run_id": run_id, "out_dir": target, "tile_metrics": tile_metrics}


def read_tile_truth(path: Path, folder: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """``{"Positive/photo.jpg": [[left, top, right, bottom], ...]}``: crack boxes per photo, relative to the data folder."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CrackclsError(f"--tile-truth {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CrackclsError(f"--tile-truth {path}: expected an object of photo path -> list of [left, top, right, bottom]")
    truth = {}
    for name, boxes in raw.items():
        if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
            raise CrackclsError(f"--tile-truth {path}: '{name}' must map to a list of [left, top, right, bottom] boxes")
        truth[str((folder / name).resolve())] = [tuple(int(v) for v in box) for box in boxes]
    return truth


def tile_truth_mask(scan, boxes) -> np.ndarray:  # noqa: ANN001 - a PhotoScan and its crack boxes
    """True for tiles whose centre lies inside a crack box."""
    mask = np.zeros((scan.grid.rows, scan.grid.cols), bool)
    for row in range(scan.grid.rows):
        for col in range(scan.grid.cols):
            left, top, right, bottom = scan.grid.box(row, col)
            cx, cy = (left + right) / 2, (top + bottom) / 2
            mask[row, col] = any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in boxes)
    return mask


def tile_level_metrics(scans, truth: dict, folder: Path) -> dict:  # noqa: ANN001 - PhotoScans
    """Tile recall, precision and false-positive tiles per photo over the photos the truth file names.

    A tile is a true crack tile when its centre lies inside one of its photo's crack boxes.
    Photos under Negative/ absent from the file have no crack tiles; photos under Positive/
    absent from it are left out (their tiles are unknown).
    """
    negatives = (folder / paths.LABELS[0]).resolve()
    tp = fp = fn = photos = 0
    for scan in scans:
        key = str(Path(scan.path).resolve())
        if key in truth:
            boxes = truth[key]
        elif Path(key).is_relative_to(negatives):
            boxes = []
        else:
            continue
        actual, predicted = tile_truth_mask(scan, boxes), scan.crack_mask
        tp += int((actual & predicted).sum())
        fp += int((~actual & predicted).sum())
        fn += int((actual & ~predicted).sum())
        photos += 1
    return {
        "tile_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "tile_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "fp_tiles_per_photo": fp / photos if photos else float("nan"),
        "tile_tp": tp,
        "tile_fp": fp,
        "tile_fn": fn,
        "tile_photos": photos,
    }
