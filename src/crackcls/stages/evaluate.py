"""DVC stage ``evaluate``: score the trained model on the test split (and any extra sets).

Writes ``reports/metrics.json`` (DVC metrics), per-image predictions for DVC's
``confusion`` template, ROC and precision-recall curves, a gallery of the most
confident mistakes with Grad-CAM overlays (``reports/error_gallery.png``), and logs
all of it into the training run in MLflow. ``evaluate.extra_sets`` folders are scored beside the
test split so that domain shift (a new kind of concrete) shows at a glance.

Every metric carries a 95% interval (:mod:`crackcls.intervals`); the threshold is the one
stored with the model when ``evaluate.target_recall`` is set; the calibration before and
after temperature scaling goes to ``reports/reliability.{csv,png}``; the familiarity score
is checked against each extra set; and the registered version gets its model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from crackcls import atomic, calibration, companions, familiarity, manifest, model_card, paths, plots, tracking
from crackcls.config import Config, load_config
from crackcls.errors import CrackclsError, user_errors_exit
from crackcls.evaluation import (
    GALLERY_FILE,
    csv_text,
    Evaluation,
    evaluate_items,
    labelled_folder,
    log_to_mlflow,
    write_error_gallery,
    write_reports,
)
from crackcls.intervals import format_interval
from crackcls.metrics import json_safe
from crackcls.model import load_model_file

EXTRA_DIR = paths.REPORTS_DIR / "extra"
RELIABILITY_CSV = paths.REPORTS_DIR / "reliability.csv"
RELIABILITY_PNG = paths.REPORTS_DIR / "reliability.png"
CARD_FILE = paths.REPORTS_DIR / model_card.CARD_FILE
EXTRA_KEYS = ("accuracy", "precision", "recall", "f1", "n")
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
    # with a recall target the model's own (validation-chosen) threshold; else the configured one
    fixed = None if config.evaluate.target_recall is not None else config.evaluate.threshold
    threshold, batch = companions.threshold(model, fixed, config.evaluate.threshold), config.evaluate.batch_size

    test_items = manifest.read(manifest.manifest_path("test", workspace / paths.SPLIT_DIR))
    test = evaluate_items(model, test_items, threshold, batch, base=workspace)
    extra = {
        set_name(folder): evaluate_items(model, labelled_folder(paths.resolve(folder, workspace)), threshold, batch)
        for folder in config.evaluate.extra_sets
    }
    warnings = domain_shift_warnings(test, extra)
    stored = companions.of(model)
    test.metrics["target_recall"] = config.evaluate.target_recall
    reliability = calibration_report(test, stored.temperature, workspace)
    familiarity_report(test, extra)

    extra_summary = {
        name: json_safe({k: v for k, v in r.metrics.items() if k.split("_ci_")[0] in EXTRA_KEYS or k in FAMILIARITY_KEYS})
        for name, r in extra.items()
    }
    files = write_reports(test, workspace / paths.REPORTS_DIR, extra={"extra_sets": extra_summary} if extra else None)
    extra_files = {name: write_reports(r, workspace / EXTRA_DIR / name) for name, r in extra.items()}
    atomic.write_json(workspace / paths.REPORTS_DIR / "domain_shift.json", {"warnings": warnings})
    gallery = write_error_gallery(model, test, workspace / paths.REPORTS_DIR / GALLERY_FILE, base=workspace)

    tracking.configure_uri_only()
    with mlflow.start_run(run_id=run_info["run_id"]):
        log_to_mlflow(test, files, prefix="test", artifact_path="evaluation")
        mlflow.log_artifact(str(gallery), artifact_path="evaluation")
        for path in reliability:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        for name, result in extra.items():
            log_to_mlflow(result, extra_files[name], prefix=name, artifact_path=f"evaluation/{name}")
        if warnings:
            mlflow.set_tag("domain_shift_warning", " | ".join(warnings)[:5000])
    client = tracking.client()
    name, version = run_info["registered_model"], run_info["registered_model_version"]
    for key in ("f1", "accuracy", "recall", "roc_auc"):
        client.set_model_version_tag(name, version, f"test_{key}", f"{test.metrics[key]:.4f}")
        if interval := format_interval(test.metrics, key):
            client.set_model_version_tag(name, version, f"test_{key}_ci95", interval)
    card = write_model_card(config, workspace, run_info, test, extra_summary)
    return {"test": test, "extra": extra, "warnings": warnings, "gallery": gallery, "card": card}


# what shaped the model (the download settings only say where the data came from)
CARD_PARAMS = {"data": {"source", "split", "seed", "max_per_class"}, "model": True, "train": True}
FAMILIARITY_KEYS = ("familiarity_auroc", "unfamiliar", "unfamiliar_fraction", "accuracy_unfamiliar", "accuracy_familiar")


def calibration_report(test: Evaluation, temperature: float, workspace: Path) -> list[Path]:
    """ECE on the test split with the folded temperature undone (before) and as served (after)."""
    before = calibration.rescale(test.y_prob, 1.0 / temperature)
    test.metrics["temperature"] = temperature
    test.metrics["ece_uncalibrated"] = calibration.expected_calibration_error(test.y_true, before)
    test.metrics["ece"] = calibration.expected_calibration_error(test.y_true, test.y_prob)
    after_rows = calibration.reliability(test.y_true, test.y_prob)
    atomic.write_text(workspace / RELIABILITY_CSV, csv_text(after_rows, ["bin", "predicted", "observed", "count"]))
    curves = {
        f"before scaling (ECE {test.metrics['ece_uncalibrated']:.3f})": calibration.reliability(test.y_true, before),
        f"after, T={temperature:.2f} (ECE {test.metrics['ece']:.3f})": after_rows,
    }
    plots.reliability_diagram(curves, workspace / RELIABILITY_PNG)
    return [workspace / RELIABILITY_CSV, workspace / RELIABILITY_PNG]


def familiarity_report(test: Evaluation, extra: dict[str, Evaluation]) -> None:
    """Flag counts per set, accuracy on flagged and unflagged images, and each extra set's AUROC vs the test split."""
    if test.familiarity is None:
        return
    for result in (test, *extra.values()):
        result.metrics.update(familiarity.flagged_report(result.familiarity, result.correct))
    for result in extra.values():
        result.metrics["familiarity_auroc"] = familiarity.separation(test.familiarity, result.familiarity)


def write_model_card(config: Config, workspace: Path, run_info: dict, test: Evaluation, extra: dict) -> Path:
    """The card into the registered version's description, as a report and as a run artifact."""
    name, version = run_info["registered_model"], str(run_info["registered_model_version"])
    text = model_card.render(
        name,
        version,
        tracking.flatten("", config.model_dump(mode="json", include=CARD_PARAMS)),
        model_card.data_version(workspace / paths.SPLIT_DIR),
        json_safe(test.metrics),
        {k: test.metrics.get(k) for k in ("threshold", "target_recall", "temperature", "ece", "ece_uncalibrated")},
        extra,
    )
    target = workspace / CARD_FILE
    atomic.write_text(target, text)
    tracking.client().update_model_version(name, version, description=text)
    with mlflow.start_run(run_id=run_info["run_id"]):
        mlflow.log_artifact(str(target), artifact_path="model_card")
    return target


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    """The metrics with their 95% intervals, then calibration and familiarity figures when present."""
    keys = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss", "tp", "fp", "tn", "fn", "n", "threshold")
    optional = ("target_recall", "temperature", "ece_uncalibrated", "ece", *FAMILIARITY_KEYS)
    print(title)
    for key in (*keys, *(k for k in optional if metrics.get(k) is not None)):
        value = metrics[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        interval = format_interval(metrics, key)
        print(f"  {key:<19} {text}" + (f"  95% CI {interval}" if interval else ""))


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
