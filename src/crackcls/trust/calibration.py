"""Temperature scaling: make a predicted 0.9 mean "a crack 9 times in 10".

One number T, fitted on the validation split by minimising the log loss of
``sigmoid(logit / T)``, is folded into the model's final Dense layer (kernel and bias
divided by T), so every consumer of the saved ``.keras`` file (predict, the served
model, evaluate, Grad-CAM) gets calibrated probabilities with no extra step. T does
not move the ranking of images, so ROC AUC is unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from crackcls.util import atomic, plots
from crackcls.util.tables import csv_text

OUTPUT_LAYER = "crack_probability"  # the final Dense (sigmoid) layer in crackcls.model.build
ECE_BINS = 15
T_BOUNDS = (0.05, 20.0)
EPS = 1e-7


def _log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # log(1 + e^z) - y z, written to stay finite for large |z|
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``T_BOUNDS`` minimising validation log loss; 1.0 when the data cannot tell.

    A validation split the model separates perfectly drives the log loss towards 0 as T
    shrinks, so the optimum runs into the bound; sharpening that far would saturate the
    probabilities at exactly 0 and 1. An optimum at a bound therefore leaves T at 1.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.float64)
    if logits.size == 0 or len(np.unique(labels)) < 2:
        return 1.0
    low, high = (math.log(b) for b in T_BOUNDS)
    best = minimize_scalar(lambda log_t: _log_loss(logits, labels, math.exp(log_t)), bounds=(low, high), method="bounded")
    if min(best.x - low, high - best.x) < 0.01:  # within 1% of a bound: no interior optimum
        return 1.0
    return float(math.exp(best.x))


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def rescale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)``; with ``1 / T`` it undoes a folded temperature."""
    return sigmoid(logits_of(probabilities) / temperature)


def reliability(y_true: np.ndarray, y_prob: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width bin of predicted crack probability: mean prediction, crack rate, count."""
    y_true = np.asarray(y_true, np.float64)
    y_prob = np.asarray(y_prob, np.float64)
    index = np.minimum((y_prob * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {
                    "bin": b,
                    "predicted": float(y_prob[mask].mean()),
                    "observed": float(y_true[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return rows


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = ECE_BINS) -> float:
    """Count-weighted mean gap between predicted probability and observed crack rate per bin."""
    rows = reliability(y_true, y_prob, bins)
    total = sum(r["count"] for r in rows)
    if total == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["predicted"] - r["observed"]) for r in rows) / total)


def fold_into(model, temperature: float) -> None:  # noqa: ANN001 - a keras.Model
    """Divide the output layer's kernel and bias by T: the model now outputs ``sigmoid(logit / T)``."""
    layer = model.get_layer(OUTPUT_LAYER)
    layer.set_weights([w / temperature for w in layer.get_weights()])


def report(y_true: np.ndarray, y_prob: np.ndarray, temperature: float, csv_path: Path, png_path: Path) -> dict[str, float]:
    """ECE with the folded temperature undone (before) and as served (after); the reliability CSV and PNG.

    ``y_prob`` are the calibrated model's outputs on held-out images.
    """
    before = rescale(y_prob, 1.0 / temperature)
    figures = {
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(y_true, before),
        "ece": expected_calibration_error(y_true, y_prob),
    }
    after_rows = reliability(y_true, y_prob)
    atomic.write_text(csv_path, csv_text(after_rows, ["bin", "predicted", "observed", "count"]))
    curves = {
        f"before scaling (ECE {figures['ece_uncalibrated']:.3f})": reliability(y_true, before),
        f"after, T={temperature:.2f} (ECE {figures['ece']:.3f})": after_rows,
    }
    plots.reliability_diagram(curves, png_path)
    return figures
