"""Fitting the classifier on the train split in one process, and saving what it learnt.

Images are decoded once, into the decoded-image cache (:mod:`crackcls.data.decoded`),
which every epoch, phase and later run at the same size reads. From scratch
(``model.weights: none``) every layer trains on them with the ``train.scratch``
schedule, then BatchNorm's inference statistics are recomputed from training images.
With pretrained weights, phase 1
trains the head with the backbone frozen: on cached features (``train.feature_cache``)
or on images; phase 2, when ``model.fine_tune_layers > 0``, unfreezes the top backbone
layers and continues on images at a low learning rate. Started from another model's
weights (``train.init``), the whole model instead trains on for ``train.adapt``: a few
epochs at a low, constant rate, so a site's corrections are taken in without a new run
from scratch (the backbone stays frozen where it came pretrained).

Runs are reproducible on a CPU: the seed fixes initialisation, shuffling, augmentation
and dropout, and TensorFlow's op determinism is switched on, so the same params, data
and seed give the same model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackcls.data import manifest
from crackcls.data.balance import balance_weights, emphasised, hard_negatives
from crackcls.data.decoded import decoded_split
from crackcls.data.pipeline import batches_per_epoch, decoded_dataset
from crackcls.model import features, runtime
from crackcls.model.build import (
    CrackModel,
    build_model,
    calibrate_batchnorm,
    compile_binary,
    from_scratch,
    learning_rate_schedule,
    rebuilt,
    unfreeze_top,
)
from crackcls.model.inference import predict_decoded
from crackcls.model.settings import ModelConfig, TrainConfig
from crackcls.trust import companions
from crackcls.util import atomic, paths, plots
from crackcls.util.errors import CrackclsError
from crackcls.util.progress import keras_batch_bar
from crackcls.util.tables import csv_text

HISTORY_FILE = paths.REPORTS_DIR / "train_history.csv"
CURVES_FILE = paths.REPORTS_DIR / "training_curves.png"

# Called after every epoch with the epoch's number (1-based, counted across phases) and its logs.
EpochHook = Callable[[int, dict[str, float]], None]


@dataclass
class Trained:
    """A fitted model and the record of how it got there."""

    crack: CrackModel
    history: dict[str, list] = field(default_factory=dict)  # per epoch: "phase", loss, accuracy, val_*
    metrics: dict[str, float] = field(default_factory=dict)  # training_time_s, epochs_trained, ...
    params: dict[str, str] = field(default_factory=dict)  # what training decided, e.g. layers unfrozen

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))


@dataclass(frozen=True)
class Saved:
    model_file: Path
    companion_files: list[Path]
    plot_files: list[Path]  # the training curves and their CSV, for MLflow's ``plots`` folder


@contextlib.contextmanager
def single_process(model: ModelConfig, train: TrainConfig) -> Iterator[None]:
    """Precision, op determinism and the device strategy (several GPUs: MirroredStrategy) of one process."""
    runtime.configure_precision(train.precision, scratch=from_scratch(model))
    tf.config.experimental.enable_op_determinism()
    with runtime.strategy().scope():
        yield


def new_model(model: ModelConfig, train: TrainConfig, workspace: Path) -> CrackModel:
    """The seeded, untrained classifier; with a feature cache, the backbone the features came from."""
    keras.utils.set_random_seed(train.seed)
    crack = build_model(model, train)
    if features.used(model, train):
        weights_file = features.cache_dir(workspace) / features.BACKBONE_WEIGHTS_FILE
        if not weights_file.is_file():
            raise CrackclsError(f"{weights_file} missing; run `dvc repro features` first")
        crack.backbone.load_weights(str(weights_file))  # the exact weights the features came from
    return crack


def start_from(crack: CrackModel, model_file: Path) -> None:
    """Load another model's weights into ``crack``: the same settings must have built both."""
    try:
        crack.model.load_weights(str(model_file))
    except (ValueError, KeyError) as exc:
        raise CrackclsError(
            f"train.init: the model in {model_file.name} does not fit this model's settings ({crack.model.name}); "
            f"set model.* (backbone, compact.filters) as it was trained. Keras said: {str(exc).splitlines()[0]}"
        ) from None


def fit(
    model: ModelConfig, train: TrainConfig, workspace: Path, on_epoch: EpochHook | None = None, start: Path | None = None
) -> Trained:
    """Train a new classifier on the train split, or go on from ``start``'s weights; early-stopping on validation."""
    crack = new_model(model, train, workspace)
    precision = keras.mixed_precision.global_policy().name
    items = split_items(workspace, "train"), split_items(workspace, "val")
    callbacks = _callbacks(train.patience, bool(items[1]), on_epoch)
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    scratch = from_scratch(model)
    cached = None  # the cached features, while the head alone trains on them
    if start is not None:
        start_from(crack, start)
        adapt = train.adapt
        phases = [("adapt", _fit_on_images(crack, model, train, items, workspace, callbacks, 0, adapt.epochs, adapt.learning_rate))]
        last_rate = adapt.learning_rate
    elif scratch:
        phases = [("scratch", _fit_on_images(crack, model, train, items, workspace, callbacks, 0, train.epochs, scratch=True))]
        last_rate = train.scratch.learning_rate
    elif train.feature_cache:
        cached = _cached_features(model, train, workspace, items[0])
        phases = [("frozen", _fit_head_on_cache(crack, train, cached, callbacks))]
        last_rate = train.learning_rate
    else:
        phases = [("frozen", _fit_on_images(crack, model, train, items, workspace, callbacks, 0, train.epochs, train.learning_rate))]
        last_rate = train.learning_rate
    frozen_epochs = len(phases[0][1]["loss"])
    if start is None and not scratch and model.fine_tune_layers > 0 and train.fine_tune_epochs > 0:
        cached = None  # the backbone now trains too: images, not cached features
        params["fine_tune_layers_unfrozen"] = str(unfreeze_top(crack.backbone, model.fine_tune_layers))
        fine_tune = _fit_on_images(
            crack, model, train, items, workspace, callbacks, frozen_epochs, train.fine_tune_epochs, train.fine_tune_learning_rate
        )
        phases.append(("fine_tune", fine_tune))
        last_rate = train.fine_tune_learning_rate
    if train.hard_negatives.epochs > 0:
        first = sum(len(history["loss"]) for _, history in phases)
        history, figures = _fit_hard_negatives(crack, model, train, items, workspace, callbacks, first, last_rate, cached)
        phases.append(("hard_negatives", history))
        metrics.update(figures)
    if scratch:
        crack = in_float32(crack, model, train)  # BatchNorm statistics of the model that is saved
        metrics["batchnorm_recalibration_images"] = recalibrate_batchnorm(crack, model, train, items[0], workspace)
    history = merge_phases(phases)
    metrics.update(training_time_s=round(time.perf_counter() - started, 2), epochs_trained=len(history["loss"]))
    params["training_precision"] = precision
    return Trained(in_float32(crack, model, train), history, metrics, params)


def in_float32(crack: CrackModel, model: ModelConfig, train: TrainConfig) -> CrackModel:
    """``crack`` itself when it computes in float32, else its weights in a float32 copy."""
    if crack.model.dtype_policy.name == "float32":
        return crack
    return rebuilt(crack, model, train)


def split_items(workspace: Path, split: str) -> list:
    return manifest.read(manifest.manifest_path(split, workspace / paths.SPLIT_DIR))


def _callbacks(patience: int, has_val: bool, on_epoch: EpochHook | None) -> list[keras.callbacks.Callback]:
    monitor = "val_loss" if has_val else "loss"
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True),
        keras_batch_bar(),
    ]
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})
            )
        )
    return callbacks


@dataclass(frozen=True)
class _Cached:
    """The feature cache of the train and val splits, and the training items it holds (the decodable ones)."""

    train: features.FeatureSet
    val: features.FeatureSet
    decoded: list


def _cached_features(model: ModelConfig, train: TrainConfig, workspace: Path, train_items: list) -> _Cached:
    cache = features.cache_dir(workspace)
    key = features.cache_key(model, train, workspace / paths.SPLIT_DIR)
    train_set = features.load(cache, "train", key)
    decoded = [item for item, ok in zip(train_items, train_set.kept) if ok]
    return _Cached(train_set, features.load(cache, "val", key), decoded)


def _fit_head_on_cache(crack: CrackModel, train: TrainConfig, cached: _Cached, callbacks: list) -> dict[str, list[float]]:
    compile_binary(crack.head, train.learning_rate)
    return _train_head(crack, train, cached, balance_weights(cached.decoded, train.balance), callbacks, 0, train.epochs)


def _train_head(
    crack: CrackModel, train: TrainConfig, cached: _Cached, weights: np.ndarray | None, callbacks: list, first_epoch: int, epochs: int
) -> dict[str, list[float]]:
    """Fit the compiled head on the cached train features, validating on the cached val ones."""
    has_val = len(cached.val.labels) > 0
    return crack.head.fit(
        features.head_dataset(cached.train, train.batch_size, train.seed, shuffle=True, weights=weights),
        validation_data=features.head_dataset(cached.val, train.batch_size, train.seed, shuffle=False) if has_val else None,
        initial_epoch=first_epoch,
        epochs=first_epoch + epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=2,
    ).history


def _fit_on_images(
    crack: CrackModel,
    model: ModelConfig,
    train: TrainConfig,
    items: tuple[list, list],
    workspace: Path,
    callbacks: list,
    first_epoch: int,
    epochs: int,
    learning_rate: float = 0.0,
    *,
    scratch: bool = False,
) -> dict[str, list[float]]:
    """Fit the whole model on decoded images; ``scratch`` uses the from-scratch recipe, else ``learning_rate`` stays."""
    train_items = items[0]
    if not train_items:
        raise CrackclsError("the train split is empty; adjust data.split ratios")
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if scratch:
        recipe = train.scratch
        steps = -(-len(train_items) // train.batch_size)
        rate = learning_rate_schedule(recipe.learning_rate, recipe.schedule, steps, epochs, recipe.warmup_epochs)
    _compile_whole(crack, train, rate, scratch)
    weights = balance_weights(train_items, train.balance)
    return _train_images(crack, model, train, items, workspace, weights, callbacks, first_epoch, epochs)


def _compile_whole(
    crack: CrackModel, train: TrainConfig, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule, scratch: bool
) -> None:
    """The whole model compiled for training; from scratch with the recipe's weight decay and label smoothing."""
    if scratch:
        compile_binary(crack.model, learning_rate, train.scratch.weight_decay, train.scratch.label_smoothing)
    else:
        compile_binary(crack.model, learning_rate)


def _train_images(
    crack: CrackModel, model: ModelConfig, train: TrainConfig, items: tuple[list, list], workspace: Path,
    weights: np.ndarray | None, callbacks: list, first_epoch: int, epochs: int,
) -> dict[str, list[float]]:  # fmt: skip
    """Fit the compiled model on the (train, val) images, read from the decoded-image cache."""
    size, batch, seed = model.image_size, train.batch_size, train.seed
    train_items, val_items = items
    train_decoded = decoded_split(train_items, size, workspace, "train")
    if not train_decoded.kept.any():
        raise CrackclsError(f"none of the {len(train_items)} training images could be decoded; see `dvc repro split`'s skip list")
    train_labels = [it.label for it in train_items]
    train_set = decoded_dataset(train_decoded, batch, train_labels, shuffle_seed=seed, weights=weights, repeat=True)
    val_set, val_steps = None, None
    val_decoded = decoded_split(val_items, size, workspace, "val") if val_items else None
    if val_decoded is not None and val_decoded.kept.any():
        val_set = decoded_dataset(val_decoded, batch, [it.label for it in val_items], repeat=True)
        val_steps = batches_per_epoch(val_decoded, batch)
    return crack.model.fit(
        train_set,
        steps_per_epoch=batches_per_epoch(train_decoded, batch),
        validation_data=val_set,
        validation_steps=val_steps,
        initial_epoch=first_epoch,
        epochs=first_epoch + epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=2,
    ).history


def _fit_hard_negatives(
    crack: CrackModel,
    model: ModelConfig,
    train: TrainConfig,
    items: tuple[list, list],
    workspace: Path,
    callbacks: list,
    first_epoch: int,
    last_rate: float,
    cached: _Cached | None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Train on, with the uncracked training images the model now scores highest weighted up.

    The model scores every training image as it stands (un-augmented); per source, the
    ``share`` of uncracked ones it scores highest are weighted ``weight`` times more, at
    ``learning_rate_scale`` of the last phase's learning rate. With ``cached``, the head
    alone goes on training on the cached features. Early stopping restarts with the phase
    and keeps its best epoch.
    """
    config = train.hard_negatives
    rate = last_rate * config.learning_rate_scale
    if cached is not None:
        scored = cached.decoded
        ordered = features.head_dataset(cached.train, train.batch_size, train.seed, shuffle=False)
        scores = crack.head.predict(ordered, verbose=0).reshape(-1).astype(np.float64)
        hard = hard_negatives(scored, scores, config.share)
        compile_binary(crack.head, rate)
        weights = emphasised(balance_weights(scored, train.balance), hard, config.weight)
        history = _train_head(crack, train, cached, weights, callbacks, first_epoch, config.epochs)
    else:
        scored = items[0]
        decoded = decoded_split(scored, model.image_size, workspace, "train")
        readable = decoded.kept
        scores = np.zeros(len(scored))  # an unreadable image is skipped by the dataset, never hard
        scores[readable] = predict_decoded(crack.model, decoded, train.batch_size, with_features=False)[0]
        hard = hard_negatives(scored, scores, config.share) & readable
        scratch = from_scratch(model)
        _compile_whole(crack, train, rate, scratch)
        weights = emphasised(balance_weights(scored, train.balance), hard, config.weight)
        history = _train_images(crack, model, train, items, workspace, weights, callbacks, first_epoch, config.epochs)
    negatives = np.asarray([it.label == 0 for it in scored])
    figures = {
        "hard_negative_images": float(hard.sum()),
        "hard_negative_min_score": float(scores[hard].min()) if hard.any() else float("nan"),
        "train_negative_mean_score_before_hard": float(scores[negatives].mean()) if negatives.any() else float("nan"),
    }
    return history, figures


def recalibrate_batchnorm(crack: CrackModel, model: ModelConfig, train: TrainConfig, train_items: list, workspace: Path) -> int:
    """Inference statistics of the final weights, from un-augmented training images; returns images used."""
    batches = train.scratch.batchnorm_recalibration_batches
    if batches == 0:
        return 0
    images = decoded_dataset(decoded_split(train_items, model.image_size, workspace, "train"), train.batch_size, shuffle_seed=train.seed)
    return calibrate_batchnorm(crack, images.take(batches))


def merge_phases(phases: list[tuple[str, dict[str, list[float]]]]) -> dict[str, list]:
    """One per-epoch history across phases, each epoch labelled with its phase."""
    merged: dict[str, list] = {"phase": []}
    for phase, history in phases:
        merged["phase"].extend([phase] * len(history.get("loss", [])))
        for key, values in history.items():
            merged.setdefault(key, []).extend(float(v) for v in values)
    return merged


def history_csv(history: dict[str, list]) -> str:
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if history.get(k)]
    rows = [
        {"epoch": i + 1, "phase": history["phase"][i], **{k: f"{history[k][i]:.6f}" for k in keys}}
        for i in range(len(history["loss"]))
    ]
    return csv_text(rows, ["epoch", "phase", *keys])


def save(trained: Trained, fitted: companions.Companions, workspace: Path) -> Saved:
    """The model file and its companions, the history CSV DVC plots, and the training-curves PNG; each atomic."""
    model_file = workspace / paths.MODEL_FILE
    with atomic.atomic_path(model_file, suffix=".keras") as tmp:
        trained.crack.model.save(tmp)
    written = companions.write(model_file, fitted)
    atomic.write_text(workspace / HISTORY_FILE, history_csv(trained.history))
    plots.training_curves(trained.history, workspace / CURVES_FILE)
    return Saved(model_file, written, [workspace / CURVES_FILE, workspace / HISTORY_FILE])
