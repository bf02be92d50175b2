"""The photo rule: which tiles form crack regions and which regions make a photo ``crack``, fitted on validation photos.

A region is a group of touching tiles at or above ``tile_threshold``. It counts when it
has at least ``min_region_tiles`` tiles or its peak reaches ``peak_threshold``: a lone weak
tile is noise, a lone sure one is not. A photo is ``crack`` when one of its regions counts,
and only the tiles of counted regions are crack tiles.

With a ``background_margin``, a tile must also stand that far above its own photo's median
tile: a crack is a line through a surface, and a texture the model misreads everywhere in a
photo (pitting, a coarse aggregate) raises the whole photo, not one path through it. The
photo's scores are lowered by however much median plus margin exceeds the tile threshold
(:func:`adjusted`), so one threshold still decides, and a photo whose median is low is
read exactly as without it.

:func:`fit` chooses the rule at training time on validation photos, never on the test
split: the real photos of the validation split's whole-grid parents where it holds some
(:func:`whole_grid_photos`) beside photos drawn from its tiles (:func:`validation_photos`). Among the rules
that find at least ``target_photo_recall`` of the cracked photos, the one with the best
tile F1, then the fewest false alarms on crack-free photos.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from crackcls.data.grids import whole_grids
from crackcls.data.splitting import parent_group
from crackcls.util.errors import CrackclsError

CONNECTIVITY = (4, 8)
# A validation photo is an SDNET2018 photo's grid of 256 px tiles (14 rows of 18).
PHOTO_ROWS, PHOTO_COLS = 14, 18
VALIDATION_PHOTOS = 600
CRACK_FREE_SHARE = 0.25  # of the validation photos
# Tiles on one crack's path: SDNET2018's cracked photos hold 8 to 91 cracked tiles of 252 in the shared set.
CRACK_LENGTHS = (3, 60)
MIN_REGION_CHOICES = (1, 2, 3, 4)
BACKGROUND_MARGIN_CHOICES = (None, 0.0, 0.05, 0.1, 0.2, 0.3)
DEFAULT_TARGET_PHOTO_RECALL = 0.95
FROM_TILES, FROM_BOTH = "validation tiles", "whole-grid parents and validation tiles"


@dataclass(frozen=True)
class PhotoRule:
    tile_threshold: float
    min_region_tiles: int = 1
    peak_threshold: float = 1.0  # a smaller region counts when its peak reaches this
    background_margin: float | None = None  # set: a tile must also reach its photo's median plus this

    def __post_init__(self) -> None:
        if not 0.0 <= self.tile_threshold <= 1.0:
            raise CrackclsError(f"the tile threshold must be between 0 and 1, got {self.tile_threshold:g}")
        if self.min_region_tiles < 1:
            raise CrackclsError(f"min_region_tiles must be at least 1, got {self.min_region_tiles}")
        if not self.tile_threshold <= self.peak_threshold <= 1.0:
            raise CrackclsError(
                f"peak_threshold must be between the tile threshold ({self.tile_threshold:g}) and 1, got {self.peak_threshold:g}"
            )
        if self.background_margin is not None and not 0.0 <= self.background_margin <= 1.0:
            raise CrackclsError(f"background_margin must be between 0 and 1 (or null), got {self.background_margin:g}")

    def as_dict(self) -> dict:
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict) -> PhotoRule:
        try:
            margin = raw.get("background_margin")  # absent in rules fitted before it existed
            return cls(
                float(raw["tile_threshold"]), int(raw.get("min_region_tiles", 1)), float(raw.get("peak_threshold", 1.0)),
                None if margin is None else float(margin),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise CrackclsError(f"not a photo rule: {raw!r} ({exc})") from None


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in CONNECTIVITY:
        raise CrackclsError(f"connectivity must be 4 or 8, got {connectivity}")
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


@dataclass
class Regions:
    """The regions of one probability grid at one tile threshold: a label per tile (0 none), and per region."""

    labels: np.ndarray  # (rows, cols) int, region r + 1 or 0
    sizes: np.ndarray  # (regions,)
    peaks: np.ndarray  # (regions,)


def regions_of(probabilities: np.ndarray, threshold: float, connectivity: int = 8) -> Regions:
    return _labelled(np.asarray(probabilities), threshold, _structure(connectivity))


def _labelled(scores: np.ndarray, threshold: float, structure: np.ndarray) -> Regions:
    """The regions at ``threshold``; sizes and peaks in one pass over the labelled tiles (no sort, unlike ``ndimage.maximum``)."""
    labels, count = ndimage.label(scores >= threshold, structure=structure)
    inside = labels > 0
    region = labels[inside] - 1
    peaks = np.full(count, -np.inf)
    np.maximum.at(peaks, region, scores[inside])
    return Regions(labels, np.bincount(region, minlength=count), peaks)


def background_lift(medians: np.ndarray | float, margin: float | None, threshold: float) -> np.ndarray:
    """How far each photo's scores are lowered: by how much its median plus ``margin`` exceeds ``threshold`` (0 without a margin)."""
    medians = np.asarray(medians, np.float64)
    if margin is None:
        return np.zeros_like(medians)
    return np.maximum(medians + margin - threshold, 0.0)


def adjusted(probabilities: np.ndarray, rule: PhotoRule) -> np.ndarray:
    """The photo's tile scores as the rule compares them (:func:`background_lift` below its own).

    A tile then reaches ``rule.tile_threshold`` exactly when its probability reaches both
    the threshold and the photo's median plus ``rule.background_margin``.
    """
    probabilities = np.asarray(probabilities, np.float64)
    if rule.background_margin is None or probabilities.size == 0:
        return probabilities
    return probabilities - background_lift(np.median(probabilities), rule.background_margin, rule.tile_threshold)


def counted(regions: Regions, rule: PhotoRule) -> np.ndarray:
    """Per region: does it count under ``rule``?"""
    return (regions.sizes >= rule.min_region_tiles) | (regions.peaks >= rule.peak_threshold)


def crack_mask(probabilities: np.ndarray, rule: PhotoRule, connectivity: int = 8) -> np.ndarray:
    """The crack tiles: those of counted regions."""
    regions = regions_of(adjusted(probabilities, rule), rule.tile_threshold, connectivity)
    keep = np.concatenate([[False], counted(regions, rule)])
    return keep[regions.labels]


def photo_score(probabilities: np.ndarray, rule: PhotoRule, connectivity: int = 8) -> float:
    """A score that reaches ``rule.tile_threshold`` exactly when the photo is ``crack``, for photo-level ROC.

    A counted region scores its peak; a smaller one its peak less the peak rule's margin
    (``peak_threshold - tile_threshold``), so it reaches the threshold just when its peak
    reaches ``peak_threshold``; a tile outside any region scores its probability.
    """
    probabilities = adjusted(probabilities, rule)
    if probabilities.size == 0:
        return 0.0
    t = rule.tile_threshold
    regions = regions_of(probabilities, t, connectivity)
    below = probabilities[probabilities < t]
    scores = [float(below.max())] if below.size else []
    if regions.sizes.size:
        big = regions.sizes >= rule.min_region_tiles
        scores.append(float(np.where(big, regions.peaks, regions.peaks - (rule.peak_threshold - t)).max()))
    return max(scores)


# ---------------------------------------------------------------- fitting
def crack_path(rng: np.random.Generator, rows: int, cols: int, length: int) -> list[tuple[int, int]]:
    """A walk of up to ``length`` distinct 8-connected cells, like a crack across tiles (shorter where it is boxed in)."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]
    cells = [(int(rng.integers(rows)), int(rng.integers(cols)))]
    taken = set(cells)
    heading = steps[int(rng.integers(len(steps)))]
    while len(cells) < length:
        r, c = cells[-1]
        # mostly straight on, sometimes turning: cracks run, they do not wander
        order = [heading] + [steps[i] for i in rng.permutation(len(steps))]
        for dr, dc in order:
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < rows and 0 <= nxt[1] < cols and nxt not in taken and (rng.random() < 0.8 or (dr, dc) != heading):
                heading = (dr, dc)
                cells.append(nxt)
                taken.add(nxt)
                break
        else:
            break
    return cells


@dataclass
class ValidationPhotos:
    """Photos as tile grids with their truth; one array of them, or a list where photos differ in shape."""

    probabilities: np.ndarray | Sequence[np.ndarray]  # (photos, rows, cols), or one (rows, cols) grid per photo
    truth: np.ndarray | Sequence[np.ndarray]  # bool, the same shapes
    groups: list[str]  # the parent photo (or source) each was drawn from

    def cracked(self) -> np.ndarray:
        """Per photo: does it hold a crack tile?"""
        return np.asarray([bool(np.any(actual)) for actual in self.truth], bool)

    def medians(self) -> np.ndarray:
        return np.asarray([np.median(grid) for grid in self.probabilities], np.float64)


def validation_photos(
    probabilities: np.ndarray, labels: np.ndarray, sources: Sequence[str], parents: Sequence[str],
    photos: int = VALIDATION_PHOTOS, seed: int = 0,
) -> ValidationPhotos:  # fmt: skip
    """Photo-sized grids of validation tiles' own probabilities, crack tiles along a path, as a scan would see them.

    Each photo is drawn from one group: a parent photo where the source names parents (its
    tiles look alike, and a model misreads them alike), else the source. Its crack tiles take
    the probabilities of the group's cracked tiles (the source's where the group has none),
    the others those of its uncracked tiles. Sources take turns, so a small one counts as much.
    """
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, int)
    pools: dict[str, dict[str, list[np.ndarray]]] = defaultdict(dict)
    by_group: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (source, parent) in enumerate(zip(sources, parents)):
        by_group[(source, parent or "")].append(i)
    source_pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in sorted(set(sources)):
        mine = np.asarray([s == source for s in sources])
        source_pools[source] = (probabilities[mine & (labels == 0)], probabilities[mine & (labels == 1)])
    for (source, parent), index in by_group.items():
        index = np.asarray(index)
        negatives, positives = probabilities[index[labels[index] == 0]], probabilities[index[labels[index] == 1]]
        if len(negatives):  # a group needs its own uncracked tiles to stand for a photo
            pools[source][parent] = [negatives, positives if len(positives) else source_pools[source][1]]
    usable = sorted(s for s in pools if len(source_pools[s][1]))  # and some cracked tiles to draw cracks from
    if not usable:
        raise CrackclsError("no validation source has both cracked and uncracked images: no photo rule can be fitted")
    rng = np.random.default_rng(seed)
    grids = np.empty((photos, PHOTO_ROWS, PHOTO_COLS))
    truth = np.zeros((photos, PHOTO_ROWS, PHOTO_COLS), bool)
    groups = []
    for n in range(photos):
        source = usable[n % len(usable)]
        parents_here = sorted(pools[source])
        parent = parents_here[int(rng.integers(len(parents_here)))]
        negatives, positives = pools[source][parent]
        grids[n] = rng.choice(negatives, size=(PHOTO_ROWS, PHOTO_COLS))
        if rng.random() >= CRACK_FREE_SHARE:
            for r, c in crack_path(rng, PHOTO_ROWS, PHOTO_COLS, int(rng.integers(CRACK_LENGTHS[0], CRACK_LENGTHS[1] + 1))):
                truth[n, r, c] = True
                grids[n, r, c] = rng.choice(positives)
        groups.append(f"{source}/{parent}" if parent else source)
    return ValidationPhotos(grids, truth, groups)


def whole_grid_photos(
    probabilities: np.ndarray, labels: np.ndarray, files: Sequence[str], sources: Sequence[str], parents: Sequence[str]
) -> ValidationPhotos | None:
    """The validation split's whole-grid parents as the real photos they were cut from, or None where it has none.

    Each tile takes its own probability and label at its place in the grid.
    """
    grids = whole_grids(files, [parent_group(source, parent) for source, parent in zip(sources, parents)])
    if not grids:
        return None
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, int)
    return ValidationPhotos([probabilities[i] for i in grids.values()], [labels[i] == 1 for i in grids.values()], list(grids))


def photos_to_fit(
    probabilities: np.ndarray, labels: np.ndarray, files: Sequence[str], sources: Sequence[str], parents: Sequence[str]
) -> tuple[ValidationPhotos, ValidationPhotos | None, str]:
    """The photos to fit on, the real ones among them (None: no whole grid with a crack), and which they are.

    Real photos join the drawn ones rather than replace them: a few whole grids, seldom one
    without a crack, cannot hold false alarms down, and the drawn photos' crack-free quarter
    does. (A whole grid with a crack also has uncracked tiles, so photos can always be drawn.)
    """
    drawn = validation_photos(probabilities, labels, sources, parents)
    real = whole_grid_photos(probabilities, labels, files, sources, parents)
    if real is None or not real.cracked().any():
        return drawn, None, FROM_TILES
    both = ValidationPhotos(
        [*real.probabilities, *drawn.probabilities], [*real.truth, *drawn.truth], real.groups + drawn.groups
    )
    return both, real, FROM_BOTH


@dataclass
class FittedRule:
    rule: PhotoRule
    metrics: dict  # on the validation photos: photo recall, false alarms, tile F1, ...
    reached_target: bool


def _candidate_thresholds(probabilities: np.ndarray) -> np.ndarray:
    quantiles = np.quantile(probabilities, np.linspace(0.02, 0.995, 80))
    return np.unique(np.round(np.clip(quantiles, 0.0, 1.0), 4))


def evaluate_rule(photos: ValidationPhotos, rule: PhotoRule, connectivity: int = 8) -> dict:
    """Photo recall, false alarms, tile recall, precision and F1, false crack tiles per photo."""
    tp = fp = fn = 0
    said_crack = []
    for grid, actual in zip(photos.probabilities, photos.truth):
        mask = crack_mask(grid, rule, connectivity)
        tp += int((mask & actual).sum())
        fp += int((mask & ~actual).sum())
        fn += int((~mask & actual).sum())
        said_crack.append(bool(mask.any()))
    return _metrics(tp, fp, fn, np.asarray(said_crack), photos.cracked())


def _metrics(tp: int, fp: int, fn: int, said_crack: np.ndarray, cracked: np.ndarray) -> dict:
    recall = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {
        "photo_recall": float(said_crack[cracked].mean()) if cracked.any() else float("nan"),
        "photo_false_alarm_rate": float(said_crack[~cracked].mean()) if (~cracked).any() else float("nan"),
        "tile_recall": recall,
        "tile_precision": precision,
        "tile_f1": 2 * recall * precision / (recall + precision) if recall + precision else 0.0,
        "fp_tiles_per_photo": fp / len(said_crack),
        "photos": int(len(said_crack)),
    }


def fit(photos: ValidationPhotos, target_photo_recall: float = DEFAULT_TARGET_PHOTO_RECALL, connectivity: int = 8) -> FittedRule:
    """The rule with the best tile F1 among those reaching ``target_photo_recall``; fewer false alarms break ties.

    A rule that calls every crack-free validation photo ``crack`` never counts as reaching the
    target (a weak model's lowest threshold finds every crack and says nothing). Where no
    rule reaches it, the one that best tells cracked photos from crack-free ones (photo recall
    less false-alarm rate) is kept, not the one that calls every photo ``crack``, and
    ``reached_target`` says so.
    """
    canvas = _Canvas.of(photos)
    cracked = photos.cracked()
    flat = np.concatenate([np.ravel(grid) for grid in photos.probabilities])
    medians = photos.medians()
    structure = _structure(connectivity)
    best_key, best = None, None
    for t in _candidate_thresholds(flat):
        for margin in BACKGROUND_MARGIN_CHOICES:
            lift = background_lift(medians, margin, float(t))
            if margin is not None and not lift.any():
                continue  # no photo's median comes near: the same rule as without a margin
            for key, fitted in _rules_at(canvas, canvas.lowered(lift), cracked, float(t), margin, target_photo_recall, structure):
                if best_key is None or key > best_key:
                    best_key, best = key, fitted
    if best is None:
        raise CrackclsError("no validation tile reaches any threshold: no photo rule can be fitted")
    best.metrics["target_photo_recall"] = target_photo_recall
    return best


@dataclass
class _Canvas:
    """Every photo's grid on one array, a row of -inf between photos, so one labelling finds every photo's regions.

    No region can cross the separating rows or the -inf padding (no score reaches a
    threshold there), so the regions are exactly those of each photo on its own.
    """

    scores: np.ndarray  # (rows, cols) float64, -inf outside the photos
    truth: np.ndarray  # (rows, cols) bool
    owner: np.ndarray  # (rows, cols) int: the photo of each cell, -1 outside
    inside: np.ndarray  # (rows, cols) bool: the cells of a photo

    @classmethod
    def of(cls, photos: ValidationPhotos) -> _Canvas:
        grids = [np.asarray(grid, np.float64) for grid in photos.probabilities]
        width = max(grid.shape[1] for grid in grids)
        height = sum(grid.shape[0] + 1 for grid in grids)
        scores = np.full((height, width), -np.inf)
        truth = np.zeros((height, width), bool)
        owner = np.full((height, width), -1)
        row = 0
        for n, (grid, actual) in enumerate(zip(grids, photos.truth)):
            rows, cols = grid.shape
            scores[row : row + rows, :cols] = grid
            truth[row : row + rows, :cols] = np.asarray(actual, bool)
            owner[row : row + rows, :cols] = n
            row += rows + 1
        return cls(scores, truth, owner, owner >= 0)

    def lowered(self, lift: np.ndarray) -> np.ndarray:
        """The scores with each photo lowered by its own lift."""
        if not np.any(lift):
            return self.scores
        return self.scores - np.append(np.asarray(lift, np.float64), 0.0)[self.owner]  # owner -1 takes the 0 at the end


def _rules_at(
    canvas: _Canvas, scores: np.ndarray, cracked: np.ndarray, t: float, margin: float | None, target: float, structure: np.ndarray
) -> Iterator[tuple[tuple, FittedRule]]:
    """Every region rule at tile threshold ``t`` on already adjusted scores, with its ranking key."""
    # every region of every photo at this threshold: its size, peak, true crack tiles and photo
    regions = _labelled(scores, t, structure)
    sizes, peaks, count = regions.sizes, regions.peaks, len(regions.sizes)
    if not count:
        return
    hits = np.bincount(regions.labels[canvas.truth], minlength=count + 1)[1:]
    owner = np.zeros(count + 1, int)  # [0]: the unlabelled cells', dropped
    owner[regions.labels[canvas.inside]] = canvas.owner[canvas.inside]
    owner = owner[1:]
    misses = sizes - hits
    truth_tiles = int(canvas.truth.sum())
    peak_choices = np.unique(np.concatenate([[1.0], np.quantile(peaks[peaks >= t], np.linspace(0.5, 0.98, 8))]))
    for k in MIN_REGION_CHOICES:
        for peak in peak_choices if k > 1 else [1.0]:
            rule = PhotoRule(t, k, float(min(max(peak, t), 1.0)), margin)
            keep = (sizes >= k) | (peaks >= rule.peak_threshold)
            tp = int(hits[keep].sum())
            fp = int(misses[keep].sum())
            fn = truth_tiles - tp
            said = np.zeros(len(cracked), bool)
            said[owner[keep]] = True
            metrics = _metrics(tp, fp, fn, said, cracked)
            false_alarms = float(np.nan_to_num(metrics["photo_false_alarm_rate"], nan=0.0))  # nan: no crack-free photo
            reached = metrics["photo_recall"] >= target and false_alarms < 1.0
            if reached:
                key = (True, metrics["tile_f1"], -false_alarms, t)
            else:  # short of the target: the rule that separates the photos best, then the better tiles
                key = (False, metrics["photo_recall"] - false_alarms, metrics["tile_f1"], t)
            yield key, FittedRule(rule, metrics, reached)


def fit_on_validation(
    probabilities: np.ndarray, labels: np.ndarray, files: Sequence[str], sources: Sequence[str], parents: Sequence[str],
    target_photo_recall: float, connectivity: int = 8,
) -> tuple[dict | None, dict[str, float]]:  # fmt: skip
    """The rule to store with a model (None where the split cannot make photos), and its figures for MLflow.

    ``probabilities`` are the validation split's, calibrated as the saved model gives them.
    The stored rule carries what it measured on the validation photos under ``validation``,
    with ``photos_from``: the whole-grid parents or the validation tiles.
    """
    if not len(probabilities):
        return None, {}
    try:
        photos, real, photos_from = photos_to_fit(probabilities, labels, files, sources, parents)
    except CrackclsError:
        return None, {}
    fitted = fit(photos, target_photo_recall, connectivity)
    validation = _stored(fitted.metrics)
    validation.update(reached_target=fitted.reached_target, photos_from=photos_from)
    figures = {f"val_scan_{key}": float(value) for key, value in fitted.metrics.items() if key != "target_photo_recall"}
    figures["val_scan_reached_target"] = float(fitted.reached_target)
    figures["val_scan_whole_grid_photos"] = float(len(real.groups) if real is not None else 0)
    if real is not None:  # the rule on the real photos alone: what it does on photos, not on drawn ones
        on_real = {key: float(v) for key, v in evaluate_rule(real, fitted.rule, connectivity).items() if not np.isnan(v)}
        validation["whole_grid"] = _stored(on_real)
        figures.update({f"val_scan_whole_grid_{key}": v for key, v in on_real.items() if key != "photos"})
    rule = {**fitted.rule.as_dict(), "validation": validation}
    figures.update({f"scan_{key}": float(value) for key, value in fitted.rule.as_dict().items() if value is not None})
    return rule, figures


def _stored(metrics: dict) -> dict:
    """Fitted figures as the model's companion file keeps them: counts whole, rates to 6 places."""
    return {key: int(v) if key == "photos" else round(float(v), 6) for key, v in metrics.items()}
