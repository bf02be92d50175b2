"""DVC stage ``evaluate``: score the trained model on the test split (and any extra sets).

Writes ``reports/metrics.json`` (DVC metrics), per-image predictions for DVC's
``confusion`` template, ROC and precision-recall curves, a gallery of the most
confident mistakes with Grad-CAM overlays (``reports/error_gallery.png``), and logs
all of it into the training run in MLflow. ``evaluate.extra_sets`` folders are scored beside the
test split so that domain shift (a new kind of concrete) shows at a glance.

Every metric carries a 95% interval (:mod:`crackcls.trust.intervals`); the threshold is the one
stored with the model when ``evaluate.target_recall`` is set; the calibration before and
after temperature scaling goes to ``reports/reliability.{csv,png}``; the familiarity score
is checked against each extra set, and each set is tested as a whole for a shift from the
training data (:mod:`crackcls.trust.shift`); and the registered version gets its model card.
"""

from __future__ import annotations

import json
from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.data import manifest
from crackcls.model.evaluation import (
    GALLERY_FILE,
    Evaluation,
    add_familiarity,
    domain_shift_warnings,
    evaluate_items,
    labelled_folder,
    metrics_text,
    sources_text,
    summary,
    write_reports,
)
from crackcls.model.inference import familiarity_references, load_model_file
from crackcls.photos.gradcam import write_error_gallery
from crackcls.tracking import registry, store
from crackcls.trust import calibration, companions, model_card
from crackcls.trust.metrics import json_safe
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError, user_errors_exit

EXTRA_DIR = paths.REPORTS_DIR / "extra"
RELIABILITY_CSV = paths.REPORTS_DIR / "reliability.csv"
RELIABILITY_PNG = paths.REPORTS_DIR / "reliability.png"
CARD_FILE = paths.REPORTS_DIR / model_card.CARD_FILE
# what shaped the model (the download settings only say where the data came from)
CARD_PARAMS = {"data": {"sources", "split", "seed", "max_per_class"}, "model": True, "train": True}


def set_name(folder: str) -> str:
    return Path(folder.rstrip("/")).name or "extra"


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
    test.metrics["target_recall"] = config.evaluate.target_recall
    temperature = companions.of(model).temperature
    reliability = [workspace / RELIABILITY_CSV, workspace / RELIABILITY_PNG]
    test.metrics.update(calibration.report(test.y_true, test.y_prob, temperature, *reliability))
    add_familiarity(test, extra, familiarity_references(model))
    warnings = domain_shift_warnings(test, extra)

    extra_summary = {name: summary(result) for name, result in extra.items()}
    files = write_reports(test, workspace / paths.REPORTS_DIR, extra={"extra_sets": extra_summary} if extra else None)
    extra_files = {name: (r, write_reports(r, workspace / EXTRA_DIR / name)) for name, r in extra.items()}
    atomic.write_json(workspace / paths.REPORTS_DIR / "domain_shift.json", {"warnings": warnings})
    gallery = write_error_gallery(model, test, workspace / paths.REPORTS_DIR / GALLERY_FILE, base=workspace)
    registry.log_evaluation(run_info["run_id"], test, files, extra_files, [gallery, *reliability], warnings)

    name, version = run_info["registered_model"], str(run_info["registered_model_version"])
    registry.tag_version_with_test_metrics(name, version, test.metrics, test.by_source)
    card = workspace / CARD_FILE
    card_text = model_card_text(config, workspace, name, version, test, extra_summary, companions.of(model).photo_rule)
    atomic.write_text(card, card_text)
    registry.publish_model_card(name, version, run_info["run_id"], card)
    return {"test": test, "extra": extra, "warnings": warnings, "gallery": gallery, "card": card}


def model_card_text(
    config: Config, workspace: Path, name: str, version: str, test: Evaluation, extra: dict, photo_rule: dict | None = None
) -> str:
    metrics = test.metrics
    return model_card.render(
        name,
        version,
        store.flatten("", config.model_dump(mode="json", include=CARD_PARAMS)),
        model_card.data_version(workspace / paths.SPLIT_DIR),
        json_safe(metrics),
        {k: metrics.get(k) for k in ("threshold", "target_recall", "temperature", "ece", "ece_uncalibrated")},
        extra,
        {source: json_safe(values) for source, values in test.by_source.items()},
        photo_rule,
    )


@user_errors_exit
def main() -> None:
    result = run(load_config(), paths.workspace_root())
    print(metrics_text("test split", result["test"].metrics))
    if table := sources_text(result["test"].by_source):
        print(table)
    for name, r in result["extra"].items():
        print(metrics_text(f"extra set '{name}'", r.metrics))
        if r.shift is not None:
            print(f"  {r.shift.line()}")
    for warning in result["warnings"]:
        print(warning)


if __name__ == "__main__":
    main()
