"""Safe archive extraction (RAR4, RAR5, zip, ... through libarchive).

Archives come from the internet, so every entry is checked here rather than
trusted to library flags: links, device files, absolute paths and ``..`` never
reach the disk, nothing lands outside the target folder, and a byte cap stops a
decompression bomb before it fills the disk.
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


def _prefer_bundled_libarchive() -> None:
    """Use the libarchive 3.8 shipped in the ``archi`` wheel unless LIBARCHIVE says otherwise.

    Debian 12's libarchive 3.6.2 mis-decodes some RAR4 streams (false CRC errors),
    and the Mendeley set is a RAR4; the wheel also spares users a system package.
    """
    if os.environ.get("LIBARCHIVE"):
        return
    try:
        import archi  # noqa: F401  (only its bundled shared library is used)
    except ImportError:
        return
    libs = Path(archi.__file__).resolve().parent / "archi.libs"
    bundled = sorted(libs.glob("libarchive-*.so*"))
    if bundled:
        os.environ["LIBARCHIVE"] = str(bundled[-1])


_prefer_bundled_libarchive()

import libarchive  # noqa: E402
import libarchive.exception  # noqa: E402
import libarchive.ffi  # noqa: E402

from crackcls.data.download import sha256_file
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

log = logging.getLogger(__name__)

CAP_KEY = "data.download.max_extract_mb"
# A labelled dataset's class folders, Positive/ first as messages name them.
DATASET_FOLDERS = tuple(reversed(paths.LABELS))
BLOCK_BYTES = 1 << 16


class ArchiveError(CrackclsError):
    """An archive is unreadable, unsafe, or larger than the extraction cap."""


class ArchiveReadError(ArchiveError):
    """libarchive could not decode the archive (truncated, corrupt, or a decoder bug)."""


def libarchive_version() -> str:
    """The loaded libarchive's version, e.g. '3.6.2'; named in errors since old releases mis-decode some RAR4."""
    number = libarchive.ffi.version_number()
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


@dataclass
class ExtractReport:
    """What an extraction wrote and what it refused, for reports/fetch.json."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        log.warning("archive: skipped %r: %s", name, reason)
        self.skipped.append({"entry": name, "reason": reason})

    def as_dict(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "bytes": self.bytes, "skipped": list(self.skipped)}


@contextlib.contextmanager
def _utf8_names() -> Iterator[None]:
    """libarchive converts entry names through the C locale; under LC_ALL=C non-ASCII names are lost."""
    previous = locale.setlocale(locale.LC_CTYPE)
    if "utf" in previous.lower().replace("-", ""):
        yield
        return
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    except locale.Error:
        yield  # no UTF-8 locale on this system: names that cannot convert are skipped
        return
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)


def _entry_name(entry: libarchive.ArchiveEntry) -> str:
    name = entry.pathname
    return os.fsdecode(name) if isinstance(name, bytes) else (name or "")


def _kind_refused(entry: libarchive.ArchiveEntry) -> str | None:
    """Why an entry's type is refused (links and device files could escape or trap the target)."""
    if entry.issym:
        return f"symlink (-> {entry.linkpath!r})"
    if entry.islnk:
        return f"hardlink (-> {entry.linkpath!r})"
    if entry.isblk or entry.ischr or entry.isfifo or entry.issock:
        return "device, fifo or socket"
    if not (entry.isdir or entry.isreg):
        return "unknown entry type"
    return None


def safe_destination(name: str, root: Path) -> tuple[Path | None, str | None]:
    """Map an entry name to a path inside ``root`` (already resolved), or say why it is refused."""
    posix = name.replace("\\", "/")  # archives made on Windows may use backslashes
    rel = PurePosixPath(posix)
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return None, "absolute path"
    if ".." in rel.parts:
        return None, "'..' path component"
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts:
        return None, "empty or unreadable name"
    dest = root.joinpath(*parts)
    if not dest.resolve().is_relative_to(root):
        return None, "resolves outside the target folder"
    return dest, None


def _over_cap(max_bytes: int) -> ArchiveError:
    return ArchiveError(
        f"archive expands past the extraction cap of {max_bytes // 2**20} MB ({max_bytes} bytes); "
        f"refusing to continue (possible decompression bomb). If the archive is genuine, raise {CAP_KEY} "
        "in params.yaml."
    )


def _write_file(entry: libarchive.ArchiveEntry, dest: Path, report: ExtractReport, max_bytes: int) -> None:
    """Copy an entry's content to ``dest``, counting bytes against the cap as they are written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)  # never write through something already there
    with dest.open("xb") as out:
        for block in entry.get_blocks(BLOCK_BYTES):
            if report.bytes + len(block) > max_bytes:
                raise _over_cap(max_bytes)
            out.write(block)
            report.bytes += len(block)
    report.files += 1


def _extract_entries(archive: Path, root: Path, max_bytes: int, report: ExtractReport) -> None:
    with _utf8_names(), libarchive.file_reader(str(archive)) as reader:
        for entry in reader:
            name = _entry_name(entry)
            reason = _kind_refused(entry)
            dest, path_reason = safe_destination(name, root)
            if reason or path_reason:
                report.skip(name, reason or path_reason or "")
                continue
            assert dest is not None
            if entry.isdir:
                dest.mkdir(parents=True, exist_ok=True)
                report.dirs += 1
            else:
                _write_file(entry, dest, report, max_bytes)


def extract(archive: Path, target_dir: Path, *, max_bytes: int, report: ExtractReport | None = None) -> ExtractReport:
    """Extract ``archive`` into ``target_dir`` safely; refused entries are skipped and counted.

    Pass an existing ``report`` to keep counting (the cap then applies to the running total).
    On error ``target_dir`` may hold partial output: extract into a staging folder.
    """
    report = report if report is not None else ExtractReport()
    target_dir.mkdir(parents=True, exist_ok=True)
    root = target_dir.resolve()
    try:
        _extract_entries(Path(archive), root, max_bytes, report)
    except libarchive.exception.ArchiveError as exc:
        detail = exc.msg.decode(errors="replace") if isinstance(exc.msg, bytes) else exc.msg
        raise ArchiveReadError(
            f"cannot read {archive}: {detail or 'unknown libarchive error'}. The archive is truncated, corrupt "
            "or not an archive; delete it and fetch again."
        ) from None
    except OSError as exc:
        raise ArchiveError(f"cannot extract {archive} into {target_dir}: {exc}") from None
    return report


def _has_classes(folder: Path, labels: Sequence[str]) -> bool:
    return all((folder / label).is_dir() for label in labels)


def _listed(labels: Sequence[str]) -> str:
    names = [f"{label}/" for label in labels]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def find_dataset_root(folder: Path, labels: Sequence[str] = DATASET_FOLDERS) -> Path:
    """The folder holding ``labels`` (by default Positive/ and Negative/): ``folder`` itself or one wrapper below it."""
    if _has_classes(folder, labels):
        return folder
    children = folder.iterdir() if folder.is_dir() else ()
    candidates = sorted(d for d in children if d.is_dir() and _has_classes(d, labels))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(d.name for d in candidates)
        raise ArchiveError(f"{folder}: several folders hold {_listed(labels)} ({names}); expected one")
    raise ArchiveError(f"{folder}: no {_listed(labels)} folders found (at top level or one folder down)")


def find_inner_archive(folder: Path, suffix: str) -> Path | None:
    """The largest ``*<suffix>`` file under an extracted archive: the real one, when the download wraps it."""
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == suffix.lower()]
    return max(found, key=lambda p: p.stat().st_size) if found else None


def extract_inner(inner: Path, target_dir: Path, max_bytes: int, report: ExtractReport) -> Path:
    """Extract an archive found in an extracted one into ``<target_dir>/<stem>.extracted``, then delete it.

    ``report`` goes on counting, so the cap covers both levels; returns the new folder.
    """
    inner_dir = target_dir / f"{inner.stem}.extracted"
    extract(inner, inner_dir, max_bytes=max_bytes, report=report)
    inner.unlink()  # free the disk; its bytes stay counted, as the cap is on bytes written
    return inner_dir


def extract_dataset(
    archive: Path, target_dir: Path, max_bytes: int, *, inner_sha256: str | None = None
) -> tuple[Path, ExtractReport]:
    """Extract a dataset archive; when it is a zip holding the RAR, extract the RAR too.

    Returns the folder holding Positive/ and Negative/ and the combined report; the cap
    covers both levels. ``inner_sha256`` verifies the inner RAR before it is opened.
    """
    report = extract(archive, target_dir, max_bytes=max_bytes)
    try:
        return find_dataset_root(target_dir), report
    except ArchiveError:
        inner = find_inner_archive(target_dir, ".rar")
        if inner is None:
            raise
    if inner_sha256 is not None:
        got = sha256_file(inner)
        if got != inner_sha256.lower():
            raise ArchiveError(
                f"{inner.name} inside {archive.name}: expected sha256 {inner_sha256}, got {got}; "
                "the archive is corrupt or not the expected dataset"
            )
    return find_dataset_root(extract_inner(inner, target_dir, max_bytes, report)), report
