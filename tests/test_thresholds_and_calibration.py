"""The recall-target threshold and temperature scaling, on constructed data."""

from __future__ import annotations

import numpy as np
import pytest

from crackcls.trust import calibration, thresholds
from crackcls.util.errors import CrackclsError


def test_threshold_is_the_highest_that_reaches_the_target_on_validation():
    # 100 validation cracks scored 0.01 .. 1.00 and some clean images
    cracks = np.arange(1, 101) / 100
    y = np.r_[np.ones(100, int), np.zeros(50, int)]
    p = np.r_[cracks, np.linspace(0, 0.5, 50)]
    t = thresholds.for_recall(y, p, 0.99)
    assert t == pytest.approx(0.02)  # 99 of the 100 cracks score >= 0.02
    assert thresholds.recall_at(y, p, t) >= 0.99
    assert thresholds.recall_at(y, p, np.nextafter(t, 1)) < 0.99  # any higher threshold misses the target
    assert thresholds.for_recall(y, p, 0.9) == pytest.approx(0.11)
    assert thresholds.for_recall(y, p, 1.0) == pytest.approx(0.01)


def test_threshold_needs_cracks_in_the_validation_split():
    with pytest.raises(CrackclsError, match="target_recall"):
        thresholds.for_recall(np.zeros(5, int), np.full(5, 0.3), 0.99)


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20_000)
    labels = (rng.uniform(size=true_logits.size) < calibration.sigmoid(true_logits)).astype(int)
    overconfident = true_logits * 3  # a model three times too sure of itself
    t = calibration.fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before = calibration.expected_calibration_error(labels, calibration.sigmoid(overconfident))
    after = calibration.expected_calibration_error(labels, calibration.sigmoid(overconfident / t))
    assert before > 0.05 and after < 0.02


def test_a_perfectly_separated_validation_split_leaves_the_temperature_at_one():
    logits = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1])  # the log loss keeps falling as T shrinks
    assert calibration.fit_temperature(logits, labels) == 1.0
    assert calibration.fit_temperature(logits, labels[::-1]) == 1.0  # all wrong: T runs to the top bound


def test_rescale_undoes_a_folded_temperature():
    p = np.array([0.01, 0.3, 0.5, 0.93])
    assert calibration.rescale(calibration.rescale(p, 2.5), 1 / 2.5) == pytest.approx(p)


def test_temperature_is_folded_into_the_output_layer():
    import keras

    inputs = keras.Input((4,))
    out = keras.layers.Dense(1, activation="sigmoid", name=calibration.OUTPUT_LAYER)(inputs)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    before = model.predict(x, verbose=0).reshape(-1)
    calibration.fold_into(model, 2.0)
    after = model.predict(x, verbose=0).reshape(-1)
    assert after == pytest.approx(calibration.rescale(before, 2.0), abs=1e-5)
    assert np.all(np.abs(after - 0.5) <= np.abs(before - 0.5) + 1e-7)  # less sure, same ranking


def test_reliability_bins_and_ece_by_hand():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])  # bin of 0.05: 50% cracks; bin of 0.95: 100%
    rows = calibration.reliability(y, p, bins=10)
    assert [(r["count"], r["observed"]) for r in rows] == [(2, 0.5), (2, 1.0)]
    assert calibration.expected_calibration_error(y, p, bins=10) == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)
