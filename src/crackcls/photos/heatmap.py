"""Heat maps blended onto pictures, boxes drawn on them, and PNGs written whole (Grad-CAM and scan overlays)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from crackcls.util import atomic

COLORMAP = "jet"
# Share of the colour map in the overlay; the rest is the photo.
OVERLAY_ALPHA = 0.4
BOX_COLOUR = (255, 255, 255)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a [0, 1] heatmap, upsampled to the image, onto an (H, W, 3) uint8 image as colour."""
    height, width = image.shape[:2]
    heat = Image.fromarray(np.asarray(heatmap, np.float32)).resize((width, height), Image.Resampling.BILINEAR)  # mode F
    colours = matplotlib.colormaps[COLORMAP](np.clip(np.asarray(heat), 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.rint(blended).clip(0, 255).astype(np.uint8)


def draw_boxes(image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], colour=BOX_COLOUR) -> np.ndarray:  # noqa: ANN001
    """A copy of ``image`` with each (left, top, right, bottom) box outlined, right and bottom exclusive."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 300))
    for left, top, right, bottom in boxes:
        draw.rectangle((left, top, max(left, right - 1), max(top, bottom - 1)), outline=colour, width=width)
    return np.asarray(picture)


def save_png(rgb: np.ndarray, target: str | os.PathLike[str]) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, whole or not at all."""
    target = Path(target)
    with atomic.atomic_path(target, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return target
