"""The photo rule: regions that count, a score that agrees with the verdict, validation photos and the fit."""

from __future__ import annotations

import numpy as np
import pytest

from crackcls.trust import companions, photo_rule
from crackcls.trust.photo_rule import PhotoRule
from crackcls.util.errors import CrackclsError


def test_the_score_reaches_the_tile_threshold_exactly_when_a_region_counts():
    rng = np.random.default_rng(0)
    for _ in range(400):
        grid = rng.random((6, 7)) ** rng.uniform(0.5, 4)
        t = float(rng.uniform(0.2, 0.9))
        rule = PhotoRule(t, int(rng.integers(1, 5)), float(rng.uniform(t, 1.0)))
        for connectivity in (4, 8):
            crack = photo_rule.crack_mask(grid, rule, connectivity).any()
            assert crack == (photo_rule.photo_score(grid, rule, connectivity) >= t)


def test_a_lone_tile_is_noise_unless_it_is_sure():
    grid = np.zeros((5, 5))
    grid[0, 0] = 0.7  # a lone weak tile
    grid[4, 4] = 0.97  # a lone sure one
    grid[2, 1:4] = 0.8  # a run of three
    mask = photo_rule.crack_mask(grid, PhotoRule(0.6, 2, 0.95))
    assert mask.sum() == 4 and not mask[0, 0] and mask[4, 4] and mask[2, 1:4].all()
    assert photo_rule.crack_mask(grid, PhotoRule(0.6, 4)).sum() == 0


def test_bad_rules_are_refused():
    with pytest.raises(CrackclsError, match="peak_threshold"):
        PhotoRule(0.6, 2, 0.5)
    with pytest.raises(CrackclsError, match="min_region_tiles"):
        PhotoRule(0.6, 0)
    with pytest.raises(CrackclsError, match="not a photo rule"):
        PhotoRule.from_dict({"min_region_tiles": 2})


def test_validation_photos_draw_each_photo_from_one_parent():
    # two parents whose uncracked tiles a model reads differently, and a source without parents
    probabilities = np.array([0.1] * 20 + [0.3] * 20 + [0.9] * 10 + [0.05] * 20 + [0.95] * 10)
    labels = np.array([0] * 40 + [1] * 10 + [0] * 20 + [1] * 10)
    sources = ["decks"] * 50 + ["mendeley"] * 30
    parents = ["a"] * 20 + ["b"] * 20 + ["a"] * 5 + ["b"] * 5 + [""] * 30
    photos = photo_rule.validation_photos(probabilities, labels, sources, parents, photos=60, seed=1)
    assert set(photos.groups) == {"decks/a", "decks/b", "mendeley"}
    assert sum(g == "mendeley" for g in photos.groups) == 30  # sources take turns
    for grid, truth, group in zip(photos.probabilities, photos.truth, photos.groups):
        background = {"decks/a": 0.1, "decks/b": 0.3, "mendeley": 0.05}[group]
        assert np.all(grid[~truth] == background)
        assert np.all(grid[truth] == (0.95 if group == "mendeley" else 0.9))
    cracked = photos.truth.reshape(60, -1).any(axis=1)
    assert 0.6 < cracked.mean() < 0.9  # a quarter of them crack-free, on average
    with pytest.raises(CrackclsError, match="both cracked and uncracked"):
        photo_rule.validation_photos(probabilities[:40], labels[:40], sources[:40], parents[:40])


def test_fit_reaches_the_photo_recall_target_and_drops_lone_noisy_tiles():
    rng = np.random.default_rng(3)
    positives = rng.uniform(0.55, 1.0, 300)
    # uncracked tiles: mostly clear, one in ten scored like a crack (joints, holes, stains)
    negatives = np.where(rng.random(1500) < 0.1, rng.uniform(0.6, 0.95, 1500), rng.uniform(0.0, 0.45, 1500))
    probabilities = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(300, int), np.zeros(1500, int)])
    photos = photo_rule.validation_photos(probabilities, labels, ["s"] * 1800, [""] * 1800, seed=0)
    fitted = photo_rule.fit(photos, target_photo_recall=0.95)
    assert fitted.reached_target and fitted.metrics["photo_recall"] >= 0.95
    assert fitted.rule.min_region_tiles >= 2  # cracks run across tiles; the noise does not
    plain = photo_rule.evaluate_rule(photos, PhotoRule(fitted.rule.tile_threshold))
    assert fitted.metrics["fp_tiles_per_photo"] < plain["fp_tiles_per_photo"] / 2
    assert fitted.metrics["tile_f1"] > plain["tile_f1"]
    again = photo_rule.evaluate_rule(photos, fitted.rule)
    assert again["tile_f1"] == pytest.approx(fitted.metrics["tile_f1"]) and again["photo_recall"] == fitted.metrics["photo_recall"]


def test_the_fitted_rule_travels_in_the_decision_file(tmp_path):
    rule = {**PhotoRule(0.71, 3, 0.89).as_dict(), "validation": {"photo_recall": 0.977}}
    companions.write(tmp_path / "model.keras", companions.Companions(threshold=0.5, photo_rule=rule))
    assert companions.read(tmp_path / "model.keras").photo_rule == rule
    companions.write(tmp_path / "old.keras", companions.Companions(threshold=0.5))
    assert companions.read(tmp_path / "old.keras").photo_rule is None
