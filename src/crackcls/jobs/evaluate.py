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
from crackcls.model.evaluation import Evaluation, add_set_familiarity, evaluate_items, labelled_folder, write_reports
from crackcls.model.inference import familiarity_references
from crackcls.photos.tile_truth import read_tile_truth, tile_level_metrics
from crackcls.tracking import store
from crackcls.tracking.registry import load_model, log_to_mlflow
from crackcls.trust import companions
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
    add_set_familiarity(result, familiarity_references(model))  # unfamiliar images, and the set-level shift test
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
    from crackcls.photos.scan import tiles_of, tiles_shift

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
    result.shift = tiles_shift(model, scans)  # every tile's familiarity, tested as one set
    if result.shift is not None:
        result.metrics.update(result.shift.metrics())
    tile_metrics = tile_level_metrics(scans, truth, folder) if truth is not None else {}
    target = Path(out_dir) if out_dir else workspace / paths.REPORTS_DIR / "eval" / slug(f"scan-{model_spec}-{folder.name}")
    scan_info = settings.describe()
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
    return {
        "result": result, "files": files, "run_id": run_id, "out_dir": target, "tile_metrics": tile_metrics,
        "shift_unit": tiles_of(len(scans)),
    }  # fmt: skip


