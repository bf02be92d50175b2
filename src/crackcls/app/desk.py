"""The inspector's desk behind the web page: batches of photos scanned one after another, their corrections and reports.

One model is loaded when the desk opens and answers every batch; batches queue and a
single worker thread scans them, so the page stays responsive and two batches never
compete for the cores. Everything the desk writes lies under its work folder (uploads,
overlays, reports) or in the field folder (corrected tiles and their manifest).

A batch's review queue (:mod:`crackcls.photos.review`) is ranked the first time it is asked
for, not as part of the scan: its flips cost a forward pass per tile and a second decode of
the photos that hold them, which a reviewer who only wants the verdicts should not wait for.
A batch opened from a review file keeps the file's order instead.
"""

from __future__ import annotations

import io
import queue
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from crackcls.config import Config
from crackcls.data.download import sha256_file
from crackcls.data.images import SkipReport
from crackcls.data.field_labels import Correction, FieldFolder, Written, check_site
from crackcls.jobs import scan as scan_job
from crackcls.jobs.predict import load_for, model_label, runtime_for
from crackcls.photos.corrections import covered_cells, cut_boxes, cut_tiles, marked_cells
from crackcls.photos.report import ReportPhoto, render_report, write_report
from crackcls.photos.review import ReviewTile, review_queue
from crackcls.photos.scan import Box, PhotoScan, ScanSettings, tile_grid, tiles_of, tiles_shift
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

QUEUED, SCANNING, DONE, FAILED = "queued", "scanning", "done", "failed"
MAX_REVIEW = 500  # tiles one review page may ask for
CROP_SIDE = 512  # the longest side of a tile's picture on the review page


@dataclass
class Photo:
    number: int  # 1-based within its batch, as the page shows it
    name: str  # the name the reviewer knows it by
    path: Path
    scan: PhotoScan | None = None
    notes: list[str] = field(default_factory=list)  # corrections made on it, in words
    corrected: set[tuple[int, int]] = field(default_factory=set)  # (row, col) of the tiles a correction labelled
    _sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        return self._sha256


@dataclass
class Batch:
    id: str
    created: datetime
    folder: Path  # this batch's work folder: overlays/ and report.html (and uploads/ for uploaded photos)
    photos: list[Photo]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    status: str = QUEUED
    tiles_total: int = 0
    tiles_done: int = 0
    shift_line: str | None = None
    error: str | None = None
    review_file: Path | None = None  # the `crackcls scan --review` file the batch was opened from
    review_header: dict | None = None  # that file's model, threshold and counts
    file_tiles: list[tuple[int, ReviewTile]] = field(default_factory=list)  # its tiles (photo number, tile), in its order
    ranked: list[Queued] | None = None  # the review queue, corrected tiles included
    ranked_for: int = 0  # the queue length it was ranked for
    crops: dict[tuple[int, Box], bytes] = field(default_factory=dict)  # JPEG of each queued tile, cut when first shown

    @property
    def scanned(self) -> list[Photo]:
        return [photo for photo in self.photos if photo.scan is not None]

    def photo(self, number: int) -> Photo:
        if not 1 <= number <= len(self.photos) or self.photos[number - 1].scan is None:
            raise KeyError(number)
        return self.photos[number - 1]

    def progress(self) -> dict:
        return {
            "id": self.id, "status": self.status, "tiles_done": self.tiles_done, "tiles_total": self.tiles_total,
            "photos": len(self.photos), "scanned": len(self.scanned), "error": self.error,
        }  # fmt: skip


@dataclass(frozen=True)
class Queued:
    """A tile of a batch's review queue, with the photo it belongs to and the scan cells a correction of it labels."""

    number: int
    name: str
    tile: ReviewTile
    cells: tuple[tuple[int, int], ...]

    def open(self, photo: Photo) -> bool:
        return not set(self.cells) <= photo.corrected

    def as_dict(self, batch_id: str) -> dict:
        left, top, right, bottom = self.tile.box
        crop = f"/batches/{batch_id}/photos/{self.number}/tile.jpg?left={left}&top={top}&right={right}&bottom={bottom}"
        return {"number": self.number, "name": self.name, **self.tile.as_dict(), "crop": crop}


def tile_count(path: Path, settings: ScanSettings) -> int:
    """The tiles a photo will be cut into, from its header alone (EXIF rotation does not change the count)."""
    with Image.open(path) as im:
        width, height = im.size
    return tile_grid(width, height, *settings.tile_and_stride(width, height)).count


class Desk:
    """The model, the batches and the field folder of one running app."""

    def __init__(
        self,
        config: Config,
        model_spec: str,
        work_dir: Path,
        field_dir: Path,
        imported_dir: Path,
        runtime: str | None = None,
        batch_size: int | None = None,
        site: str = "",
    ) -> None:
        self.site = check_site(site.strip())  # before the model loads: a bad --site fails at once
        self.config = config
        self.spec = model_spec
        self.runtime = runtime_for(model_spec, runtime)
        self.model = load_for(model_spec, self.runtime)
        self.settings = scan_job.settings_from(config, model=self.model)
        self.version = scan_job.model_version(model_spec, model_label(model_spec, self.runtime))
        self.batch_size = batch_size or config.evaluate.batch_size
        self.work_dir = work_dir
        self.field = FieldFolder(field_dir)
        self.imported_dir = imported_dir
        self.batches: dict[str, Batch] = {}
        self._lock = threading.Lock()
        self._review_lock = threading.Lock()  # one ranking at a time, and never twice for one batch
        self._queue: queue.Queue[Batch] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="crackcls-desk", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ batches
    def new_batch_folder(self) -> tuple[str, Path]:
        batch_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.work_dir / batch_id
        folder.mkdir(parents=True)
        return batch_id, folder

    def submit(
        self, batch_id: str, folder: Path, photos: list[tuple[str, Path]], skipped: list[tuple[str, str]],
        review_file: Path | None = None, review_header: dict | None = None, review_tiles: list[ReviewTile] | None = None,
    ) -> Batch:  # fmt: skip
        """Queue ``photos`` (name, path) for scanning; ``skipped`` are the files refused on the way in.

        With ``review_file``, the batch's review queue is that file's ``review_tiles``, in its
        order (the tiles of photos not in ``photos`` are left out).
        """
        if not photos:
            raise CrackclsError("no photo to scan")
        batch = Batch(batch_id, datetime.now(timezone.utc), folder, [Photo(n, name, path) for n, (name, path) in enumerate(photos, 1)], list(skipped))
        if review_file is not None:
            numbers = {photo.path.resolve(): photo.number for photo in batch.photos}
            batch.review_file, batch.review_header = review_file, review_header
            batch.file_tiles = [(numbers[p], t) for t in review_tiles or [] if (p := Path(t.path).resolve()) in numbers]
        for photo in batch.photos:
            batch.tiles_total += tile_count(photo.path, self.settings)
        with self._lock:
            self.batches[batch.id] = batch
        self._queue.put(batch)
        return batch

    def batch(self, batch_id: str) -> Batch:
        with self._lock:
            return self.batches[batch_id]

    def listed(self) -> list[Batch]:
        with self._lock:
            return sorted(self.batches.values(), key=lambda b: b.created, reverse=True)

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                self._scan(batch)
            except Exception as exc:  # noqa: BLE001 - the page shows it; the desk goes on with the next batch
                batch.status, batch.error = FAILED, str(exc) or type(exc).__name__

    def _scan(self, batch: Batch) -> None:
        batch.status = SCANNING

        def scored(tiles: int) -> None:
            batch.tiles_done += tiles

        by_path = {photo.path: photo for photo in batch.photos}
        scans, skips = scan_job.scan_paths(
            self.model, list(by_path), self.settings, self.batch_size, batch.folder / "overlays",
            self.config.scan.overlay_size, self.version, scored,
        )  # fmt: skip
        for scan in scans:
            by_path[Path(scan.path)].scan = scan
        names = {str(photo.path): photo.name for photo in batch.photos}
        batch.skipped.extend((names.get(str(path), Path(path).name), reason) for path, reason in skips.skipped)
        shift = tiles_shift(self.model, scans)
        batch.shift_line = shift.line(tiles_of(len(scans))) if shift is not None else None
        batch.tiles_done = batch.tiles_total
        batch.status = DONE

    # ------------------------------------------------------------ corrections
    def correct(
        self, batch_id: str, number: int, kind: str, reviewer: str, region: int | None = None,
        box: tuple[int, int, int, int] | None = None, site: str | None = None,
    ) -> Written:  # fmt: skip
        """One reviewer's correction of one photo: its tiles into the field folder (under ``site``, by default the
        desk's), and a note on the photo."""
        photo = self.batch(batch_id).photo(number)
        cells, label, marked = marked_cells(photo.scan, kind, region, box)
        if not cells:
            raise CrackclsError("the correction covers no tile")
        now = datetime.now(timezone.utc)
        correction = Correction(
            photo.name, photo.sha256, kind, marked, self.version, reviewer.strip(), now.isoformat(timespec="seconds"),
            self.site if site is None else site.strip(),
        )  # fmt: skip
        written = self.field.add(correction, cut_tiles(photo.path, photo.scan, cells, label))
        photo.corrected.update(cells)
        what = kind.replace("_", " ") + (f" (region {region})" if region is not None else "")
        by_box = not kind.startswith("confirmed") and region is None
        box_text = f" at {marked[0]},{marked[1]}-{marked[2]},{marked[3]}" if by_box else ""
        folder = f"{correction.site}/{label}" if correction.site else label
        photo.notes.append(
            f"{what}{box_text} by {correction.reviewer}, {now:%Y-%m-%d %H:%M} UTC: "
            f"{len(written.files)} tile(s) to {folder}/, {written.duplicates} already there"
        )
        return written

    def waiting(self) -> int:
        """Corrected tiles the pipeline has not imported yet (``dvc update data.dvc`` brings them in)."""
        return self.field.waiting(self.imported_dir)

    # ------------------------------------------------------------ review
    def review(self, batch_id: str, n: int) -> list[Queued]:
        """The ``n`` tiles of the batch most worth a look that no correction has labelled yet, best first."""
        if not 1 <= n <= MAX_REVIEW:
            raise CrackclsError(f"a review page shows between 1 and {MAX_REVIEW} tiles, got n={n}")
        batch = self.batch(batch_id)
        if batch.status != DONE:
            raise CrackclsError("the batch is still being scanned; its review queue follows when it is done")
        if not batch.scanned:
            return []
        with self._review_lock:
            # room for the queued tiles corrected since; not for every corrected tile (a confirmed photo labels all of its)
            corrected = sum(not queued.open(batch.photos[queued.number - 1]) for queued in batch.ranked or [])
            wanted = min(n + corrected, sum(photo.scan.tiles for photo in batch.scanned))
            if batch.ranked is None or (batch.review_file is None and batch.ranked_for < wanted):
                batch.ranked, batch.ranked_for = self._ranked(batch, wanted), wanted
            ranked = batch.ranked
        return [queued for queued in ranked if queued.open(batch.photos[queued.number - 1])][:n]

    def _ranked(self, batch: Batch, wanted: int) -> list[Queued]:
        """The batch's queue: the review file's tiles on this desk's scan cells, or ranked here with the desk's model."""
        if batch.review_file is not None:
            found = []
            for number, tile in batch.file_tiles:
                photo = batch.photos[number - 1]
                if photo.scan is None:
                    continue  # unreadable when the desk scanned it: listed among the batch's skipped files
                try:
                    cells = covered_cells(photo.scan, tile.box)
                except CrackclsError as exc:
                    batch.skipped.append((f"{photo.name}, review tile {tile.box}", str(exc)))
                    continue
                found.append(Queued(number, photo.name, tile, tuple(cells)))
            return found
        by_path = {photo.scan.path: photo for photo in batch.scanned}
        skips = SkipReport()
        tiles = review_queue([photo.scan for photo in batch.scanned], self.model, wanted, batch_size=self.batch_size, skips=skips)
        batch.skipped.extend((by_path[path].name, f"left out of the review queue: {reason}") for path, reason in skips.skipped)
        return [Queued(by_path[t.path].number, by_path[t.path].name, t, ((t.row, t.col),)) for t in tiles]

    def tile_picture(self, batch_id: str, number: int, box: Box) -> bytes:
        """A JPEG of one queued tile; the first one asked for of a photo cuts every queued tile of it (one decode)."""
        batch = self.batch(batch_id)
        photo = batch.photo(number)
        key = (number, tuple(box))
        with self._review_lock:
            if key not in batch.crops:
                boxes = sorted({q.tile.box for q in batch.ranked or [] if q.number == number})
                if key[1] not in boxes:
                    raise KeyError(box)
                for cut, image in zip(boxes, cut_boxes(photo.path, photo.scan, boxes)):
                    image.thumbnail((CROP_SIDE, CROP_SIDE))
                    buffer = io.BytesIO()
                    image.convert("RGB").save(buffer, "JPEG", quality=90)
                    batch.crops[(number, cut)] = buffer.getvalue()
            return batch.crops[key]

    # ------------------------------------------------------------ reports
    def report(self, batch_id: str) -> Path:
        """The batch's inspection report, written into its work folder."""
        from crackcls.tracking.store import model_card

        batch = self.batch(batch_id)
        if batch.status != DONE:
            raise CrackclsError("the batch is still being scanned; its report follows when it is done")
        photos = [
            ReportPhoto({**photo.scan.row(), "path": photo.name}, Path(photo.scan.overlay) if photo.scan.overlay else None, list(photo.notes))
            for photo in batch.scanned
        ]  # fmt: skip
        html = render_report(photos, self.version, model_card(self.spec), datetime.now(timezone.utc), batch.shift_line, batch.skipped)
        return write_report(batch.folder / "report.html", html)


def default_folders() -> dict[str, Path]:
    """Where the app works by default: reports/app for its batches, field/ for corrections, data/field as imported."""
    root = paths.workspace_root()
    return {"work": root / paths.REPORTS_DIR / "app", "field": root / "field", "imported": root / paths.FIELD_DIR}
