"""Grad-CAM on every backbone: shapes and ranges, the exact maths, and that the map follows the crack."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from crackcls.model.settings import BACKBONES, ModelConfig, TrainConfig
from crackcls.util.errors import CrackclsError
from crackcls.model.evaluation import Evaluation, worst_mistakes
from crackcls.photos.gradcam import write_error_gallery
from crackcls.photos.gradcam import GradCam, overlay, save_png
from crackcls.data.images import load_rgb
from crackcls.model.build import build_model, calibrate_batchnorm
from crackcls.model.inference import load_model_file

POSITIVE = sorted((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))
NEGATIVE = sorted((REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg"))
GREY = 128


def untrained(backbone: str, size: int, calibrate: bool = True):
    """A crackcls model with a random backbone whose BatchNorm statistics come from real photos."""
    keras.utils.set_random_seed(0)
    crack = build_model(ModelConfig(backbone=backbone, weights="none", image_size=size), TrainConfig())
    if calibrate:
        calibrate_batchnorm(crack, [pixels(POSITIVE[:8] + NEGATIVE[:8], size)])
    return crack


def pixels(files: list[Path], size: int) -> np.ndarray:
    return np.stack([load_rgb(f, size) for f in files]).astype(np.float32)


def set_crack_direction(crack, weights: np.ndarray) -> None:
    crack.model.get_layer("crack_probability").kernel.assign(np.asarray(weights, np.float32)[:, None])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_gives_finite_unit_range_maps(backbone):
    crack = untrained(backbone, 64, calibrate=False)
    images = pixels(POSITIVE[:3], 64)
    maps = GradCam(crack.model).heatmaps(images)
    assert maps.shape[0] == 3 and maps.ndim == 3 and maps.shape[1] == maps.shape[2] >= 1
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    blended = overlay(images[0].astype(np.uint8), maps[0])
    assert blended.shape == (64, 64, 3) and blended.dtype == np.uint8


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_b0"])
def test_works_on_a_model_loaded_back_from_keras_file(backbone, tmp_path):
    crack = untrained(backbone, 64, calibrate=False)
    crack.model.save(tmp_path / "model.keras")
    images = pixels(POSITIVE[:2], 64)
    original = GradCam(crack.model).heatmaps(images)
    loaded = GradCam(load_model_file(tmp_path / "model.keras")).heatmaps(images)
    np.testing.assert_allclose(loaded, original, atol=1e-5)


def test_matches_class_activation_map_of_a_pooled_dense_head():
    """With global average pooling into one dense unit, Grad-CAM's channel weights are w_k / (h*w).

    So the map must equal the classic CAM, ReLU(sum_k w_k A_k), scaled to a peak of 1:
    checks the gradient, the channel averaging and the normalisation in one go.
    """
    crack = untrained("mobilenet_v2", 96)
    rng = np.random.default_rng(0)
    set_crack_direction(crack, rng.normal(size=crack.model.get_layer("crack_probability").kernel.shape[0]))
    images = pixels(POSITIVE[:4], 96)
    cam = GradCam(crack.model)
    features = cam.feature_maps(images).numpy()
    kernel = crack.model.get_layer("crack_probability").kernel.numpy()[:, 0]
    expected = np.maximum(features @ kernel, 0.0)
    peak = expected.max(axis=(1, 2), keepdims=True)
    expected = np.divide(expected, peak, out=np.zeros_like(expected), where=peak > 0)
    np.testing.assert_allclose(cam.heatmaps(images), expected, atol=1e-4)


def test_map_is_not_constant_on_a_real_crack_photo():
    crack = untrained("mobilenet_v2", 128)
    set_crack_direction(crack, np.ones(crack.model.get_layer("crack_probability").kernel.shape[0]))
    (heatmap,) = GradCam(crack.model).heatmaps(pixels(POSITIVE[:1], 128))
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    assert heatmap.max() == pytest.approx(1.0) and heatmap.std() > 0.05


@pytest.mark.parametrize("photo", [0, 1])
def test_map_follows_the_crack_when_it_moves(photo):
    """A crack photo pasted into one quadrant of a grey canvas: the evidence peaks in that quadrant.

    The crack direction (the dense weights) is position-free: pooled features of other
    crack photos minus those of the grey canvas. Mirroring the canvas moves the crack to
    the other side, and the map must move with it, with the same weights.
    """
    size = 224
    crack = untrained("mobilenet_v2", size)
    cam = GradCam(crack.model)
    grey = np.full((1, size, size, 3), GREY, np.float32)
    cracks = cam.feature_maps(pixels(POSITIVE[10:18], size)).numpy().mean(axis=(0, 1, 2))
    set_crack_direction(crack, cracks - cam.feature_maps(grey).numpy().mean(axis=(0, 1, 2)))

    canvas = np.full((size, size, 3), GREY, np.uint8)
    canvas[: size // 2, size // 2 :] = load_rgb(POSITIVE[photo], size // 2)  # top right
    right, left = cam.heatmaps(np.stack([canvas, canvas[:, ::-1]]).astype(np.float32))

    def quadrants(heatmap: np.ndarray) -> dict[str, float]:
        h, w = heatmap.shape
        return {
            f"{row}-{col}": float(heatmap[slice(*rows), slice(*cols)].mean())
            for row, rows in (("top", (0, h // 2)), ("bottom", (h // 2, h)))
            for col, cols in (("left", (0, w // 2)), ("right", (w // 2, w)))
        }

    assert max(quadrants(right).items(), key=lambda kv: kv[1])[0] == "top-right"
    assert max(quadrants(left).items(), key=lambda kv: kv[1])[0] == "top-left"


def test_refuses_a_model_without_a_backbone():
    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(CrackclsError, match="backbone"):
        GradCam(plain)


def test_overlay_png_is_written_whole(tmp_path):
    target = save_png(overlay(np.zeros((40, 40, 3), np.uint8), np.eye(4)), tmp_path / "out" / "x.png")
    assert target.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]


def evaluation(y_true: list[int], y_prob: list[float]) -> Evaluation:
    files = (POSITIVE + NEGATIVE)[: len(y_true)]
    return Evaluation({}, [str(f) for f in files], np.asarray(y_true), np.asarray(y_prob, np.float32), 0.5)


def test_worst_mistakes_are_the_most_confident_ones():
    result = evaluation([0, 0, 0, 1, 1, 1, 0], [0.9, 0.6, 0.1, 0.2, 0.45, 0.8, 0.99])
    assert worst_mistakes(result, per_kind=2) == {"false positives": [6, 0], "false negatives": [3, 4]}


@pytest.mark.parametrize(
    ("y_true", "y_prob"),
    [([0, 1, 1, 0, 1], [0.9, 0.1, 0.7, 0.2, 0.3]), ([0, 1], [0.2, 0.8]), ([1, 1], [0.1, 0.9])],
    ids=["both-kinds", "no-mistakes", "only-false-negatives"],
)
def test_error_gallery_is_always_written(tmp_path, y_true, y_prob):
    crack = untrained("mobilenet_v2", 48, calibrate=False)
    target = write_error_gallery(crack.model, evaluation(y_true, y_prob), tmp_path / "reports" / "error_gallery.png")
    assert target.read_bytes()[:4] == b"\x89PNG"
