"""A survey's photos scored into table rows: one per photo and one per crack region, in small Parquet part files.

What one Spark task runs, with no Spark in it: photos are read (a path, a ``file://`` URI, or
any URI a pyarrow filesystem opens, such as ``s3://`` or ``hdfs://``), hashed, skipped when their
content was already scanned with this model and these settings, and scanned with
:func:`crackcls.photos.scan.scan_files`. A photo that cannot be read or scanned is a row with its
error, never a failed task. Rows go out in part files of a few photos each, written under a
temporary name and renamed, so a killed process loses at most the batch it was scanning, and a
reader never sees half a file. Rows are identical whichever process wrote them, so a photo
written twice (a retried task) is one row once read (:func:`read_parts`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from crackcls.data.download import sha256_file
from crackcls.data.images import UNREADABLE, SkipReport
from crackcls.photos.scan import PhotoScan, ScanSettings, scan_files
from crackcls.util import atomic

PHOTOS = "photos"  # the photo rows' folder in a survey's output
REGIONS = "regions"  # the region rows' folder
PART_SUFFIX = ".parquet"
# Photos per part file: a kill loses at most this many photos' work; 100,000 photos make ~6,000 files.
PHOTOS_PER_PART = 16
# The columns that name one result: a photo (its path and content) scanned by one model under one set of settings.
KEY = ("path", "sha256", "model_version", "settings")


def photo_schema():  # noqa: ANN201 - a pyarrow.Schema (pyarrow is imported only where rows are written)
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()),
        ("verdict", pa.string()), ("score", pa.float64()), ("max_probability", pa.float64()),
        ("crack_tiles", pa.int32()), ("tiles", pa.int32()), ("regions", pa.int32()),
        ("width", pa.int32()), ("height", pa.int32()), ("threshold", pa.float64()),
        ("familiarity", pa.float64()), ("unfamiliar", pa.bool_()),
        ("model_version", pa.string()), ("settings", pa.string()), ("error", pa.string()),
        ("scanned_at", pa.float64()),  # seconds since the epoch: the latest row of a path is its current one
        # every tile, row by row: the set-level shift test and any later look need them, not a rescan
        ("tile_probabilities", pa.list_(pa.float32())), ("tile_familiarity", pa.list_(pa.float32())),
    ])  # fmt: skip


def region_schema():  # noqa: ANN201 - a pyarrow.Schema
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("sha256", pa.string()), ("model_version", pa.string()), ("settings", pa.string()),
        ("region", pa.int32()), ("left", pa.int32()), ("top", pa.int32()), ("right", pa.int32()), ("bottom", pa.int32()),
        ("tiles", pa.int32()), ("max_probability", pa.float64()),
    ])  # fmt: skip


def settings_id(settings: ScanSettings) -> str:
    """A short name for the scan settings: a rerun under other settings scans every photo again."""
    text = json.dumps(settings.describe(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def done_key(path: str, sha256: str, model_version: str, settings: str) -> str:
    """A result's name: a photo whose content changed, or that moved, is scanned again; one copied unchanged is not."""
    return f"{sha256}|{model_version}|{settings}|{path}"


# ---------------------------------------------------------------- reading photos
@contextlib.contextmanager
def local_photo(uri: str) -> Iterator[Path]:
    """A local path to read ``uri`` from: the path itself, or a temporary copy of a remote file."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a path, file://, or a Windows drive letter
        yield Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        return
    from pyarrow import fs

    folder = tempfile.mkdtemp(prefix="crackcls-photo-")
    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        local = Path(folder) / (Path(inner).name or "photo")
        with filesystem.open_input_stream(inner) as source, open(local, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Batch:
    """The rows of one batch of photos, and how many were skipped as already done."""

    photos: list[dict] = field(default_factory=list)
    regions: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths whose content was done before

    def outcomes(self) -> list[dict]:
        """What the driver counts: one line per photo of the batch."""
        done = [{"path": row["path"], "outcome": "error" if row["error"] else "scanned", "error": row["error"]} for row in self.photos]
        return done + [{"path": path, "outcome": "done", "error": None} for path in self.skipped]


def _error_row(path: str, sha256: str | None, size: int | None, version: str, settings: str, error: str) -> dict:
    return {
        "path": path, "sha256": sha256, "bytes": size, "model_version": version, "settings": settings, "error": error,
        "scanned_at": time.time(),
    }  # fmt: skip


def _rows(scan: PhotoScan, path: str, sha256: str, size: int, version: str, settings: str) -> tuple[dict, list[dict]]:
    row = scan.row()
    key = {"path": path, "sha256": sha256, "model_version": version, "settings": settings}
    photo = {
        **key, "bytes": size, "verdict": row["verdict"], "score": row["score"], "max_probability": row["max_probability"],
        "crack_tiles": row["crack_tiles"], "tiles": row["tiles"], "regions": len(row["regions"]),
        "width": row["width"], "height": row["height"], "threshold": row["threshold"],
        "familiarity": row.get("familiarity"), "unfamiliar": row.get("unfamiliar"), "error": None, "scanned_at": time.time(),
        "tile_probabilities": np.asarray(scan.probabilities, np.float32).reshape(-1).tolist(),
        "tile_familiarity": None if scan.familiarity is None else np.asarray(scan.familiarity, np.float32).reshape(-1).tolist(),
    }  # fmt: skip
    regions = [{**key, "region": number, **region} for number, region in enumerate(row["regions"], 1)]
    return photo, regions


def _scan_all(model, files: list[Path], settings: ScanSettings, batch_size: int) -> tuple[dict[str, PhotoScan], dict[str, str]]:  # noqa: ANN001
    skips = SkipReport()
    scans = {scan.path: scan for scan, _ in scan_files(model, files, settings, batch_size, skips)}
    return scans, dict(skips.skipped)


def _scanned(model, files: list[Path], settings: ScanSettings, batch_size: int) -> tuple[dict[str, PhotoScan], dict[str, str]]:  # noqa: ANN001
    """Scans and errors by local path. Should the batch fail as a whole, each photo is scanned alone to find the culprit."""
    try:
        return _scan_all(model, files, settings, batch_size)
    except Exception:  # noqa: BLE001, S110 - one photo must never fail the task; the loop below names it
        pass
    scans, errors = {}, {}
    for file in files:
        try:
            found, failed = _scan_all(model, [file], settings, batch_size)
        except Exception as exc:  # noqa: BLE001 - recorded as the photo's error
            found, failed = {}, {str(file): f"scan failed: {type(exc).__name__}: {exc}"}
        scans.update(found)
        errors.update(failed)
    return scans, errors


def score_photos(
    model,  # noqa: ANN001 - a keras.Model or a PortableModel
    uris: Sequence[str],
    settings: ScanSettings,
    batch_size: int,
    version: str,
    done: set[str] | frozenset[str] = frozenset(),
) -> Batch:
    """Rows for the photos at ``uris`` that are not ``done`` (keys of :func:`done_key`); an unreadable one is an error row."""
    batch, named = Batch(), settings_id(settings)
    with contextlib.ExitStack() as stack:
        todo: list[tuple[str, Path, str, int]] = []  # uri, local path, sha256, bytes
        for uri in uris:
            try:
                local = stack.enter_context(local_photo(uri))
                size, sha256 = os.stat(local).st_size, sha256_file(local)
            except Exception as exc:  # noqa: BLE001 - missing, unreadable, a bad URI: the photo's error
                batch.photos.append(_error_row(uri, None, None, version, named, f"{UNREADABLE}: {type(exc).__name__}: {exc}"))
                continue
            if done_key(uri, sha256, version, named) in done:
                batch.skipped.append(uri)
            else:
                todo.append((uri, local, sha256, size))
        scans, errors = _scanned(model, [local for _, local, _, _ in todo], settings, batch_size) if todo else ({}, {})
        for uri, local, sha256, size in todo:
            scan = scans.get(str(local))
            if scan is None:
                batch.photos.append(_error_row(uri, sha256, size, version, named, errors.get(str(local), "not scanned")))
                continue
            photo, regions = _rows(scan, uri, sha256, size, version, named)
            batch.photos.append(photo)
            batch.regions.extend(regions)
    return batch


# ---------------------------------------------------------------- part files
def write_part(folder: str | os.PathLike[str], name: str, rows: list[dict], schema) -> Path | None:  # noqa: ANN001
    """``rows`` as ``folder/name.parquet``, whole or not at all (None when there are no rows)."""
    if not rows:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(folder) / f"{name}{PART_SUFFIX}"
    with atomic.atomic_path(target, suffix=PART_SUFFIX) as tmp:  # a dot-name: readers never see it
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    return target


def write_batch(out: str | os.PathLike[str], name: str, batch: Batch) -> None:
    """The regions first, then the photos: a photo row is only there once its regions are."""
    write_part(Path(out) / REGIONS, name, batch.regions, region_schema())
    write_part(Path(out) / PHOTOS, name, batch.photos, photo_schema())


def part_files(folder: str | os.PathLike[str], prefix: str = "") -> list[Path]:
    """The finished part files: a file still being written has a dot-name until it is whole."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.suffix == PART_SUFFIX and not p.name.startswith("."))


def read_parts(folder: str | os.PathLike[str], columns: Sequence[str] | None = None, prefix: str = ""):  # noqa: ANN201 - a pandas.DataFrame
    """Every row of the part files under ``folder`` (those whose name starts with ``prefix``), each result once."""
    import pyarrow.dataset as ds

    files = part_files(folder, prefix)
    schema = photo_schema() if Path(folder).name == PHOTOS else region_schema()
    wanted = list(columns) if columns is not None else schema.names
    if not files:
        return schema.empty_table().select(wanted).to_pandas()
    frame = ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table(columns=wanted).to_pandas()
    unique = [name for name in (*KEY, "region") if name in frame.columns]
    return frame.drop_duplicates(subset=unique, ignore_index=True) if unique else frame


def done_keys(out: str | os.PathLike[str], prefix: str = "", version: str | None = None, settings: str | None = None) -> set[str]:
    """The results already written under a survey's ``out`` folder (with this model version and settings), as :func:`done_key` keys.

    A photo that could not even be read (no content hash) is not done: the next run tries it again.
    """
    frame = read_parts(Path(out) / PHOTOS, list(KEY), prefix)
    frame = frame[frame["sha256"].notna()]
    if version is not None:
        frame = frame[(frame["model_version"] == version) & (frame["settings"] == settings)]
    return {done_key(*key) for key in zip(*(frame[name] for name in KEY))}


def keys_of(rows: Sequence[dict]) -> set[str]:
    """The :func:`done_key` keys of freshly written photo rows."""
    return {done_key(*(row[name] for name in KEY)) for row in rows if row["sha256"]}


def current(frame):  # noqa: ANN001, ANN201 - a pandas DataFrame of photo rows in and out
    """Each path's latest row: a photo changed, or read after an error, counts once, as it is now."""
    return frame.sort_values("scanned_at", kind="stable").drop_duplicates(subset=["path"], keep="last", ignore_index=True)
