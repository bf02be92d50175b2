"""A scan overlay a person can read without the docs: heat map, numbered regions, colour bar, verdict and model.

The photo (downscaled) carries the tile probabilities as colour and every crack region as a
box numbered like the printed rows (1 is the first region of the row). A panel below the
photo, never over it, holds the colour bar with its scale and the tile threshold marked on
it, the verdict with the photo's score and threshold, the counts, and the model that answered.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crackcls.model.scoring import CRACK
from crackcls.photos import heatmap
from crackcls.photos.scan import Box, PhotoScan

PANEL_BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
CRACK_COLOUR = (200, 0, 0)
CLEAR_COLOUR = (0, 110, 0)
BAR_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
LINES_TOP, LINE_SPACING = 2.3, 1.45  # the legend's text lines, in text heights below the photo


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def heat_picture(picture: np.ndarray, scan: PhotoScan) -> tuple[np.ndarray, list[Box]]:
    """Tile probabilities as colour (blue 0 → red 1) on the picture, and the region boxes in its pixels."""
    height, width = picture.shape[:2]
    sx, sy = width / scan.grid.width, height / scan.grid.height
    heat = np.zeros((height, width), np.float32)

    def scaled(box: Box) -> Box:
        left, top, right, bottom = box
        return round(left * sx), round(top * sy), max(round(right * sx), round(left * sx) + 1), max(round(bottom * sy), round(top * sy) + 1)

    for row in range(scan.grid.rows):
        for col in range(scan.grid.cols):
            left, top, right, bottom = scaled(scan.grid.box(row, col))
            cell = heat[top:bottom, left:right]
            np.maximum(cell, scan.probabilities[row, col], out=cell)
    return heatmap.overlay(picture, heat), [scaled(region.box) for region in scan.regions]


def _numbered_boxes(image: Image.Image, boxes: list[Box], unit: int) -> None:
    """Region boxes in white, each with its number on a dark tab at its top-left corner."""
    draw = ImageDraw.Draw(image)
    font = _font(max(10, round(unit * 1.1)))
    line = max(2, round(max(image.size) / 300))
    for number, (left, top, right, bottom) in enumerate(boxes, start=1):
        draw.rectangle((left, top, max(left, right - 1), max(top, bottom - 1)), outline=heatmap.BOX_COLOUR, width=line)
        label = str(number)
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
        pad = max(2, unit // 5)
        tab_w, tab_h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
        tx = min(max(left, 0), image.width - tab_w)
        ty = top - tab_h if top - tab_h >= 0 else min(top + line, image.height - tab_h)
        draw.rectangle((tx, ty, tx + tab_w, ty + tab_h), fill=(0, 0, 0))
        draw.text((tx + pad - x0, ty + pad - y0), label, font=font, fill=(255, 255, 255))


def _colour_bar(draw: ImageDraw.ImageDraw, box: Box, threshold: float, font, unit: int) -> None:  # noqa: ANN001
    """A horizontal 0 → 1 colour bar with ticks, and the threshold marked by a black line and its value."""
    left, top, right, bottom = box
    colours = (matplotlib.colormaps[heatmap.COLORMAP](np.linspace(0.0, 1.0, max(2, right - left)))[:, :3] * 255).astype(np.uint8)
    for i, colour in enumerate(colours):
        draw.line((left + i, top, left + i, bottom), fill=tuple(int(c) for c in colour))
    draw.rectangle((left, top, right, bottom), outline=TEXT, width=1)
    for tick in BAR_TICKS:
        x = left + round(tick * (right - left))
        draw.line((x, bottom, x, bottom + unit // 3), fill=TEXT, width=1)
        label = f"{tick:g}"
        width = draw.textlength(label, font=font)
        draw.text((min(max(left, x - width / 2), right - width), bottom + unit // 3 + 1), label, font=font, fill=TEXT)
    x = left + round(threshold * (right - left))
    draw.line((x, top - unit // 3, x, bottom + unit // 3), fill=(0, 0, 0), width=max(2, unit // 6))
    mark = f"threshold {threshold:.2f}"
    width = draw.textlength(mark, font=font)
    draw.text((min(max(left, x - width / 2), right - width), top - unit // 3 - unit - 2), mark, font=font, fill=TEXT)


def readable_overlay(picture: np.ndarray, scan: PhotoScan, model: str) -> np.ndarray:
    """The heat-map overlay with numbered regions, and a legend panel below it; (H + panel, W, 3) uint8."""
    coloured, boxes = heat_picture(picture, scan)
    photo = Image.fromarray(coloured)
    width = photo.width
    unit = max(11, round(width / 55))  # text height, scaled with the overlay
    _numbered_boxes(photo, boxes, unit)

    regions = len(scan.regions)
    lines = [
        f"{regions} crack region{'' if regions == 1 else 's'}, {scan.crack_tiles} of {scan.tiles} tiles ({scan.grid.tile} px) crack",
        _rule_line(scan),
        _familiarity_line(scan),
        f"model: {model}",
    ]
    lines = [line for line in lines if line]
    panel_height = max(unit * 7, round(unit * (LINES_TOP + LINE_SPACING * len(lines))))
    canvas = Image.new("RGB", (width, photo.height + panel_height), PANEL_BACKGROUND)
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    small, large = _font(unit), _font(round(unit * 1.4))
    top = photo.height

    bar_right = max(unit * 8, round(width * 0.38))
    draw.text((unit, top + unit // 2), "crack probability per tile", font=small, fill=TEXT)
    _colour_bar(draw, (unit, top + unit * 3, bar_right, top + unit * 4), scan.settings.threshold, small, unit)

    text_left = bar_right + unit * 2
    crack = scan.verdict == CRACK
    verdict = "CRACK" if crack else "NO CRACK"
    draw.text((text_left, top + unit // 2), verdict, font=large, fill=CRACK_COLOUR if crack else CLEAR_COLOUR)
    comparison = ">=" if crack else "<"
    verdict_width = draw.textlength(verdict + "  ", font=large)
    draw.text(
        (text_left + verdict_width, top + unit // 2 + unit * 0.3),
        f"score {scan.score:.2f} {comparison} threshold {scan.settings.threshold:.2f}", font=small, fill=TEXT,
    )  # fmt: skip
    y = top + unit * LINES_TOP
    for text in lines:
        draw.text((text_left, y), _fit(draw, text, small, width - text_left - unit), font=small, fill=TEXT)
        y += unit * LINE_SPACING
    return np.asarray(canvas)


def _rule_line(scan: PhotoScan) -> str:
    """How a tile and a region count, where it is more than a tile at the threshold ("" where it is not)."""
    settings = scan.settings
    parts = []
    if settings.background_margin is not None:
        parts.append(f"tile >= photo median + {settings.background_margin:.2f}")
    if settings.min_region_tiles > 1:
        peak = f" or peak >= {settings.peak_threshold:.2f}" if settings.peak_threshold < 1.0 else ""
        parts.append(f"region >= {settings.min_region_tiles} tiles{peak}")
    return "rule: " + "; ".join(parts) if parts else ""


def _familiarity_line(scan: PhotoScan) -> str:
    if scan.familiarity is None:
        return ""
    unfamiliar = scan.unfamiliar_tiles or 0
    if scan.median_familiarity is not None and scan.median_familiarity > 1.0:
        return f"UNFAMILIAR: {unfamiliar} of {scan.tiles} tiles unlike the training data"
    return f"familiar: {unfamiliar} of {scan.tiles} tiles unlike the training data"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, room: float) -> str:  # noqa: ANN001
    """``text`` cut with an ellipsis to fit ``room`` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…"
