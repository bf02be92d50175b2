"""Metric computation and the promotion rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crackcls.trust.metrics import classification_metrics, json_safe, pr_points, roc_points
from crackcls.trust.promotion import decide


def test_metrics_match_hand_counts():
    y_true = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    y_prob = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7])
    m = classification_metrics(y_true, y_prob, threshold=0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    pairs = [(p, n) for p in y_prob[y_true == 1] for n in y_prob[y_true == 0]]
    assert m["roc_auc"] == pytest.approx(sum(p > n for p, n in pairs) / len(pairs))
    expected_loss = -np.mean(y_true * np.log(y_prob) + (1 - y_true) * np.log(1 - y_prob))
    assert m["loss"] == pytest.approx(expected_loss)


def test_threshold_moves_the_decision():
    y_true = np.array([1, 0, 1, 0])
    y_prob = np.array([0.6, 0.4, 0.35, 0.2])
    assert classification_metrics(y_true, y_prob, 0.5)["tp"] == 1
    assert classification_metrics(y_true, y_prob, 0.3)["tp"] == 2
    assert classification_metrics(y_true, y_prob, 0.3)["fp"] == 1


def test_a_saturated_probability_meets_a_threshold_of_one_as_predict_labels_it():
    m = classification_metrics(np.array([1, 0]), np.array([1.0, 0.2]), threshold=1.0)
    assert (m["tp"], m["tn"]) == (1, 1)


def test_single_class_gives_undefined_auc_that_json_turns_into_null():
    m = classification_metrics(np.array([1, 1]), np.array([0.9, 0.2]))
    assert math.isnan(m["roc_auc"])
    assert json_safe(m)["roc_auc"] is None
    assert m["recall"] == 0.5


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError):
        classification_metrics(np.array([1, 0]), np.array([0.5]))
    with pytest.raises(ValueError):
        classification_metrics(np.array([]), np.array([]))


def test_curves_start_and_end_where_they_should():
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.array([0.1, 0.4, 0.35, 0.8])
    roc = roc_points(y_true, y_prob)
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0)
    assert (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    pr = pr_points(y_true, y_prob)
    assert pr[-1]["recall"] == 0.0 and pr[-1]["precision"] == 1.0


@pytest.mark.parametrize(
    ("challenger", "champion", "min_improvement", "promote"),
    [
        (0.80, None, 0.0, True),  # no champion yet
        (0.80, 0.79, 0.0, True),
        (0.80, 0.80, 0.0, False),  # a tie does not move the alias
        (0.79, 0.80, 0.0, False),  # worse is refused
        (0.805, 0.80, 0.01, False),  # better, but not by enough
        (0.81, 0.80, 0.01, True),  # exactly the minimum counts
        (float("nan"), 0.5, 0.0, False),
        (0.6, float("nan"), 0.0, True),
    ],
)
def test_promotion_rule(challenger, champion, min_improvement, promote):
    decision = decide(challenger, champion, min_improvement, "f1")
    assert decision.promote is promote
    assert "f1" in decision.reason
