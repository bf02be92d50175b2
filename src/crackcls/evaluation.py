"""Score a model on images and write the reports DVC and MLflow show.

Shared by the DVC ``evaluate`` stage (test split, logged into the training run),
``crackcls evaluate`` (any model, any labelled folder, logged as a new run linked
to the model's run), promotion (both aliases on the same test split), and the
unlabelled paths: ``crackcls predict`` and the served pyfunc model, which both
score through :func:`score_files` so they return identical probabilities.
"""

from __future__ import annotations

import csv
import io
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from crackcls import atomic, companions, familiarity, intervals, paths, plots, progress
from crackcls.data import image_dataset
from crackcls.errors import CrackclsError
from crackcls.images import SkipReport, UnreadableImage, iter_images, load_rgb
from crackcls.metrics import classification_metrics, json_safe, pr_points, roc_points
from crackcls.model import load_model_file
from crackcls.splitting import Item


@dataclass
class Evaluation:
    metrics: dict[str, float]
    paths: list[str]
    y_true: np.ndarray
    y_prob: np.ndarray
    threshold: float
    skipped: SkipReport = field(default_factory=SkipReport)
    familiarity: np.ndarray | None = None  # per kept image; None when the model has no density

    @property
    def correct(self) -> np.ndarray:
        """Per image: does the label at ``threshold`` match the truth?"""
        return (self.y_prob >= self.threshold).astype(int) == self.y_true


def model_input_size(model: keras.Model) -> int:
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] == shape[2] and shape[1]):
        raise CrackclsError(f"model input shape {shape} is not a square RGB image")
    return int(shape[1])


# Predicted labels, as ``crackcls predict`` and the served model name them.
CRACK = "crack"
NO_CRACK = "no_crack"


def label_for(probability: float, threshold: float) -> str:
    """The same rule as the metrics: a probability at or above the threshold is a crack."""
    return CRACK if probability >= threshold else NO_CRACK


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
    forward = forward_pass(model, with_features)
    probs, flags, pooled = [], [], []
    for images, ok in ds:
        out = forward(images)
        if with_features:
            out, features = out
            pooled.append(np.asarray(features, np.float32))
        probs.append(np.asarray(out).reshape(-1))
        flags.append(ok.numpy())
        if progress is not None:
            progress(len(flags[-1]))
    if not probs:
        empty = np.zeros((0, 0), np.float32) if with_features else None
        return np.zeros(0, np.float32), np.zeros(0, bool), empty
    return np.concatenate(probs), np.concatenate(flags), np.concatenate(pooled) if with_features else None


@dataclass
class Scores:
    """Per-file results of :func:`score_files`, in input order."""

    probabilities: np.ndarray  # NaN where the file could not be read
    reasons: list[str | None]  # why a file was skipped (an images.REASONS entry); None if scored
    familiarity: np.ndarray | None = None  # crackcls.familiarity score (NaN where skipped); None without a density


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
    density = companions.of(model).familiarity if has_pool_layer(model) else None
    if not files:
        return Scores(np.zeros(0), [], None if density is None else np.zeros(0))
    probs, ok, features = predict_with_features(model, files, batch_size, base, progress, density is not None)
    size = model_input_size(model)
    root = base or paths.workspace_root()
    reasons = [None if good else unreadable_reason(paths.resolve(f, root), size) for f, good in zip(files, ok)]
    familiar = None if density is None else np.where(ok, density.score(features), np.nan)
    return Scores(np.where(ok, probs, np.nan).astype(np.float64), reasons, familiar)


def unreadable_reason(path: str | Path, size: int) -> str:
    """Why :func:`crackcls.images.load_rgb` refuses ``path``."""
    try:
        load_rgb(path, size)
    except UnreadableImage as exc:
        return exc.reason
    return "could not be decoded"  # failed in the pipeline, yet decodes now: changed meanwhile


def evaluate_items(
    model: keras.Model, items: list[Item], threshold: float, batch_size: int, base: Path | None = None
) -> Evaluation:
    if not items:
        raise CrackclsError("nothing to evaluate: the image list is empty")
    with progress.bar(len(items), "evaluate", min_total=batch_size) as bar:
        scores = score_files(model, [it.path for it in items], batch_size, base, progress=bar.update)
    skipped = SkipReport()
    for item, reason in zip(items, scores.reasons):
        if reason is not None:
            skipped.add(item.path, reason)
    ok = np.array([reason is None for reason in scores.reasons])
    kept = [it for it, good in zip(items, ok) if good]
    if not kept:
        raise CrackclsError("no image could be read; see the skipped list")
    y_true = np.asarray([it.label for it in kept], int)
    y_prob = scores.probabilities[ok]
    metrics = classification_metrics(y_true, y_prob, threshold)
    metrics.update(intervals.metric_intervals(y_true, y_prob, metrics, threshold))
    familiar = None if scores.familiarity is None else scores.familiarity[ok]
    return Evaluation(metrics, [it.path for it in kept], y_true, y_prob, threshold, skipped, familiar)


def labelled_folder(folder: Path) -> list[Item]:
    """Items from a folder holding Positive/ and Negative/ (searched recursively)."""
    missing = [name for name in paths.LABELS if not (folder / name).is_dir()]
    if missing:
        raise CrackclsError(f"{folder} must hold Positive/ and Negative/ subfolders (missing: {', '.join(missing)})")
    items = [
        Item(str(p.resolve()), label, "")
        for label, name in enumerate(paths.LABELS)
        for p in iter_images(folder / name)
    ]
    if not items:
        raise CrackclsError(f"{folder} holds no images under Positive/ or Negative/")
    return items


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows as CSV text with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


REPORT_FILES = {
    "metrics": "metrics.json",
    "predictions": "predictions.csv",
    "roc": "roc.csv",
    "pr": "precision_recall.csv",
    "confusion_png": "confusion_matrix.png",
    "curves_png": "roc_pr.png",
    "skipped": "skipped.json",
}


def write_reports(result: Evaluation, out_dir: Path, extra: dict | None = None) -> dict[str, Path]:
    """Metrics JSON, per-image predictions (DVC confusion template), ROC/PR CSVs and PNGs."""
    out = {key: out_dir / name for key, name in REPORT_FILES.items()}
    atomic.write_json(out["metrics"], {**json_safe(result.metrics), **(extra or {})})
    y_pred = (result.y_prob >= result.threshold).astype(int)
    predictions = [
        {
            "path": p,
            "actual": paths.LABELS[t],
            "predicted": paths.LABELS[y],
            "crack_probability": f"{prob:.6f}",
        }
        for p, t, y, prob in zip(result.paths, result.y_true, y_pred, result.y_prob)
    ]
    columns = ["path", "actual", "predicted", "crack_probability"]
    if result.familiarity is not None:
        columns.append("familiarity")
        for row, score in zip(predictions, result.familiarity):
            row["familiarity"] = f"{score:.4f}"
    atomic.write_text(out["predictions"], csv_text(predictions, columns))
    both = len(np.unique(result.y_true)) == 2
    roc = roc_points(result.y_true, result.y_prob) if both else []
    pr = pr_points(result.y_true, result.y_prob) if both else []
    atomic.write_text(out["roc"], csv_text(roc, ["fpr", "tpr", "threshold"]))
    atomic.write_text(out["pr"], csv_text(pr, ["recall", "precision", "threshold"]))
    plots.confusion_matrix(result.y_true, y_pred, out["confusion_png"])
    if both:
        plots.roc_and_pr(result.y_true, result.y_prob, out["curves_png"])
    else:
        out.pop("curves_png")
    atomic.write_json(out["skipped"], result.skipped.as_dict())
    return out


GALLERY_FILE = "error_gallery.png"
GALLERY_PER_KIND = 4


def worst_mistakes(result: Evaluation, per_kind: int = GALLERY_PER_KIND) -> dict[str, list[int]]:
    """Indices of the most confident false positives and false negatives, worst first.

    These are the mistakes a reviewer should look at: the model was sure and wrong.
    """
    predicted = result.y_prob >= result.threshold
    false_pos = np.flatnonzero(predicted & (result.y_true == 0))
    false_neg = np.flatnonzero(~predicted & (result.y_true == 1))
    return {
        "false positives": false_pos[np.argsort(-result.y_prob[false_pos], kind="stable")][:per_kind].tolist(),
        "false negatives": false_neg[np.argsort(result.y_prob[false_neg], kind="stable")][:per_kind].tolist(),
    }


def write_error_gallery(
    model: keras.Model, result: Evaluation, target: Path, base: Path | None = None, per_kind: int = GALLERY_PER_KIND
) -> Path:
    """A PNG of the worst mistakes with their Grad-CAM overlays; says so when there are none."""
    from crackcls import gradcam

    root = base or paths.workspace_root()
    rows = {
        kind: [(paths.resolve(result.paths[i], root), float(result.y_prob[i])) for i in indices]
        for kind, indices in worst_mistakes(result, per_kind).items()
    }
    return gradcam.error_gallery(gradcam.GradCam(model), rows, result.threshold, target)


def log_to_mlflow(result: Evaluation, files: dict[str, Path], prefix: str, artifact_path: str) -> None:
    """Metrics under ``<prefix>_*`` and every report file as an artifact of the active run."""
    numeric = {f"{prefix}_{k}": v for k, v in json_safe(result.metrics).items() if v is not None}
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
    if "://" not in spec and not spec.startswith(("models:/", "runs:/")):
        return load_model_file(paths.resolve(spec)), None
    from crackcls import tracking

    tracking.configure_uri_only()
    try:
        source_run = _source_run(spec)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=tmp))
            candidates = sorted(local.rglob("*.keras"))
            if not candidates:
                raise CrackclsError(f"{spec} holds no .keras model file")
            return load_model_file(candidates[0]), source_run
    except mlflow.exceptions.MlflowException as exc:
        raise CrackclsError(f"cannot resolve model {spec}: {exc.message.splitlines()[0]}") from None


def _source_run(spec: str) -> str | None:
    from crackcls import tracking

    if spec.startswith("runs:/"):
        return spec.removeprefix("runs:/").split("/", 1)[0]
    if spec.startswith("models:/"):
        name_part = spec.removeprefix("models:/")
        client = tracking.client()
        if "@" in name_part:
            name, alias = name_part.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = name_part.partition("/")
        if version.isdigit():
            return client.get_model_version(name, version).run_id
    return None
