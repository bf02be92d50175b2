"""What is fitted on a trained model before it is saved: temperature, decision threshold, familiarity.

All three use the training and validation splits only, never the test split, so the
test figures that ``evaluate`` reports about them stay honest. The calibrated validation
scores are handed on, so the whole-photo rule (:mod:`crackcls.photos.photo_rule`) is
fitted on the same scores without scoring the split twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from crackcls.data import manifest
from crackcls.data.decoded import DecodedImages, decoded_split
from crackcls.model.inference import model_input_size, predict_decoded
from crackcls.trust import calibration, familiarity, thresholds
from crackcls.trust.companions import Companions
from crackcls.util import paths
from crackcls.util.errors import CrackclsError


@dataclass
class Scored:
    files: list[str]  # the readable ones
    labels: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray  # familiarity features
    sources: list[str]
    parents: list[str]


@dataclass
class Fitted:
    companions: Companions
    metrics: dict[str, float]  # for MLflow: val_ece_before / val_ece_after / temperature / threshold ...
    validation: Scored  # the validation split, its probabilities calibrated as the saved model gives them


def _features(model: keras.Model, split: str, batch_size: int, workspace: Path) -> tuple[Scored, DecodedImages | None]:
    """Readable files of a split, with their labels, probabilities, familiarity features and sources; and their pixels."""
    items = manifest.read(manifest.manifest_path(split, workspace / paths.SPLIT_DIR))
    if not items:
        return Scored([], np.zeros(0, int), np.zeros(0), np.zeros((0, 0), np.float32), [], []), None
    decoded = decoded_split(items, model_input_size(model), workspace, split)
    probs, feats = predict_decoded(model, decoded, batch_size)
    kept = [it for it, good in zip(items, decoded.kept) if good]
    labels = np.asarray([it.label for it in kept], int)
    scored = Scored([it.path for it in kept], labels, probs, feats, [it.source for it in kept], [it.parent for it in kept])
    return scored, decoded


def fit(
    model: keras.Model,
    workspace: Path,
    *,
    batch_size: int,
    threshold: float,
    target_recall: float | None,
) -> Fitted:
    """Calibrate ``model`` in place (temperature folded into its output layer); pick threshold and familiarity.

    ``threshold`` is kept unless ``target_recall`` is set: then the threshold is the highest
    that reaches that recall on the validation split.
    """
    val, val_pixels = _features(model, "val", batch_size, workspace)
    train, _ = _features(model, "train", batch_size, workspace)
    val_files, val_labels, val_raw = val.files, val.labels, val.probabilities
    if len(train.files) < 2:
        raise CrackclsError("fewer than 2 readable training images: nothing to fit the familiarity reference on")

    logits = calibration.logits_of(val_raw)
    temperature = calibration.fit_temperature(logits, val_labels)
    calibration.fold_into(model, temperature)
    calibrated = calibration.sigmoid(logits / temperature)  # what the saved model gives the validation images
    metrics = {"temperature": temperature}
    if len(val_files):
        metrics["val_ece_before"] = calibration.expected_calibration_error(val_labels, calibration.sigmoid(logits))
        metrics["val_ece_after"] = calibration.expected_calibration_error(val_labels, calibrated)

    target = target_recall
    if target is not None:
        # the calibrated model's own outputs, as predict and the server will compute them
        val_prob = np.zeros(0, np.float32)
        if val_pixels is not None:
            val_prob, _ = predict_decoded(model, val_pixels, batch_size, with_features=False)
        threshold = thresholds.for_recall(val_labels, val_prob, target)
        metrics["val_recall_at_threshold"] = thresholds.recall_at(val_labels, val_prob, threshold)
    metrics["decision_threshold"] = threshold

    layout = familiarity.layout_of(model)
    if layout is None:
        raise CrackclsError(f"model '{model.name}' has no layer to take familiarity features from")
    reference = familiarity.fit(train.features, val.features, layout, train.sources, val.sources, val.labels)
    metrics["familiarity_sources"] = len(reference.sources)
    metrics["familiarity_bank_mb"] = reference.bank_bytes / 1e6
    return Fitted(Companions(threshold, target, temperature, reference), metrics, dataclasses.replace(val, probabilities=calibrated))
