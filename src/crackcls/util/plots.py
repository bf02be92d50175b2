"""PNG figures for people (DVC renders the CSV/JSON twins for comparisons)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from crackcls.util import atomic, paths  # noqa: E402


def _save(fig: plt.Figure, target: str | os.PathLike[str]) -> None:
    with atomic.atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def training_curves(history: Mapping[str, Sequence], target: str | os.PathLike[str]) -> None:
    """Loss and accuracy per epoch, a dotted line where each later phase (``history["phase"]``) starts."""
    phases = list(history.get("phase", []))
    starts = [(epoch, phases[epoch]) for epoch in range(1, len(phases)) if phases[epoch] != phases[epoch - 1]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, marker="o", label=key)
        for epoch, phase in starts:
            ax.axvline(epoch + 0.5, color="grey", linestyle=":", label=f"{phase.replace('_', ' ')} starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, target)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, target: str | os.PathLike[str], title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=[0, 1], display_labels=list(paths.LABELS), cmap="Blues", ax=ax, colorbar=False
    )
    ax.set_title(title or "Confusion matrix")
    _save(fig, target)


def roc_and_pr(y_true: np.ndarray, y_prob: np.ndarray, target: str | os.PathLike[str]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    RocCurveDisplay.from_predictions(y_true, y_prob, ax=axes[0], name="crack")
    PrecisionRecallDisplay.from_predictions(y_true, y_prob, ax=axes[1], name="crack")
    axes[0].set_title("ROC")
    axes[1].set_title("Precision-recall")
    _save(fig, target)


def reliability_diagram(curves: Mapping[str, Sequence[Mapping[str, float]]], target: str | os.PathLike[str]) -> None:
    """Observed crack rate against mean predicted probability per bin; on the diagonal is calibrated."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for label, rows in curves.items():
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", label=label)
    ax.set_xlabel("mean predicted crack probability")
    ax.set_ylabel("observed share of cracks")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability (test split)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, target)
