"""Score a model on a labelled set and write the reports DVC and MLflow show.

Shared by the DVC ``evaluate`` stage (test split), ``crackcls evaluate`` (any model,
any labelled folder) and promotion (both aliases on the same test split). Every
metric comes with its 95% interval (:mod:`crackcls.trust.intervals`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from crackcls.data.images import SkipReport, dataset_folders, iter_images
from crackcls.data.splitting import Item
from crackcls.model.inference import score_files
from crackcls.trust import familiarity, intervals, shift
from crackcls.trust.metrics import SOURCE_HEADLINE, classification_metrics, json_safe, pr_points, roc_points
from crackcls.util import atomic, paths, plots, progress
from crackcls.util.errors import CrackclsError
from crackcls.util.tables import csv_text

# A recall this far below the test split's means the model does not transfer.
RECALL_DROP_WARNING = 0.2
FAMILIARITY_KEYS = (
    "familiarity_auroc", "unfamiliar", "unfamiliar_fraction", "accuracy_unfamiliar", "accuracy_familiar",
    "shift_n", "shift_p_value", "shift_statistic", "shift_median_ratio", "shift",
)  # fmt: skip
SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "n")  # an extra set's figures in metrics.json


@dataclass
class Evaluation:
    metrics: dict[str, float]
    paths: list[str]
    y_true: np.ndarray
    y_prob: np.ndarray
    threshold: float
    skipped: SkipReport = field(default_factory=SkipReport)
    familiarity: np.ndarray | None = None  # per kept image; None when the model has no familiarity reference
    sources: list[str] = field(default_factory=list)  # per kept image, where the items name one
    by_source: dict[str, dict[str, float]] = field(default_factory=dict)  # each source's metrics and intervals
    shift: shift.ShiftTest | None = None  # the set-level familiarity test, when the model has a reference

    @property
    def correct(self) -> np.ndarray:
        """Per image: does the label at ``threshold`` match the truth?"""
        return (self.y_prob >= self.threshold).astype(int) == self.y_true


def evaluate_items(
    model: keras.Model, items: list[Item], threshold: float, batch_size: int, base: Path | None = None
) -> Evaluation:
    if not items:
        raise CrackclsError("nothing to evaluate: the image list is empty")
    with progress.bar(len(items), "evaluate", min_total=batch_size) as bar:
        scores = score_files(model, [it.path for it in items], batch_size, base, progress=bar.update)
    skipped = SkipReport()
    for item, reason in zip(items, scores.reasons):
        if reason is not None:
            skipped.add(item.path, reason)
    ok = np.array([reason is None for reason in scores.reasons])
    kept = [it for it, good in zip(items, ok) if good]
    if not kept:
        raise CrackclsError("no image could be read; see the skipped list")
    y_true = np.asarray([it.label for it in kept], int)
    y_prob = scores.probabilities[ok]
    metrics = classification_metrics(y_true, y_prob, threshold)
    metrics.update(intervals.metric_intervals(y_true, y_prob, metrics, threshold))
    familiar = None if scores.familiarity is None else scores.familiarity[ok]
    sources = [it.source for it in kept] if any(it.source for it in kept) else []
    result = Evaluation(metrics, [it.path for it in kept], y_true, y_prob, threshold, skipped, familiar, sources)
    result.by_source = source_metrics(result)
    return result


def source_metrics(result: Evaluation) -> dict[str, dict[str, float]]:
    """Every metric with its interval for each source, from the same predictions as the overall figures."""
    if not result.sources:
        return {}
    names = np.asarray(result.sources)
    found: dict[str, dict[str, float]] = {}
    for name in sorted(set(result.sources)):
        mask = names == name
        y_true, y_prob = result.y_true[mask], result.y_prob[mask]
        metrics = classification_metrics(y_true, y_prob, result.threshold)
        metrics.update(intervals.metric_intervals(y_true, y_prob, metrics, result.threshold))
        found[name] = metrics
    return found


def labelled_folder(folder: Path) -> list[Item]:
    """Items from a folder holding Positive/ and Negative/ (searched recursively), or sub-folders that each do.

    Each sub-folder of a folder of datasets (SDNET2018's ``decks/``, ``walls/``, ...) is a
    source, so its metrics are reported on their own.
    """
    subsets = dataset_folders(folder)
    roots = subsets.items() if subsets else [("", folder)]
    for _, root in roots:
        missing = [name for name in paths.LABELS if not (root / name).is_dir()]
        if missing:
            raise CrackclsError(f"{root} must hold Positive/ and Negative/ subfolders (missing: {', '.join(missing)})")
    items = [
        Item(str(p.resolve()), label, "", source)
        for source, root in roots
        for label, name in enumerate(paths.LABELS)
        for p in iter_images(root / name)
    ]
    if not items:
        raise CrackclsError(f"{folder} holds no images under Positive/ or Negative/")
    return items


REPORT_FILES = {
    "metrics": "metrics.json",
    "predictions": "predictions.csv",
    "roc": "roc.csv",
    "pr": "precision_recall.csv",
    "confusion_png": "confusion_matrix.png",
    "curves_png": "roc_pr.png",
    "skipped": "skipped.json",
}


SOURCES_DIR = "sources"  # per-source confusion matrices, beside the reports


def write_reports(result: Evaluation, out_dir: Path, extra: dict | None = None) -> dict[str, Path]:
    """Metrics JSON, per-image predictions (DVC confusion template), ROC/PR CSVs and PNGs."""
    out = {key: out_dir / name for key, name in REPORT_FILES.items()}
    per_source = {name: json_safe(values) for name, values in result.by_source.items()}
    atomic.write_json(out["metrics"], {**json_safe(result.metrics), **({"sources": per_source} if per_source else {}), **(extra or {})})
    y_pred = (result.y_prob >= result.threshold).astype(int)
    predictions = [
        {
            "path": p,
            "actual": paths.LABELS[t],
            "predicted": paths.LABELS[y],
            "crack_probability": f"{prob:.6f}",
        }
        for p, t, y, prob in zip(result.paths, result.y_true, y_pred, result.y_prob)
    ]
    columns = ["path", "actual", "predicted", "crack_probability"]
    if result.sources:
        columns.insert(1, "source")
        for row, source in zip(predictions, result.sources):
            row["source"] = source
    if result.familiarity is not None:
        columns.append("familiarity")
        for row, score in zip(predictions, result.familiarity):
            row["familiarity"] = f"{score:.4f}"
    atomic.write_text(out["predictions"], csv_text(predictions, columns))
    both = len(np.unique(result.y_true)) == 2
    roc = roc_points(result.y_true, result.y_prob) if both else []
    pr = pr_points(result.y_true, result.y_prob) if both else []
    atomic.write_text(out["roc"], csv_text(roc, ["fpr", "tpr", "threshold"]))
    atomic.write_text(out["pr"], csv_text(pr, ["recall", "precision", "threshold"]))
    plots.confusion_matrix(result.y_true, y_pred, out["confusion_png"])
    if both:
        plots.roc_and_pr(result.y_true, result.y_prob, out["curves_png"])
    else:
        out.pop("curves_png")
    atomic.write_json(out["skipped"], result.skipped.as_dict())
    out.update(write_source_confusions(result, out_dir / SOURCES_DIR))
    return out


def write_source_confusions(result: Evaluation, folder: Path) -> dict[str, Path]:
    """One confusion-matrix PNG per source; the folder is replaced whole, so no stale source lingers."""
    if not result.sources:
        return {}
    names = np.asarray(result.sources)
    y_pred = (result.y_prob >= result.threshold).astype(int)
    written: dict[str, Path] = {}
    with atomic.atomic_dir(folder) as staging:
        for name in result.by_source:
            mask = names == name
            plots.confusion_matrix(result.y_true[mask], y_pred[mask], staging / f"{name}_confusion.png", title=name)
            written[f"confusion_{name}"] = folder / f"{name}_confusion.png"
    return written


GALLERY_FILE = "error_gallery.png"
GALLERY_PER_KIND = 4


def worst_mistakes(result: Evaluation, per_kind: int = GALLERY_PER_KIND) -> dict[str, list[int]]:
    """Indices of the most confident false positives and false negatives, worst first.

    These are the mistakes a reviewer should look at: the model was sure and wrong.
    """
    predicted = result.y_prob >= result.threshold
    false_pos = np.flatnonzero(predicted & (result.y_true == 0))
    false_neg = np.flatnonzero(~predicted & (result.y_true == 1))
    return {
        "false positives": false_pos[np.argsort(-result.y_prob[false_pos], kind="stable")][:per_kind].tolist(),
        "false negatives": false_neg[np.argsort(result.y_prob[false_neg], kind="stable")][:per_kind].tolist(),
    }




def add_set_familiarity(result: Evaluation, references: dict[str, dict[int, np.ndarray]] | None) -> None:
    """One set's flag counts, accuracy on flagged and unflagged images, and its set-level shift test."""
    if result.familiarity is None:
        return
    result.metrics.update(familiarity.flagged_report(result.familiarity, result.correct))
    if references:
        result.shift = shift.check_set(result.familiarity, references, result.y_prob >= result.threshold)
        result.metrics.update(result.shift.metrics())


def add_familiarity(
    test: Evaluation, extra: dict[str, Evaluation], references: dict[str, dict[int, np.ndarray]] | None
) -> None:
    """:func:`add_set_familiarity` for every set, and each extra set's AUROC vs the test split."""
    if test.familiarity is None:
        return
    for result in (test, *extra.values()):
        add_set_familiarity(result, references)
    for result in extra.values():
        result.metrics["familiarity_auroc"] = familiarity.separation(test.familiarity, result.familiarity)


def domain_shift_warnings(test: Evaluation, extra: dict[str, Evaluation]) -> list[str]:
    """A line per set the shift test calls shifted, and per extra set whose recall lies ``RECALL_DROP_WARNING``
    or more below the test split's."""
    warnings = [
        f"{name}: {result.shift.line()}"
        for name, result in {"test split": test, **extra}.items()
        if result.shift is not None and result.shift.shifted
    ]
    for name, result in extra.items():
        drop = test.metrics["recall"] - result.metrics["recall"]
        if drop >= RECALL_DROP_WARNING:
            warnings.append(
                f"DOMAIN SHIFT: recall on '{name}' is {result.metrics['recall']:.3f}, "
                f"{drop:.3f} below the test split's {test.metrics['recall']:.3f}; "
                "do not trust this model on that kind of surface without retraining on it"
            )
    return warnings


def summary(result: Evaluation) -> dict:
    """An extra set's headline figures with their intervals, and its familiarity figures."""
    return json_safe(
        {k: v for k, v in result.metrics.items() if k.split("_ci_")[0] in SUMMARY_KEYS or k in FAMILIARITY_KEYS}
    )


def metrics_text(title: str, metrics: dict[str, float]) -> str:
    """The metrics with their 95% intervals, then calibration and familiarity figures when present."""
    keys = (
        "accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "loss", "tp", "fp", "tn", "fn", "n",
        "threshold",
    )
    optional = ("target_recall", "temperature", "ece_uncalibrated", "ece", *FAMILIARITY_KEYS)
    lines = [title]
    for key in (*keys, *(k for k in optional if metrics.get(k) is not None)):
        value = metrics[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        interval = intervals.format_interval(metrics, key)
        lines.append(f"  {key:<19} {text}" + (f"  95% CI {interval}" if interval else ""))
    return "\n".join(lines)


def sources_text(by_source: dict[str, dict[str, float]]) -> str:
    """One row per source: n and each headline metric with its 95% interval."""
    if not by_source:
        return ""
    header = f"  {'source':<12} {'n':>6}  " + "  ".join(f"{key:<25}" for key in SOURCE_HEADLINE)
    lines = ["per source (95% intervals)", header.rstrip()]
    for name, metrics in by_source.items():
        cells = []
        for key in SOURCE_HEADLINE:
            value = metrics.get(key)
            text = "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
            interval = intervals.format_interval(metrics, key)
            cells.append(f"{text} {interval}".strip().ljust(25))
        lines.append(f"  {name:<12} {metrics['n']:>6}  " + "  ".join(cells).rstrip())
    return "\n".join(lines)
