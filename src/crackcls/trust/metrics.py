"""Pure classification metrics from labels and crack probabilities (scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1, ROC AUC, log loss and confusion counts.

    Balanced accuracy (the mean of the two classes' recalls) is the figure to compare
    across sources whose classes are uneven, such as SDNET2018's; with one class present
    it is that class's recall.

    ROC AUC is NaN-free: with a single class present it is reported as null-equivalent
    ``None`` by the caller's JSON, so here it becomes ``float('nan')`` only in memory.
    """
    y_true = np.asarray(y_true, dtype=int)
    raw = np.asarray(y_prob, dtype=float)
    if y_true.shape != raw.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError("y_true and y_prob must be equal-length, non-empty 1-D arrays")
    y_pred = (raw >= threshold).astype(int)  # the unclipped probability, as predict labels it
    y_prob = np.clip(raw, 1e-7, 1 - 1e-7)  # clipped for the log loss only
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y_true)) == 2
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(tp, fp, tn, fn),
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, y_prob)) if both_classes else math.nan,
        "loss": float(skm.log_loss(y_true, y_prob, labels=[0, 1])),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "n": int(y_true.size),
        "threshold": float(threshold),
    }


def _balanced_accuracy(tp: int, fp: int, tn: int, fn: int) -> float:
    recalls = [hits / total for hits, total in ((tp, tp + fn), (tn, tn + fp)) if total]
    return float(sum(recalls) / len(recalls))


# the figures shown per source (printed report, model card)
SOURCE_HEADLINE = ("accuracy", "balanced_accuracy", "recall", "precision", "roc_auc")


def json_safe(values: dict[str, float]) -> dict[str, float | None]:
    """NaN is not JSON; DVC and MLflow get null (or nothing) instead."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def roc_points(y_true: np.ndarray, y_prob: np.ndarray) -> list[dict[str, float]]:
    fpr, tpr, thresholds = skm.roc_curve(y_true, y_prob)
    return [{"fpr": float(f), "tpr": float(t), "threshold": float(min(th, 1.0))} for f, t, th in zip(fpr, tpr, thresholds)]


def pr_points(y_true: np.ndarray, y_prob: np.ndarray) -> list[dict[str, float]]:
    precision, recall, thresholds = skm.precision_recall_curve(y_true, y_prob)
    thresholds = np.append(thresholds, 1.0)
    return [
        {"recall": float(r), "precision": float(p), "threshold": float(th)}
        for p, r, th in zip(precision, recall, thresholds)
    ]
