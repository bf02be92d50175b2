"""The exported ONNX model scored with ONNX Runtime: ``predict`` and ``scan`` without importing TensorFlow.

An export folder (:mod:`crackcls.model.export`) holds ``model.onnx`` beside the model's
companions (``model.decision.json``, ``model.familiarity.npz``). The graph takes RGB uint8
images of the model's input size, decoded and resized exactly as for the Keras model
(:func:`crackcls.data.images.load_rgb`), and answers the calibrated crack probability and,
where the model has them, the familiarity features of the same forward pass.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from crackcls.data.images import SkipReport, load_batch
from crackcls.model.scoring import Scores
from crackcls.trust import companions
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
INPUT = "image"
PROBABILITY = "crack_probability"
FEATURES = "familiarity_features"


class PortableModel:
    """One ONNX Runtime session and what is known of its graph."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own types for bad files
            raise CrackclsError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None
        self.path = path
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT not in inputs or PROBABILITY not in outputs:
            raise CrackclsError(f"{path} is not a crackcls export: it needs input '{INPUT}' and output '{PROBABILITY}'")
        shape = inputs[INPUT].shape
        if inputs[INPUT].type != "tensor(uint8)" or len(shape) != 4 or shape[1] != shape[2] or not isinstance(shape[1], int):
            raise CrackclsError(f"{path}: input '{INPUT}' is {inputs[INPUT].type} {shape}, not square RGB uint8 images")
        self.input_size = int(shape[1])
        self.has_features = FEATURES in outputs

    def forward(self, images: np.ndarray, with_features: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``images`` (N, size, size, 3), 0–255 → probabilities (N,), and the familiarity features with ``with_features``."""
        names = [PROBABILITY, FEATURES] if with_features else [PROBABILITY]
        if images.dtype != np.uint8:  # scan's tiles come as float 0-255 values of uint8 pixels
            images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        out = self.session.run(names, {INPUT: images})
        probabilities = out[0].reshape(-1)
        return (probabilities, out[1]) if with_features else probabilities


def is_portable(model: object) -> bool:
    return isinstance(model, PortableModel)


def onnx_file(spec: str | os.PathLike[str]) -> Path:
    """``model.onnx`` itself, or the one in an export folder."""
    path = Path(spec)
    if path.is_dir():
        path = path / ONNX_FILE
    if not path.is_file():
        raise CrackclsError(f"no ONNX model at {spec}: pass a .onnx file or an export folder (`crackcls export`)")
    return path


def load(spec: str | os.PathLike[str]) -> PortableModel:
    """The ONNX model at ``spec`` with its threshold and familiarity reference attached, as a Keras model has them."""
    path = onnx_file(spec)
    model = PortableModel(path)
    stored = companions.read(path)
    if stored.familiarity is not None and not model.has_features:
        stored.familiarity = None  # an export without the features cannot be scored for familiarity
    companions.attach(model, stored)
    return model


@functools.lru_cache(maxsize=16)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """Hashed here rather than with :mod:`crackcls.data.download`, which imports ``requests``."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed once per version of the file: choosing the runtime and loading the export
    both ask for it."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def export_of(model_file: Path) -> Path | None:
    """The ``export/`` folder beside ``model_file`` when it was made from exactly this file, else None."""
    import json

    sidecar = model_file.parent / "export" / EXPORT_FILE
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("source_sha256")
    except (OSError, ValueError):
        return None
    if not (sidecar.parent / ONNX_FILE).is_file() or recorded != file_sha256(model_file):
        return None
    return sidecar.parent


def reference_of(model: PortableModel):  # noqa: ANN201 - a familiarity.Reference or None
    return companions.of(model).familiarity if model.has_features else None


def _batches(files: Sequence[Path], size: int, batch_size: int) -> Iterator[tuple[int, np.ndarray, list[Path], SkipReport]]:
    """Decoded batches, the next one decoding while the current one is scored."""
    with ThreadPoolExecutor(max_workers=1) as ahead:

        def decode(start: int):  # noqa: ANN202
            skips = SkipReport()
            images, kept = load_batch(files[start : start + batch_size], size, skips)
            return start, images, kept, skips

        starts = list(range(0, len(files), batch_size))
        pending = ahead.submit(decode, starts[0]) if starts else None
        for following in [*starts[1:], None]:
            current = pending.result()
            pending = ahead.submit(decode, following) if following is not None else None
            yield current


def score_files(
    model: PortableModel,
    files: Sequence[str | Path],
    batch_size: int,
    base: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> Scores:
    """:func:`crackcls.model.inference.score_files` with ONNX Runtime: same probabilities, skips and familiarity."""
    if batch_size < 1:
        raise CrackclsError(f"--batch-size must be at least 1, got {batch_size}")
    root = base or paths.workspace_root()
    resolved = [paths.resolve(f, root) for f in files]
    reference = reference_of(model)
    probabilities = np.full(len(files), np.nan)
    familiar = None if reference is None else np.full(len(files), np.nan)
    reasons: list[str | None] = [None] * len(files)
    for start, images, kept, skips in _batches(resolved, model.input_size, batch_size):
        rows, skipped = [], iter(skips.skipped)
        for i, path in enumerate(resolved[start : start + batch_size]):  # kept and skipped are both in input order
            if len(rows) < len(kept) and kept[len(rows)] == path:
                rows.append(start + i)
            else:
                reasons[start + i] = next(skipped)[1]
        if len(kept):
            out = model.forward(images, with_features=reference is not None)
            if reference is not None:
                out, features = out
                familiar[rows] = reference.score(np.asarray(features, np.float32))
            probabilities[rows] = out
        if progress is not None:
            progress(min(batch_size, len(files) - start))
    return Scores(probabilities, reasons, familiar)
