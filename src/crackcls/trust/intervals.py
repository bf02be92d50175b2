"""95% intervals for test metrics: Wilson for proportions, a seeded bootstrap for F1 and ROC AUC.

A test split of a few dozen images makes a point estimate almost meaningless on its
own; the interval says how far the true figure could plausibly be from it.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Wilson intervals for these, from the confusion counts: (successes, trials) keys.
PROPORTIONS = {
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "precision": (("tp",), ("tp", "fp")),
    "recall": (("tp",), ("tp", "fn")),
}
BOOTSTRAPPED = ("f1", "roc_auc", "balanced_accuracy")


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval; (nan, nan) when there are no trials (the proportion is undefined)."""
    if trials <= 0:
        return math.nan, math.nan
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 per row of 2-D label arrays (rows are resamples); 0 where it is undefined, as sklearn."""
    tp = np.sum((y_true == 1) & (y_pred == 1), axis=1)
    fp = np.sum((y_true == 0) & (y_pred == 1), axis=1)
    fn = np.sum((y_true == 1) & (y_pred == 0), axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean of the two classes' recalls per row; rows holding one class are not defined (NaN)."""
    positives = np.sum(y_true == 1, axis=1)
    negatives = np.sum(y_true == 0, axis=1)
    hit = np.sum((y_true == 1) & (y_pred == 1), axis=1) / np.maximum(positives, 1)
    rejected = np.sum((y_true == 0) & (y_pred == 0), axis=1) / np.maximum(negatives, 1)
    return np.where((positives > 0) & (negatives > 0), (hit + rejected) / 2, np.nan)


def bootstrap(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of F1, ROC AUC and balanced accuracy over resamples of the images (with replacement).

    Resamples holding a single class have no ROC AUC or balanced accuracy and are left out of their intervals;
    with no usable resample the interval is (nan, nan).
    """
    y_true = np.asarray(y_true, int)
    y_prob = np.asarray(y_prob, float)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, y_true.size, size=(resamples, y_true.size))
    labels, probs = y_true[index], y_prob[index]
    predicted = (probs >= threshold).astype(int)
    f1 = _f1(labels, predicted)
    both = (labels.min(axis=1) == 0) & (labels.max(axis=1) == 1)
    balanced = _balanced_accuracy(labels[both], predicted[both])
    return {
        "f1": _percentiles(f1),
        "roc_auc": _percentiles(_auc(labels[both], probs[both])),
        "balanced_accuracy": _percentiles(balanced),
    }


def _auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC AUC per row (Mann-Whitney U from mid-ranks, so ties count one half, as sklearn)."""
    from scipy.stats import rankdata

    if labels.size == 0:
        return np.zeros(0)
    ranks = rankdata(probs, axis=1)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    u = np.sum(ranks * labels, axis=1) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def metric_intervals(
    y_true: np.ndarray, y_prob: np.ndarray, counts: dict[str, float], threshold: float, seed: int = BOOTSTRAP_SEED
) -> dict[str, float]:
    """Flat ``<metric>_ci_low`` / ``<metric>_ci_high`` keys, so ``dvc metrics diff`` and MLflow show them."""
    intervals = {
        name: wilson(int(sum(counts[k] for k in hits)), int(sum(counts[k] for k in trials)))
        for name, (hits, trials) in PROPORTIONS.items()
    }
    intervals.update(bootstrap(y_true, y_prob, threshold, seed=seed))
    flat: dict[str, float] = {}
    for name, (low, high) in intervals.items():
        flat[f"{name}_ci_low"] = low
        flat[f"{name}_ci_high"] = high
    return flat


def format_interval(metrics: dict[str, float], name: str) -> str:
    """``[0.812, 0.934]`` for a metric with an interval, else an empty string."""
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f"[{low:.3f}, {high:.3f}]"
