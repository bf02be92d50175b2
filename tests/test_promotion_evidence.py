"""Promotion on evidence: the exact McNemar test and the rule that uses it."""

from __future__ import annotations

import numpy as np
import pytest

from crackcls.trust.promotion import decide, mcnemar, mcnemar_from_counts


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (10, 0, 2 * 0.5**10),  # all 10 disagreements favour one model: p = 2 / 1024
        (5, 5, 1.0),
        (0, 0, 1.0),  # no disagreement: no evidence either way
        (7, 2, 0.1796875),  # 2 x P(X <= 2 | n = 9): (1 + 9 + 36) / 512 x 2
        (2, 7, 0.1796875),  # symmetric
    ],
)
def test_exact_mcnemar_on_known_tables(b, c, p):
    assert mcnemar_from_counts(b, c).p_value == pytest.approx(p)


def test_mcnemar_counts_only_the_images_the_models_disagree_on():
    challenger = np.array([1, 1, 1, 0, 0, 1, 1], bool)
    champion = np.array([1, 0, 0, 0, 1, 1, 0], bool)
    result = mcnemar(challenger, champion)
    assert (result.challenger_only, result.champion_only, result.discordant) == (3, 1, 4)
    with pytest.raises(ValueError):
        mcnemar(challenger, champion[:-1])


def test_a_small_gain_from_a_few_lucky_images_is_refused():
    # one image more right on a 45-image test split: better on paper, no evidence
    decision = decide(0.84, 0.82, 0.0, "f1", mcnemar_from_counts(2, 1), max_p_value=0.05)
    assert not decision.promote
    assert "McNemar p=" in decision.reason and "luck" in decision.reason


def test_a_consistent_gain_is_promoted():
    decision = decide(0.95, 0.85, 0.0, "f1", mcnemar_from_counts(20, 3), max_p_value=0.05)
    assert decision.promote
    assert "20 for the challenger, 3 for the champion" in decision.reason


def test_a_significant_difference_in_the_champion_s_favour_never_promotes():
    decision = decide(0.86, 0.85, 0.0, "f1", mcnemar_from_counts(1, 20), max_p_value=0.05)
    assert not decision.promote


def test_max_p_value_one_turns_the_test_off_and_min_improvement_still_applies():
    assert decide(0.84, 0.82, 0.0, "f1", mcnemar_from_counts(2, 1), max_p_value=1.0).promote
    assert not decide(0.95, 0.85, 0.2, "f1", mcnemar_from_counts(20, 3), max_p_value=0.05).promote


def test_the_first_champion_needs_no_test():
    assert decide(0.6, None, 0.0, "f1", None, max_p_value=0.05).promote


def test_the_job_pairs_the_two_models_image_by_image_at_their_own_thresholds():
    from crackcls.model.evaluation import Evaluation
    from crackcls.jobs.promote import paired_test

    y = np.array([1, 1, 0, 0, 1])
    challenger = Evaluation({}, ["a", "b", "c", "d", "e"], y, np.array([0.9, 0.35, 0.2, 0.1, 0.4]), threshold=0.3)
    # the champion saw the same images in another order, with a stricter threshold
    champion = Evaluation({}, ["e", "d", "c", "b", "a"], y[::-1], np.array([0.4, 0.6, 0.2, 0.35, 0.9]), threshold=0.5)
    result = paired_test(challenger, champion)
    # challenger right on a, b, c, d(0.1<0.3), e; champion right on a, c only (d: 0.6 >= 0.5 is wrong)
    assert (result.challenger_only, result.champion_only) == (3, 0)


def scored(paths, sources, y, correct, threshold=0.5):
    """An Evaluation whose answers are right exactly where ``correct`` says."""
    from crackcls.model.evaluation import Evaluation, source_metrics

    y = np.asarray(y)
    prob = np.where(np.asarray(correct), y, 1 - y).astype(float) * 0.8 + 0.1
    result = Evaluation({}, list(paths), y, prob, threshold, sources=list(sources))
    result.by_source = source_metrics(result)
    return result


def test_a_gain_overall_that_costs_one_source_significantly_is_refused():
    from crackcls.jobs.promote import paired_test, source_checks, source_rows
    from crackcls.trust.promotion import with_source_checks

    n_mendeley, n_decks = 400, 40
    paths = [f"m{i}" for i in range(n_mendeley)] + [f"d{i}" for i in range(n_decks)]
    sources = ["mendeley"] * n_mendeley + ["decks"] * n_decks
    y = np.arange(len(paths)) % 2
    # the champion misses 60 Mendeley images and no deck tile; the challenger gets Mendeley right, misses 15 decks
    champion = scored(paths, sources, y, [i >= 60 for i in range(n_mendeley)] + [True] * n_decks)
    challenger = scored(paths, sources, y, [True] * n_mendeley + [i >= 15 for i in range(n_decks)])

    overall = paired_test(challenger, champion)
    assert (overall.challenger_only, overall.champion_only) == (60, 15) and overall.p_value < 0.05
    first = decide(challenger.by_source["mendeley"]["accuracy"], 0.5, 0.0, "accuracy", overall, 0.05)
    assert first.promote
    checks = source_checks(challenger, champion, "accuracy")
    decks = next(c for c in checks if c.source == "decks")
    assert (decks.n, decks.paired.challenger_only, decks.paired.champion_only) == (40, 0, 15)
    assert decks.challenger == pytest.approx(25 / 40) and decks.champion == pytest.approx(1.0)
    final = with_source_checks(first, checks, 0.05, "accuracy")
    assert not final.promote and "significantly worse on decks" in final.reason
    rows = source_rows(checks, "accuracy", 0.05)
    assert any(r.startswith("decks") and r.endswith("WORSE") for r in rows)
    assert any(r.startswith("mendeley") and r.endswith("BETTER") for r in rows)  # 60 to 0: significantly better there
    # a smaller, insignificant loss on decks does not block the gain
    mild = scored(paths, sources, y, [True] * n_mendeley + [i >= 2 for i in range(n_decks)])
    assert with_source_checks(first, source_checks(mild, champion, "accuracy"), 0.05, "accuracy").promote
    # with the paired test off, only the overall rule applies
    assert with_source_checks(first, checks, 1.0, "accuracy").promote
