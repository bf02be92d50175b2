"""95% intervals: they must cover the true value about 95% of the time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crackcls.trust.intervals import bootstrap, format_interval, metric_intervals, wilson
from crackcls.trust.metrics import classification_metrics


def test_wilson_matches_a_hand_computed_interval():
    # 8 of 10: the textbook Wilson interval is about [0.490, 0.943]
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)


def test_wilson_stays_inside_zero_and_one_and_is_undefined_without_trials():
    assert wilson(0, 20)[0] == 0.0 and 0 < wilson(0, 20)[1] < 0.2
    assert wilson(20, 20)[1] == 1.0 and 0.8 < wilson(20, 20)[0] < 1
    assert all(math.isnan(v) for v in wilson(0, 0))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_wilson_covers_the_true_proportion_about_95_percent_of_the_time(p):
    rng = np.random.default_rng(1)
    n, trials = 45, 2000  # the size of the demo's test split
    hits = rng.binomial(n, p, size=trials)
    covered = [low <= p <= high for low, high in (wilson(int(k), n) for k in hits)]
    assert 0.92 <= np.mean(covered) <= 0.985


def test_bootstrap_f1_interval_covers_the_population_f1_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    # a population where the classifier's F1 is known exactly
    population_true = rng.integers(0, 2, 200_000)
    population_prob = np.clip(population_true * 0.35 + rng.uniform(0, 0.65, population_true.size), 0, 1)
    true_f1 = classification_metrics(population_true, population_prob)["f1"]
    covered = []
    for i in range(200):  # 200 samples of 150 images, each with a 400-resample bootstrap
        pick = rng.integers(0, population_true.size, 150)
        interval = bootstrap(population_true[pick], population_prob[pick], 0.5, resamples=400, seed=i)["f1"]
        covered.append(interval[0] <= true_f1 <= interval[1])
    assert 0.88 <= np.mean(covered) <= 0.99


def test_bootstrap_is_seeded_and_skips_single_class_resamples():
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.7, 0.4, 0.6, 0.3, 0.2, 0.8])
    assert bootstrap(y, p, 0.5, seed=3) == bootstrap(y, p, 0.5, seed=3)
    assert bootstrap(y, p, 0.5, seed=3) != bootstrap(y, p, 0.5, seed=4)
    only_cracks = bootstrap(np.ones(5, int), np.full(5, 0.7), 0.5)
    assert all(math.isnan(v) for v in only_cracks["roc_auc"])
    assert only_cracks["f1"] == (1.0, 1.0)


def test_metric_intervals_are_flat_keys_around_the_estimate():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.4 + rng.uniform(0, 0.6, 300), 0, 1)
    m = classification_metrics(y, p)
    flat = metric_intervals(y, p, m, 0.5)
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert flat[f"{name}_ci_low"] <= m[name] <= flat[f"{name}_ci_high"], name
    assert format_interval({**m, **flat}, "recall").startswith("[")
    assert format_interval(m, "recall") == ""


def test_bootstrap_auc_matches_sklearn_on_every_resample_shape():
    from sklearn.metrics import roc_auc_score

    from crackcls.trust.intervals import _auc

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, (20, 30))
    probs = np.round(rng.uniform(size=(20, 30)), 1)  # many ties
    assert _auc(labels, probs) == pytest.approx([roc_auc_score(l, p) for l, p in zip(labels, probs)])
