"""DVC stage ``train``: fit the model, track it in MLflow, register it as ``challenger``.

From scratch (``model.weights: none``) every layer trains on images (decoded once and
kept in memory) with the ``train.scratch`` schedule, then BatchNorm's inference
statistics are recomputed from training images. With pretrained weights, phase 1
trains the head with the backbone frozen: on cached features (``train.feature_cache``)
or on images; phase 2, when ``model.fine_tune_layers > 0``, unfreezes the top backbone
layers and continues on images at a low learning rate.

Runs are reproducible on a CPU: the seed fixes initialisation, shuffling, augmentation
and dropout, and TensorFlow's op determinism is switched on, so the same params, data
and seed give the same model and the same ``metrics.json``.
The model is logged with MLflow's Keras flavour (``model``) and as a pyfunc that
takes base64 images (``pyfunc``, the registered and served form), aliased
``challenger``; promotion to ``champion`` is a separate, gated step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from crackcls import atomic, companions, distributed, features, manifest, paths, plots, posttrain, runtime, serving, tracking
from crackcls.config import Config, load_config
from crackcls.data import manifest_dataset
from crackcls.errors import CrackclsError, user_errors_exit
from crackcls.lineage import log_split_lineage
from crackcls.model import (
    CrackModel,
    build_model,
    calibrate_batchnorm,
    compile_binary,
    from_scratch,
    learning_rate_schedule,
    unfreeze_top,
)
from crackcls.progress import keras_batch_bar

CHALLENGER = "challenger"
HISTORY_FILE = paths.REPORTS_DIR / "train_history.csv"
CURVES_FILE = paths.REPORTS_DIR / "training_curves.png"


class EpochMetricsToMlflow(keras.callbacks.Callback):
    """Per-epoch train/val loss and accuracy, stepped by the global epoch across phases."""

    def on_epoch_end(self, epoch, logs=None):  # type: ignore[override]
        if logs:
            mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch + 1)


def _callbacks(patience: int, has_val: bool) -> list[keras.callbacks.Callback]:
    monitor = "val_loss" if has_val else "loss"
    return [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True),
        EpochMetricsToMlflow(),
        keras_batch_bar(),
    ]


def _fit_head_on_cache(crack: CrackModel, config: Config, workspace: Path) -> keras.callbacks.History:
    cache = features.cache_dir(workspace)
    key = features.cache_key(config, workspace / paths.SPLIT_DIR)
    train_set = features.load(cache, "train", key)
    val_set = features.load(cache, "val", key)
    seed, batch = config.train.seed, config.train.batch_size
    compile_binary(crack.head, config.train.learning_rate)
    has_val = len(val_set.labels) > 0
    return crack.head.fit(
        features.head_dataset(train_set, batch, seed, shuffle=True),
        validation_data=features.head_dataset(val_set, batch, seed, shuffle=False) if has_val else None,
        epochs=config.train.epochs,
        callbacks=_callbacks(config.train.patience, has_val),
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=2,
    )


def _split_items(workspace: Path, split: str) -> list:
    return manifest.read(manifest.manifest_path(split, workspace / paths.SPLIT_DIR))


def _fit_on_images(
    crack: CrackModel,
    config: Config,
    workspace: Path,
    learning_rate: float,
    first_epoch: int,
    epochs: int,
    *,
    scratch: bool = False,
) -> keras.callbacks.History:
    """Fit the whole model on decoded images; ``scratch`` uses the from-scratch recipe and keeps images in memory."""
    size, batch, seed = config.model.image_size, config.train.batch_size, config.train.seed
    train_items, val_items = _split_items(workspace, "train"), _split_items(workspace, "val")
    if not train_items:
        raise CrackclsError("the train split is empty; adjust data.split ratios")
    if scratch:
        recipe = config.train.scratch
        steps = -(-len(train_items) // batch)
        schedule = learning_rate_schedule(recipe.learning_rate, recipe.schedule, steps, epochs, recipe.warmup_epochs)
        compile_binary(crack.model, schedule, recipe.weight_decay, recipe.label_smoothing)
    else:
        compile_binary(crack.model, learning_rate)
    return crack.model.fit(
        manifest_dataset(train_items, size, batch, shuffle_seed=seed, base=workspace, cache=scratch),
        validation_data=manifest_dataset(val_items, size, batch, base=workspace, cache=scratch) if val_items else None,
        initial_epoch=first_epoch,
        epochs=first_epoch + epochs,
        callbacks=_callbacks(config.train.patience, bool(val_items)),
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=2,
    )


def _history_csv(history: dict[str, list[float]]) -> str:
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if history.get(k)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "phase", *keys])
    for i in range(len(history["loss"])):
        writer.writerow([i + 1, history["phase"][i], *(f"{history[k][i]:.6f}" for k in keys)])
    return buffer.getvalue()


def _merge(histories: list[tuple[str, keras.callbacks.History]]) -> dict[str, list]:
    merged: dict[str, list] = {"phase": []}
    for phase, history in histories:
        n = len(history.history.get("loss", []))
        merged["phase"].extend([phase] * n)
        for key, values in history.history.items():
            merged.setdefault(key, []).extend(float(v) for v in values)
    return merged


@contextlib.contextmanager
def _model_dir_before_example() -> Iterator[None]:
    """MLflow's Keras flavour writes the input example before it creates the model folder.

    Without this, ``log_model(..., input_example=...)`` fails with FileNotFoundError.
    """
    from mlflow.keras import save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model, input_example, path):  # type: ignore[no-untyped-def]
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


def log_and_register(crack: CrackModel, config: Config, model_file: Path, threshold: float | None = None) -> dict:
    """Log the model twice, register the served form, and alias the new version ``challenger``.

    ``model`` is MLflow's Keras flavour (tensors in, probabilities out: for notebooks and
    ``runs:/<id>/model``). ``pyfunc`` is :class:`crackcls.serving.CrackClassifier` (base64
    image files in, label and probability out): the registered version, so that
    ``mlflow models serve -m models:/<name>@champion`` serves images. It carries the same
    ``.keras`` file, which :func:`crackcls.evaluation.load_model` finds for promotion.
    """
    size = config.model.image_size
    example = np.zeros((1, size, size, 3), np.float32)
    signature = infer_signature(example, crack.model.predict(example, verbose=0))
    with _model_dir_before_example():
        keras_info = mlflow.keras.log_model(
            crack.model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
        )
    threshold = config.evaluate.threshold if threshold is None else threshold
    info = serving.log_pyfunc(
        model_file,
        threshold=threshold,
        registered_model_name=config.registry.model_name,
        pip_requirements=_requirements(),
    )
    version = str(info.registered_model_version)
    client = tracking.client()
    client.set_registered_model_alias(config.registry.model_name, CHALLENGER, version)
    client.set_model_version_tag(config.registry.model_name, version, "backbone", config.model.backbone)
    client.set_model_version_tag(config.registry.model_name, version, "threshold", f"{threshold:.6g}")
    client.set_model_version_tag(config.registry.model_name, version, "target_recall", str(config.evaluate.target_recall))
    for path in [model_file, *companions.files_for(model_file)]:
        mlflow.log_artifact(str(path), artifact_path="keras_file")
    return {"model_uri": info.model_uri, "keras_model_uri": keras_info.model_uri, "registered_model_version": version}


def _requirements() -> list[str]:
    """Exact versions of what the model needs to load; avoids MLflow's slow import probing."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow", "keras", "numpy", "pillow", "mlflow")]


def run(config: Config, workspace: Path) -> dict:
    """Train under the strategy the machine calls for (several GPUs: MirroredStrategy; TF_CONFIG: several workers)."""
    if distributed.multi_worker():
        return distributed.train(config, workspace)
    runtime.configure_precision()
    tf.config.experimental.enable_op_determinism()
    with runtime.strategy().scope():
        return _train_and_track(config, workspace)


def recalibrate_batchnorm(crack: CrackModel, config: Config, workspace: Path) -> int:
    """Inference statistics of the final weights, from un-augmented training images; returns images used."""
    batches = config.train.scratch.batchnorm_recalibration_batches
    if batches == 0:
        return 0
    size, batch, seed = config.model.image_size, config.train.batch_size, config.train.seed
    images = manifest_dataset(_split_items(workspace, "train"), size, batch, shuffle_seed=seed, base=workspace)
    return calibrate_batchnorm(crack, (x for x, _ in images.take(batches)))


def _train_and_track(config: Config, workspace: Path) -> dict:
    keras.utils.set_random_seed(config.train.seed)
    crack = build_model(config.model, config.train)
    scratch = from_scratch(config.model)
    if features.used(config):
        weights_file = features.cache_dir(workspace) / features.BACKBONE_WEIGHTS_FILE
        if not weights_file.is_file():
            raise CrackclsError(f"{weights_file} missing; run `dvc repro features` first")
        crack.backbone.load_weights(str(weights_file))  # the exact weights the features came from

    tracking.configure(config.mlflow.experiment)
    run_name = f"{config.model.backbone}-{config.model.image_size}px"
    with mlflow.start_run(run_name=run_name) as active:
        mlflow.set_tags({**tracking.git_tags(workspace), "stage": "train"})
        log_split_lineage(workspace)
        mlflow.set_tags({f"runtime.{key}": str(value) for key, value in runtime.describe().items()})
        mlflow.log_params(tracking.flatten("", config.model_dump(mode="json")))
        started = time.perf_counter()
        if scratch:
            phases = [("scratch", _fit_on_images(crack, config, workspace, 0.0, 0, config.train.epochs, scratch=True))]
            mlflow.log_metric("batchnorm_recalibration_images", recalibrate_batchnorm(crack, config, workspace))
        elif config.train.feature_cache:
            phases = [("frozen", _fit_head_on_cache(crack, config, workspace))]
        else:
            phases = [("frozen", _fit_on_images(crack, config, workspace, config.train.learning_rate, 0, config.train.epochs))]
        frozen_epochs = len(phases[0][1].history["loss"])
        if not scratch and config.model.fine_tune_layers > 0 and config.train.fine_tune_epochs > 0:
            unfrozen = unfreeze_top(crack.backbone, config.model.fine_tune_layers)
            mlflow.log_param("fine_tune_layers_unfrozen", unfrozen)
            phases.append(
                (
                    "fine_tune",
                    _fit_on_images(
                        crack, config, workspace, config.train.fine_tune_learning_rate, frozen_epochs, config.train.fine_tune_epochs
                    ),
                )
            )
        seconds = time.perf_counter() - started
        history = _merge(phases)
        mlflow.log_metrics({"training_time_s": seconds, "epochs_trained": len(history["loss"])})

        fitted = posttrain.fit(crack.model, config, workspace)  # calibrates crack.model in place
        mlflow.log_metrics(fitted.metrics)
        model_file = workspace / paths.MODEL_FILE
        with atomic.atomic_path(model_file, suffix=".keras") as tmp:
            crack.model.save(tmp)
        companions.write(model_file, fitted.companions)
        atomic.write_text(workspace / HISTORY_FILE, _history_csv(history))
        plots.training_curves(history, workspace / CURVES_FILE, phase_start=frozen_epochs if len(phases) > 1 else None)
        mlflow.log_artifact(str(workspace / CURVES_FILE), artifact_path="plots")
        mlflow.log_artifact(str(workspace / HISTORY_FILE), artifact_path="plots")

        registered = log_and_register(crack, config, model_file, fitted.companions.threshold)
        info = {
            "run_id": active.info.run_id,
            "experiment_id": active.info.experiment_id,
            "tracking_uri": tracking.tracking_uri(),
            "registered_model": config.registry.model_name,
            **registered,
            "training_time_s": round(seconds, 2),
            "epochs_trained": len(history["loss"]),
        }
        atomic.write_json(workspace / paths.RUN_INFO_FILE, info)
    return info


@user_errors_exit
def main() -> None:
    info = run(load_config(), paths.workspace_root())
    if "run_id" not in info:
        return  # a worker of a multi-worker run: the chief logs, writes and reports
    print(
        f"train: run {info['run_id']}, {info['epochs_trained']} epochs in {info['training_time_s']} s; "
        f"registered {info['registered_model']} v{info['registered_model_version']} as @{CHALLENGER}"
    )


if __name__ == "__main__":
    main()
