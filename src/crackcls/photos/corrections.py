"""A reviewer's word on a scanned photo turned into labelled tiles: which tiles, and which label.

- ``not_a_crack`` on region *n*: that region's tiles are uncracked (Negative); with a box
  instead, the tiles the box covers are (a tile of the review queue, or a false crack outside
  any counted region).
- ``missed_crack`` with a box: the tiles the box covers are cracked (Positive). A tile counts
  when the box covers a quarter of it or holds the box's centre, so a click-sized box gives
  the one tile under it and a sliver of a neighbour does not make it a crack. A box that is
  exactly one tile's box marks that tile alone, even where tiles overlap (a stride below the
  tile, or the last tile of a row shifted back to the edge).
- ``confirmed_crack``: the photo's crack tiles are cracked; ``confirmed_no_crack``: every tile
  of a photo called ``no_crack`` is uncracked (joints, stains and edges are the hard negatives
  training needs most).

Tiles are cut from the upright photo at the scan's own boxes, so they are what the model saw.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from crackcls.data.field_labels import LabelledTile
from crackcls.data.images import decoded
from crackcls.model.scoring import CRACK, NO_CRACK
from crackcls.photos.scan import Box, PhotoScan
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

NEGATIVE, POSITIVE = paths.LABELS
MIN_COVER = 0.25  # the share of a tile a missed-crack box must cover for the tile to count


def _overlap(a: Box, b: Box) -> int:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def covered_cells(scan: PhotoScan, box: Box) -> list[tuple[int, int]]:
    """The tiles a reviewer's box marks: covered by at least :data:`MIN_COVER`, or holding the box's centre.

    A box that is exactly a tile's own box marks that tile alone: it is what a reviewer who
    judged one tile means, and overlapping neighbours were not judged.
    """
    left, top, right, bottom = box
    if not (0 <= left < right <= scan.grid.width and 0 <= top < bottom <= scan.grid.height):
        raise CrackclsError(
            f"box {left},{top}-{right},{bottom} is not inside the photo ({scan.grid.width}x{scan.grid.height})"
        )
    if left in scan.grid.xs and top in scan.grid.ys:
        row, col = scan.grid.ys.index(top), scan.grid.xs.index(left)
        if scan.grid.box(row, col) == tuple(box):
            return [(row, col)]
    centre = ((left + right) // 2, (top + bottom) // 2)
    cells = []
    for row in range(scan.grid.rows):
        for col in range(scan.grid.cols):
            tile = scan.grid.box(row, col)
            area = (tile[2] - tile[0]) * (tile[3] - tile[1])
            holds_centre = tile[0] <= centre[0] < tile[2] and tile[1] <= centre[1] < tile[3]
            if holds_centre or _overlap(tile, box) >= MIN_COVER * area:
                cells.append((row, col))
    return cells


def marked_cells(scan: PhotoScan, kind: str, region: int | None = None, box: Box | None = None) -> tuple[list[tuple[int, int]], str, Box]:
    """(tiles, label, the box the manifest records) for one correction of ``scan``."""
    whole: Box = (0, 0, scan.grid.width, scan.grid.height)
    if kind == "not_a_crack":
        if region is not None and box is not None:
            raise CrackclsError("not a crack takes a region or a box, not both")
        if box is not None:
            return covered_cells(scan, box), NEGATIVE, box
        if region is None or not 1 <= region <= len(scan.regions):
            raise CrackclsError(
                f"region must be between 1 and {len(scan.regions)} (as numbered on the overlay), got {region}; "
                "or give a box: left, top, right, bottom in photo pixels"
            )
        chosen = scan.regions[region - 1]
        return list(chosen.cells), NEGATIVE, chosen.box
    if kind == "missed_crack":
        if box is None:
            raise CrackclsError("a missed crack needs a box: left, top, right, bottom in photo pixels")
        return covered_cells(scan, box), POSITIVE, box
    if kind == "confirmed_crack":
        if scan.verdict != CRACK:
            raise CrackclsError("only a photo called crack can be confirmed as crack; mark a missed crack instead")
        mask = scan.crack_mask
        return [(int(r), int(c)) for r, c in zip(*mask.nonzero())], POSITIVE, whole
    if kind == "confirmed_no_crack":
        if scan.verdict != NO_CRACK:
            raise CrackclsError("only a photo called no_crack can be confirmed as no crack; mark its regions not a crack instead")
        return [(row, col) for row in range(scan.grid.rows) for col in range(scan.grid.cols)], NEGATIVE, whole
    raise CrackclsError(f"unknown correction '{kind}'")


def cut_boxes(photo: str | os.PathLike[str], scan: PhotoScan, boxes: list[Box]) -> list[Image.Image]:
    """``boxes`` cut from the upright photo, decoded once, refused unless it is still the photo scanned."""
    with decoded(Path(photo)) as im:
        if im.size != (scan.grid.width, scan.grid.height):
            raise CrackclsError(f"{photo} is {im.width}x{im.height}, not the {scan.grid.width}x{scan.grid.height} photo scanned")
        return [im.crop(box).copy() for box in boxes]


def cut_tiles(photo: str | os.PathLike[str], scan: PhotoScan, cells: list[tuple[int, int]], label: str) -> list[LabelledTile]:
    """The tiles at ``cells`` cut from the upright photo, at the scan's boxes."""
    boxes = [scan.grid.box(row, col) for row, col in cells]
    return [LabelledTile(image, label, box) for image, box in zip(cut_boxes(photo, scan, boxes), boxes)]
