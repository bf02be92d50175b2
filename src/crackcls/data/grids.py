"""Whole-grid parents: parent photos with every one of their tiles present, so they can be rebuilt as the photo.

SDNET2018 cuts each photo into rows of 18 tiles of 256 px, numbered from 1 row by row
(``<parent>-<tile>.jpg``: 14 rows for decks and walls, 13 for pavements). A parent whose
tile numbers are exactly 1 to 18·R, for R of at least 2, is that photo's whole grid: the
one place where a photo rule can be fitted on real photos instead of drawn ones.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import PurePath

import numpy as np

GRID_COLUMNS = 18
MIN_GRID_ROWS = 2
TILE_NUMBER = re.compile(r"-(?P<tile>\d+)$")


def tile_number(path: str) -> int | None:
    """The tile's place in its parent's grid (1 is top left), or None for a name without one."""
    match = TILE_NUMBER.search(PurePath(path).stem)
    return int(match.group("tile")) if match else None


def whole_grids(files: Sequence[str], groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Each group (a parent photo; "" for none) whose tiles form a whole grid: the (rows, 18) array of their indices.

    ``files[i]`` belongs to ``groups[i]``; entry ``[r, c]`` of a grid is the index of the
    tile in row ``r``, column ``c``. Groups with a tile missing, doubled or out of place are left out.
    """
    members: dict[str, dict[int, int]] = defaultdict(dict)
    doubled: set[str] = set()
    for index, (path, group) in enumerate(zip(files, groups)):
        number = tile_number(path)
        if not group or number is None:
            continue
        if number in members[group]:
            doubled.add(group)
        members[group][number] = index
    grids = {}
    for group in sorted(members):
        numbers = members[group]
        rows, extra = divmod(len(numbers), GRID_COLUMNS)
        if group in doubled or extra or rows < MIN_GRID_ROWS or set(numbers) != set(range(1, len(numbers) + 1)):
            continue
        grids[group] = np.asarray([numbers[n] for n in range(1, len(numbers) + 1)]).reshape(rows, GRID_COLUMNS)
    return grids
