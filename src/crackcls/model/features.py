"""Frozen-backbone feature cache.

While the backbone is frozen, its activations for an image never change, so the
head can be trained on features computed once per image per augmentation view
instead of re-running the backbone every epoch. View 0 is the plain image; views
1..V-1 are drawn once from the same flip/rotation augmentation the image-level
model uses (seeded), and each epoch the head sees one view per image at random.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crackcls.data import manifest
from crackcls.data.download import sha256_file
from crackcls.model.settings import ModelConfig, TrainConfig
from crackcls.util import atomic, paths, progress, quiet
from crackcls.util.errors import CrackclsError

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow and Keras are imported where features are computed or read into a dataset, not
# here: from scratch the ``features`` stage only records that it has nothing to cache, and
# should not spend seconds importing TensorFlow to say so.

BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached features depend on; a mismatch means the cache is stale."""

    backbone: str
    weights: str
    image_size: int
    views: int
    flip: bool
    rotation: float
    seed: int
    train_manifest: str
    val_manifest: str


def used(model: ModelConfig, train: TrainConfig) -> bool:
    """Whether training has a frozen phase on cached features (never from scratch: every layer trains)."""
    return train.feature_cache and model.weights != "none"


def save_unused(cache_dir: Path) -> None:
    """Mark the cache as deliberately empty, so DVC still has this stage's output."""
    atomic.write_json(cache_dir / META_FILE, {"feature_cache": False})


def cache_key(model: ModelConfig, train: TrainConfig, split_dir: Path) -> CacheKey:
    return CacheKey(
        backbone=model.backbone,
        weights=model.weights,
        image_size=model.image_size,
        views=train.cache_views,
        flip=train.augment.flip,
        rotation=train.augment.rotation,
        seed=train.seed,
        train_manifest=sha256_file(split_dir / "train.csv"),
        val_manifest=sha256_file(split_dir / "val.csv"),
    )


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, V, D) float16
    labels: np.ndarray  # (N,) float32
    kept: np.ndarray  # (N_items,) bool: which manifest rows decoded


def extract(
    features_model, augment, dataset: tf.data.Dataset, views: int, on_batch: Callable[[int], object] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen backbone once per batch per view; returns (features, ok-mask).

    ``on_batch`` is called with the number of images in each finished batch.
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def all_views(images: tf.Tensor) -> tf.Tensor:
        outputs = [features_model(images, training=False)]
        for _ in range(views - 1):
            outputs.append(features_model(augment(images, training=True), training=False))
        return tf.stack(outputs, axis=1)

    chunks, flags = [], []
    for images, ok in dataset:
        chunks.append(all_views(images).numpy().astype(np.float16))
        flags.append(ok.numpy())
        if on_batch is not None:
            on_batch(len(flags[-1]))
    return np.concatenate(chunks), np.concatenate(flags)


def save(cache_dir: Path, split: str, feature_set: FeatureSet) -> None:
    with atomic.atomic_path(cache_dir / f"{split}.npz", suffix=".npz") as tmp:
        with tmp.open("wb") as handle:
            np.savez(handle, features=feature_set.features, labels=feature_set.labels, kept=feature_set.kept)


def save_meta(cache_dir: Path, key: CacheKey, dims: int) -> None:
    atomic.write_json(cache_dir / META_FILE, {**asdict(key), "dims": dims})


def load(cache_dir: Path, split: str, expected: CacheKey) -> FeatureSet:
    meta_path = cache_dir / META_FILE
    if not meta_path.is_file():
        raise CrackclsError(f"no feature cache in {cache_dir}; run `dvc repro features` first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    stale = [k for k, v in asdict(expected).items() if meta.get(k) != v]
    if stale:
        raise CrackclsError(
            f"feature cache in {cache_dir} is stale ({', '.join(stale)} changed); run `dvc repro features`"
        )
    with np.load(cache_dir / f"{split}.npz") as data:
        return FeatureSet(data["features"], data["labels"], data["kept"])


def head_dataset(
    feature_set: FeatureSet, batch_size: int, seed: int, shuffle: bool, weights: np.ndarray | None = None
) -> tf.data.Dataset:
    """(features, label) batches, or (features, label, weight); each pass draws one cached view per image."""
    import tensorflow as tf

    views = feature_set.features.shape[1]
    per_image = weights if weights is not None else np.ones(len(feature_set.labels), np.float32)
    with quiet.filtered_stderr():  # the first float16 tensor makes oneDNN log a harmless "E0000" line
        ds = tf.data.Dataset.from_tensor_slices((feature_set.features, feature_set.labels, per_image))
    if shuffle:
        ds = ds.shuffle(len(feature_set.labels), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(
            lambda f, y, w: (tf.cast(tf.gather(f, tf.random.uniform((), 0, views, tf.int32, seed=seed)), tf.float32), y, w),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(lambda f, y, w: (tf.cast(f[0], tf.float32), y, w))
    if weights is None:
        ds = ds.map(lambda f, y, w: (f, y))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def cache_dir(workspace: Path | None = None) -> Path:
    return (workspace or paths.workspace_root()) / paths.FEATURES_DIR


def build_cache(model: ModelConfig, train: TrainConfig, workspace: Path) -> dict:
    """Backbone features of the train (``train.cache_views`` views) and val splits, written atomically.

    Without a frozen phase on features (from scratch, or ``feature_cache: false``) the
    cache only records that it is unused. Returns what was cached, for the stage to print.
    """
    out_dir = cache_dir(workspace)
    report: dict = {"feature_cache": used(model, train)}
    if not report["feature_cache"]:
        with atomic.atomic_dir(out_dir) as staging:
            save_unused(staging)
        return report
    import keras

    from crackcls.data.pipeline import manifest_dataset
    from crackcls.model import runtime
    from crackcls.model.build import build_model

    runtime.configure_precision()
    keras.utils.set_random_seed(train.seed)
    crack = build_model(model, train)
    split_dir = workspace / paths.SPLIT_DIR
    key = cache_key(model, train, split_dir)
    started = time.perf_counter()
    with atomic.atomic_dir(out_dir) as staging:
        crack.backbone.save_weights(str(staging / BACKBONE_WEIGHTS_FILE))
        for split, views in (("train", train.cache_views), ("val", 1)):
            items = manifest.read(manifest.manifest_path(split, split_dir))
            if not items:
                if split == "train":
                    raise CrackclsError("the train split is empty; adjust data.split ratios")
                # data.split.val: 0 is allowed; training then early-stops on the training loss
                empty = np.zeros((0, 1, report["dims"]), np.float16)
                save(staging, split, FeatureSet(empty, np.zeros(0, np.float32), np.zeros(0, bool)))
                report[f"{split}_images"] = report[f"{split}_skipped"] = 0
                continue
            ds = manifest_dataset(items, model.image_size, train.batch_size, base=workspace, keep_flags=True)
            with progress.bar(len(items), f"features {split}") as bar:
                values, kept = extract(crack.features, crack.augment, ds, views, on_batch=bar.update)
            labels = [it.label for it, ok in zip(items, kept) if ok]
            save(staging, split, FeatureSet(values[kept], np.asarray(labels, np.float32), kept))
            report[f"{split}_images"] = int(kept.sum())
            report[f"{split}_skipped"] = int((~kept).sum())
            report["dims"] = int(values.shape[-1])
        save_meta(staging, key, report["dims"])
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report
