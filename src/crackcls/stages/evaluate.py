"""DVC stage ``evaluate``: score the trained model on the test split (and any extra sets).

Writes ``reports/metrics.json`` (DVC metrics), per-image predictions for DVC's
``confusion`` template, ROC and precision-recall curves, a gallery of the most
confident mistakes with Grad-CAM overlays (``reports/error_gallery.png``), and logs
all of it into the training run in MLflow. ``evaluate.extra_sets`` folders are scored beside the
test split so that domain shift (a new kind of concrete) shows at a glance.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from crackcls import atomic, manifest, paths, tracking
from crackcls.config import Config, load_config
from crackcls.errors import CrackclsError, user_errors_exit
from crackcls.evaluation import (
    GALLERY_FILE,
    Evaluation,
    evaluate_items,
    labelled_folder,
    log_to_mlflow,
    write_error_gallery,
    write_reports,
)
from crackcls.model import load_model_file

EXTRA_DIR = paths.REPORTS_DIR / "extra"
# A recall this far below the test split's means the model does not transfer.
RECALL_DROP_WARNING = 0.2


def set_name(folder: str) -> str:
    return Path(folder.rstrip("/")).name or "extra"


def domain_shift_warnings(test: Evaluation, extra: dict[str, Evaluation]) -> list[str]:
    warnings = []
    for name, result in extra.items():
        drop = test.metrics["recall"] - result.metrics["recall"]
        if drop >= RECALL_DROP_WARNING:
            warnings.append(
                f"DOMAIN SHIFT: recall on '{name}' is {result.metrics['recall']:.3f}, "
                f"{drop:.3f} below the test split's {test.metrics['recall']:.3f}; "
                "do not trust this model on that kind of surface without retraining on it"
            )
    return warnings


def run(config: Config, workspace: Path) -> dict:
    run_info_path = workspace / paths.RUN_INFO_FILE
    if not run_info_path.is_file():
        raise CrackclsError(f"{run_info_path} missing; run `dvc repro train` first")
    run_info = json.loads(run_info_path.read_text(encoding="utf-8"))
    model = load_model_file(workspace / paths.MODEL_FILE)
    threshold, batch = config.evaluate.threshold, config.evaluate.batch_size

    test_items = manifest.read(manifest.manifest_path("test", workspace / paths.SPLIT_DIR))
    test = evaluate_items(model, test_items, threshold, batch, base=workspace)
    extra = {
        set_name(folder): evaluate_items(model, labelled_folder(paths.resolve(folder, workspace)), threshold, batch)
        for folder in config.evaluate.extra_sets
    }
    warnings = domain_shift_warnings(test, extra)

    extra_summary = {name: {k: r.metrics[k] for k in ("accuracy", "precision", "recall", "f1", "n")} for name, r in extra.items()}
    files = write_reports(test, workspace / paths.REPORTS_DIR, extra={"extra_sets": extra_summary} if extra else None)
    extra_files = {name: write_reports(r, workspace / EXTRA_DIR / name) for name, r in extra.items()}
    atomic.write_json(workspace / paths.REPORTS_DIR / "domain_shift.json", {"warnings": warnings})
    gallery = write_error_gallery(model, test, workspace / paths.REPORTS_DIR / GALLERY_FILE, base=workspace)

    tracking.configure_uri_only()
    with mlflow.start_run(run_id=run_info["run_id"]):
        log_to_mlflow(test, files, prefix="test", artifact_path="evaluation")
        mlflow.log_artifact(str(gallery), artifact_path="evaluation")
        for name, result in extra.items():
            log_to_mlflow(result, extra_files[name], prefix=name, artifact_path=f"evaluation/{name}")
        if warnings:
            mlflow.set_tag("domain_shift_warning", " | ".join(warnings)[:5000])
    client = tracking.client()
    for key in ("f1", "accuracy", "recall", "roc_auc"):
        client.set_model_version_tag(
            run_info["registered_model"], run_info["registered_model_version"], f"test_{key}", f"{test.metrics[key]:.4f}"
        )
    return {"test": test, "extra": extra, "warnings": warnings, "gallery": gallery}


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    keys = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss", "tp", "fp", "tn", "fn", "n")
    print(title)
    for key in keys:
        value = metrics[key]
        print(f"  {key:<10} {value:.4f}" if isinstance(value, float) else f"  {key:<10} {value}")


@user_errors_exit
def main() -> None:
    result = run(load_config(), paths.workspace_root())
    print_metrics("test split", result["test"].metrics)
    for name, r in result["extra"].items():
        print_metrics(f"extra set '{name}'", r.metrics)
    for warning in result["warnings"]:
        print(warning)


if __name__ == "__main__":
    main()
