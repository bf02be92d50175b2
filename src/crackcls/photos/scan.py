"""Whole photos scanned tile by tile at the training scale: tile grids, streamed tiles, crack regions and a verdict.

A photo is never shrunk as a whole. It is cut into ``tile`` x ``tile`` source-pixel tiles
(256 px by default: SDNET2018 cut its photos so, and it measured best) every ``stride`` pixels; where the
photo is not a multiple of the stride, the last tile of a row or column is shifted back to
end at the photo's edge, so every pixel is scanned and no tile leaves the photo. A side
shorter than a tile gets one tile spanning it (a photo smaller than a tile is one tile).
Each tile is resized to the model's input along the steps a JPEG training patch takes
(:func:`crackcls.data.images.patch_rgb`: the DCT draft's power-of-two reduction, then bicubic).

The rule, in one place (:mod:`crackcls.photos.photo_rule`): tiles at or above the tile
threshold that touch (at edges with 4-connectivity, also at corners with 8) form a region;
a region counts when it has at least ``min_region_tiles`` tiles or its peak reaches
``peak_threshold``, and a photo is ``crack`` when one does. A model trained here carries the
rule fitted on its validation photos (``model.decision.json``); ``scan.rule: fixed`` or an
explicit ``--threshold`` uses params.yaml's instead. The photo's ``score`` reaches the tile
threshold exactly when its verdict is ``crack`` (photo-level metrics use it). Counted regions
are reported as the box around their tiles in pixels of the upright photo (after EXIF
orientation; left and top inclusive, right and bottom exclusive).

Memory: a photo is decoded once, in full (3 bytes per pixel: 300 MB for 100 MP, at most
450 MB under :data:`crackcls.data.images.MAX_PIXELS`; Pillow decodes JPEG and PNG whole), then
tiles are cut from it and resized one at a time while a background thread keeps at most
:data:`PREFETCH` batches ahead of the model. Nothing else grows with the photo (but
turning an EXIF-rotated photo upright briefly holds a second copy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackcls.data.images import SkipReport, UnreadableImage, decoded, patch_rgb, resized_rgb
from crackcls.photos import photo_rule
from crackcls.photos.photo_rule import PhotoRule
from crackcls.trust import companions
from crackcls.util.errors import CrackclsError
from crackcls.util.prefetch import prefetched

Box = tuple[int, int, int, int]  # left, top, right, bottom; right and bottom exclusive

DEFAULT_TILE = 256  # SDNET2018 cut its photos so; measured better than 227 on real photos and mosaics (docs/scan.md)
# Tile batches cut ahead of the model: enough to hide decoding, small enough to bound memory.
PREFETCH = 2
CONNECTIVITY = photo_rule.CONNECTIVITY


@dataclass(frozen=True)
class ScanSettings:
    tile: int = DEFAULT_TILE
    stride: int | None = None  # None: the tile, no overlap
    threshold: float = 0.5  # the tile threshold
    min_region_tiles: int = 1
    peak_threshold: float = 1.0
    connectivity: int = 8
    fitted: bool = False  # the rule is the one fitted with the model
    tiles_across: int | None = None  # set: each photo's tile is its longest side over this (tile and stride scale with it)
    background_margin: float | None = None  # set: a tile must also reach its photo's median plus this

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise CrackclsError(f"--tile must be at least 1 pixel, got {self.tile}")
        if self.stride is not None and not 1 <= self.stride <= self.tile:
            raise CrackclsError(f"--stride must be between 1 and the tile ({self.tile}), got {self.stride}: a larger step skips pixels")
        if not 0.0 <= self.threshold <= 1.0:
            raise CrackclsError(f"--threshold must be between 0 and 1, got {self.threshold:g}")
        self.rule  # noqa: B018 - validates the rule's values
        if self.tiles_across is not None and self.tiles_across < 1:
            raise CrackclsError(f"tiles_across must be at least 1, got {self.tiles_across}")
        if self.connectivity not in CONNECTIVITY:
            raise CrackclsError(f"connectivity must be 4 or 8, got {self.connectivity}")

    @property
    def step(self) -> int:
        return self.stride or self.tile

    def tile_and_stride(self, width: int, height: int) -> tuple[int, int | None]:
        """This photo's tile and stride: the fixed ones, or scaled to its longest side with ``tiles_across``."""
        if self.tiles_across is None:
            return self.tile, self.stride
        tile = max(8, round(max(width, height) / self.tiles_across))
        return tile, None if self.stride is None else max(1, min(tile, round(tile * self.stride / self.tile)))

    @property
    def rule(self) -> PhotoRule:
        return PhotoRule(self.threshold, self.min_region_tiles, self.peak_threshold, self.background_margin)

    def describe(self) -> dict:
        """What a report or an MLflow run records of these settings."""
        tile = {"scan_tiles_across": self.tiles_across} if self.tiles_across else {"scan_tile": self.tile, "scan_stride": self.step}
        return {**tile, "scan_rule": "fitted" if self.fitted else "fixed",
                **{f"scan_{key}": value for key, value in self.rule.as_dict().items()}}  # fmt: skip


def settings_for(
    model,  # noqa: ANN001 - a keras.Model or a PortableModel, whose stored rule and threshold apply
    tile: int = DEFAULT_TILE,
    stride: int | None = None,
    threshold: float | None = None,
    fallback_threshold: float = 0.5,
    use_fitted: bool = True,
    min_region_tiles: int = 1,
    peak_threshold: float = 1.0,
    connectivity: int = 8,
    tiles_across: int | None = None,
    background_margin: float | None = None,
) -> ScanSettings:
    """The scan settings one model answers with: its fitted photo rule, unless a threshold is given or ``use_fitted`` is off.

    Without a fitted rule, the tile threshold is the one ``predict`` uses (an explicit one,
    else the model's stored one, else ``fallback_threshold``) and the region rule is the
    one given, its peak threshold raised to the tile threshold where it is lower.
    """
    fitted = companions.of(model).photo_rule if use_fitted and threshold is None else None
    if fitted is not None:
        rule = PhotoRule.from_dict(fitted)
        return ScanSettings(
            tile, stride, rule.tile_threshold, rule.min_region_tiles, rule.peak_threshold, connectivity, True, tiles_across,
            rule.background_margin,
        )  # fmt: skip
    tile_threshold = companions.threshold(model, threshold, fallback_threshold)
    return ScanSettings(
        tile, stride, tile_threshold, min_region_tiles, max(peak_threshold, tile_threshold), connectivity, False, tiles_across,
        background_margin,
    )  # fmt: skip


# ---------------------------------------------------------------- tile grid (pure)
def starts(length: int, tile: int, step: int) -> list[int]:
    """Tile offsets along one side: every ``step`` pixels, the last shifted back to end at the edge."""
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile + 1, step))
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return offsets


@dataclass(frozen=True)
class TileGrid:
    width: int
    height: int
    tile: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def box(self, row: int, col: int) -> Box:
        left, top = self.xs[col], self.ys[row]
        return left, top, min(left + self.tile, self.width), min(top + self.tile, self.height)

    def boxes(self) -> list[Box]:
        """Every tile's box, row by row."""
        return [self.box(row, col) for row in range(self.rows) for col in range(self.cols)]


def tile_grid(width: int, height: int, tile: int = DEFAULT_TILE, stride: int | None = None) -> TileGrid:
    step = stride or tile
    return TileGrid(width, height, tile, tuple(starts(width, tile, step)), tuple(starts(height, tile, step)))


# ---------------------------------------------------------------- aggregation (pure)
@dataclass
class Region:
    """Connected crack tiles, as the box around them in photo pixels."""

    left: int
    top: int
    right: int
    bottom: int
    tiles: int
    max_probability: float
    cells: tuple[tuple[int, int], ...] = field(default=(), repr=False)  # (row, col) of its tiles

    @property
    def box(self) -> Box:
        return self.left, self.top, self.right, self.bottom

    def as_dict(self) -> dict:
        return {
            "left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom,
            "tiles": self.tiles, "max_probability": round(self.max_probability, 6),
        }  # fmt: skip


def crack_regions(grid: TileGrid, probabilities: np.ndarray, settings: ScanSettings) -> list[Region]:
    """The regions that count under the settings' rule, the most confident first."""
    regions = photo_rule.regions_of(photo_rule.adjusted(probabilities, settings.rule), settings.threshold, settings.connectivity)
    found = []
    for number in np.flatnonzero(photo_rule.counted(regions, settings.rule)):
        cells = np.argwhere(regions.labels == number + 1)
        boxes = np.array([grid.box(int(r), int(c)) for r, c in cells])
        peak = float(np.asarray(probabilities)[cells[:, 0], cells[:, 1]].max())  # the model's own, not the adjusted score
        found.append(
            Region(
                int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()),
                len(cells), peak, tuple((int(r), int(c)) for r, c in cells),
            )
        )  # fmt: skip
    return sorted(found, key=lambda region: (-region.max_probability, region.top, region.left))


@dataclass
class PhotoScan:
    """One photo's tiles and what they add up to."""

    path: str
    grid: TileGrid
    probabilities: np.ndarray  # (rows, cols)
    settings: ScanSettings
    regions: list[Region]
    overlay: str | None = None
    familiarity: np.ndarray | None = None  # (rows, cols) tile familiarity scores, when the model has a reference
    overlay_picture: tuple[int, int] | None = None  # (width, height) of the photo at the overlay's top-left

    @property
    def crack_mask(self) -> np.ndarray:
        """The crack tiles: those of the regions that count."""
        return photo_rule.crack_mask(self.probabilities, self.settings.rule, self.settings.connectivity)

    @property
    def crack_tiles(self) -> int:
        return int(self.crack_mask.sum())

    @property
    def tiles(self) -> int:
        return self.grid.count

    @property
    def crack_fraction(self) -> float:
        return self.crack_tiles / self.tiles

    @property
    def max_probability(self) -> float:
        return float(self.probabilities.max())

    @property
    def score(self) -> float:
        """Reaches the tile threshold exactly when the photo is ``crack`` (:func:`crackcls.photos.photo_rule.photo_score`)."""
        return photo_rule.photo_score(self.probabilities, self.settings.rule, self.settings.connectivity)

    @property
    def verdict(self) -> str:
        from crackcls.model.scoring import label_for  # one labelling rule for patches and photos

        return label_for(self.score, self.settings.threshold)

    @property
    def median_familiarity(self) -> float | None:
        return None if self.familiarity is None else float(np.median(self.familiarity))

    @property
    def unfamiliar_tiles(self) -> int | None:
        return None if self.familiarity is None else int((self.familiarity > 1.0).sum())

    def row(self) -> dict:
        familiar = {}
        if self.familiarity is not None:  # the photo is unfamiliar when most of its tiles are
            median = self.median_familiarity
            familiar = {"familiarity": round(median, 4), "unfamiliar": bool(median > 1.0), "unfamiliar_tiles": self.unfamiliar_tiles}
        return {
            "path": self.path,
            "verdict": self.verdict,
            "crack_tiles": self.crack_tiles,
            "tiles": self.tiles,
            "crack_fraction": round(self.crack_fraction, 6),
            "max_probability": round(self.max_probability, 6),
            "score": round(self.score, 6),
            "threshold": self.settings.threshold,
            "min_region_tiles": self.settings.min_region_tiles,
            "peak_threshold": self.settings.peak_threshold,
            "background_margin": self.settings.background_margin,
            "tile": self.grid.tile,
            "width": self.grid.width,
            "height": self.grid.height,
            "regions": [region.as_dict() for region in self.regions],
            "overlay": self.overlay,
            **familiar,
        }

    def tile_rows(self) -> list[dict]:
        rows, mask = [], self.crack_mask
        for row in range(self.grid.rows):
            for col in range(self.grid.cols):
                left, top, right, bottom = self.grid.box(row, col)
                probability = float(self.probabilities[row, col])
                rows.append({
                    "path": self.path, "row": row, "col": col, "left": left, "top": top, "right": right,
                    "bottom": bottom, "crack_probability": round(probability, 6),
                    "crack": bool(mask[row, col]),
                    **({} if self.familiarity is None else {"familiarity": round(float(self.familiarity[row, col]), 4)}),
                })  # fmt: skip
        return rows


def tiles_of(photos: int) -> str:
    """What the tiles shift test counts, in words: ``tiles of 3 photos``."""
    return f"tiles of {photos} photo{'' if photos == 1 else 's'}"


def tiles_shift(model, scans: Sequence[PhotoScan]):  # noqa: ANN001, ANN201 - a keras.Model in, a ShiftTest or None out
    """The set-level shift test over the tiles of all ``scans`` (None without a familiarity reference)."""
    from crackcls.model.scoring import set_shift

    scored = [scan for scan in scans if scan.familiarity is not None]
    if not scored:
        return set_shift(model, None, None)
    # grouped by each tile's own class at the patch threshold, as the validation images it is tested against are
    threshold = companions.threshold(model, None, 0.5)
    return set_shift(
        model,
        np.concatenate([scan.familiarity.reshape(-1) for scan in scored]),
        np.concatenate([(scan.probabilities >= threshold).reshape(-1) for scan in scored]),
    )


def aggregate(
    path: str, grid: TileGrid, probabilities: np.ndarray, settings: ScanSettings, familiarity: np.ndarray | None = None
) -> PhotoScan:
    probabilities = np.asarray(probabilities, np.float64).reshape(grid.rows, grid.cols)
    regions = crack_regions(grid, probabilities, settings)
    familiar = None if familiarity is None else np.asarray(familiarity, np.float64).reshape(grid.rows, grid.cols)
    return PhotoScan(path, grid, probabilities, settings, regions, familiarity=familiar)


# ---------------------------------------------------------------- overlay
def downscaled(im, longest: int) -> np.ndarray:  # noqa: ANN001 - a PIL image
    """An RGB copy no longer than ``longest`` on either side (never enlarged), without copying the photo first."""
    scale = min(1.0, longest / max(im.size))
    return np.asarray(resized_rgb(im, max(1, round(im.width * scale)), max(1, round(im.height * scale))))


# ---------------------------------------------------------------- streaming
@dataclass
class _Photo:
    index: int
    path: Path
    grid: TileGrid
    picture: np.ndarray | None  # the downscaled copy for the overlay


@dataclass
class _Batch:
    owners: list[tuple[int, int]]  # (photo index, tile index) per tile
    pixels: np.ndarray  # (N, size, size, 3) uint8


@dataclass
class _Skip:
    index: int
    path: Path
    reason: str


def tile_stream(
    files: Sequence[Path], settings: ScanSettings, size: int, batch_size: int, overlay_size: int | None = None
) -> Iterator[_Photo | _Batch | _Skip]:
    """Photos decoded one at a time, their tiles cut and resized lazily into batches that span photos.

    Yields a ``_Photo`` before any of its tiles, and a ``_Skip`` for a photo that cannot be
    read (also one that fails part-way: its tiles already yielded are then to be dropped).
    """
    owners: list[tuple[int, int]] = []
    tiles: list[np.ndarray] = []
    for index, path in enumerate(files):
        try:
            with decoded(path) as im:
                grid = tile_grid(im.width, im.height, *settings.tile_and_stride(im.width, im.height))
                picture = downscaled(im, overlay_size) if overlay_size else None
                yield _Photo(index, Path(path), grid, picture)
                for number, box in enumerate(grid.boxes()):
                    tiles.append(np.asarray(patch_rgb(im.crop(box), size)))
                    owners.append((index, number))
                    if len(tiles) == batch_size:
                        yield _Batch(owners, np.stack(tiles))
                        owners, tiles = [], []
            del im  # the next photo must not be decoded while this one is still held
        except UnreadableImage as exc:
            kept = [i for i, (owner, _) in enumerate(owners) if owner != index]
            owners, tiles = [owners[i] for i in kept], [tiles[i] for i in kept]
            yield _Skip(index, Path(path), exc.reason)
    if tiles:
        yield _Batch(owners, np.stack(tiles))


@dataclass
class _Pending:
    photo: _Photo
    probabilities: np.ndarray
    remaining: int
    dropped: bool = field(default=False)
    familiarity: np.ndarray | None = None


def scorer(model):  # noqa: ANN001, ANN202 - a keras.Model or a PortableModel
    """(input size, familiarity reference or None, tiles → probabilities[, features]) for either runtime."""
    from crackcls.model import portable

    if portable.is_portable(model):
        reference = portable.reference_of(model)
        return model.input_size, reference, lambda pixels: model.forward(pixels, with_features=reference is not None)
    from crackcls.model.inference import familiarity_reference, forward_pass, model_input_size

    reference = familiarity_reference(model)
    forward = forward_pass(model, with_features=reference is not None)  # familiarity from the same pass
    return model_input_size(model), reference, lambda pixels: forward(pixels.astype(np.float32))


def scan_files(
    model,  # noqa: ANN001 - a keras.Model
    files: Sequence[str | Path],
    settings: ScanSettings,
    batch_size: int,
    skips: SkipReport,
    overlay_size: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> Iterator[tuple[PhotoScan, np.ndarray | None]]:
    """(scan, downscaled picture or None) per readable photo, in input order; unreadable ones go to ``skips``.

    Tiles from consecutive photos share batches, so many small photos score as fast as one
    big one. ``progress`` is called with the number of tiles in each scored batch.
    """
    if batch_size < 1:
        raise CrackclsError(f"--batch-size must be at least 1, got {batch_size}")
    size, reference, forward = scorer(model)
    pending: dict[int, _Pending] = {}
    for event in prefetched(tile_stream([Path(f) for f in files], settings, size, batch_size, overlay_size), PREFETCH):
        if isinstance(event, _Photo):
            count = event.grid.count
            familiar = None if reference is None else np.full(count, np.nan)
            pending[event.index] = _Pending(event, np.full(count, np.nan), count, familiarity=familiar)
        elif isinstance(event, _Skip):
            pending.pop(event.index, None)
            skips.add(event.path, event.reason)
        else:
            out = forward(event.pixels)
            familiar = None
            if reference is not None:
                out, features = out
                familiar = reference.score(np.asarray(features))
            scores = np.asarray(out).reshape(-1)
            for i, ((index, number), probability) in enumerate(zip(event.owners, scores)):
                if index in pending:
                    pending[index].probabilities[number] = probability
                    if familiar is not None:
                        pending[index].familiarity[number] = familiar[i]
                    pending[index].remaining -= 1
            if progress is not None:
                progress(len(scores))
        while pending and next(iter(pending.values())).remaining == 0:
            done = pending.pop(next(iter(pending)))
            photo = done.photo
            yield aggregate(str(photo.path), photo.grid, done.probabilities, settings, done.familiarity), photo.picture
