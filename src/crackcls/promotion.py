"""Pure promotion rule: when may a challenger replace the champion?"""

from __future__ import annotations

import math
from dataclasses import dataclass


FLOAT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: float, champion: float | None, min_improvement: float, metric: str) -> Decision:
    """Promote when there is no champion, or the challenger is better by ``min_improvement``.

    "Better" is strict: a tie never moves the alias, so equal models do not churn it.
    """
    if math.isnan(challenger):
        return Decision(False, f"challenger {metric} is undefined (NaN)")
    if champion is None:
        return Decision(True, f"no champion yet; challenger {metric}={challenger:.4f}")
    if math.isnan(champion):
        return Decision(True, f"champion {metric} is undefined; challenger {metric}={challenger:.4f}")
    gain = challenger - champion
    if gain > 0 and gain >= min_improvement - FLOAT_TOLERANCE:
        return Decision(True, f"challenger {metric}={challenger:.4f} beats champion {champion:.4f} by {gain:+.4f}")
    return Decision(
        False,
        f"challenger {metric}={challenger:.4f} vs champion {champion:.4f} ({gain:+.4f}); "
        f"needs an improvement of at least {min_improvement:g}",
    )
