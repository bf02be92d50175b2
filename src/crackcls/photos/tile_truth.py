"""Tile truth for whole photos: crack boxes per photo, and a scan's tile recall and precision against them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crackcls.photos.scan import PhotoScan
from crackcls.util import paths
from crackcls.util.errors import CrackclsError


def read_tile_truth(path: Path, folder: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """``{"Positive/photo.jpg": [[left, top, right, bottom], ...]}``: crack boxes per photo, relative to the data folder."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CrackclsError(f"--tile-truth {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CrackclsError(f"--tile-truth {path}: expected an object of photo path -> list of [left, top, right, bottom]")
    truth = {}
    for name, boxes in raw.items():
        if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
            raise CrackclsError(f"--tile-truth {path}: '{name}' must map to a list of [left, top, right, bottom] boxes")
        truth[str((folder / name).resolve())] = [tuple(int(v) for v in box) for box in boxes]
    return truth


def tile_truth_mask(scan: PhotoScan, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """True for tiles whose centre lies inside a crack box."""
    mask = np.zeros((scan.grid.rows, scan.grid.cols), bool)
    for row in range(scan.grid.rows):
        for col in range(scan.grid.cols):
            left, top, right, bottom = scan.grid.box(row, col)
            cx, cy = (left + right) / 2, (top + bottom) / 2
            mask[row, col] = any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in boxes)
    return mask


def tile_level_metrics(scans: list[PhotoScan], truth: dict, folder: Path) -> dict:
    """Tile recall, precision and false-positive tiles per photo over the photos the truth file names.

    A tile is a true crack tile when its centre lies inside one of its photo's crack boxes.
    Photos under Negative/ absent from the file have no crack tiles; photos under Positive/
    absent from it are left out (their tiles are unknown).
    """
    negatives = (folder / paths.LABELS[0]).resolve()
    tp = fp = fn = photos = 0
    for scan in scans:
        key = str(Path(scan.path).resolve())
        if key in truth:
            boxes = truth[key]
        elif Path(key).is_relative_to(negatives):
            boxes = []
        else:
            continue
        actual, predicted = tile_truth_mask(scan, boxes), scan.crack_mask
        tp += int((actual & predicted).sum())
        fp += int((~actual & predicted).sum())
        fn += int((actual & ~predicted).sum())
        photos += 1
    return {
        "tile_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "tile_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "fp_tiles_per_photo": fp / photos if photos else float("nan"),
        "tile_tp": tp,
        "tile_fp": fp,
        "tile_fn": fn,
        "tile_photos": photos,
    }
