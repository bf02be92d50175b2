"""tf.data input pipelines over split manifests.

Decoding goes through :func:`crackcls.data.images.load_rgb` (Pillow) in parallel map
threads, so training, evaluation and prediction all see identical pixels, and
every odd file format is handled in one place. Unreadable files are dropped and
counted rather than stopping a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from crackcls.data.decoded import DecodedImages
from crackcls.data.images import UnreadableImage, load_rgb
from crackcls.data.splitting import Item
from crackcls.util import paths

AUTOTUNE = tf.data.AUTOTUNE


def _decoder(size: int):
    def decode(path: bytes) -> tuple[np.ndarray, np.bool_]:
        try:
            return load_rgb(path.decode("utf-8"), size), np.bool_(True)
        except UnreadableImage:
            return np.zeros((size, size, 3), np.uint8), np.bool_(False)

    def tf_decode(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, ok = tf.numpy_function(decode, [path], (tf.uint8, tf.bool), stateful=False)
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return image, ok

    return tf_decode


def image_dataset(
    files: Sequence[str | Path],
    labels: Sequence[int] | None,
    size: int,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    base: Path | None = None,
    keep_flags: bool = False,
    weights: Sequence[float] | np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of float (image, label) — (image, label, weight) with ``weights``, (image, ok) with ``keep_flags`` —
    decoded in parallel.

    Order is deterministic; with ``shuffle_seed`` the order is reshuffled each epoch.
    Training reads :func:`decoded_dataset` instead, which decodes nothing after the first run.
    """
    root = base or paths.workspace_root()
    resolved = [str(paths.resolve(f, root)) for f in files]
    targets = np.asarray(labels if labels is not None else [0] * len(resolved), np.float32)
    per_image = np.asarray(weights if weights is not None else np.ones(len(resolved)), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((resolved, targets, per_image))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(resolved), seed=shuffle_seed, reshuffle_each_iteration=True)
    decode = _decoder(size)
    ds = ds.map(lambda p, y, w: (*decode(p), y, w), num_parallel_calls=AUTOTUNE, deterministic=True)
    if keep_flags:
        ds = ds.map(_image_and_flag)
    elif weights is not None:
        ds = ds.filter(_decoded).map(_image_label_weight)
    else:
        ds = ds.filter(_decoded).map(_image_and_label)
    return ds.map(_as_float).batch(batch_size).prefetch(AUTOTUNE)


def _image_and_flag(image: tf.Tensor, ok: tf.Tensor, label: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return image, ok


def _decoded(image: tf.Tensor, ok: tf.Tensor, label: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    return ok


def _image_and_label(image: tf.Tensor, ok: tf.Tensor, label: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return image, label


def _image_label_weight(image: tf.Tensor, ok: tf.Tensor, label: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, ...]:
    return image, label, weight


def _as_float(image: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
    return tf.cast(image, tf.float32), *rest


def manifest_dataset(items: Sequence[Item], size: int, batch_size: int, **kwargs) -> tf.data.Dataset:
    return image_dataset([it.path for it in items], [it.label for it in items], size, batch_size, **kwargs)


def decoded_dataset(
    decoded: DecodedImages,
    batch_size: int,
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    shuffle_seed: int | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of float images from the decoded-image cache: (image, label), (image, label, weight), or images alone.

    ``labels`` and ``weights`` are per manifest row; rows that did not decode are left out,
    as :func:`image_dataset` leaves them out. Each batch is gathered from the memory-mapped
    array, so nothing is decoded and a set larger than memory streams. With
    ``shuffle_seed`` the order is reshuffled each epoch, reproducibly.

    ``repeat`` makes it endless, epoch after epoch of :func:`batches_per_epoch` batches:
    give Keras ``steps_per_epoch`` and it keeps one iterator for the whole fit, where a
    new iterator per epoch (a finite dataset) stalls each epoch's start for seconds.
    """
    if weights is not None and labels is None:
        raise ValueError("weights need labels")
    rows = decoded.rows
    pixels = decoded.images
    ds = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(rows), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)  # batched before repeating, so every epoch ends on its own short batch
    size = pixels.shape[1]

    def gather(index: np.ndarray) -> np.ndarray:
        return np.asarray(pixels[np.sort(index)])[np.argsort(np.argsort(index))]  # sorted reads, original order

    def load(index: tf.Tensor) -> tf.Tensor:
        batch = tf.numpy_function(gather, [index], tf.uint8, stateful=False)
        batch.set_shape((None, size, size, 3))
        return tf.cast(batch, tf.float32)

    tables = [tf.constant(np.asarray(c, np.float32)) for c in (labels, weights) if c is not None]

    def batch_of(index: tf.Tensor):  # noqa: ANN202 - images alone, or a tuple with their labels (and weights)
        return (load(index), *(tf.gather(t, index) for t in tables)) if tables else load(index)

    ds = ds.map(batch_of, num_parallel_calls=AUTOTUNE, deterministic=True)
    return (ds.repeat() if repeat else ds).prefetch(AUTOTUNE)


def batches_per_epoch(decoded: DecodedImages, batch_size: int) -> int:
    """Batches in one pass over the decodable rows (the last may be short)."""
    return -(-len(decoded.rows) // batch_size)
