"""The familiarity density on simulated features, and how it travels beside a model file."""

from __future__ import annotations

import numpy as np
import pytest

from crackcls.trust import companions, familiarity
from crackcls.util.errors import CrackclsError


def _features(rng, n, shift=0.0, d=64):
    return rng.normal(shift, 1.0, (n, d)) @ np.diag(np.linspace(0.5, 2.0, d))


def test_threshold_flags_about_one_percent_of_held_out_familiar_images_and_most_strangers():
    rng = np.random.default_rng(0)
    density = familiarity.fit(_features(rng, 500), _features(rng, 1000))
    familiar = density.score(_features(rng, 5000))
    strangers = density.score(_features(rng, 500, shift=1.5))
    assert 0.003 <= np.mean(familiar > 1) <= 0.03  # the 99th percentile, give or take sampling
    assert np.mean(strangers > 1) > 0.9
    assert familiarity.separation(familiar, strangers) > 0.99
    assert np.array_equal(density.unfamiliar(_features(rng, 3, shift=5.0)), [True, True, True])


def test_flagged_report_counts_and_splits_accuracy():
    report = familiarity.flagged_report(np.array([0.5, 2.0, 3.0, 0.9]), np.array([True, False, True, True]))
    assert report == {"unfamiliar": 2, "unfamiliar_fraction": 0.5, "accuracy_unfamiliar": 0.5, "accuracy_familiar": 1.0}


def test_density_and_threshold_round_trip_beside_the_model_file(tmp_path):
    rng = np.random.default_rng(1)
    density = familiarity.fit(_features(rng, 100, d=8), _features(rng, 50, d=8))
    model_file = tmp_path / "model.keras"
    written = companions.write(model_file, companions.Companions(0.27, 0.99, 1.8, density))
    assert sorted(p.name for p in written) == ["model.decision.json", "model.familiarity.npz"]
    back = companions.read(model_file)
    assert (back.threshold, back.target_recall, back.temperature) == (0.27, 0.99, 1.8)
    x = _features(rng, 10, d=8)
    assert back.familiarity.score(x) == pytest.approx(density.score(x))
    assert companions.read(tmp_path / "other.keras") == companions.Companions()  # none stored: defaults


def test_a_corrupt_density_file_is_a_clear_error(tmp_path):
    (tmp_path / "model.familiarity.npz").write_bytes(b"not an npz")
    with pytest.raises(CrackclsError, match="familiarity"):
        companions.read(tmp_path / "model.keras")


def test_threshold_precedence_override_then_stored_then_configured():
    class Model:  # any weak-referenceable object stands in for a keras.Model
        pass

    model = Model()
    assert companions.threshold(model, None, 0.5) == 0.5
    companions.attach(model, companions.Companions(threshold=0.12))
    assert companions.threshold(model, None, 0.5) == 0.12
    assert companions.threshold(model, 0.7, 0.5) == 0.7
