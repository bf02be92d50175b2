"""Pure promotion rule: when may a challenger replace the champion?

Three conditions, each checkable by hand: the challenger's ``promote_metric`` beats the
champion's by at least ``min_improvement``; an exact McNemar test on the images the two
models disagree about says the difference is unlikely to be luck; and the same paired
test finds it significantly worse on no single source, so a gain on Mendeley cannot
buy a loss on bridge decks. A challenger adapted to a site's corrections is judged
where it was meant to improve (:func:`on_sites`): significantly better on a site, and
worse on no source, site or public.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

FLOAT_TOLERANCE = 1e-12
NO_TEST = 1.0  # registry.max_p_value at 1.0 turns the paired test off


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class McNemar:
    """Paired comparison on the same images: who is right where the two models disagree."""

    challenger_only: int  # images only the challenger labels correctly
    champion_only: int  # images only the champion labels correctly
    p_value: float  # exact two-sided McNemar (binomial test on the discordant pairs)

    @property
    def discordant(self) -> int:
        return self.challenger_only + self.champion_only


def mcnemar(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> McNemar:
    """Exact McNemar test: under "equally good", each disagreement is a fair coin toss."""
    a = np.asarray(challenger_correct, bool)
    b = np.asarray(champion_correct, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("both models must be scored on the same images")
    return mcnemar_from_counts(int(np.sum(a & ~b)), int(np.sum(~a & b)))


def mcnemar_from_counts(challenger_only: int, champion_only: int) -> McNemar:
    n = challenger_only + champion_only
    p = 1.0 if n == 0 else float(binomtest(min(challenger_only, champion_only), n, 0.5).pvalue)
    return McNemar(challenger_only, champion_only, min(p, 1.0))


def decide(
    challenger: float,
    champion: float | None,
    min_improvement: float,
    metric: str,
    paired: McNemar | None = None,
    max_p_value: float = NO_TEST,
) -> Decision:
    """Promote when there is no champion, or the challenger is better by ``min_improvement``
    and (unless ``max_p_value`` is 1) its disagreements with the champion favour it with
    McNemar p < ``max_p_value``.

    "Better" is strict: a tie never moves the alias, so equal models do not churn it.
    """
    if math.isnan(challenger):
        return Decision(False, f"challenger {metric} is undefined (NaN)")
    if champion is None:
        return Decision(True, f"no champion yet; challenger {metric}={challenger:.4f}")
    if math.isnan(champion):
        return Decision(True, f"champion {metric} is undefined; challenger {metric}={challenger:.4f}")
    gain = challenger - champion
    if not (gain > 0 and gain >= min_improvement - FLOAT_TOLERANCE):
        return Decision(
            False,
            f"challenger {metric}={challenger:.4f} vs champion {champion:.4f} ({gain:+.4f}); "
            f"needs an improvement of at least {min_improvement:g}",
        )
    better = f"challenger {metric}={challenger:.4f} beats champion {champion:.4f} by {gain:+.4f}"
    if max_p_value >= NO_TEST:
        return Decision(True, better + " (paired test off)")
    if paired is None:
        raise ValueError("max_p_value < 1 needs the paired McNemar result")
    evidence = (
        f"disagreements {paired.challenger_only} for the challenger, {paired.champion_only} for the champion, "
        f"McNemar p={paired.p_value:.4g}"
    )
    if paired.challenger_only > paired.champion_only and paired.p_value < max_p_value:
        return Decision(True, f"{better}; {evidence} < {max_p_value:g}")
    return Decision(False, f"{better}, but that may be luck: {evidence}; needs p < {max_p_value:g}")


@dataclass(frozen=True)
class SourceCheck:
    """One source's paired comparison: the row the decision prints and the version is tagged with."""

    source: str
    n: int
    challenger: float  # promote_metric on this source's images
    champion: float
    paired: McNemar

    def significantly_worse(self, max_p_value: float) -> bool:
        return self.paired.champion_only > self.paired.challenger_only and self.paired.p_value < max_p_value

    def verdict(self, max_p_value: float, min_improvement: float, metric: str) -> str:
        """``BETTER``, ``WORSE`` or ``ok``: the row's word, by the same paired test the decision uses."""
        if max_p_value >= NO_TEST:
            return "ok"
        if self.significantly_worse(max_p_value):
            return "WORSE"
        return "BETTER" if decide(self.challenger, self.champion, min_improvement, metric, self.paired, max_p_value).promote else "ok"


def on_sites(sites: list[SourceCheck], min_improvement: float, metric: str, max_p_value: float) -> Decision:
    """An adapted challenger: promote when :func:`decide` says it is better on at least one site's own test images.

    The whole test split would drown a site of a few dozen tiles among thousands of public
    ones; the source checks (:func:`with_source_checks`) then keep every other source safe.
    """
    if not sites:
        raise ValueError("on_sites needs the checks of at least one site")
    decisions = [(site, decide(site.challenger, site.champion, min_improvement, metric, site.paired, max_p_value)) for site in sites]
    said = "; ".join(f"site {site.source} (n={site.n}): {decision.reason}" for site, decision in decisions)
    return Decision(any(decision.promote for _, decision in decisions), said)


def source_regressions(checks: list[SourceCheck], max_p_value: float) -> list[SourceCheck]:
    """The sources where the challenger loses with McNemar p < ``max_p_value``; none with the test off."""
    if max_p_value >= NO_TEST:
        return []
    return [check for check in checks if check.significantly_worse(max_p_value)]


def with_source_checks(decision: Decision, checks: list[SourceCheck], max_p_value: float, metric: str) -> Decision:
    """A promotion stands only if no source got significantly worse; a refusal stays a refusal."""
    worse = source_regressions(checks, max_p_value)
    if not decision.promote or not worse:
        return decision
    named = "; ".join(
        f"{c.source}: {metric} {c.challenger:.4f} vs {c.champion:.4f}, disagreements {c.paired.challenger_only} "
        f"for the challenger, {c.paired.champion_only} for the champion, McNemar p={c.paired.p_value:.4g}"
        for c in worse
    )
    return Decision(False, f"{decision.reason}; but significantly worse on {named} (needs no source with p < {max_p_value:g})")
