"""The served form of the classifier: an MLflow pyfunc model that takes image files as base64.

The training run logs two views of one model: MLflow's Keras flavour (``model``: tensors
in, probabilities out, for people and notebooks) and this wrapper (``pyfunc``), which is
the registered version. So ``mlflow models serve -m models:/crackcls@champion`` accepts

    {"dataframe_records": [{"image": "<base64 of a .jpg/.png/... file>"}]}

and answers one row per image with ``label``, ``crack_probability`` (calibrated),
``threshold`` (the one stored with the model), ``familiarity`` and ``unfamiliar``
(:mod:`crackcls.trust.familiarity`) and ``error`` (set, with the others empty, for an image that
cannot be read: one bad file never fails the whole request). A request may pass
``"params": {"threshold": t}``.

With ``"params": {"scan": true}`` each image is a whole photo, scanned tile by tile as
``crackcls scan`` does (``tile`` and ``stride`` may be passed too; 0 means the default):
``label`` is the photo verdict, ``crack_probability`` its score, and ``crack_tiles``,
``tiles``, ``max_probability`` and ``regions`` (JSON text: boxes in photo pixels) are added.

Decoding and scoring are :func:`crackcls.model.inference.score_files`, the code behind
``crackcls predict``, so the server and the command line return the same numbers. The
``.keras`` file travels as a pyfunc artifact, so :func:`crackcls.tracking.registry.load_model`
still finds it in the registered version, and the crackcls package travels as code, so
the served model does not depend on a checkout.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from PIL import Image

from crackcls.data.images import SkipReport
from crackcls.model.inference import label_for, load_model_file, score_files, set_shift
from crackcls.photos.scan import DEFAULT_TILE, ScanSettings, scan_files, settings_for, tiles_shift
from crackcls.trust import companions

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("label", "crack_probability", "threshold", "familiarity", "unfamiliar", "error")
# The request's images tested as one set (crackcls.trust.shift), repeated on every row; null when the model
# has no familiarity reference or the request holds fewer than shift.MIN_IMAGES readable images.
SET_COLUMNS = ("set_shift", "set_shift_p_value", "set_shift_median_ratio")
SCAN_COLUMNS = ("crack_tiles", "tiles", "max_probability", "regions")
KERAS_ARTIFACT = "keras_model"
ARTIFACT_NAME = "pyfunc"
BATCH_SIZE = 32
NOT_BASE64 = "not base64"
# What the served model needs beyond the Keras flavour's requirements: what crackcls imports.
EXTRA_REQUIREMENTS = ("pandas", "pydantic", "pyyaml", "scikit-learn", "matplotlib")


class CrackClassifier(mlflow.pyfunc.PythonModel):
    """Base64-encoded image files in, one label and crack probability per image out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model: keras.Model = load_model_file(context.artifacts[KERAS_ARTIFACT])
        self.threshold = float((context.model_config or {}).get("threshold", 0.5))

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        threshold = float(params.get("threshold", self.threshold))
        if params.get("scan"):
            explicit = "threshold" in params and float(params["threshold"]) != self.threshold  # else the fitted photo rule
            settings = settings_for(
                self.model, int(params.get("tile") or DEFAULT_TILE), int(params.get("stride") or 0) or None,
                threshold if explicit else None, self.threshold,
            )  # fmt: skip
            return scan_encoded(self.model, model_input[IMAGE_COLUMN].tolist(), settings)
        return classify_encoded(self.model, model_input[IMAGE_COLUMN].tolist(), threshold)


def classify_encoded(model: keras.Model, encoded: Sequence[Any], threshold: float) -> pd.DataFrame:
    """Score base64 image files; a row's ``error`` says why it has no label and probability."""
    count = len(encoded)
    probabilities: list[float | None] = [None] * count
    familiar: list[float | None] = [None] * count
    errors: list[str | None] = [None] * count
    with tempfile.TemporaryDirectory(prefix="crackcls-serve-") as tmp:
        files = _write_files(encoded, Path(tmp), errors)
        scores = score_files(model, list(files.values()), BATCH_SIZE, base=Path(tmp))
        tested = set_shift(model, scores.familiarity, scores.probabilities >= threshold)
        scored = scores.familiarity if scores.familiarity is not None else [None] * len(files)
        for index, probability, reason, score in zip(files, scores.probabilities, scores.reasons, scored):
            errors[index] = reason
            probabilities[index] = None if reason else float(probability)
            familiar[index] = None if reason or score is None else float(score)
    columns = {
        "label": [None if p is None else label_for(p, threshold) for p in probabilities],
        "crack_probability": probabilities,
        "threshold": [float(threshold)] * count,
        "familiarity": familiar,
        "unfamiliar": [None if f is None else bool(f > 1.0) for f in familiar],
        "error": errors,
        **set_columns(tested, count),
    }
    # object columns keep None as None: JSON null, where pandas' own missing value is NaN (not JSON)
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()}).astype(
        {"threshold": float}
    )


def set_columns(tested, count: int) -> dict[str, list]:  # noqa: ANN001 - a ShiftTest or None
    """The set-level shift test as columns repeated on each of ``count`` rows (null when not tested)."""
    if tested is None or not tested.tested:
        return {name: [None] * count for name in SET_COLUMNS}
    values = (bool(tested.shifted), float(tested.p_value), float(tested.median_ratio))
    return {name: [value] * count for name, value in zip(SET_COLUMNS, values)}


def scan_encoded(model: keras.Model, encoded: Sequence[Any], settings: ScanSettings) -> pd.DataFrame:
    """Scan base64 photos; one row per photo, ``error`` set (and the rest empty) for one that cannot be read."""
    count = len(encoded)
    errors: list[str | None] = [None] * count
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    with tempfile.TemporaryDirectory(prefix="crackcls-serve-") as tmp:
        files = {path: index for index, path in _write_files(encoded, Path(tmp), errors).items()}
        skips = SkipReport()
        scans = []
        for scan, _ in scan_files(model, list(files), settings, BATCH_SIZE, skips):
            scans.append(scan)
            row = scan.row()
            rows[files[Path(scan.path)]].update(
                label=row["verdict"], crack_probability=row["score"], crack_tiles=row["crack_tiles"], tiles=row["tiles"],
                max_probability=row["max_probability"], regions=json.dumps(row["regions"]),
                familiarity=row.get("familiarity"), unfamiliar=row.get("unfamiliar"),
            )  # fmt: skip
        for path, reason in skips.skipped:
            errors[files[Path(path)]] = reason
    columns = [*OUTPUT_COLUMNS, *SCAN_COLUMNS, *SET_COLUMNS]
    values = {name: [row.get(name) for row in rows] for name in columns}
    values["threshold"] = [float(settings.threshold)] * count
    values["error"] = errors
    values.update(set_columns(tiles_shift(model, scans), count))
    return pd.DataFrame({name: pd.Series(values[name], dtype=object) for name in columns}).astype({"threshold": float})


def _write_files(encoded: Sequence[Any], folder: Path, errors: list[str | None]) -> dict[int, Path]:
    """Each decodable value as a file in ``folder`` (by input index); ``errors`` gets NOT_BASE64 for the rest."""
    files: dict[int, Path] = {}
    for index, value in enumerate(encoded):
        data = _decode_base64(value)
        if data is None:
            errors[index] = NOT_BASE64
            continue
        files[index] = folder / f"{index}.img"  # the decoder sniffs the format, not the name
        files[index].write_bytes(data)
    return files


def _decode_base64(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)  # a pandas client may already hold raw bytes
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def encode_file(path: str | os.PathLike[str]) -> str:
    """An image file as the base64 text the served model expects."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def example_image() -> str:
    """A tiny synthetic PNG (grey with a dark diagonal line), base64: the logged input example."""
    pixels = np.full((32, 32, 3), 170, np.uint8)
    diagonal = np.arange(32)
    pixels[diagonal, diagonal] = 40
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def log_pyfunc(
    model_file: Path,
    threshold: float | None,
    registered_model_name: str | None,
    pip_requirements: list[str],
    name: str = ARTIFACT_NAME,
) -> ModelInfo:
    """Log the wrapper (with the ``.keras`` file, its companions and the crackcls code) to the active run, and register it.

    ``threshold`` None: the one stored beside the model file (else 0.5).
    """
    example = pd.DataFrame({IMAGE_COLUMN: [example_image()]})
    model = load_model_file(model_file)
    threshold = companions.threshold(model, threshold, 0.5)
    # One readable and one empty image, so the output schema types every column, optional where it may be empty.
    output = classify_encoded(model, [example_image(), ""], threshold)
    params = {"threshold": float(threshold), "scan": False, "tile": 0, "stride": 0}
    signature = infer_signature(example, output, params=params)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=CrackClassifier(),
        # the companions keep their names beside the .keras file, where load_model_file finds them
        artifacts={KERAS_ARTIFACT: str(model_file), **{f.name: str(f) for f in companions.files_for(model_file)}},
        code_paths=[str(Path(__file__).parent)],
        model_config={"threshold": float(threshold)},
        signature=signature,
        input_example=example,
        registered_model_name=registered_model_name,
        pip_requirements=[*pip_requirements, *_pinned(EXTRA_REQUIREMENTS)],
    )


def _pinned(names: tuple[str, ...]) -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]
