"""Putting a source into ``data/raw/<source>``: the verified Mendeley download, or a copy of a folder.

Each source's folder is swapped in whole, so a failed fetch (network, checksum,
decompression bomb, full disk) leaves its previous data exactly as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from crackcls.data.archive import (
    ArchiveError,
    ArchiveReadError,
    ExtractReport,
    extract_dataset,
    libarchive_version,
)
from crackcls.data.download import DownloadError, download, sha256_file
from crackcls.data.images import dataset_folders, iter_images, layout_problem
from crackcls.data.settings import DownloadConfig, folder_problem
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError

DOWNLOAD_DIR = Path("downloads")


ARCHIVE_NAME = "concrete_crack_images.rar"


MIRROR_NAME = "concrete_crack_images_mirror.zip"


# The documented place for a browser download: used as-is, with no network, when its sha256 matches.
MANUAL_PATH = DOWNLOAD_DIR / ARCHIVE_NAME


SCRATCH_NAME = ".extract"


def advice(dl: DownloadConfig) -> str:
    """What to do when the network route fails; names the manual path verbatim."""
    mendeley = dl.mendeley
    mirror = "" if mendeley.mirror_url else " or set data.download.mendeley.mirror_url to a mirror of the whole-dataset zip;"
    return (
        f"To fix:{mirror} download {mendeley.url} in a browser and save it as {MANUAL_PATH.as_posix()} "
        f"(sha256 {mendeley.sha256}), then rerun (that file is used with no network); "
        "or run `make demo` to use the bundled offline sample."
    )


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (free, instant) when on the same filesystem, else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ignore_non_images(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if Path(n).suffix.lower() not in paths.IMAGE_SUFFIXES and not Path(folder, n).is_dir()}


def validate_layout(folder: Path) -> None:
    """Refuse a source that lacks Positive/ or Negative/ or has a class with no images."""
    if problem := layout_problem(folder):
        raise CrackclsError(problem)


def class_stats(root: Path) -> dict:
    """Images per class and total bytes of what landed in a source's folder; per sub-source when it has them."""
    subsets = dataset_folders(root)
    if subsets:
        parts = {name: class_stats(folder) for name, folder in subsets.items()}
        files = {label: sum(part["files"][label] for part in parts.values()) for label in paths.LABELS}
        return {"files": files, "bytes": sum(part["bytes"] for part in parts.values()), "subsets": parts}
    files: dict[str, int] = {}
    size = 0
    for label in paths.LABELS:
        images = list(iter_images(root / label))
        files[label] = len(images)
        size += sum(p.stat().st_size for p in images)
    return {"files": files, "bytes": size}


def copy_dataset(folder: Path, raw: Path) -> None:
    """Swap a copy of ``folder``'s Positive/ and Negative/ images (or of each sub-folder's) in as ``raw``."""
    if problem := folder_problem(folder):
        raise CrackclsError(problem)
    subsets = dataset_folders(folder) or {"": folder}
    try:
        with atomic.atomic_dir(raw) as staging:
            for name, subset in subsets.items():
                for label in paths.LABELS:
                    shutil.copytree(
                        subset / label, staging / name / label, copy_function=_link_or_copy, ignore=_ignore_non_images
                    )
    except OSError as exc:
        raise CrackclsError(f"could not copy {folder} into {raw}: {exc}") from None


def install_archive(archive: Path, raw: Path, dl: DownloadConfig, *, inner_sha256: str | None = None) -> ExtractReport:
    """Extract a dataset archive and swap its Positive/ and Negative/ in as ``raw``."""
    try:
        with atomic.atomic_dir(raw) as staging:
            scratch = staging / SCRATCH_NAME
            root, report = extract_dataset(archive, scratch, dl.max_extract_mb * 2**20, inner_sha256=inner_sha256)
            validate_layout(root)
            for label in paths.LABELS:
                os.replace(root / label, staging / label)
            shutil.rmtree(scratch)
    except OSError as exc:
        raise CrackclsError(f"could not extract {archive} into {raw}: {exc}") from None
    return report


def _download(url: str, dest: Path, dl: DownloadConfig, *, sha256: str | None, size: int | None, hint: str) -> Path:
    return download(
        url, dest, sha256=sha256, expected_size=size, retries=dl.retries, timeout_s=dl.timeout_s,
        user_agent=dl.user_agent, advice=hint,
    )


def _verified_but_unreadable(archive: Path, exc: ArchiveReadError) -> CrackclsError:
    """The checksum matched, so the bytes are right: point at the decoder, not the download."""
    return ArchiveError(
        f"{exc}\nBut {archive.name} matches its published sha256, so the file is intact and the local "
        f"libarchive ({libarchive_version()}) failed to decode it (older releases have RAR4 decoding bugs). "
        "Upgrade libarchive, or extract the RAR with another tool into a folder and list that folder "
        "in data.sources."
    )


def _fetch_mirror(dl: DownloadConfig, downloads: Path, raw: Path, primary: DownloadError) -> ExtractReport:
    """The whole-dataset zip: unverified itself, so the RAR inside it is checked against data.download.sha256."""
    mirror_url = dl.mendeley.mirror_url
    assert mirror_url
    print(f"fetch: the primary download failed; trying the mirror {mirror_url}")
    try:
        mirror = _download(mirror_url, downloads / MIRROR_NAME, dl, sha256=None, size=None, hint="")
    except DownloadError as second:
        raise DownloadError(
            f"{primary}\nThe mirror failed too: {second}", url=dl.mendeley.url, status=primary.status, kind=primary.kind
        ) from None
    try:
        return install_archive(mirror, raw, dl, inner_sha256=dl.mendeley.sha256)
    except ArchiveError:
        mirror.unlink(missing_ok=True)  # unverified and unusable: do not reuse it next time
        raise


def fetch_mendeley(dl: DownloadConfig, workspace: Path, raw: Path) -> ExtractReport:
    """Download (or reuse) the verified RAR, falling back to the mirror zip, and install it."""
    downloads = workspace / DOWNLOAD_DIR
    mendeley = dl.mendeley
    # DVC's temporary experiment copies reuse the project's verified archive, read-only,
    # instead of downloading 241 MB again for every queued experiment.
    shared = paths.project_root(workspace) / DOWNLOAD_DIR / ARCHIVE_NAME
    try:
        if shared != downloads / ARCHIVE_NAME and shared.is_file() and sha256_file(shared) == mendeley.sha256:
            rar = shared
        else:
            rar = _download(
                mendeley.url, downloads / ARCHIVE_NAME, dl, sha256=mendeley.sha256, size=mendeley.size, hint=advice(dl)
            )
    except DownloadError as primary:
        if not mendeley.mirror_url or primary.kind == "checksum":
            raise
        return _fetch_mirror(dl, downloads, raw, primary)
    try:
        return install_archive(rar, raw, dl)
    except ArchiveReadError as exc:
        raise _verified_but_unreadable(rar, exc) from None
