"""``crackcls scan``: whole photos, tile by tile: a verdict, crack tiles and crack regions per photo.

Inputs and the model are taken as ``crackcls predict`` takes them; unreadable files are
counted with their reasons. The tiling and the verdict rule are :mod:`crackcls.photos.scan`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from crackcls.config import Config
from crackcls.data.images import SkipReport
from crackcls.jobs.predict import (
    _config,
    champion_spec,
    checked_batch_size,
    expand_inputs,
    load_for,
    model_label,
    output_format,
    overlay_names,
    runtime_for,
)
from crackcls.model.scoring import CRACK
from crackcls.photos.heatmap import save_png
from crackcls.photos.overlay import readable_overlay
from crackcls.photos.report import ReportPhoto, render_report, write_report
from crackcls.photos.review import CANDIDATES, ReviewTile, candidate_count, review_document, review_queue, write_review
from crackcls.photos.scan import PhotoScan, ScanSettings, scan_files, settings_for, tiles_of, tiles_shift
from crackcls.trust.shift import ShiftTest
from crackcls.util import atomic, paths, progress
from crackcls.util.errors import CrackclsError
from crackcls.util.tables import csv_text

COLUMNS = ("path", "verdict", "crack_tiles", "tiles", "crack_fraction", "max_probability", "regions", "threshold")
TILE_COLUMNS = ("path", "row", "col", "left", "top", "right", "bottom", "crack_probability", "crack")
# with a familiarity reference: the photo's median tile score, whether it is above 1, and the tiles above 1
FAMILIARITY_COLUMNS = ("familiarity", "unfamiliar", "unfamiliar_tiles")
OVERLAY_SUFFIX = "_scan.png"
REVIEW_FILE = paths.REPORTS_DIR / "review.json"  # under the workspace root


@dataclass
class ScanResult:
    model: str
    scans: list[PhotoScan]
    skipped: SkipReport = field(default_factory=SkipReport)
    shift: ShiftTest | None = None  # every tile's familiarity tested against the validation images'
    review: list[ReviewTile] | None = None  # with --review: the tiles worth a reviewer's look, best first
    review_file: Path | None = None
    review_skipped: SkipReport = field(default_factory=SkipReport)  # photos unreadable when their tiles were reviewed


def settings_from(
    config: Config,
    tile: int | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    model=None,  # noqa: ANN001 - a keras.Model or PortableModel whose stored rule and threshold apply
    tiles_across: int | None = None,
) -> ScanSettings:
    """params.yaml's ``scan`` section, with the command line's overrides.

    The photo rule is the one fitted with the model (``scan.rule: fitted``, where the model
    has one and no ``--threshold`` is given); otherwise the tile threshold is the one
    ``predict`` uses (an explicit one, else the model's stored one, else
    ``evaluate.threshold``) with params.yaml's ``min_region_tiles`` and ``peak_threshold``.
    A ``--tile`` given here replaces a configured ``tiles_across``.
    """
    if tile is None and tiles_across is None:
        tiles_across = config.scan.tiles_across
    tile = tile or config.scan.tile
    if stride is None and config.scan.stride is not None and config.scan.stride <= tile:
        stride = config.scan.stride  # a configured stride too long for a --tile given here is left out
    scan = config.scan
    return settings_for(
        model, tile, stride, threshold, config.evaluate.threshold, scan.rule == "fitted",
        scan.min_region_tiles, scan.peak_threshold, scan.connectivity, tiles_across, scan.background_margin,
    )  # fmt: skip


def scan_paths(
    model,  # noqa: ANN001 - a keras.Model
    files: Sequence[Path],
    settings: ScanSettings,
    batch_size: int,
    overlay_dir: Path | None = None,
    overlay_size: int = 1024,
    model_name: str = "",
    scored: Callable[[int], object] | None = None,
) -> tuple[list[PhotoScan], SkipReport]:
    """Scan ``files``; with ``overlay_dir``, write ``<stem>_scan.png`` per photo as it finishes, legend naming ``model_name``.

    ``scored`` is told the number of tiles of each batch scored, as the progress bar is.
    """
    skips = SkipReport()
    targets = overlay_names(files, overlay_dir, OVERLAY_SUFFIX) if overlay_dir is not None else {}
    scans = []

    with progress.bar(None, "scan", unit="tile") as bar:  # counts tiles
        def update(tiles: int) -> None:
            bar.update(tiles)
            if scored is not None:
                scored(tiles)

        for scan, picture in scan_files(model, files, settings, batch_size, skips, overlay_size if targets else None, update):
            if picture is not None:
                scan.overlay = str(save_png(readable_overlay(picture, scan, model_name), targets[Path(scan.path)]))
                scan.overlay_picture = (picture.shape[1], picture.shape[0])
            scans.append(scan)
    return scans, skips


def run(
    inputs: Sequence[str],
    model_spec: str | None = None,
    tile: int | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    overlay_dir: str | os.PathLike[str] | None = None,
    runtime: str | None = None,
    tiles_across: int | None = None,
    report: str | os.PathLike[str] | None = None,
    review: int | None = None,
    review_file: str | os.PathLike[str] | None = None,
) -> ScanResult:
    """Scan ``inputs``; with ``report``, also write the inspection report (overlays included) to that file.

    A report needs overlays: without ``overlay_dir`` they are drawn into a temporary folder
    that lasts until the report holds them, and the rows then name no overlay file. With
    ``review`` N, the N tiles most worth a reviewer's look (:mod:`crackcls.photos.review`) go
    to ``review_file`` (default: ``reports/review.json``).
    """
    config = _config()
    settings_from(config, tile, stride, threshold, tiles_across=tiles_across)  # bad settings fail before the model loads
    review_target = review_target_for(review, review_file)
    batch_size = checked_batch_size(config, batch_size)
    files = expand_inputs(inputs)
    spec = model_spec or champion_spec(config)
    runtime = runtime_for(spec, runtime)
    model = load_for(spec, runtime)
    settings = settings_from(config, tile, stride, threshold, model, tiles_across)
    label = model_label(spec, runtime)
    named = model_version(spec, label) if overlay_dir is not None or report is not None or review is not None else label
    with contextlib.ExitStack() as stack:
        if overlay_dir is not None:
            out = Path(overlay_dir)
        elif report is not None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crackcls-report-")))
        else:
            out = None
        scans, skips = scan_paths(model, files, settings, batch_size, out, config.scan.overlay_size, named)
        result = ScanResult(label, scans, skips, tiles_shift(model, scans))
        if report is not None:
            from crackcls.tracking.store import model_card

            write_report(report, report_html(result, named, model_card(spec)))
            if overlay_dir is None:
                for scan in result.scans:
                    scan.overlay = None  # the temporary overlays are gone with their folder
    if review_target is not None:
        result.review = review_queue(result.scans, model, review, CANDIDATES, batch_size, result.review_skipped)
        scored = candidate_count(result.scans, review, CANDIDATES)
        result.review_file = write_review(review_target, review_document(result.review, named, result.scans, scored))
    return result


def review_target_for(review: int | None, review_file: str | os.PathLike[str] | None) -> Path | None:
    """Where ``--review`` writes, checked before anything is scanned; None without ``--review``."""
    if review is None:
        if review_file is not None:
            raise CrackclsError("--review-file needs --review N: how many tiles to queue for review")
        return None
    if review < 1:
        raise CrackclsError(f"--review must be at least 1 tile, got {review}")
    return Path(review_file) if review_file is not None else paths.workspace_root() / REVIEW_FILE


def report_html(result: ScanResult, spec_label: str, card: str | None, created: datetime | None = None) -> str:
    """The inspection report of ``result``: every photo with its overlay, the batch's counts, shift line and skips.

    ``spec_label`` names the model as the overlays do (:func:`model_version`); ``created``
    defaults to now, in local time.
    """
    photos = [ReportPhoto(scan.row(), Path(scan.overlay) if scan.overlay else None) for scan in result.scans]
    shift = result.shift.line(tiles_of(len(result.scans))) if result.shift is not None else None
    created = created or datetime.now().astimezone()
    return render_report(photos, spec_label, card, created, shift, result.skipped.skipped)


def model_version(spec: str, label: str) -> str:
    """``label`` with the version that answered: the registered version, or the start of the model file's sha256."""
    from crackcls.model.portable import file_sha256
    from crackcls.tracking import store

    try:
        version = store.registered_version(spec)
    except Exception:  # noqa: BLE001 - a label is never worth a failed scan
        version = None
    if version is not None:
        return f"{label}, {version.name} v{version.version}"
    path = Path(spec)
    return f"{label}, sha256 {file_sha256(path)[:12]}" if path.is_file() else label


def regions_text(regions: list[dict]) -> str:
    """``1:left,top-right,bottom`` per region, numbered as on the overlay, for the table."""
    return " ".join(f"{n}:{r['left']},{r['top']}-{r['right']},{r['bottom']}" for n, r in enumerate(regions, 1)) or "-"


def render(result: ScanResult, fmt: str) -> str:
    """One row per photo: an aligned table, a JSON list (regions as objects), or CSV (regions as JSON text)."""
    with_overlays = any(scan.overlay for scan in result.scans)
    columns = [*COLUMNS, "overlay"] if with_overlays else list(COLUMNS)
    if any(scan.familiarity is not None for scan in result.scans):
        columns.extend(FAMILIARITY_COLUMNS)
    if fmt == "json":
        return json.dumps([scan.row() for scan in result.scans], indent=2) + "\n"
    rows = [{key: scan.row()[key] for key in columns} for scan in result.scans]
    if fmt == "csv":
        return csv_text([{**row, "regions": json.dumps(row["regions"])} for row in rows], columns)
    if fmt == "table":
        return _table([{**row, "regions": regions_text(row["regions"])} for row in rows], columns)
    raise CrackclsError(f"unknown format '{fmt}'; use table, json or csv")


def render_tiles(result: ScanResult, fmt: str) -> str:
    """Every tile of every photo: JSON or CSV."""
    rows = [row for scan in result.scans for row in scan.tile_rows()]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    familiar = any(scan.familiarity is not None for scan in result.scans)
    return csv_text(rows, [*TILE_COLUMNS, "familiarity"] if familiar else list(TILE_COLUMNS))


def _table(rows: list[dict], columns: list[str]) -> str:
    from crackcls.jobs.predict import _table as aligned

    return aligned(rows, columns)


def write(
    result: ScanResult,
    fmt: str | None = None,
    output: str | os.PathLike[str] | None = None,
    tiles: str | os.PathLike[str] | None = None,
) -> str:
    """Write the per-tile file (JSON if ``tiles`` ends in .json, else CSV) and the photo rows (to ``output`` or returned)."""
    if tiles:
        atomic.write_text(tiles, render_tiles(result, "json" if Path(tiles).suffix.lower() == ".json" else "csv"))
    text = render(result, output_format(fmt, output))
    if output:
        atomic.write_text(output, text)
        return ""
    return text


def summary(result: ScanResult) -> str:
    """The closing lines for stderr: counts, and every skipped file with its reason."""
    cracks = sum(scan.verdict == CRACK for scan in result.scans)
    tiles = sum(scan.tiles for scan in result.scans)
    lines = [
        f"{len(result.scans)} photos scanned ({tiles} tiles) with {result.model}: "
        f"{cracks} crack, {len(result.scans) - cracks} no crack"
    ]
    if result.shift is not None:
        lines.append(result.shift.line(tiles_of(len(result.scans))))
    lines.extend(result.skipped.summary_lines())
    if result.review_file is not None:
        where = result.review_file.resolve()
        shown = where.relative_to(Path.cwd().resolve()) if where.is_relative_to(Path.cwd().resolve()) else where
        lines.append(f"{len(result.review)} tiles queued for review in {shown}")
        lines.extend(f"  left out of the review, {path}: {reason}" for path, reason in result.review_skipped.skipped)
    return "\n".join(lines)
