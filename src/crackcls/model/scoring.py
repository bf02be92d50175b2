"""What every scoring path shares, with no TensorFlow: labels, per-file results, the set's shift test.

The Keras path (:mod:`crackcls.model.inference`) and the ONNX Runtime path
(:mod:`crackcls.model.portable`) both return :class:`Scores` and label with :func:`label_for`,
so a file gets the same answer whichever runtime scored it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackcls.data.images import UnreadableImage, load_rgb
from crackcls.trust import companions, shift

# Predicted labels, as ``crackcls predict`` and the served model name them.
CRACK = "crack"


NO_CRACK = "no_crack"


def label_for(probability: float, threshold: float) -> str:
    """The same rule as the metrics: a probability at or above the threshold is a crack."""
    return CRACK if probability >= threshold else NO_CRACK


@dataclass
class Scores:
    """Per-file results of a ``score_files``, in input order."""

    probabilities: np.ndarray  # NaN where the file could not be read
    reasons: list[str | None]  # why a file was skipped (an images.REASONS entry); None if scored
    familiarity: np.ndarray | None = None  # crackcls.trust.familiarity score (NaN where skipped); None without a familiarity reference


def familiarity_references(model) -> dict[str, dict[int, np.ndarray]] | None:  # noqa: ANN001 - a keras.Model or a PortableModel
    """Per known source and class, the validation images' familiarity scores; None when the model has no reference."""
    reference = companions.of(model).familiarity
    return None if reference is None else reference.validation_scores()


def set_shift(
    model, familiarity_scores: np.ndarray | None, predicted_crack: np.ndarray | None  # noqa: ANN001
) -> shift.ShiftTest | None:
    """The set-level shift test of one set's familiarity scores and predicted classes; None without a reference."""
    references = familiarity_references(model)
    if references is None or familiarity_scores is None:
        return None
    return shift.check_set(familiarity_scores, references, predicted_crack)


def unreadable_reason(path: str | Path, size: int) -> str:
    """Why :func:`crackcls.data.images.load_rgb` refuses ``path``."""
    try:
        load_rgb(path, size)
    except UnreadableImage as exc:
        return exc.reason
    return "could not be decoded"  # failed in the pipeline, yet decodes now: changed meanwhile
