"""Export a trained model as a SavedModel, ONNX and LiteRT (float32 and int8), and check each against Keras.

Every export takes RGB uint8 images of the model's input size, decoded and resized as
:func:`crackcls.data.images.load_rgb` does, and answers the calibrated crack probability
(the temperature is folded into the output layer) and, where the model has them, the
familiarity features of the same pass. The graph is traced from our own ``tf.function`` with
``training=False`` and converted with tf2onnx and the TFLite converter: Keras's own
``Model.export`` traces a nested model's augmentation and batch-norm layers in a way that
the converters mis-read.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackcls.model import portable
from crackcls.model.inference import familiarity_reference, forward_pass, has_pool_layer, model_input_size
from crackcls.trust import familiarity
from crackcls.util.errors import CrackclsError

SAVED_MODEL_DIR = "saved_model"
LITERT_FILE = "model.tflite"
LITERT_INT8_FILE = "model.int8.tflite"
FORMATS = ("saved_model", "onnx", "litert", "litert_int8")
FILES = {"saved_model": SAVED_MODEL_DIR, "onnx": portable.ONNX_FILE, "litert": LITERT_FILE, "litert_int8": LITERT_INT8_FILE}
ONNX_OPSET = 17
# Parity: a float export may differ from Keras by float rounding only; int8 must keep the labels.
FLOAT_TOLERANCE = 1e-4
INT8_LABEL_AGREEMENT = 0.995
# An image this close to the threshold keeps its label either way: int8 rounding alone moves it across.
LABEL_TIE_MARGIN = 0.01


class ExportDrift(CrackclsError):
    """An export answers differently from the Keras model it came from."""


def _serving_model(model: keras.Model) -> tuple[keras.Model, tuple[str, ...]]:
    """The Keras model that is exported, and its output names: probability, and features where the model has them."""
    if has_pool_layer(model):
        both = familiarity.feature_model(model)
        if both is not None:
            return both, (portable.PROBABILITY, portable.FEATURES)
    return model, (portable.PROBABILITY,)


def _endpoint(model: keras.Model):  # noqa: ANN202 - (function, its input signature, the tracked model)
    size = model_input_size(model)
    served, names = _serving_model(model)
    spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name=portable.INPUT)

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        out = served(tf.cast(image, tf.float32), training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(names, out))

    return serve, spec, served


def write_saved_model(model: keras.Model, target: Path) -> Path:
    """A TensorFlow SavedModel whose ``serve`` (and default) signature is the export's uint8 endpoint."""
    serve, spec, served = _endpoint(model)
    archive = keras.export.ExportArchive()
    archive.track(served)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    archive.write_out(str(target), verbose=False)
    return target


def write_onnx(model: keras.Model, target: Path) -> Path:
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # tf2onnx's NumPy 2 fix, as Keras applies it

    serve, spec, _ = _endpoint(model)
    patch_tf2onnx()
    tf2onnx.convert.from_function(tf.function(serve, input_signature=[spec]), input_signature=[spec],
                                  opset=ONNX_OPSET, output_path=str(target))  # fmt: skip
    return target


def write_litert(saved_model: Path, target: Path, int8: str | None = None, representative: np.ndarray | None = None) -> Path:
    """LiteRT from the SavedModel: float32; or int8 weights with ``int8="weights"`` (activations stay float);
    or int8 weights and activations with ``int8="full"``, their ranges calibrated on ``representative``."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    if int8 is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if int8 == "full":
        if representative is None or not len(representative):
            raise CrackclsError("full int8 LiteRT needs representative images; none could be read")

        def samples() -> Iterator[list[np.ndarray]]:
            for image in representative:
                yield [image[None]]

        converter.representative_dataset = samples
    target.write_bytes(converter.convert())
    return target


INT8_MODES = ("full", "weights")


def same_labels(export_prob: np.ndarray, keras_prob: np.ndarray, threshold: float) -> np.ndarray:
    """Per image: does the export give the Keras label (a Keras probability within ``LABEL_TIE_MARGIN`` of the threshold counts as a tie)?"""
    same = (np.asarray(export_prob) >= threshold) == (np.asarray(keras_prob) >= threshold)
    return same | (np.abs(np.asarray(keras_prob) - threshold) <= LABEL_TIE_MARGIN)


def write_litert_int8(
    model: keras.Model, saved_model: Path, target: Path, representative: np.ndarray, choose_on: np.ndarray, threshold: float
) -> tuple[Path, str, dict[str, float]]:
    """int8 LiteRT: full integer (what NPUs and microcontrollers run) when it keeps the Keras labels of at least
    ``INT8_LABEL_AGREEMENT`` of the ``choose_on`` images (validation images, not the parity ones), else int8 weights
    with float activations. Returns the file, the mode kept and each tried mode's label agreement."""
    keras_prob = np.asarray(forward_pass(model)(choose_on.astype(np.float32))).reshape(-1)
    tried: dict[str, float] = {}
    for mode in INT8_MODES:
        write_litert(saved_model, target, mode, representative)
        tried[mode] = float(np.mean(same_labels(litert_probabilities(target, choose_on), keras_prob, threshold)))
        if tried[mode] >= INT8_LABEL_AGREEMENT:
            break
    return target, mode, tried


def litert_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """A LiteRT file's probabilities, one image at a time as a device runs it."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(str(path)).get_signature_runner("serve")
    return np.array([float(np.ravel(runner(**{portable.INPUT: image[None]})[portable.PROBABILITY])[0]) for image in images])


def saved_model_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(images))[portable.PROBABILITY]).reshape(-1)


@dataclass
class Parity:
    """How one export's answers compare with the Keras model's on the same images."""

    n: int
    max_abs_difference: float
    label_agreement: float
    accuracy_keras: float | None = None
    accuracy_export: float | None = None
    familiarity_max_abs_difference: float | None = None

    def within(self, fmt: str) -> bool:
        if fmt == "litert_int8":
            return self.label_agreement >= INT8_LABEL_AGREEMENT
        return self.max_abs_difference <= FLOAT_TOLERANCE


def parity(model: keras.Model, folder: Path, images: np.ndarray, labels: np.ndarray | None, threshold: float) -> dict[str, Parity]:
    """Each export in ``folder`` against the Keras model on ``images`` (uint8), with accuracies where ``labels`` are known."""
    if not len(images):
        raise CrackclsError("no readable images to check the exports against")
    reference = familiarity_reference(model)
    forward = forward_pass(model, with_features=reference is not None)
    out = forward(images.astype(np.float32))
    keras_features = None
    if reference is not None:
        out, keras_features = out
    keras_prob = np.asarray(out).reshape(-1)
    exported: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for fmt, name in FILES.items():
        path = folder / name
        if not path.exists():
            continue
        if fmt == "onnx":
            onnx_model = portable.PortableModel(path)
            result = onnx_model.forward(images, with_features=onnx_model.has_features)
            exported[fmt] = result if onnx_model.has_features else (result, None)
        elif fmt == "saved_model":
            exported[fmt] = (saved_model_probabilities(path, images), None)
        else:
            exported[fmt] = (litert_probabilities(path, images), None)
    report = {}
    for fmt, (prob, features) in exported.items():
        same = same_labels(prob, keras_prob, threshold)
        check = Parity(len(images), float(np.max(np.abs(prob - keras_prob))), float(np.mean(same)))
        if labels is not None:
            check.accuracy_keras = float(np.mean((keras_prob >= threshold) == labels))
            check.accuracy_export = float(np.mean((prob >= threshold) == labels))
        if features is not None and keras_features is not None:
            check.familiarity_max_abs_difference = float(
                np.max(np.abs(reference.score(np.asarray(features)) - reference.score(np.asarray(keras_features))))
            )
        report[fmt] = check
    return report


def write_all(
    model: keras.Model,
    target: Path,
    formats: tuple[str, ...],
    threshold: float,
    representative: np.ndarray | None = None,
    choose_on: np.ndarray | None = None,
) -> tuple[dict[str, Path], dict]:
    """Every format asked for into ``target`` (an empty folder), and how int8 was made. The SavedModel is
    written first: LiteRT converts it."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise CrackclsError(f"unknown export format(s) {', '.join(sorted(unknown))}; choose from {', '.join(FORMATS)}")
    if "litert_int8" in formats and (representative is None or choose_on is None or not len(choose_on)):
        raise CrackclsError("int8 LiteRT needs representative (training) and validation images")
    written: dict[str, Path] = {}
    int8: dict = {}
    needs_saved_model = {"saved_model", "litert", "litert_int8"} & set(formats)
    saved = write_saved_model(model, target / SAVED_MODEL_DIR) if needs_saved_model else target / SAVED_MODEL_DIR
    if "saved_model" in formats:
        written["saved_model"] = saved
    if "onnx" in formats:
        written["onnx"] = write_onnx(model, target / portable.ONNX_FILE)
    if "litert" in formats:
        written["litert"] = write_litert(saved, target / LITERT_FILE)
    if "litert_int8" in formats:
        path, mode, tried = write_litert_int8(model, saved, target / LITERT_INT8_FILE, representative, choose_on, threshold)
        written["litert_int8"] = path
        int8 = {"mode": mode, "representative_images": len(representative), "validation_images": len(choose_on),
                "validation_label_agreement": tried[mode], "tried": tried}  # fmt: skip
    if needs_saved_model and "saved_model" not in formats:
        shutil.rmtree(saved)  # it was only the LiteRT converter's input
    return written, int8
