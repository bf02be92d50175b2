"""The tiles of scanned photos in the order a reviewer should look at them: the ones whose correction teaches the model most.

A batch of photos holds thousands of tiles and a reviewer corrects a few dozen. Correcting a
tile the model is sure and right about teaches it nothing; the tiles worth a person's look are
those the model is unsure of, those unlike anything it trained on, and those it reads
differently once turned around. Each of these is a signal in [0, 1], and each is shown:

- **uncertainty** (:func:`uncertainty`): how close the tile's probability is to the tile
  threshold the scan used;
- **unfamiliarity** (:func:`unfamiliarity`): the tile's familiarity score ranked against the
  validation images' scores stored with the model's familiarity reference (None without one);
- **flip disagreement**: the spread of the model's probability over the tile, its horizontal
  and vertical flips and its 90° rotation. A crack has no up, so a model that answers
  differently for the same tile turned over has not learnt what it looks at. It costs three
  forward passes a tile, so only the :data:`CANDIDATES` tiles ranked highest by the other two
  signals get it, through the scan's own tile pixels and forward pass.

The priority is the mean of the signals a tile has (:func:`priority`), and its ``reasons`` say
in words which signals put it in the queue.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from crackcls.data.images import SkipReport, UnreadableImage, decoded, patch_rgb
from crackcls.model.scoring import label_for
from crackcls.photos.scan import Box, PhotoScan, scorer
from crackcls.trust import familiarity
from crackcls.util import atomic
from crackcls.util.errors import CrackclsError

CANDIDATES = 256  # tiles whose flips are scored: the top of the queue by uncertainty and unfamiliarity
FLIPS = ("horizontal", "vertical", "rotated_90")  # np.flip(axis=1), np.flip(axis=0), np.rot90
# the level at which a signal is named among a tile's reasons
NEAR_THRESHOLD = 0.5  # the probability lies nearer the threshold than the sure end on its side
UNFAMILIAR_RANK = 0.9  # less familiar than 90% of the validation images
FLIPS_DISAGREE = 0.1  # the flips' probabilities spread over a tenth of the scale
FORMAT = 1  # of the review file


@dataclass(frozen=True)
class ReviewTile:
    """One tile in the review queue: where it is, what the model says, and why it is worth a look."""

    path: str  # the photo
    box: Box  # left, top, right, bottom in pixels of the upright photo
    row: int
    col: int
    probability: float
    label: str  # the model's label at the threshold: crack or no_crack
    threshold: float
    uncertainty: float
    unfamiliarity: float | None  # None: the model has no familiarity reference
    flip_disagreement: float
    flip_probabilities: tuple[float, ...]  # one per FLIPS
    familiarity: float | None  # the raw familiarity score (above 1: unfamiliar)
    priority: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict:
        data = asdict(self)
        data["box"] = list(self.box)
        data["flip_probabilities"] = dict(zip(FLIPS, self.flip_probabilities))
        data["reasons"] = list(self.reasons)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ReviewTile:
        """A tile as :meth:`as_dict` wrote it; a clear error for anything else."""
        try:
            flips = data["flip_probabilities"]
            if len(data["box"]) != 4:
                raise ValueError(f"box {data['box']} is not left, top, right, bottom")
            return cls(
                str(data["path"]), tuple(int(v) for v in data["box"]), int(data["row"]), int(data["col"]),
                float(data["probability"]), str(data["label"]), float(data["threshold"]), float(data["uncertainty"]),
                None if data["unfamiliarity"] is None else float(data["unfamiliarity"]), float(data["flip_disagreement"]),
                tuple(float(flips[name]) for name in FLIPS), None if data["familiarity"] is None else float(data["familiarity"]),
                float(data["priority"]), tuple(str(r) for r in data["reasons"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise CrackclsError(f"not a review tile ({type(exc).__name__}: {exc})") from None


def uncertainty(probability: np.ndarray, threshold: float) -> np.ndarray:
    """1 at the threshold, 0 at the sure end (0 or 1) on the probability's own side, linear in between.

    Measured per side rather than as one distance over ``max(t, 1 - t)``, so that a sure answer
    scores 0 whatever the threshold (a fitted threshold is rarely 0.5: at 0.73 a single scale
    would leave a probability of 1.0 a third uncertain). Linear in the probability rather than
    in its logit: there is no scale to choose, and the figure reads as the probability does.
    """
    p = np.asarray(probability, np.float64)
    side = np.where(p < threshold, threshold, 1.0 - threshold)
    return np.clip(1.0 - np.abs(p - threshold) / np.maximum(side, 1e-12), 0.0, 1.0)


def validation_scores(reference: familiarity.Reference) -> np.ndarray:
    """The validation images' familiarity scores the reference stores, each image once, sorted."""
    pooled = [source for source in reference.sources if source.name == familiarity.POOLED]
    chosen = pooled or reference.sources  # the pooled bank's scores already hold every source's images
    return np.sort(np.concatenate([np.asarray(source.val_scores, np.float64).reshape(-1) for source in chosen]))


def unfamiliarity(scores: np.ndarray, reference_scores: np.ndarray) -> np.ndarray:
    """The share of the validation images each score is less familiar than (above): 0.97 is stranger than 97% of them."""
    if len(reference_scores) == 0:
        return np.full(np.shape(scores), np.nan)
    return np.searchsorted(reference_scores, np.asarray(scores, np.float64), side="left") / len(reference_scores)


def priority(signals: Sequence[float | None]) -> float:
    """The mean of the signals a tile has.

    A mean rather than the largest: it rises with every signal, so of two tiles that differ in
    one signal alone the one higher in it always ranks first, and a tile several signals point
    at outranks one that a single signal points at. With the largest, a tile at the threshold
    would tie with every other tile at the threshold however unfamiliar either is.
    """
    present = [float(s) for s in signals if s is not None and not np.isnan(s)]
    return float(np.mean(present)) if present else 0.0


def decimals_for(threshold: float) -> int:
    """Two decimals, or as many as show a threshold near 0 or 1 (a fitted one can be 0.0036) with two significant digits."""
    margin = min(threshold, 1.0 - threshold)
    return 2 if margin >= 0.01 else min(6, 1 - math.floor(math.log10(max(margin, 1e-6))))


def reasons_for(tile: dict) -> tuple[str, ...]:
    """Short words for the signals that put the tile in the queue (the strongest one when none reaches its level)."""
    p, t = tile["probability"], tile["threshold"]
    digits = decimals_for(t)
    said = []
    if tile["uncertainty"] >= NEAR_THRESHOLD:
        said.append(f"probability {p:.{digits}f} near the threshold {t:.{digits}f}")
    if tile["unfamiliarity"] is not None and tile["unfamiliarity"] >= UNFAMILIAR_RANK:
        said.append(f"less familiar than {100 * tile['unfamiliarity']:.0f}% of the validation images")
    if tile["flip_disagreement"] >= FLIPS_DISAGREE:
        every = [p, *tile["flip_probabilities"]]
        said.append(f"flips disagree by {tile['flip_disagreement']:.2f} ({min(every):.{digits}f} to {max(every):.{digits}f})")
    if said:
        return tuple(said)
    signals = {"uncertainty": tile["uncertainty"], "unfamiliarity": tile["unfamiliarity"]}
    signals["flip disagreement"] = tile["flip_disagreement"]
    name, value = max(((n, v) for n, v in signals.items() if v is not None), key=lambda item: item[1])
    return (f"no signal stands out; the strongest is {name} {value:.2f}",)


def flipped(pixels: np.ndarray) -> np.ndarray:
    """Every tile of ``pixels`` (N, size, size, 3) turned each way of :data:`FLIPS`, tile by tile."""
    return np.stack([view for tile in pixels for view in (np.flip(tile, 1), np.flip(tile, 0), np.rot90(tile))])


def _flip_probabilities(
    model, scans: Sequence[PhotoScan], chosen: list[tuple[int, int, int]], batch_size: int, skips: SkipReport  # noqa: ANN001
) -> dict[tuple[int, int, int], np.ndarray]:
    """(scan, row, col) → the model's probability for each of :data:`FLIPS`, photo by photo, each decoded once."""
    size, reference, forward = scorer(model)  # the scan's own forward pass, on either runtime
    by_scan: dict[int, list[tuple[int, int]]] = {}
    for index, row, col in chosen:
        by_scan.setdefault(index, []).append((row, col))
    found: dict[tuple[int, int, int], np.ndarray] = {}
    for index, cells in sorted(by_scan.items()):
        scan = scans[index]
        try:
            with decoded(scan.path) as im:
                if im.size != (scan.grid.width, scan.grid.height):
                    raise UnreadableImage(scan.path, f"changed since it was scanned ({im.width}x{im.height}, not "
                                                     f"{scan.grid.width}x{scan.grid.height})")  # fmt: skip
                pixels = np.stack([np.asarray(patch_rgb(im.crop(scan.grid.box(r, c)), size)) for r, c in cells])
        except UnreadableImage as exc:
            skips.add(scan.path, exc.reason)
            continue
        views = flipped(pixels)
        out = []
        for start in range(0, len(views), batch_size):
            answer = forward(views[start : start + batch_size])
            out.append(np.asarray(answer[0] if reference is not None else answer, np.float64).reshape(-1))
        probabilities = np.concatenate(out).reshape(len(cells), len(FLIPS))
        for (row, col), values in zip(cells, probabilities):
            found[(index, row, col)] = values
    return found


def review_queue(
    scans: Sequence[PhotoScan],
    model,  # noqa: ANN001 - the keras.Model or PortableModel that scanned them
    n: int,
    candidates: int = CANDIDATES,
    batch_size: int = 64,
    skips: SkipReport | None = None,
) -> list[ReviewTile]:
    """The ``n`` tiles of ``scans`` most worth a reviewer's look, best first; ties by photo path, row and column.

    The flips are scored for the top ``max(n, candidates)`` tiles by uncertainty and
    unfamiliarity alone. A photo that can no longer be read is left out and goes to ``skips``.
    """
    if n < 1:
        raise CrackclsError(f"the review queue needs at least 1 tile, got {n}")
    if candidates < 1:
        raise CrackclsError(f"the review candidates must be at least 1, got {candidates}")
    skips = skips if skips is not None else SkipReport()
    if not scans:
        return []
    _, reference, _ = scorer(model)
    reference_scores = validation_scores(reference) if reference is not None else np.zeros(0)
    path_rank = {path: rank for rank, path in enumerate(sorted({scan.path for scan in scans}))}
    tiles, pre, keys = [], [], []
    for index, scan in enumerate(scans):
        unsure = uncertainty(scan.probabilities, scan.settings.threshold).reshape(-1)
        strange = None
        if scan.familiarity is not None and len(reference_scores):
            strange = unfamiliarity(scan.familiarity, reference_scores).reshape(-1)
        pre.append(unsure if strange is None else (unsure + strange) / 2)  # priority() of the two, for every tile at once
        for number in range(scan.tiles):
            row, col = divmod(number, scan.grid.cols)
            tiles.append((index, row, col, float(unsure[number]), None if strange is None else float(strange[number])))
            keys.append((path_rank[scan.path], index, row, col))
    first = np.concatenate(pre)
    order = sorted(range(len(tiles)), key=lambda i: (-first[i], keys[i]))
    chosen = [tiles[i] for i in order[: candidate_count(scans, n, candidates)]]
    flips = _flip_probabilities(model, scans, [(i, r, c) for i, r, c, _, _ in chosen], batch_size, skips)
    queued = []
    for index, row, col, unsure, strange in chosen:
        if (index, row, col) not in flips:
            continue  # its photo could not be read again
        scan = scans[index]
        p = float(scan.probabilities[row, col])
        views = flips[(index, row, col)]
        spread = float(max(p, views.max()) - min(p, views.min()))
        tile = {
            "path": scan.path, "box": scan.grid.box(row, col), "row": row, "col": col, "probability": p,
            "label": label_for(p, scan.settings.threshold), "threshold": scan.settings.threshold, "uncertainty": unsure,
            "unfamiliarity": strange, "flip_disagreement": spread, "flip_probabilities": tuple(float(v) for v in views),
            "familiarity": None if scan.familiarity is None else float(scan.familiarity[row, col]),
            "priority": priority([unsure, strange, spread]),
        }  # fmt: skip
        queued.append(ReviewTile(**tile, reasons=reasons_for(tile)))
    queued.sort(key=lambda t: (-t.priority, path_rank[t.path], t.row, t.col))
    return queued[:n]


# ---------------------------------------------------------------- the review file
def candidate_count(scans: Sequence[PhotoScan], n: int, candidates: int = CANDIDATES) -> int:
    """How many tiles get their flips scored for a queue of ``n``: ``max(n, candidates)``, at most every tile."""
    return min(max(n, candidates), sum(scan.tiles for scan in scans))


def review_document(
    tiles: Sequence[ReviewTile], model: str, scans: Sequence[PhotoScan], scored: int, created: datetime | None = None
) -> dict:
    """What ``crackcls scan --review`` writes: the model that answered, the threshold, the batch's counts and the tiles.

    Photo paths are absolute, so the desk finds them whatever folder it was started in.
    """
    thresholds = sorted({scan.settings.threshold for scan in scans})
    return {
        "format": FORMAT,
        "created": (created or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "model": model,
        "threshold": thresholds[0] if len(thresholds) == 1 else None,
        "settings": scans[0].settings.describe() if scans else {},
        "photos": len(scans),
        "tiles_scanned": sum(scan.tiles for scan in scans),
        "candidates": scored,  # the tiles whose flips were scored
        "priority": "mean of uncertainty, unfamiliarity (when the model has a familiarity reference) and flip disagreement",
        "tiles": [{"rank": rank, **tile.as_dict(), "path": str(Path(tile.path).resolve())} for rank, tile in enumerate(tiles, 1)],
    }


def write_review(target: str | os.PathLike[str], document: dict) -> Path:
    atomic.write_json(target, document)
    return Path(target)


def read_review(source: str | os.PathLike[str]) -> tuple[dict, list[ReviewTile]]:
    """(the file's header, its tiles in order) of a file :func:`write_review` wrote; a clear error for anything else."""
    try:
        document = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CrackclsError(f"cannot read the review file {source}: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("tiles"), list):
        raise CrackclsError(f"{source} is not a review file written by `crackcls scan --review` (format {FORMAT})")
    tiles = []
    for number, entry in enumerate(document["tiles"], 1):
        try:
            tiles.append(ReviewTile.from_dict(entry if isinstance(entry, dict) else {}))
        except CrackclsError as exc:
            raise CrackclsError(f"{source}: tile {number}: {exc}") from None
    return {key: value for key, value in document.items() if key != "tiles"}, tiles
