"""What is fitted on a trained model before it is saved: temperature, decision threshold, familiarity.

All three use the training and validation splits only, never the test split, so the
test figures that ``evaluate`` reports about them stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from crackcls.data import manifest
from crackcls.model.inference import predict_files, predict_with_features
from crackcls.trust import calibration, familiarity, thresholds
from crackcls.trust.companions import Companions
from crackcls.util import paths
from crackcls.util.errors import CrackclsError


@dataclass
class Fitted:
    companions: Companions
    metrics: dict[str, float]  # for MLflow: val_ece_before / val_ece_after / temperature / threshold ...


def _features(model: keras.Model, split: str, batch_size: int, workspace: Path):  # noqa: ANN202
    """Readable files, their labels, probabilities and familiarity features."""
    items = manifest.read(manifest.manifest_path(split, workspace / paths.SPLIT_DIR))
    files = [it.path for it in items]
    probs, ok, feats = predict_with_features(model, files, batch_size, base=workspace)
    labels = np.asarray([it.label for it in items], int)[ok] if items else np.zeros(0, int)
    kept = [f for f, good in zip(files, ok) if good]
    return kept, labels, probs[ok] if len(files) else np.zeros(0), feats[ok] if len(files) else np.zeros((0, 0))


def fit(
    model: keras.Model, workspace: Path, *, batch_size: int, threshold: float, target_recall: float | None
) -> Fitted:
    """Calibrate ``model`` in place (temperature folded into its output layer); pick threshold and density.

    ``threshold`` is kept unless ``target_recall`` is set: then the threshold is the highest
    that reaches that recall on the validation split.
    """
    val_files, val_labels, val_raw, val_features = _features(model, "val", batch_size, workspace)
    _, _, _, train_features = _features(model, "train", batch_size, workspace)
    if len(train_features) < 2:
        raise CrackclsError("fewer than 2 readable training images: nothing to fit the familiarity density on")

    logits = calibration.logits_of(val_raw)
    temperature = calibration.fit_temperature(logits, val_labels)
    calibration.fold_into(model, temperature)
    metrics = {"temperature": temperature}
    if len(val_files):
        metrics["val_ece_before"] = calibration.expected_calibration_error(val_labels, calibration.sigmoid(logits))
        metrics["val_ece_after"] = calibration.expected_calibration_error(
            val_labels, calibration.sigmoid(logits / temperature)
        )

    target = target_recall
    if target is not None:
        # the calibrated model's own outputs, as predict and the server will compute them
        val_prob, _ = predict_files(model, val_files, batch_size, base=workspace)
        threshold = thresholds.for_recall(val_labels, val_prob, target)
        metrics["val_recall_at_threshold"] = thresholds.recall_at(val_labels, val_prob, threshold)
    metrics["decision_threshold"] = threshold

    density = familiarity.fit(train_features, val_features)
    metrics["familiarity_threshold_distance"] = density.threshold
    return Fitted(Companions(threshold, target, temperature, density), metrics)
