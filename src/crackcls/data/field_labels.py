"""Reviewed tiles into the field folder: an image per tile under ``<site>/Positive`` or ``<site>/Negative``, a manifest row each.

A person's correction of a scan becomes training data here. Each site (a bridge, a
structure, a client: whatever the team names) gets its own sub-folder, which the
pipeline takes in as its own source, ``field-<site>`` (:func:`site_source`); a
correction with no site lands in ``Positive/`` or ``Negative/`` at the top, source
``field``. Tiles are named
``<photo>--x<left>y<top>-<digest>.jpg`` so the split keeps every tile of one photo
together (:data:`FIELD_PARENTS`: tiles of one photo look alike, and a photo split across
train and test would leak). A file is never overwritten: it is written beside its target
and linked into place, which fails rather than replaces. An exact duplicate of an image
already in the folder, under either label, is dropped and counted. Every tile written gets
a row in ``corrections.csv`` (photo, box, label, model version, time, reviewer), and the
manifest itself is replaced whole, atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from crackcls.data.download import sha256_file
from crackcls.data.images import iter_images
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError

MANIFEST_FILE = "corrections.csv"
MANIFEST_COLUMNS = ("time", "reviewer", "site", "photo", "photo_sha256", "kind", "box", "label", "file", "sha256", "model")
FIELD_SOURCE = "field"  # the field folder's own Positive/ and Negative/: corrections with no site
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
# the parent photo of a reviewed tile, for the split (crackcls.data.collection)
FIELD_PARENTS = re.compile(r"^(?P<parent>.+)--x\d+y\d+-[0-9a-f]{10}$")
JPEG_QUALITY = 95
KINDS = ("not_a_crack", "missed_crack", "confirmed_crack", "confirmed_no_crack")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Correction:
    """What a reviewer said about one photo, and who said it when, about which model's answer."""

    photo: str  # the photo's file name as the reviewer saw it
    photo_sha256: str
    kind: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in photo pixels
    model: str
    reviewer: str
    time: str  # ISO 8601
    site: str = ""  # the structure the photo shows; "" for none

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CrackclsError(f"unknown correction '{self.kind}'; use one of {', '.join(KINDS)}")
        if not self.reviewer.strip():
            raise CrackclsError("a correction needs the reviewer's name")
        check_site(self.site)


def check_site(site: str) -> str:
    """``site`` when it can name a folder and a source (letters, digits, ``-`` and ``_``; 48 at most), else a clear error."""
    if site and (not SITE_NAME.match(site) or site in paths.LABELS):
        raise CrackclsError(
            f"site '{site}' is not a usable name: use letters, digits, '-' and '_' (48 at most), starting with a letter or digit"
        )
    return site


def site_source(site: str) -> str:
    """The source name a site's tiles train and are measured under: ``field-<site>``, or ``field`` without one."""
    return f"{FIELD_SOURCE}-{check_site(site)}" if site else FIELD_SOURCE


def is_field_source(source: str) -> bool:
    return source == FIELD_SOURCE or source.startswith(FIELD_SOURCE + "-")


@dataclass(frozen=True)
class LabelledTile:
    image: Image.Image
    label: str  # paths.POSITIVE or paths.NEGATIVE
    box: tuple[int, int, int, int]


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    duplicates: int = 0
    site: str = ""  # the site the tiles were filed under


def tile_name(photo: str, photo_sha256: str, box: tuple[int, int, int, int], digest: str) -> str:
    """``<photo stem>_<photo digest>--x<left>y<top>-<tile digest>.jpg``: one parent per photo, unique per content."""
    stem = _UNSAFE.sub("_", Path(photo).stem).strip("._") or "photo"
    return f"{stem[:60]}_{photo_sha256[:8]}--x{box[0]}y{box[1]}-{digest[:10]}.jpg"


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _link_new(data: bytes, target: Path) -> bool:
    """Write ``data`` to ``target`` only if nothing is there: False if something is."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.link(tmp_name, target)  # fails if the name is taken: never an overwrite
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp_name)


class FieldFolder:
    """The team's field-images folder (``field/`` by default), as corrections are added to it.

    One instance per process: it keeps the digests of the folder's images so that duplicates
    are found without rereading the folder, and serialises writers with a lock.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._digests: set[str] | None = None

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    def _known(self) -> set[str]:
        if self._digests is None:
            self._digests = {sha256_file(path) for path in iter_images(self.root)}  # every site's tiles too
        return self._digests

    def add(self, correction: Correction, tiles: Sequence[LabelledTile]) -> Written:
        """Write each tile unless the folder already holds its exact bytes; one manifest row per tile written."""
        written, rows = Written(site=correction.site), []
        with self._lock:
            known = self._known()
            for tile in tiles:
                if tile.label not in paths.LABELS:
                    raise CrackclsError(f"a tile's label must be one of {', '.join(paths.LABELS)}, got '{tile.label}'")
                data = _jpeg(tile.image)
                digest = _sha256(data)
                target = self.root / correction.site / tile.label / tile_name(correction.photo, correction.photo_sha256, tile.box, digest)
                if digest in known or not _link_new(data, target):
                    written.duplicates += 1
                    continue
                known.add(digest)
                written.files.append(target)
                rows.append(self._row(correction, tile, target, digest))
            if rows:
                self._append(rows)
        return written

    def _row(self, correction: Correction, tile: LabelledTile, target: Path, digest: str) -> dict:
        return {
            "time": correction.time, "reviewer": correction.reviewer, "site": correction.site, "photo": correction.photo,
            "photo_sha256": correction.photo_sha256, "kind": correction.kind,
            "box": ",".join(str(v) for v in tile.box), "label": tile.label,
            "file": target.relative_to(self.root).as_posix(), "sha256": digest, "model": correction.model,
        }  # fmt: skip

    def rows(self) -> list[dict]:
        if not self.manifest.is_file():
            return []
        with self.manifest.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def _append(self, rows: Iterable[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, restval="", lineterminator="\n")  # rows from before sites: no site
        writer.writeheader()
        writer.writerows([*self.rows(), *rows])
        atomic.write_text(self.manifest, buffer.getvalue())

    def waiting(self, imported: str | os.PathLike[str]) -> int:
        """Tiles in the manifest that the pipeline's copy (``data/field``) does not hold yet: what a retrain would add."""
        imported = Path(imported)
        return sum(not (imported / row["file"]).is_file() for row in self.rows())
