"""Grad-CAM: where in the image does the model see a crack?

For a crackcls model (inputs → augment → preprocess → backbone → pool → dropout →
dense), the heatmap is the backbone's last feature map weighted by the gradient of
the crack score with respect to it (Selvaraju et al., 2017), kept where positive.
The score is the dense layer's pre-sigmoid logit: a confident prediction saturates
the sigmoid to exactly 1.0 in float32, which would zero every gradient.

Works for every backbone in :data:`crackcls.model.build.BACKBONES` and for any model
loaded back from a ``.keras`` file or the registry: the layers are found by their
role, not by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackcls.data.images import SkipReport, UnreadableImage, load_batch, load_rgb
from crackcls.model.evaluation import GALLERY_PER_KIND, Evaluation, worst_mistakes
from crackcls.model.inference import model_input_size
from crackcls.photos.heatmap import overlay, save_png  # noqa: F401 - part of this module's interface
from crackcls.util import paths, progress
from crackcls.util.errors import CrackclsError

BATCH_SIZE = 32
# Overlays are drawn at least this large, so a 48 px model still gives a readable picture.
DISPLAY_SIZE = 224


class GradCam:
    """Crack-evidence heatmaps for a crackcls classifier."""

    def __init__(self, model: keras.Model) -> None:
        stack = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        backbones = [i for i, layer in enumerate(stack) if _is_backbone(layer)]
        if len(backbones) != 1:
            raise CrackclsError(f"model '{model.name}' has no single nested backbone; Grad-CAM needs a crackcls model")
        at = backbones[0]
        self.size = model_input_size(model)
        self.before = stack[:at]  # augmentation (identity at inference) and preprocessing
        self.backbone: keras.Model = stack[at]
        self.head = stack[at + 1 : -1]  # pooling and dropout
        self.classifier = stack[-1]
        if not (isinstance(self.classifier, keras.layers.Dense) and self.classifier.units == 1):
            raise CrackclsError(f"model '{model.name}' does not end in a one-unit Dense layer")

    def feature_maps(self, images: np.ndarray | tf.Tensor) -> tf.Tensor:
        """The backbone's output, (N, h, w, C), for raw RGB pixels in [0, 255]."""
        x = tf.convert_to_tensor(images, tf.float32)
        for layer in self.before:
            x = layer(x, training=False)
        return self.backbone(x, training=False)

    def crack_logit(self, features: tf.Tensor) -> tf.Tensor:
        """The crack score before the sigmoid, (N, 1), from backbone features."""
        x = features
        for layer in self.head:
            x = layer(x, training=False)
        return tf.matmul(x, self.classifier.kernel) + self.classifier.bias

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """One heatmap per image, (N, h, w) at the feature map's resolution, scaled to [0, 1].

        An image with no positive crack evidence anywhere gets an all-zero map.
        """
        maps = [self._batch(images[start : start + BATCH_SIZE]) for start in range(0, len(images), BATCH_SIZE)]
        if not maps:
            return np.zeros((0, 1, 1), np.float32)
        return np.concatenate(maps)

    def explain_files(
        self, files: Sequence[str | os.PathLike[str]], skips: SkipReport | None = None
    ) -> Iterator[tuple[Path, np.ndarray]]:
        """(file, overlay) for every readable file, in order; unreadable ones go to ``skips``.

        Decodes a batch at a time, so memory stays flat however many files there are.
        """
        skips = skips if skips is not None else SkipReport()
        display = max(self.size, DISPLAY_SIZE)
        for start in range(0, len(files), BATCH_SIZE):
            batch, kept = load_batch(files[start : start + BATCH_SIZE], self.size, skips)
            for path, heatmap in zip(kept, self.heatmaps(batch.astype(np.float32))):
                try:
                    yield path, overlay(load_rgb(path, display), heatmap)
                except UnreadableImage as exc:  # changed since the batch was read
                    skips.add(path, exc.reason)

    def _batch(self, images: np.ndarray) -> np.ndarray:
        features = self.feature_maps(images)
        with tf.GradientTape() as tape:
            tape.watch(features)
            # Images are independent, so the gradient of the sum is each image's own gradient.
            score = tf.reduce_sum(self.crack_logit(features))
        grads = tape.gradient(score, features)
        channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per feature channel
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1)).numpy()
        peak = cam.max(axis=(1, 2), keepdims=True)
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        return np.nan_to_num(cam, nan=0.0).clip(0.0, 1.0).astype(np.float32)


def _is_backbone(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)


def error_gallery(
    cam: GradCam, rows: Mapping[str, Sequence[tuple[Path, float]]], threshold: float, target: str | os.PathLike[str]
) -> Path:
    """One figure row per kind of mistake (file, crack probability), each image with its Grad-CAM.

    With no mistakes at all the figure says so, so the report file always exists.
    """
    from crackcls.util.plots import _save, plt  # plots selects the headless backend

    columns = max((len(items) for items in rows.values()), default=0)
    if columns == 0:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, f"No mistakes at threshold {threshold:g}", ha="center", va="center", fontsize=12)
        ax.axis("off")
        _save(fig, target)
        return Path(target)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 3.0 * len(rows)), squeeze=False)
    with progress.bar(sum(len(items) for items in rows.values()), "error gallery") as bar:
        overlays = {}
        for items in rows.values():
            for path, rgb in cam.explain_files([path for path, _ in items]):
                overlays[path] = rgb
                bar.update(1)
    for axes_row, (kind, items) in zip(axes, rows.items()):
        for col, ax in enumerate(axes_row):
            ax.axis("off")
            if col >= len(items):
                if col == 0:
                    ax.text(0.5, 0.5, f"no {kind}", ha="center", va="center")
                continue
            path, probability = items[col]
            if path in overlays:
                ax.imshow(overlays[path])
            ax.set_title(f"{kind[:-1]}\np(crack)={probability:.3f}\n{path.name}", fontsize=8)
    fig.suptitle(f"Most confident mistakes at threshold {threshold:g}, with Grad-CAM (red: crack evidence)")
    _save(fig, target)
    return Path(target)


def write_error_gallery(
    model: keras.Model, result: Evaluation, target: Path, base: Path | None = None, per_kind: int = GALLERY_PER_KIND
) -> Path:
    """A PNG of the worst mistakes with their Grad-CAM overlays; says so when there are none."""
    root = base or paths.workspace_root()
    rows = {
        kind: [(paths.resolve(result.paths[i], root), float(result.y_prob[i])) for i in indices]
        for kind, indices in worst_mistakes(result, per_kind).items()
    }
    return error_gallery(GradCam(model), rows, result.threshold, target)
