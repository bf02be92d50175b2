"""The inspector's desk behind the web page: batches of photos scanned one after another, their corrections and reports.

One model is loaded when the desk opens and answers every batch; batches queue and a
single worker thread scans them, so the page stays responsive and two batches never
compete for the cores. Everything the desk writes lies under its work folder (uploads,
overlays, reports) or in the field folder (corrected tiles and their manifest).
"""

from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from crackcls.config import Config
from crackcls.data.download import sha256_file
from crackcls.data.field_labels import Correction, FieldFolder, Written
from crackcls.jobs import scan as scan_job
from crackcls.jobs.predict import load_for, model_label, runtime_for
from crackcls.photos.corrections import cut_tiles, marked_cells
from crackcls.photos.report import ReportPhoto, render_report, write_report
from crackcls.photos.scan import PhotoScan, ScanSettings, tile_grid, tiles_of, tiles_shift
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

QUEUED, SCANNING, DONE, FAILED = "queued", "scanning", "done", "failed"


@dataclass
class Photo:
    number: int  # 1-based within its batch, as the page shows it
    name: str  # the name the reviewer knows it by
    path: Path
    scan: PhotoScan | None = None
    notes: list[str] = field(default_factory=list)  # corrections made on it, in words
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
    ) -> None:
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
        self._queue: queue.Queue[Batch] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="crackcls-desk", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ batches
    def new_batch_folder(self) -> tuple[str, Path]:
        batch_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.work_dir / batch_id
        folder.mkdir(parents=True)
        return batch_id, folder

    def submit(self, batch_id: str, folder: Path, photos: list[tuple[str, Path]], skipped: list[tuple[str, str]]) -> Batch:
        """Queue ``photos`` (name, path) for scanning; ``skipped`` are the files refused on the way in."""
        if not photos:
            raise CrackclsError("no photo to scan")
        batch = Batch(batch_id, datetime.now(timezone.utc), folder, [Photo(n, name, path) for n, (name, path) in enumerate(photos, 1)], list(skipped))
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
        box: tuple[int, int, int, int] | None = None,
    ) -> Written:  # fmt: skip
        """One reviewer's correction of one photo: its tiles into the field folder, and a note on the photo."""
        photo = self.batch(batch_id).photo(number)
        cells, label, marked = marked_cells(photo.scan, kind, region, box)
        if not cells:
            raise CrackclsError("the correction covers no tile")
        now = datetime.now(timezone.utc)
        correction = Correction(photo.name, photo.sha256, kind, marked, self.version, reviewer.strip(), now.isoformat(timespec="seconds"))
        written = self.field.add(correction, cut_tiles(photo.path, photo.scan, cells, label))
        what = kind.replace("_", " ") + (f" (region {region})" if kind == "not_a_crack" else "")
        box_text = "" if kind.startswith("confirmed") else f" at {marked[0]},{marked[1]}-{marked[2]},{marked[3]}"
        photo.notes.append(
            f"{what}{box_text} by {correction.reviewer}, {now:%Y-%m-%d %H:%M} UTC: "
            f"{len(written.files)} tile(s) to {label}/, {written.duplicates} already there"
        )
        return written

    def waiting(self) -> int:
        """Corrected tiles the pipeline has not imported yet (``dvc update data.dvc`` brings them in)."""
        return self.field.waiting(self.imported_dir)

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
