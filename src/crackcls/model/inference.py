"""Inference: load a ``.keras`` file safely and turn image files into crack probabilities.

Every path that scores images goes through :func:`score_files`: the DVC ``evaluate``
stage, ``crackcls evaluate`` and ``predict``, promotion, scanning and the served pyfunc
model, so that all of them return identical probabilities for the same file.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackcls.data.decoded import DecodedImages
from crackcls.data.pipeline import decoded_dataset, image_dataset
from crackcls.model.scoring import (  # noqa: F401 - the shared answers, importable from here too
    CRACK,
    NO_CRACK,
    Scores,
    familiarity_references,
    label_for,
    set_shift,
    unreadable_reason,
)
from crackcls.trust import companions, familiarity
from crackcls.util import paths
from crackcls.util.errors import CrackclsError


def model_input_size(model: keras.Model) -> int:
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] == shape[2] and shape[1]):
        raise CrackclsError(f"model input shape {shape} is not a square RGB image")
    return int(shape[1])


# One traced inference function per model: a server scoring request after request
# must not pay for a new trace each time.
_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_pass(model: keras.Model, with_features: bool = False) -> Callable:
    """``images → probabilities``, or ``images → (probabilities, familiarity features)``."""
    traced = _FORWARD.setdefault(model, {})
    forward = traced.get(with_features)
    if forward is None:
        if with_features:  # the familiarity features come from the same pass: no second forward
            both = familiarity.feature_model(model)
            if both is None:
                raise CrackclsError(f"model '{model.name}' has no layer to take familiarity features from")
            forward = tf.function(lambda images: both(images, training=False), reduce_retracing=True)
        else:
            weak = weakref.ref(model)  # a strong reference here would keep every model alive
            forward = tf.function(lambda images: weak()(images, training=False), reduce_retracing=True)
        traced[with_features] = forward
    return forward


def has_pool_layer(model: keras.Model) -> bool:
    return any(layer.name == familiarity.POOL_LAYER for layer in model.layers)


def familiarity_reference(model: keras.Model) -> familiarity.Reference | None:
    """The reference this model's images are scored against; None without one, or without the layer it reads."""
    return companions.of(model).familiarity if has_pool_layer(model) else None


def predict_files(
    model: keras.Model,
    files: Sequence[str | Path],
    batch_size: int,
    base: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crack probabilities for ``files`` and a mask of which ones could be decoded.

    ``progress`` is called with the number of files in each finished batch.
    """
    probs, flags, _ = predict_with_features(model, files, batch_size, base, progress, with_features=False)
    return probs, flags


def predict_with_features(
    model: keras.Model,
    files: Sequence[str | Path],
    batch_size: int,
    base: Path | None = None,
    progress: Callable[[int], object] | None = None,
    with_features: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`predict_files` plus the familiarity features of each file (``None`` without ``with_features``)."""
    size = model_input_size(model)
    ds = image_dataset(files, None, size, batch_size, base=base, keep_flags=True)
    flags: list[np.ndarray] = []

    def images_of(batches):
        for images, ok in batches:
            flags.append(ok.numpy())
            yield images

    probs, pooled = _forward(model, images_of(ds), with_features, progress)
    return probs, np.concatenate(flags) if flags else np.zeros(0, bool), pooled


def predict_decoded(
    model: keras.Model, decoded: DecodedImages, batch_size: int, with_features: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (and familiarity features) of the decodable rows of a decoded-image cache entry, in order.

    The same pixels and the same forward pass as :func:`predict_with_features` on the files,
    without decoding them again.
    """
    if decoded.images.shape[1] != model_input_size(model):
        raise CrackclsError(f"decoded images of {decoded.images.shape[1]} px cannot feed a {model_input_size(model)} px model")
    return _forward(model, decoded_dataset(decoded, batch_size), with_features, None)


def _forward(
    model: keras.Model, batches, with_features: bool, progress: Callable[[int], object] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    forward = forward_pass(model, with_features)
    probs, pooled = [], []
    for images in batches:
        out = forward(images)
        if with_features:
            out, features = out
            pooled.append(np.asarray(features, np.float32))
        probs.append(np.asarray(out).reshape(-1))
        if progress is not None:
            progress(len(probs[-1]))
    if not probs:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32) if with_features else None
    return np.concatenate(probs), np.concatenate(pooled) if with_features else None


def score_files(
    model: keras.Model,
    files: Sequence[str | Path],
    batch_size: int,
    base: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> Scores:
    """Crack probabilities for unlabelled files, and the reason for every file that was skipped.

    The decoding pipeline only says *that* a file failed; each failure is decoded once
    more on its own to say *why* (failures are rare, so this costs nothing in bulk).
    """
    reference = familiarity_reference(model)
    if not files:
        return Scores(np.zeros(0), [], None if reference is None else np.zeros(0))
    probs, ok, features = predict_with_features(model, files, batch_size, base, progress, reference is not None)
    size = model_input_size(model)
    root = base or paths.workspace_root()
    reasons = [None if good else unreadable_reason(paths.resolve(f, root), size) for f, good in zip(files, ok)]
    familiar = None if reference is None else np.where(ok, reference.score(features), np.nan)
    return Scores(np.where(ok, probs, np.nan).astype(np.float64), reasons, familiar)


def load_model_file(path: str | Path) -> keras.Model:
    """Load a ``.keras`` file in safe mode: a Lambda layer is refused, never executed.

    The files stored beside it (:mod:`crackcls.trust.companions`) are attached to the model.
    """
    path = Path(path)
    if not path.is_file():
        raise CrackclsError(f"model file {path} not found")
    try:
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for bad files; all mean the same here
        raise CrackclsError(
            f"cannot load model {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "The file is corrupt, not a Keras model, or needs unsafe code (Lambda layers are refused)."
        ) from None
    companions.attach(model, companions.read(path))  # its threshold and familiarity reference, if stored
    return model


