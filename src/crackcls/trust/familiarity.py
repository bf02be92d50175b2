"""How unlike the training images a photo is: a Mahalanobis distance on the model's own features.

A model trained on one surface answers confidently on any other; the only sign that
a photo is out of its depth is that its features lie far from every training image's.
The features are the mean activation of every block of a ``compact_cnn`` backbone
(early blocks see surface texture, which the last pooled features have learned to
ignore), or the pooled features (layer ``pool``) of the other backbones.
The density is a Gaussian with a Ledoit-Wolf shrunk covariance (stable with fewer
images than feature dimensions), fitted on the training images. The score is the
distance divided by the 99th percentile of the validation images' distances, so a
score above 1 (``unfamiliar``) is stranger than 99% of held-out images of the kind
the model was trained on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackcls.util import atomic
from crackcls.util.errors import CrackclsError

FLAG_QUANTILE = 0.99
POOL_LAYER = "pool"  # the GlobalAveragePooling output in crackcls.model.build
BLOCK_ACTIVATION = re.compile(r"block\d+_relu$")  # compact_cnn's per-block outputs
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Density:
    mean: np.ndarray  # (d,)
    precision: np.ndarray  # (d, d) inverse of the shrunk covariance
    threshold: float  # distance at FLAG_QUANTILE of the validation images
    n_train: int

    def distance(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, np.float64) - self.mean
        squared = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        return np.sqrt(np.maximum(squared, 0.0))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance in units of the flag threshold: above 1 is unfamiliar."""
        return self.distance(features) / self.threshold

    def unfamiliar(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > 1.0


def feature_model(model):  # noqa: ANN001, ANN201 - keras.Model in and out
    """``images → (crack probability, familiarity features)`` in one forward pass, or None.

    None when the model has neither block activations to tap nor a ``pool`` layer.
    """
    import keras

    stack = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    nested = [i for i, layer in enumerate(stack) if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)]
    taps = []
    if len(nested) == 1:
        backbone = stack[nested[0]]
        taps = [layer.output for layer in backbone.layers if BLOCK_ACTIVATION.match(layer.name)]
    if not taps:
        if not any(layer.name == POOL_LAYER for layer in model.layers):
            return None
        return keras.Model(model.inputs, [model.outputs[0], model.get_layer(POOL_LAYER).output])
    at = nested[0]
    tapped = keras.Model(backbone.inputs, [backbone.outputs[0], *taps])
    inputs = keras.Input(model.input_shape[1:])
    x = inputs
    for layer in stack[:at]:  # augmentation (identity at inference) and preprocessing
        x = layer(x, training=False)
    out, *maps = tapped(x, training=False)
    for layer in stack[at + 1 :]:  # pooling, dropout, the classifier
        out = layer(out, training=False)
    means = [keras.layers.GlobalAveragePooling2D()(m) for m in maps]
    return keras.Model(inputs, [out, keras.layers.Concatenate()(means) if len(means) > 1 else means[0]])


def fit(train_features: np.ndarray, val_features: np.ndarray, quantile: float = FLAG_QUANTILE) -> Density:
    """Fit on training images; set the flag threshold on validation images (never on test)."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train_features, np.float64)
    val = np.asarray(val_features, np.float64)
    if train.ndim != 2 or len(train) < 2:
        raise CrackclsError("the familiarity density needs pooled features of at least 2 training images")
    if len(val) == 0:
        val = train  # no validation split: the training images set the threshold (looser)
    estimator = LedoitWolf().fit(train)
    density = Density(estimator.location_, estimator.precision_, 1.0, len(train))
    threshold = float(np.quantile(density.distance(val), quantile))
    return Density(density.mean, density.precision, max(threshold, np.finfo(float).tiny), len(train))


def path_for(model_file: str | os.PathLike[str]) -> Path:
    """``models/model.keras`` → ``models/model.familiarity.npz``."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}.familiarity.npz")


def save(density: Density, target: str | os.PathLike[str]) -> Path:
    with atomic.atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                version=FORMAT_VERSION,
                mean=density.mean,
                precision=density.precision,
                threshold=density.threshold,
                n_train=density.n_train,
            )
    return Path(target)


def load(source: str | os.PathLike[str]) -> Density:
    try:
        with np.load(source, allow_pickle=False) as data:
            if int(data["version"]) != FORMAT_VERSION:
                raise CrackclsError(f"{source}: familiarity format {int(data['version'])}, expected {FORMAT_VERSION}")
            return Density(data["mean"], data["precision"], float(data["threshold"]), int(data["n_train"]))
    except (OSError, KeyError, ValueError) as exc:
        raise CrackclsError(f"cannot read the familiarity density {source}: {exc}") from None


def separation(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """ROC AUC of the score telling ``out`` images (positives) from ``in`` images."""
    from sklearn.metrics import roc_auc_score

    if len(in_scores) == 0 or len(out_scores) == 0:
        return float("nan")
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(labels, np.r_[in_scores, out_scores]))


def flagged_report(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """How many images are flagged, and the accuracy on flagged and unflagged ones."""
    flagged = np.asarray(scores) > 1.0
    correct = np.asarray(correct, bool)

    def accuracy(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    return {
        "unfamiliar": int(flagged.sum()),
        "unfamiliar_fraction": float(flagged.mean()) if flagged.size else float("nan"),
        "accuracy_unfamiliar": accuracy(flagged),
        "accuracy_familiar": accuracy(~flagged),
    }
