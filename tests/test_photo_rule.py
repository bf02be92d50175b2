"""The photo rule: regions that count, a score that agrees with the verdict, validation photos and the fit."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from crackcls.photos import photo_rule
from crackcls.photos.photo_rule import PhotoRule
from crackcls.trust import companions
from crackcls.util.errors import CrackclsError


def test_the_score_reaches_the_tile_threshold_exactly_when_a_region_counts():
    rng = np.random.default_rng(0)
    for _ in range(400):
        grid = rng.random((6, 7)) ** rng.uniform(0.5, 4)
        t = float(rng.uniform(0.2, 0.9))
        margin = [None, 0.0, 0.1, 0.3][int(rng.integers(4))]
        rule = PhotoRule(t, int(rng.integers(1, 5)), float(rng.uniform(t, 1.0)), margin)
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


def test_a_texture_all_over_a_photo_is_not_a_crack_under_a_background_margin():
    textured = np.full((6, 8), 0.8)  # a surface the model misreads everywhere
    textured[2, 1:6] = 0.97  # and a crack through it
    plain = np.full((6, 8), 0.1)
    plain[3, 2:5] = 0.7
    rule, margined = PhotoRule(0.6), PhotoRule(0.6, background_margin=0.1)
    assert photo_rule.crack_mask(textured, rule).all()  # every tile a crack tile
    mask = photo_rule.crack_mask(textured, margined)
    assert mask.sum() == 5 and mask[2, 1:6].all()  # only the crack stands out from its photo
    assert not photo_rule.crack_mask(np.full((6, 8), 0.8), margined).any()  # the texture alone: no crack
    # a photo whose median is far below the threshold reads exactly as without the margin
    assert (photo_rule.crack_mask(plain, margined) == photo_rule.crack_mask(plain, rule)).all()
    assert photo_rule.photo_score(plain, margined) == photo_rule.photo_score(plain, rule)


def test_rules_with_and_without_a_margin_round_trip_and_old_ones_still_read():
    rule = PhotoRule(0.4, 4, 0.63, 0.2)
    assert PhotoRule.from_dict(rule.as_dict()) == rule
    assert PhotoRule.from_dict({"tile_threshold": 0.5, "min_region_tiles": 2, "peak_threshold": 0.9}).background_margin is None
    with pytest.raises(CrackclsError, match="background_margin"):
        PhotoRule(0.5, background_margin=1.5)


def _photos(grids: list[np.ndarray], truths: list[np.ndarray]) -> photo_rule.ValidationPhotos:
    return photo_rule.ValidationPhotos(np.stack(grids), np.stack(truths), [str(i) for i in range(len(grids))])


def test_the_fit_chooses_a_margin_where_validation_photos_need_one():
    grids, truths = [], []
    for n in range(40):
        textured, cracked = n % 2 == 0, n % 4 < 3
        grid = np.full((6, 8), 0.8 if textured else 0.1)
        truth = np.zeros((6, 8), bool)
        if cracked:
            truth[n % 6, 1:5] = True
            grid[truth] = 0.95 if textured else 0.7  # a crack on a plain surface scores below the texture
        grids.append(grid)
        truths.append(truth)
    photos = _photos(grids, truths)
    fitted = photo_rule.fit(photos, target_photo_recall=0.95)
    assert fitted.reached_target and fitted.rule.background_margin is not None
    assert fitted.metrics["tile_f1"] == 1.0 and fitted.metrics["photo_false_alarm_rate"] == 0.0
    unmargined = PhotoRule(fitted.rule.tile_threshold, fitted.rule.min_region_tiles, fitted.rule.peak_threshold)
    assert photo_rule.evaluate_rule(photos, unmargined)["tile_f1"] < 0.5


def test_a_rule_that_calls_every_crack_free_photo_crack_never_reaches_the_target():
    # a model that cannot tell the crack tiles from the others: finding 95% of cracked photos means calling all of them
    grids = [np.full((6, 8), 0.5) for _ in range(20)]
    truths = [np.zeros((6, 8), bool) for _ in range(20)]
    for truth in truths[:15]:
        truth[2, 2:5] = True
    fitted = photo_rule.fit(_photos(grids, truths), target_photo_recall=0.95)
    assert not fitted.reached_target


def test_short_of_the_target_the_fit_keeps_the_rule_that_separates_photos_not_one_that_calls_all_crack():
    # 6 of 20 cracks score as the surface does: finding 95% of cracked photos means flagging every crack-free one
    grids, truths = [], []
    for n in range(30):
        grid, truth = np.full((6, 8), 0.2), np.zeros((6, 8), bool)
        if n < 20:
            truth[n % 6, 2:6] = True
            grid[truth] = 0.8 if n < 14 else 0.2
        grids.append(grid)
        truths.append(truth)
    fitted = photo_rule.fit(_photos(grids, truths), target_photo_recall=0.95)
    assert not fitted.reached_target
    assert fitted.metrics["photo_false_alarm_rate"] == 0.0 and fitted.metrics["photo_recall"] == pytest.approx(0.7)
    assert fitted.metrics["tile_precision"] == 1.0  # the 56 tiles it can see, and nothing else


def test_photos_of_different_shapes_fit_and_score_as_the_same_photos_in_one_array():
    # real photos differ in shape (SDNET2018 pavements are 13 rows, decks 14): the fit takes them as a list
    rng = np.random.default_rng(3)
    grids, truths = [], []
    for n in range(30):
        grid = rng.uniform(0.0, 0.6, (6, 8))
        truth = np.zeros((6, 8), bool)
        if n % 3:
            truth[n % 6, 2:6] = True
            grid[truth] = rng.uniform(0.5, 1.0, 4)
        grids.append(grid)
        truths.append(truth)
    same = photo_rule.fit(_photos(grids, truths), target_photo_recall=0.9)
    listed = photo_rule.fit(photo_rule.ValidationPhotos(grids, truths, [str(i) for i in range(30)]), target_photo_recall=0.9)
    assert listed.rule == same.rule and listed.metrics == same.metrics

    # one photo two rows shorter: only its own tiles change, and each tile still counts once
    grids[0], truths[0] = grids[0][:4], truths[0][:4]
    ragged = photo_rule.ValidationPhotos(grids, truths, [str(i) for i in range(30)])
    fitted = photo_rule.fit(ragged, target_photo_recall=0.9)
    scored = photo_rule.evaluate_rule(ragged, fitted.rule)
    assert scored["photos"] == 30 and scored["tile_f1"] == pytest.approx(fitted.metrics["tile_f1"])
    masks = [photo_rule.crack_mask(g, fitted.rule) for g in grids]
    tp = sum(int((m & t).sum()) for m, t in zip(masks, truths))
    assert scored["tile_recall"] == pytest.approx(tp / sum(int(t.sum()) for t in truths))


def _whole_grid_split(parents: int, rows: int = 13):
    """Validation tiles of ``parents`` whole-grid photos (a crack along row 5) plus loose Mendeley tiles."""
    rng = np.random.default_rng(1)
    files, labels, sources, parent_of, probs = [], [], [], [], []
    for p in range(parents):
        for n in range(1, rows * 18 + 1):
            cracked = (n - 1) // 18 == 5 and 3 <= (n - 1) % 18 <= 12
            files.append(f"pavements/{'Positive' if cracked else 'Negative'}/0{p:02d}-{n}.jpg")
            labels.append(int(cracked))
            sources.append("pavements")
            parent_of.append(f"0{p:02d}")
            probs.append(rng.uniform(0.6, 0.95) if cracked else rng.uniform(0.0, 0.4))
    for i in range(40):
        files.append(f"mendeley/{'Positive' if i % 2 else 'Negative'}/{i:05d}.jpg")
        labels.append(i % 2)
        sources.append("mendeley")
        parent_of.append("")
        probs.append(0.9 if i % 2 else 0.1)
    return np.asarray(probs), np.asarray(labels), files, sources, parent_of


@functools.cache
def _fitted(parents: int) -> tuple[dict, dict]:
    """The rule fitted on a split with ``parents`` whole grids (0: the Mendeley tiles alone), once per test run."""
    split = _whole_grid_split(max(parents, 1))
    if parents == 0:
        split = tuple(part[-40:] for part in split)
    return photo_rule.fit_on_validation(*split, 0.95)


def test_whole_grid_parents_are_rebuilt_in_place_and_join_the_drawn_photos():
    probs, labels, files, sources, parents = _whole_grid_split(3)
    photos = photo_rule.whole_grid_photos(probs, labels, files, sources, parents)
    assert photos.groups == ["pavements/000", "pavements/001", "pavements/002"]
    assert all(grid.shape == (13, 18) for grid in photos.probabilities)
    assert photos.truth[0][5, 3:13].all() and photos.truth[0].sum() == 10
    assert photos.probabilities[1][0, 0] == probs[13 * 18]  # tile 1 of the second parent, top left
    rule, figures = _fitted(3)
    validation = rule["validation"]
    assert validation["photos_from"] == photo_rule.FROM_BOTH
    assert validation["photos"] == 3 + photo_rule.VALIDATION_PHOTOS  # the real ones beside the drawn ones
    assert figures["val_scan_whole_grid_photos"] == 3.0
    real = validation["whole_grid"]  # the rule on the real photos alone
    assert real["photos"] == 3 and real["tile_f1"] == 1.0 and figures["val_scan_whole_grid_tile_f1"] == 1.0
    assert "photo_false_alarm_rate" not in real  # no crack-free real photo: undefined, so left out, never NaN
    json.dumps(rule, allow_nan=False)


def test_without_whole_grids_the_rule_is_fitted_on_drawn_photos_alone():
    probs, labels, files, sources, parents = _whole_grid_split(1)
    holed = [i for i, f in enumerate(files) if not f.endswith("-7.jpg")]  # one tile missing: no longer a whole grid
    photos, real, photos_from = photo_rule.photos_to_fit(
        probs[holed], labels[holed], [files[i] for i in holed], [sources[i] for i in holed], [parents[i] for i in holed]
    )
    assert real is None and photos_from == photo_rule.FROM_TILES and len(photos.groups) == photo_rule.VALIDATION_PHOTOS
    rule, figures = _fitted(0)
    assert rule["validation"]["photos_from"] == photo_rule.FROM_TILES and "whole_grid" not in rule["validation"]
    assert rule["validation"]["photos"] == photo_rule.VALIDATION_PHOTOS and figures["val_scan_whole_grid_photos"] == 0.0


def test_the_model_card_says_which_photos_the_rule_was_fitted_on():
    from crackcls.trust import model_card

    card = model_card.render("crackcls", "1", {}, {}, {"n": 10}, {}, {}, photo_rule=_fitted(3)[0])
    assert "## Whole-photo rule" in card and "real ones rebuilt from the validation split's whole-grid parents" in card
    assert "on the 3 real validation photos alone: photo recall 1.0000, tile F1 1.0000" in card
    card = model_card.render("crackcls", "1", {}, {}, {"n": 10}, {}, {}, photo_rule=_fitted(0)[0])
    assert "photos drawn from validation tiles" in card and "real validation photos alone" not in card
    assert "## Whole-photo rule" not in model_card.render("crackcls", "1", {}, {}, {"n": 10}, {}, {})
