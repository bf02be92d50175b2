"""The decision threshold for a recall target, chosen on the validation split.

Inspectors think in "catch 99% of cracks"; a missed crack costs far more than a false
alarm. The rule: the highest threshold at which at least ``target`` of the
validation split's cracks score at or above it, i.e. the k-th highest crack
probability among validation cracks, k = ceil(target x cracks). The highest such
threshold gives up the least precision for the recall asked for. The test split is
never looked at, so its recall at this threshold is an honest estimate.
"""

from __future__ import annotations

import math

import numpy as np

from crackcls.util.errors import CrackclsError


def for_recall(y_true: np.ndarray, y_prob: np.ndarray, target: float) -> float:
    """The highest threshold t with recall(p >= t) >= ``target`` on these labels."""
    if not 0 < target <= 1:
        raise CrackclsError(f"target recall must be in (0, 1], got {target:g}")
    y_true = np.asarray(y_true, int)
    positives = np.sort(np.asarray(y_prob, np.float64)[y_true == 1])[::-1]
    if positives.size == 0:
        raise CrackclsError(
            "evaluate.target_recall needs crack images in the validation split; "
            "give data.split.val a share, or set evaluate.target_recall: null"
        )
    needed = math.ceil(target * positives.size - 1e-9)  # tolerance: 0.99 x 100 is 99, not 99.0000001
    return float(positives[needed - 1])


def recall_at(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> float:
    y_true = np.asarray(y_true, int)
    positives = np.asarray(y_prob)[y_true == 1]
    return float(np.mean(positives >= threshold)) if positives.size else float("nan")
