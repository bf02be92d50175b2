"""Is a whole set of images unlike the training data? A one-sided KS test of its familiarity scores.

One image's familiarity score is noisy; a folder's scores tell far more. The set's scores
are compared with the familiarity scores of the validation images stored with the model,
source by source and class by class: a set of deck tiles is judged against the deck tiles
the model saw, not against a mix, and a folder with no crack in it against crack-free
validation images. Each test is a one-sided two-sample Kolmogorov-Smirnov test (the set is
*less* familiar; a set that is more familiar is no alarm). A class of the set is called
unlike the training data only when it is unlike every known source, so its p-value is the
largest of the per-source ones; the classes' p-values are combined with Fisher's method.
The effect size is the ratio of the set's median score to the closest source's validation
median, for the set's largest class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

# Below this many scored images a set is too small to tell (the README's batches of 20).
MIN_IMAGES = 20
# A set whose p-value is below this is shifted.
P_VALUE_LEVEL = 0.01
# A predicted class with fewer images than this in a set is left out of its test.
MIN_CLASS_IMAGES = 5


@dataclass(frozen=True)
class ShiftTest:
    """The set-level familiarity test of one set of images."""

    n: int  # scored images in the set
    p_value: float | None  # None when the set is too small to tell
    statistic: float | None  # the largest KS distance of a class to its closest known source
    median_ratio: float | None  # the largest class's median score over its closest source's validation median
    closest_source: str | None  # the known source the set resembles most (None when the model knows one)
    level: float = P_VALUE_LEVEL
    min_images: int = MIN_IMAGES

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def shifted(self) -> bool:
        return self.p_value is not None and self.p_value < self.level

    def as_dict(self) -> dict:
        return {**asdict(self), "tested": self.tested, "shifted": self.shifted}

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow and metrics.json (empty when the set was too small to test)."""
        if not self.tested:
            return {"shift_n": float(self.n)}
        return {
            "shift_n": float(self.n),
            "shift_p_value": float(self.p_value),
            "shift_statistic": float(self.statistic),
            "shift_median_ratio": float(self.median_ratio),
            "shift": float(self.shifted),
        }

    def line(self, what: str = "images") -> str:
        """One sentence for a person: SHIFT, no shift, or too few to tell."""
        if not self.tested:
            return (
                f"shift test: {self.n} {what} are too few to test for a shift from the training data "
                f"(at least {self.min_images} needed)"
            )
        detail = (
            f"KS p = {self.p_value:.2g}, median familiarity {self.median_ratio:.1f}× validation"
            f"{'' if self.closest_source in (None, '') else f' of the closest source, {self.closest_source}'}"
        )
        if self.shifted:
            return f"SHIFT: these {self.n} {what} are unlike the training data ({detail}); the test metrics do not cover them"
        return f"shift test: these {self.n} {what} look like the training data ({detail})"


def check_set(
    scores: np.ndarray, references: Mapping[str, Mapping[int, np.ndarray]], predicted: np.ndarray | None = None
) -> ShiftTest:
    """Test ``scores`` (one set's familiarity scores) against each source's validation scores, class by class.

    ``references``: source → class (1: crack) → validation scores. ``predicted``: the set's predicted
    classes. A folder of a real site is mostly crack-free, unlike a validation split; so each
    predicted class is compared with the validation images of that class (classes with fewer than
    :data:`MIN_CLASS_IMAGES` images in the set are left out), and the classes' p-values are combined
    with Fisher's method.
    """
    from scipy.stats import combine_pvalues, ks_2samp

    values = np.asarray(scores, np.float64)
    classes = np.zeros(len(values), int) if predicted is None else np.asarray(predicted, int)
    finite = np.isfinite(values)
    values, classes = values[finite], classes[finite]
    known = {
        name: {int(c): np.asarray(ref, np.float64) for c, ref in by_class.items() if len(ref)}
        for name, by_class in references.items()
    }
    known = {name: by_class for name, by_class in known.items() if by_class}
    untested = ShiftTest(len(values), None, None, None, None)
    if len(values) < MIN_IMAGES or not known:
        return untested
    per_class = []  # (p-value, statistic, source, median ratio, images) per predicted class
    for c in np.unique(classes):
        part = values[classes == c]
        if len(part) < MIN_CLASS_IMAGES:
            continue
        best = None
        for name, by_class in known.items():
            reference = by_class.get(int(c), np.concatenate(list(by_class.values())))  # a class it never saw: all
            # alternative "less": the set's CDF lies below the reference's, i.e. its scores are larger
            result = ks_2samp(part, reference, alternative="less")
            if best is None or result.pvalue > best[0]:
                median = float(np.median(reference))
                ratio = float(np.median(part)) / median if median > 0 else math.inf
                best = (float(result.pvalue), float(result.statistic), name, ratio, len(part))
        per_class.append(best)
    if not per_class:
        return untested
    p_value = per_class[0][0] if len(per_class) == 1 else float(combine_pvalues([b[0] for b in per_class], method="fisher").pvalue)
    largest = max(per_class, key=lambda b: b[4])
    statistic = max(b[1] for b in per_class)
    return ShiftTest(len(values), p_value, statistic, largest[3], largest[2] if len(known) > 1 else None)
