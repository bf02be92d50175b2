"""What MLflow holds about a model: its training run, the registered versions, evaluations, and loading by URI.

A trained model is logged twice. ``model`` is MLflow's Keras flavour (tensors in,
probabilities out: for notebooks and ``runs:/<id>/model``). ``pyfunc`` is
:class:`crackcls.tracking.serving.CrackClassifier` (base64 image files in, label and
probability out): the registered version, aliased ``challenger``, so that
``mlflow models serve -m models:/<name>@champion`` serves images. It carries the same
``.keras`` file and its companions, which :func:`load_model` finds for promotion.
Promotion to ``champion`` is a separate, gated step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature

from crackcls.data.download import sha256_file
from crackcls.model import portable
from crackcls.model.evaluation import Evaluation
from crackcls.model.inference import load_model_file
from crackcls.tracking import lineage, serving, store
from crackcls.trust.intervals import format_interval
from crackcls.trust.metrics import json_safe
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

CHALLENGER = "challenger"
CHAMPION = "champion"


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    experiment_id: str


@contextlib.contextmanager
def training_run(
    experiment: str, run_name: str, params: dict[str, Any], workspace: Path, runtime_tags: dict[str, str]
) -> Iterator[TrainingRun]:
    """An MLflow run for one training: git state, split lineage, runtime and every parameter, logged first."""
    store.configure(experiment)
    with mlflow.start_run(run_name=run_name) as active:
        mlflow.set_tags({**store.git_tags(workspace), "stage": "train"})
        lineage.log_split_lineage(workspace)
        mlflow.set_tags({f"runtime.{key}": str(value) for key, value in runtime_tags.items()})
        mlflow.log_params(store.flatten("", params))
        yield TrainingRun(active.info.run_id, active.info.experiment_id)


def log_epoch(epoch: int, logs: dict[str, float]) -> None:
    """Per-epoch train/val loss and accuracy, stepped by the global epoch across phases."""
    mlflow.log_metrics(logs, step=epoch)


def log_training(metrics: dict[str, float], params: dict[str, str], plot_files: Sequence[Path]) -> None:
    mlflow.log_metrics(metrics)
    if params:
        mlflow.log_params(params)
    for path in plot_files:
        mlflow.log_artifact(str(path), artifact_path="plots")


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


def log_and_register(
    model: keras.Model,
    model_file: Path,
    companion_files: Sequence[Path],
    *,
    model_name: str,
    threshold: float,
    tags: dict[str, str],
) -> dict:
    """Log the model in both forms, register the served form, alias it ``challenger`` and tag the version."""
    size = int(model.input_shape[1])
    example = np.zeros((1, size, size, 3), np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    with _model_dir_before_example():
        keras_info = mlflow.keras.log_model(
            model, name="model", signature=signature, input_example=example, pip_requirements=_requirements()
        )
    info = serving.log_pyfunc(
        model_file, threshold=threshold, registered_model_name=model_name, pip_requirements=_requirements()
    )
    version = str(info.registered_model_version)
    client = store.client()
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    for key, value in {**tags, "threshold": f"{threshold:.6g}"}.items():
        client.set_model_version_tag(model_name, version, key, value)
    for path in [model_file, *companion_files]:
        mlflow.log_artifact(str(path), artifact_path="keras_file")
    return {"model_uri": info.model_uri, "keras_model_uri": keras_info.model_uri, "registered_model_version": version}


KERAS_REQUIREMENTS = ("tensorflow", "keras", "numpy", "pillow", "mlflow")
ONNX_REQUIREMENTS = ("onnx", "onnxruntime", "numpy")


def _requirements(names: Sequence[str] = KERAS_REQUIREMENTS) -> list[str]:
    """Exact versions of what the model needs to load; avoids MLflow's slow import probing."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]


def log_to_mlflow(result: Evaluation, files: dict[str, Path], prefix: str, artifact_path: str) -> None:
    """Metrics under ``<prefix>_*`` and every report file as an artifact of the active run."""
    numeric = {f"{prefix}_{k}": v for k, v in json_safe(result.metrics).items() if v is not None}
    for source, values in result.by_source.items():
        numeric.update({f"{prefix}_sources.{source}.{k}": v for k, v in json_safe(values).items() if v is not None})
    numeric[f"{prefix}_skipped"] = result.skipped.count
    mlflow.log_metrics(numeric)
    for path in files.values():
        if path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def load_model(spec: str) -> tuple[keras.Model, str | None]:
    """A model from a ``.keras`` path or an MLflow URI (``models:/name@alias``, ``runs:/id/model``).

    Returns the model and, for MLflow URIs, the run that produced it. Loading always
    goes through Keras's safe mode.
    """
    model, source_run, _ = _load(spec, digest=False)
    return model, source_run


def load_model_and_digest(spec: str) -> tuple[keras.Model, str | None, str]:
    """:func:`load_model`, and the sha256 of the ``.keras`` file it read (an export records it)."""
    model, source_run, digest = _load(spec, digest=True)
    return model, source_run, digest


def _load(spec: str, digest: bool) -> tuple[keras.Model, str | None, str | None]:
    def loaded(path: Path, source_run: str | None) -> tuple[keras.Model, str | None, str | None]:
        return load_model_file(path), source_run, sha256_file(path) if digest else None

    if not store.is_model_uri(spec):
        return loaded(paths.resolve(spec), None)
    store.configure_uri_only()
    try:
        source_run = store.source_run(spec)
    except mlflow.exceptions.MlflowException as exc:
        raise _unresolved(spec, exc) from None
    with downloaded_model_file(spec) as local:
        return loaded(local, source_run)


@contextlib.contextmanager
def downloaded_model_file(uri: str) -> Iterator[Path]:
    """The ``.keras`` file of the model at an MLflow ``uri``, in a temporary folder for as long as it is needed."""
    with tempfile.TemporaryDirectory(prefix="crackcls-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except mlflow.exceptions.MlflowException as exc:
            raise _unresolved(uri, exc) from None
        candidates = sorted(local.rglob("*.keras"))
        if not candidates:
            raise CrackclsError(f"{uri} holds no .keras model file")
        yield candidates[0]


def _unresolved(uri: str, exc: mlflow.exceptions.MlflowException) -> CrackclsError:
    return CrackclsError(f"cannot resolve model {uri}: {exc.message.splitlines()[0]}")


SOURCE_TAG_KEYS = ("accuracy", "balanced_accuracy", "recall")


def tag_version_with_test_metrics(
    model_name: str, version: str, metrics: dict[str, float], by_source: dict[str, dict[str, float]] | None = None
) -> None:
    """The headline test figures and their intervals on the registered version, where the registry lists them.

    Each source gets one tag, e.g. ``test_source_decks``: ``accuracy 0.81 [0.77, 0.85]; ...``.
    """
    client = store.client()
    for key in ("f1", "accuracy", "recall", "roc_auc"):
        client.set_model_version_tag(model_name, version, f"test_{key}", f"{metrics[key]:.4f}")
        if interval := format_interval(metrics, key):
            client.set_model_version_tag(model_name, version, f"test_{key}_ci95", interval)
    for source, values in (by_source or {}).items():
        text = "; ".join(f"{key} {values[key]:.4f} {format_interval(values, key)}".rstrip() for key in SOURCE_TAG_KEYS)
        client.set_model_version_tag(model_name, version, f"test_source_{source}", f"{text}; n={values['n']}")


def publish_model_card(model_name: str, version: str, run_id: str, card_file: Path) -> None:
    """The card as the registered version's description and as an artifact of its training run."""
    store.client().update_model_version(model_name, version, description=card_file.read_text(encoding="utf-8"))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(card_file), artifact_path="model_card")


def log_evaluation(
    run_id: str, test: Evaluation, files: dict[str, Path], extra: dict[str, tuple[Evaluation, dict[str, Path]]],
    more_files: Sequence[Path], warnings: Sequence[str],
) -> None:  # fmt: skip
    """The test split's and every extra set's metrics and reports, into the model's training run."""
    store.configure_uri_only()
    with mlflow.start_run(run_id=run_id):
        log_to_mlflow(test, files, prefix="test", artifact_path="evaluation")
        for path in more_files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        for name, (result, result_files) in extra.items():
            log_to_mlflow(result, result_files, prefix=name, artifact_path=f"evaluation/{name}")
        if warnings:
            mlflow.set_tag("domain_shift_warning", " | ".join(warnings)[:5000])


def log_export(spec: str, run_id: str, folder: Path, manifest: dict) -> str | None:
    """The export folder as artifacts ``export/`` of the model's training run, the ONNX file also in MLflow's
    ONNX flavour (``onnx_model``); a registered version is tagged with the formats and the parity figures.

    Returns the registered version tagged, if ``spec`` names one.
    """
    import onnx

    store.configure_uri_only()
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(folder), artifact_path="export")
        onnx_file = folder / portable.ONNX_FILE
        if onnx_file.is_file():
            mlflow.onnx.log_model(onnx.load(str(onnx_file)), name="onnx_model", pip_requirements=_requirements(ONNX_REQUIREMENTS))
        mlflow.log_metrics(
            {f"export_{fmt}_{key}": value for fmt, check in manifest["parity"].items()
             for key, value in check.items() if isinstance(value, (int, float))}  # fmt: skip
        )
    version = store.registered_version(spec)
    if version is not None:
        name, number = version.name, str(version.version)
        client = store.client()
        client.set_model_version_tag(name, number, "export_formats", ",".join(manifest["files"]))
        for fmt, check in manifest["parity"].items():
            client.set_model_version_tag(
                name, number, f"export_{fmt}_parity",
                f"max |dp| {check['max_abs_difference']:.2g}, same label {check['label_agreement']:.4f} (n={check['n']})",
            )  # fmt: skip
        return number
    return None
