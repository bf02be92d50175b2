"""``make evaluate``: score any model (path or registry URI) on the test split or any labelled folder.

Each call is logged as a new MLflow run, nested under the run that produced the
model (when known), so evaluations on new data sit beside the training they test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow

from crackcls import manifest, paths, tracking
from crackcls.config import load_config
from crackcls.evaluation import evaluate_items, labelled_folder, load_model, log_to_mlflow, write_reports

DEFAULT_MODEL = str(paths.MODEL_FILE)


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
    if source_run is None and model_spec == DEFAULT_MODEL:
        info_path = workspace / paths.RUN_INFO_FILE
        if info_path.is_file():
            source_run = json.loads(info_path.read_text(encoding="utf-8")).get("run_id")
    result = evaluate_items(model, items, config.evaluate.threshold, config.evaluate.batch_size, base=workspace)
    target = Path(out_dir) if out_dir else workspace / paths.REPORTS_DIR / "eval" / slug(f"{model_spec}-{data_name}")
    files = write_reports(result, target, extra={"model": model_spec, "data": data or "test split"})

    tracking.configure(config.mlflow.experiment)
    tags = {"stage": "evaluate", "evaluated_model": model_spec, "evaluated_data": data or "test split"}
    if source_run:
        tags["source_run_id"] = source_run
        tags["mlflow.parentRunId"] = source_run  # nests the evaluation under the model's run in the UI
    with mlflow.start_run(run_name=f"evaluate-{data_name}", tags=tags) as active:
        mlflow.log_params({"model": model_spec, "data": data or "test split", "threshold": config.evaluate.threshold})
        log_to_mlflow(result, files, prefix="eval", artifact_path="evaluation")
    return {"result": result, "files": files, "run_id": active.info.run_id, "out_dir": target}
