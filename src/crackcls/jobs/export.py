"""``crackcls export``: a model as SavedModel, ONNX and LiteRT, checked against Keras, logged with the model.

The export folder is complete or absent: it is built under a temporary name, the parity
checks run on the built files, and only then is it swapped in. A drifting export is an
error, and the previous folder stays as it was.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crackcls import __version__
from crackcls.data import manifest
from crackcls.data.download import sha256_file
from crackcls.data.images import SkipReport, iter_images, load_batch
from crackcls.jobs.predict import _config, champion_spec
from crackcls.model import export, portable
from crackcls.model.inference import model_input_size
from crackcls.tracking.registry import load_model_and_digest, log_export
from crackcls.trust import companions
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError
from crackcls.util.paths import LABELS

DEFAULT_OUT = Path("models/export")
EXPORT_FILE = portable.EXPORT_FILE
REPRESENTATIVE_IMAGES = 200  # int8 calibration: drawn from the training split
CHECK_IMAGES = 500  # parity: drawn from the test split
SEED = 0
PREPROCESSING = (
    "RGB uint8, shape (N, size, size, 3), as crackcls.data.images.load_rgb makes it with Pillow: the first frame, "
    "EXIF orientation applied; a JPEG decoded through its DCT draft at the largest 1/2, 1/4 or 1/8 scale that keeps "
    "both sides at least size; transparency composited onto white; other modes converted to RGB; then squashed "
    "(no crop) to size x size with Image.resize(BICUBIC, reducing_gap=3.0)"
)


def _sample(files: list[Path], labels: list[int] | None, n: int) -> tuple[list[Path], list[int] | None]:
    order = list(range(len(files)))
    random.Random(SEED).shuffle(order)
    keep = sorted(order[:n])
    return [files[i] for i in keep], None if labels is None else [labels[i] for i in keep]


def _split_images(split: str, root: Path) -> tuple[list[Path], list[int]]:
    path = manifest.manifest_path(split, root / paths.SPLIT_DIR)
    if not path.is_file():
        return [], []
    items = manifest.read(path)
    return [paths.resolve(it.path, root) for it in items], [it.label for it in items]


def _folder_images(folder: str) -> tuple[list[Path], list[int] | None]:
    """A folder's images; labelled when it holds Positive/ and Negative/."""
    root = Path(folder)
    if not root.is_dir():
        raise CrackclsError(f"{folder}: no such folder")
    if all((root / label).is_dir() for label in LABELS):
        files, labels = [], []
        for label in LABELS:
            found = list(iter_images(root / label))
            files += found
            labels += [int(label == "Positive")] * len(found)
        return files, labels
    return list(iter_images(root)), None


def _decode(files: list[Path], labels: list[int] | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    skips = SkipReport()
    images, kept = load_batch(files, size, skips)
    if labels is None:
        return images, None
    label_of = dict(zip(files, labels))
    return images, np.array([label_of[p] for p in kept], bool)


def sha256(path: Path) -> str:
    """A file's sha256; a folder's over its files' relative names and bytes, in name order."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run(
    model_spec: str | None = None,
    out_dir: str | None = None,
    formats: tuple[str, ...] | None = None,
    representative: str | None = None,
    check_data: str | None = None,
    log: bool = True,
) -> dict:
    """Export, check and (for a model from MLflow) log; returns what ``export.json`` holds."""
    config = _config()
    formats = formats or export.FORMATS
    spec = model_spec or champion_spec(config)
    root = paths.workspace_root()
    model, source_run, source_sha256 = load_model_and_digest(spec)
    size = model_input_size(model)
    stored = companions.of(model)
    threshold = companions.threshold(model, None, config.evaluate.threshold)

    train_files, train_labels = _folder_images(representative) if representative else _split_images("train", root)
    check_files, check_labels = _folder_images(check_data) if check_data else _split_images("test", root)
    if "litert_int8" in formats and not train_files:
        raise CrackclsError("int8 LiteRT needs representative images: run in a project with data/split, or pass --representative FOLDER")
    if not check_files:
        raise CrackclsError("the parity checks need images: run in a project with data/split, or pass --check-data FOLDER")
    calibration, _ = _decode(*_sample(train_files, train_labels, REPRESENTATIVE_IMAGES), size) if train_files else (None, None)
    val_files, val_labels = _split_images("val", root)
    choose_on, _ = _decode(*_sample(val_files, val_labels, CHECK_IMAGES), size) if val_files else (calibration, None)
    check_images, check_truth = _decode(*_sample(check_files, check_labels, CHECK_IMAGES), size)

    target = Path(out_dir) if out_dir else root / DEFAULT_OUT
    with atomic.atomic_dir(target) as staging:
        written, int8 = export.write_all(model, staging, formats, threshold, calibration, choose_on)
        companions.write(staging / portable.ONNX_FILE, stored)  # model.decision.json, model.familiarity.npz
        checks = export.parity(model, staging, check_images, check_truth, threshold)
        drifted = [f"{fmt}: max |dp| {c.max_abs_difference:.3g}, same label {c.label_agreement:.4f}"
                   for fmt, c in checks.items() if not c.within(fmt)]  # fmt: skip
        if drifted:
            raise export.ExportDrift(f"exports of {spec} drift from the Keras model (nothing written): " + "; ".join(drifted))
        result = {
            "format_version": 1,
            "model": spec,
            "source_sha256": source_sha256,  # of the .keras file: predict picks this export only for that file
            "crackcls_version": __version__,
            "input": {"name": portable.INPUT, "dtype": "uint8", "shape": [None, size, size, 3], "preprocessing": PREPROCESSING},
            "outputs": {
                portable.PROBABILITY: "calibrated crack probability, shape (N, 1); crack when >= threshold",
                **({portable.FEATURES: "familiarity features (ONNX, SavedModel, float LiteRT), scored with model.familiarity.npz"}
                   if stored.familiarity is not None else {}),  # fmt: skip
            },
            "threshold": threshold,
            "target_recall": stored.target_recall,
            "temperature": stored.temperature,
            "temperature_folded": True,
            "files": {fmt: {"path": path.name, "bytes": size_of(path), "sha256": sha256(path)} for fmt, path in written.items()},
            "parity": {fmt: asdict(check) for fmt, check in checks.items()},
            "litert_int8": int8 or None,
        }
        atomic.write_json(staging / EXPORT_FILE, result)
    result["out"] = str(target)
    result["logged_to_run"] = None
    if log and source_run is not None:
        result["tagged_version"] = log_export(spec, source_run, target, result)
        result["logged_to_run"] = source_run
    return result


def summary(result: dict) -> str:
    lines = [f"{result['model']} -> {result['out']}"]
    lines.append(f"  {'format':<12} {'file':<18} {'MB':>7}  {'max |dp|':>9}  {'same label':>10}  accuracy keras -> export")
    for fmt, info in result["files"].items():
        check = result["parity"].get(fmt, {})
        accuracy = (f"{check['accuracy_keras']:.4f} -> {check['accuracy_export']:.4f}"
                    if check.get("accuracy_keras") is not None else "")  # fmt: skip
        lines.append(
            f"  {fmt:<12} {info['path']:<18} {info['bytes'] / 1e6:>7.3f}  {check.get('max_abs_difference', float('nan')):>9.2g}  "
            f"{check.get('label_agreement', float('nan')):>10.4f}  {accuracy}".rstrip()
        )
    n = next(iter(result["parity"].values()))["n"] if result["parity"] else 0
    lines.append(f"parity on {n} images; threshold {result['threshold']:.4g}")
    if result.get("litert_int8"):
        int8 = result["litert_int8"]
        kind = ("weights and activations" if int8["mode"] == "full" else
                f"weights only (full int8 kept {int8['tried']['full']:.4f} of the labels, under {export.INT8_LABEL_AGREEMENT})")  # fmt: skip
        lines.append(f"int8: {kind}; same label on {int8['validation_label_agreement']:.4f} of {int8['validation_images']} validation images")
    if result.get("logged_to_run"):
        version = result.get("tagged_version")
        lines.append(f"logged to run {result['logged_to_run']} (artifacts export/, onnx_model)"
                     + (f"; version {version} tagged" if version else ""))  # fmt: skip
    return "\n".join(lines)
