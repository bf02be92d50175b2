"""The set-level shift test: it fires on sets unlike every known source, and stays quiet on familiar ones."""

from __future__ import annotations

import numpy as np

from crackcls.trust import shift


def _validation(rng, n=600, scale=1.0):
    return scale * rng.lognormal(-0.6, 0.35, n)


def _known(rng, scale=1.0):
    """One source's validation scores by class, crack-free images less familiar than cracks."""
    return {0: _validation(rng, 300, 1.2 * scale), 1: _validation(rng, 300, scale)}


def test_sets_like_the_validation_images_rarely_fire():
    rng = np.random.default_rng(0)
    references = {"mendeley": _known(rng)}
    mixed = [np.r_[_validation(rng, 10, 1.2), _validation(rng, 10)] for _ in range(400)]
    fired = sum(shift.check_set(s, references, np.arange(20) >= 10).shifted for s in mixed)
    assert fired / 400 <= 0.03  # the level is 1%; give or take sampling


def test_a_crack_free_folder_is_compared_with_crack_free_images():
    """Most of a real site is crack-free: compared with a half-and-half mix it would look shifted."""
    rng = np.random.default_rng(5)
    references = {"mendeley": _known(rng)}
    folders = [_validation(rng, 200, 1.2) for _ in range(100)]
    fired = sum(shift.check_set(f, references, np.zeros(200, bool)).shifted for f in folders)
    assert fired / 100 <= 0.05
    pooled = {"mendeley": {0: np.concatenate(list(references["mendeley"].values()))}}
    assert sum(shift.check_set(f, pooled).shifted for f in folders) / 100 > 0.5  # what class-blind testing does


def test_sets_of_stranger_images_fire_with_a_clear_line():
    rng = np.random.default_rng(1)
    references = {"mendeley": {0: _validation(rng)}}
    sets = [_validation(rng, 20, scale=1.8) for _ in range(200)]
    fired = [shift.check_set(scores, references) for scores in sets]
    assert np.mean([t.shifted for t in fired]) >= 0.95
    line = fired[0].line("photos")
    assert line.startswith("SHIFT: these 20 photos are unlike the training data (KS p = ")
    ratio = np.median(sets[0]) / np.median(references["mendeley"][0])
    assert line.endswith(f"median familiarity {ratio:.1f}× validation); the test metrics do not cover them")
    assert fired[0].metrics()["shift"] == 1.0 and fired[0].metrics()["shift_p_value"] < shift.P_VALUE_LEVEL


def test_a_more_familiar_set_is_no_alarm():
    rng = np.random.default_rng(2)
    test = shift.check_set(_validation(rng, 200, scale=0.5), {"mendeley": {0: _validation(rng)}})
    assert test.tested and not test.shifted


def test_a_set_is_judged_against_the_closest_known_source():
    rng = np.random.default_rng(3)
    references = {"mendeley": {0: _validation(rng)}, "decks": {0: _validation(rng, scale=1.8)}}
    decks = shift.check_set(_validation(rng, 50, scale=1.8), references)
    assert not decks.shifted and decks.closest_source == "decks"
    assert shift.check_set(_validation(rng, 50, scale=1.8), {"mendeley": references["mendeley"]}).shifted


def test_too_small_a_set_is_said_to_be_too_small():
    rng = np.random.default_rng(4)
    small = shift.check_set(np.r_[_validation(rng, shift.MIN_IMAGES - 1), np.nan], {"a": {0: _validation(rng)}})
    assert not small.tested and not small.shifted and small.n == shift.MIN_IMAGES - 1
    assert "too few to test" in small.line() and small.metrics() == {"shift_n": float(shift.MIN_IMAGES - 1)}
    assert not shift.check_set(_validation(rng, 50), {}).tested  # nothing known to test against
