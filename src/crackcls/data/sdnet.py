"""SDNET2018: the verified download, its zip inside a zip, and upstream's layout mapped to the project's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from crackcls.data.archive import (
    ArchiveError,
    ArchiveReadError,
    ExtractReport,
    extract,
    extract_inner,
    find_dataset_root,
    find_inner_archive,
)
from crackcls.data.download import DownloadError, download, matches_checksum
from crackcls.data.fetching import DOWNLOAD_DIR, SCRATCH_NAME
from crackcls.data.images import iter_images
from crackcls.data.settings import DownloadConfig
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError

LANDING_PAGE = "https://digitalcommons.usu.edu/all_datasets/48/"


ARCHIVE_NAME = "DATA_Maguire_20180517_ALL.zip"


INNER_NAME = "SDNET2018.zip"


# The documented place for a browser download: used as-is, with no network, when its MD5 matches.
MANUAL_PATH = DOWNLOAD_DIR / ARCHIVE_NAME


# Upstream's folder inside SDNET2018.zip -> (surface, label) in the project's layout; C* is cracked.
CLASS_FOLDERS = {
    "D/CD": ("decks", "Positive"),
    "D/UD": ("decks", "Negative"),
    "P/CP": ("pavements", "Positive"),
    "P/UP": ("pavements", "Negative"),
    "W/CW": ("walls", "Positive"),
    "W/UW": ("walls", "Negative"),
}


SURFACE_FOLDERS = tuple(sorted({code.split("/")[0] for code in CLASS_FOLDERS}))


NOT_MAPPED = f"not one of SDNET2018's class folders ({', '.join(CLASS_FOLDERS)})"


def advice(dl: DownloadConfig) -> str:
    """What to do when the network route fails; names the manual path verbatim."""
    sdnet = dl.sdnet2018
    checked = f" (md5 {sdnet.md5})" if sdnet.md5 else ""
    return (
        f"To fix: download {sdnet.url} in a browser (landing page {LANDING_PAGE}) and save it as "
        f"{MANUAL_PATH.as_posix()}{checked}, then rerun (that file is used with no network); "
        "or list sdnet2018-sample in data.sources to use the bundled offline sample."
    )


def _checksum_hint(exc: DownloadError) -> DownloadError:
    """Upstream publishes no checksum, so a mismatch may be a republished file rather than a bad one."""
    return DownloadError(
        f"{exc}\nThe MD5 checked is the one public code reports for this file, not one upstream publishes: "
        "if upstream has republished it, set data.download.sdnet2018.md5 to the new file's MD5 (or to null "
        "to leave it unchecked).",
        url=exc.url,
        status=exc.status,
        kind=exc.kind,
    )


def _upstream_root(inner_dir: Path, inner_name: str, archive: Path) -> Path:
    """The folder holding the inner zip's class folders, each with images; else an error naming what is wrong."""
    try:
        upstream = find_dataset_root(inner_dir, tuple(CLASS_FOLDERS))
    except ArchiveError:
        missing = [code for code in CLASS_FOLDERS if not (inner_dir / code).is_dir()]
        found = sorted(p.name for p in inner_dir.iterdir()) if inner_dir.is_dir() else []
        raise ArchiveError(
            f"{inner_name} inside {archive.name} lacks {', '.join(f'{m}/' for m in missing)} "
            f"(its top level holds: {', '.join(found) or 'nothing'}); SDNET2018's layout is "
            "D/{CD,UD}, P/{CP,UP}, W/{CW,UW}. The archive is not the expected dataset."
        ) from None
    if empty := [code for code in CLASS_FOLDERS if next(iter_images(upstream / code), None) is None]:
        raise ArchiveError(
            f"{inner_name} inside {archive.name}: {', '.join(f'{e}/' for e in empty)} holds no images; "
            "the archive is truncated or not the expected dataset."
        )
    return upstream


def _skip_leftovers(scratch: Path, kept: set[Path], names: dict[str, str], report: ExtractReport) -> None:
    """Count what stayed in the folders that held mapped content (the ReadMe, odd folders).

    ``names`` renames extraction folders in the report (``SDNET2018.extracted`` -> ``SDNET2018.zip``).
    """
    for parent in sorted(kept):
        for entry in sorted(parent.iterdir()):
            if entry in kept:
                continue
            parts = [names.get(part, part) for part in entry.relative_to(scratch).parts]
            name = "/".join(parts)
            if entry.is_dir():
                files = sum(1 for p in entry.rglob("*") if p.is_file())
                report.skip(f"{name}/", f"{NOT_MAPPED}; {files} files")
            else:
                report.skip(name, NOT_MAPPED)


def install_sdnet(archive: Path, dest: Path, dl: DownloadConfig) -> ExtractReport:
    """Extract the outer zip, then the SDNET2018.zip inside it, and swap the mapped layout in as ``dest``.

    Entries outside the class folders are left out and counted in the report.
    """
    max_bytes = dl.max_extract_mb * 2**20
    try:
        with atomic.atomic_dir(dest) as staging:
            scratch = staging / SCRATCH_NAME
            report = extract(archive, scratch, max_bytes=max_bytes)
            inner = find_inner_archive(scratch, ".zip")
            if inner is None:
                raise ArchiveError(
                    f"{archive.name} holds no {INNER_NAME} (no zip inside it at all); the archive is not the "
                    f"expected dataset. Delete it and fetch again, or download it from {LANDING_PAGE}."
                )
            inner_dir = extract_inner(inner, scratch, max_bytes, report)
            upstream = _upstream_root(inner_dir, inner.name, archive)
            for code, (surface, label) in CLASS_FOLDERS.items():
                (staging / surface).mkdir(exist_ok=True)
                os.replace(upstream / code, staging / surface / label)
            kept = {upstream, *upstream.parents, inner.parent, *inner.parent.parents}
            kept.update(upstream / surface for surface in SURFACE_FOLDERS)
            kept = {p for p in kept if p.is_relative_to(scratch)}
            _skip_leftovers(scratch, kept, {inner_dir.name: inner.name}, report)
            shutil.rmtree(scratch)
    except OSError as exc:
        raise CrackclsError(f"could not extract {archive} into {dest}: {exc}") from None
    return report


def _download_archive(dl: DownloadConfig, workspace: Path) -> Path:
    """The verified outer zip: the real project's when this is a DVC temporary copy, else downloaded (or reused)."""
    sdnet = dl.sdnet2018
    local = workspace / MANUAL_PATH
    # DVC's temporary experiment copies reuse the project's verified archive, read-only,
    # instead of downloading 504 MB again for every queued experiment.
    shared = paths.project_root(workspace) / MANUAL_PATH
    if shared != local and matches_checksum(shared, sdnet.md5, "md5"):
        return shared
    try:
        return download(
            sdnet.url, local, checksum=sdnet.md5, algorithm="md5", expected_size=sdnet.size, retries=dl.retries,
            timeout_s=dl.timeout_s, user_agent=dl.user_agent, advice=advice(dl),
        )
    except DownloadError as exc:
        if exc.kind != "checksum":
            raise
        raise _checksum_hint(exc) from None


def fetch_sdnet2018(dl: DownloadConfig, workspace: Path, dest: Path) -> ExtractReport:
    """Download (or reuse) SDNET2018's verified zip; install it as ``dest/<surface>/{Positive,Negative}``.

    ``dest`` is swapped in whole: any failure leaves its previous content exactly as it was.
    """
    archive = _download_archive(dl, workspace)
    try:
        return install_sdnet(archive, dest, dl)
    except ArchiveReadError:
        if dl.sdnet2018.md5 is None and archive == workspace / MANUAL_PATH:
            archive.unlink(missing_ok=True)  # unverified and unreadable: do not reuse it next time
        raise
