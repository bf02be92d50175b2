"""The familiarity reference on simulated features, per source, and how it travels beside a model file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from crackcls.trust import companions, familiarity
from crackcls.trust.familiarity import Layout
from crackcls.util.errors import CrackclsError

LAYOUT = Layout((8, 16), spread=True)


def _features(rng, n, shift=0.0, layout=LAYOUT, tone=1.0):
    """Raw features as the feature model gives them: per block mean activations, then mean squares."""
    means = [tone * np.exp(rng.normal(shift * np.linspace(-1, 1, d), 0.3, (n, d))) for d in layout.dims]
    squares = [m * m * np.exp(rng.normal(0.2, 0.05, m.shape)) for m in means]
    return np.concatenate([*means, *squares], axis=1) if layout.spread else np.concatenate(means, axis=1)


def test_threshold_flags_about_one_percent_of_held_out_familiar_images_and_most_strangers():
    rng = np.random.default_rng(0)
    reference = familiarity.fit(_features(rng, 800), _features(rng, 1000), LAYOUT)
    familiar = reference.score(_features(rng, 5000))
    strangers = reference.score(_features(rng, 500, shift=1.0))
    assert 0.003 <= np.mean(familiar > 1) <= 0.03  # the 99th percentile, give or take sampling
    assert np.mean(strangers > 1) > 0.9
    assert familiarity.separation(familiar, strangers) > 0.99
    assert np.array_equal(reference.unfamiliar(_features(rng, 3, shift=3.0)), [True, True, True])


def test_a_photo_twice_as_dark_is_unfamiliar_though_every_direction_is_the_same():
    """Cosine distances ignore how strongly a block fires; the strength level does not."""
    rng = np.random.default_rng(1)
    reference = familiarity.fit(_features(rng, 800), _features(rng, 500), LAYOUT)
    dark = reference.score(_features(rng, 300, tone=0.25))
    assert np.mean(dark > 1) > 0.9


def test_each_source_is_judged_against_itself():
    rng = np.random.default_rng(2)
    train = np.r_[_features(rng, 400), _features(rng, 400, shift=0.6)]
    val = np.r_[_features(rng, 300), _features(rng, 300, shift=0.6)]
    names = ["a"] * 400 + ["b"] * 400, ["a"] * 300 + ["b"] * 300
    labels = np.arange(600) % 2
    reference = familiarity.fit(train, val, LAYOUT, *names, labels)
    assert [s.name for s in reference.sources] == ["a", "b"]
    by_class = reference.validation_scores()
    assert set(by_class) == {"a", "b"} and set(by_class["a"]) == {0, 1} and len(by_class["a"][1]) == 150
    for shift in (0.0, 0.6):  # images of either known source: about 1% flagged
        assert np.mean(reference.score(_features(rng, 3000, shift=shift)) > 1) < 0.03
    assert np.mean(reference.score(_features(rng, 500, shift=-1.0)) > 1) > 0.9  # unlike both


def test_a_source_with_few_validation_images_is_judged_with_every_image():
    rng = np.random.default_rng(3)
    train = np.r_[_features(rng, 300), _features(rng, 300, shift=0.6), _features(rng, 20, shift=-0.6)]
    val = np.r_[_features(rng, 200), _features(rng, 200, shift=0.6), _features(rng, 5, shift=-0.6)]
    names = ["a"] * 300 + ["b"] * 300 + ["field"] * 20, ["a"] * 200 + ["b"] * 200 + ["field"] * 5
    reference = familiarity.fit(train, val, LAYOUT, *names)
    assert [s.name for s in reference.sources] == ["a", "b", familiarity.POOLED]
    assert reference.n_val == {"a": 200, "b": 200, familiarity.POOLED: 405}


def test_the_bank_is_bounded_and_the_pooled_layout_works():
    rng = np.random.default_rng(4)
    pooled = Layout((32,), spread=False)
    reference = familiarity.fit(_features(rng, 3000, layout=pooled), _features(rng, 200, layout=pooled), pooled, bank_rows=500)
    assert all(len(level) == 500 for level in reference.sources[0].bank)
    assert reference.bank_bytes == 500 * (32 + 1) * 2
    with pytest.raises(CrackclsError, match="shape"):
        reference.score(np.zeros((2, 5)))


def test_flagged_report_counts_and_splits_accuracy():
    report = familiarity.flagged_report(np.array([0.5, 2.0, 3.0, 0.9]), np.array([True, False, True, True]))
    assert report == {"unfamiliar": 2, "unfamiliar_fraction": 0.5, "accuracy_unfamiliar": 0.5, "accuracy_familiar": 1.0}


def test_reference_and_threshold_round_trip_beside_the_model_file(tmp_path):
    rng = np.random.default_rng(5)
    names = ["a"] * 100 + ["b"] * 100, ["a"] * 60 + ["b"] * 60
    reference = familiarity.fit(
        np.r_[_features(rng, 100), _features(rng, 100, shift=0.5)], np.r_[_features(rng, 60), _features(rng, 60, shift=0.5)],
        LAYOUT, *names,
    )  # fmt: skip
    model_file = tmp_path / "model.keras"
    written = companions.write(model_file, companions.Companions(0.27, 0.99, 1.8, reference))
    assert sorted(p.name for p in written) == ["model.decision.json", "model.familiarity.npz"]
    back = companions.read(model_file)
    assert (back.threshold, back.target_recall, back.temperature) == (0.27, 0.99, 1.8)
    x = _features(rng, 10)
    assert back.familiarity.score(x) == pytest.approx(reference.score(x), rel=1e-6)
    assert back.familiarity.n_val == {"a": 60, "b": 60}
    assert back.familiarity.validation_scores()["b"][0] == pytest.approx(reference.validation_scores()["b"][0], rel=1e-6)
    assert companions.read(tmp_path / "other.keras") == companions.Companions()  # none stored: defaults


def test_a_corrupt_reference_file_is_a_clear_error(tmp_path):
    (tmp_path / "model.familiarity.npz").write_bytes(b"not an npz")
    with pytest.raises(CrackclsError, match="familiarity"):
        companions.read(tmp_path / "model.keras")


def test_an_older_format_is_dropped_with_a_warning_not_misread(tmp_path):
    np.savez(tmp_path / "model.familiarity.npz", version=1, mean=np.zeros(3), precision=np.eye(3), threshold=1.0, n_train=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stored = companions.read(tmp_path / "model.keras")
    assert stored.familiarity is None
    assert any("no longer read" in str(w.message) for w in caught)


def test_threshold_precedence_override_then_stored_then_configured():
    class Model:  # any weak-referenceable object stands in for a keras.Model
        pass

    model = Model()
    assert companions.threshold(model, None, 0.5) == 0.5
    companions.attach(model, companions.Companions(threshold=0.12))
    assert companions.threshold(model, None, 0.5) == 0.12
    assert companions.threshold(model, 0.7, 0.5) == 0.7
