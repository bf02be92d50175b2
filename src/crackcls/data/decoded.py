"""Decoded-image cache: each split's images decoded and resized once, kept on disk as memory-mapped uint8.

Training reads every image in every epoch, and decoding a JPEG and resizing it costs more
than the network's step on it on a small CPU. The pixels depend only on the files and the
image size, so they are decoded once (with :func:`crackcls.data.images.load_rgb`, the
decoder every other path uses) into ``<cache>/<key>/images.npy`` and memory-mapped on
every later read: by every epoch, by the next ``dvc exp run`` at the same size, and by the
fits after training. The key is a hash of the decoder's settings, the image size and each
file's path, size and modification time, so a changed split, source, size or file gets a
new entry and an unchanged one is reused.

The cache lives outside the workspace (``$CRACKCLS_CACHE_DIR``, default
``~/.cache/crackcls``), so DVC's temporary experiment copies share it and nothing in it is
ever committed. Entries are written atomically; the least recently used are removed when
the cache grows past ``$CRACKCLS_CACHE_MAX_GB`` (default 20). A set too large for memory
still works: the arrays are read page by page, batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackcls.data import images
from crackcls.data.splitting import Item
from crackcls.util import atomic, paths, progress

FORMAT_VERSION = 1  # bump when the stored layout or the decoder's output changes
IMAGES_FILE = "images.npy"
KEPT_FILE = "kept.npy"
META_FILE = "meta.json"
CHUNK = 256  # images decoded per step while building, so memory stays flat
DEFAULT_MAX_GB = 20.0


def cache_root() -> Path:
    """``$CRACKCLS_CACHE_DIR``/decoded, else ``$XDG_CACHE_HOME``/crackcls/decoded, else ~/.cache/crackcls/decoded."""
    explicit = os.environ.get("CRACKCLS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "decoded"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "crackcls" / "decoded"


def max_bytes() -> float:
    try:
        return float(os.environ.get("CRACKCLS_CACHE_MAX_GB", DEFAULT_MAX_GB)) * 1e9
    except ValueError:
        return DEFAULT_MAX_GB * 1e9


@dataclass(frozen=True)
class DecodedImages:
    """One split's decodable images at one size, in manifest order, and which manifest rows they are."""

    key: str
    folder: Path
    images: np.ndarray  # (rows, size, size, 3) uint8, memory-mapped read-only; an unreadable row is zeros
    kept: np.ndarray  # (rows,) bool: the rows that decoded
    skipped: dict[str, int]  # unreadable rows by reason
    reused: bool  # True when an earlier run had built it

    @property
    def rows(self) -> np.ndarray:
        """Indices of the rows that decoded, in manifest order."""
        return np.flatnonzero(self.kept)


def cache_key(files: Sequence[Path], size: int, workspace: Path) -> str:
    """What the decoded pixels depend on: decoder settings, size and each file's identity on disk.

    A file is named by its path within the workspace (absolute outside it), its size and its
    modification time in nanoseconds, so a copied project (``dvc exp run --temp``, which keeps
    them) reuses the entry and any edited, added or removed file makes a new one.
    """
    digest = hashlib.sha256()
    header = {
        "version": FORMAT_VERSION,
        "size": size,
        "resample": images.RESAMPLE.name,
        "reducing_gap": images.REDUCING_GAP,
        "max_pixels": images.MAX_PIXELS,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in files:
        name = path.relative_to(workspace) if path.is_relative_to(workspace) else path
        try:
            info = path.stat()
            identity = f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n"
        except OSError:
            identity = f"{name}\0missing\n"
        digest.update(identity.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def decoded_images(
    files: Sequence[str | os.PathLike[str]], size: int, base: Path | None = None, root: Path | None = None, desc: str = "decode"
) -> DecodedImages:
    """The cached decode of ``files`` at ``size``; built now (once) when no earlier run left it."""
    workspace = (base or paths.workspace_root()).absolute()
    resolved = [paths.resolve(f, workspace).absolute() for f in files]
    root = root or cache_root()
    key = cache_key(resolved, size, workspace)
    folder = root / key
    found = _open(folder, key, len(resolved), reused=True)
    if found is not None:
        _touch(folder)
        return found
    with atomic.atomic_dir(folder) as staging:
        _build(staging, resolved, size, desc)
    _prune(root, keep=folder)
    built = _open(folder, key, len(resolved), reused=False)
    if built is None:  # only a concurrent writer that replaced it mid-read could cause this
        raise OSError(f"decoded-image cache entry {folder} could not be read back")
    return built


def decoded_split(items: Sequence[Item], size: int, workspace: Path, split: str) -> DecodedImages:
    """A split's images decoded once at ``size``, shared by every epoch, phase, fit and later run."""
    return decoded_images([it.path for it in items], size, base=workspace, desc=f"decode {split}")


def _build(staging: Path, files: list[Path], size: int, desc: str) -> None:
    """Decode in chunks straight into a memory-mapped array; an unreadable file's row stays zero and unkept."""
    pixels = np.lib.format.open_memmap(staging / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
    kept = np.zeros(len(files), bool)
    reasons: Counter[str] = Counter()
    started = time.perf_counter()
    with progress.bar(len(files), desc, min_total=CHUNK) as bar:
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            for row, result in enumerate(images.decode_each(chunk, size), start=start):
                if isinstance(result, images.UnreadableImage):
                    reasons[result.reason] += 1
                else:
                    pixels[row] = result
                    kept[row] = True
            bar.update(len(chunk))
    pixels.flush()
    del pixels
    np.save(staging / KEPT_FILE, kept)
    meta = {"version": FORMAT_VERSION, "size": size, "rows": len(files), "kept": int(kept.sum()),
            "skipped": dict(reasons), "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    atomic.write_json(staging / META_FILE, meta)


def _open(folder: Path, key: str, rows: int, reused: bool) -> DecodedImages | None:
    """The entry in ``folder``, or None where there is none (or a damaged one, which is rebuilt)."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        kept = np.load(folder / KEPT_FILE)
        pixels = np.load(folder / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("version") != FORMAT_VERSION or len(kept) != rows or len(pixels) != rows:
        return None
    return DecodedImages(key, folder, pixels, kept, dict(meta.get("skipped", {})), reused)


def _touch(folder: Path) -> None:
    try:
        os.utime(folder / META_FILE)
    except OSError:
        pass


def _prune(root: Path, keep: Path) -> None:
    """Remove the least recently used entries while the cache holds more than :func:`max_bytes`."""
    entries = []
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.name.startswith(".") or folder == keep or not (folder / META_FILE).is_file():
            continue
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        entries.append(((folder / META_FILE).stat().st_mtime, size, folder))
    total = sum(size for _, size, _ in entries) + sum(f.stat().st_size for f in keep.iterdir() if f.is_file())
    for _, size, folder in sorted(entries):
        if total <= max_bytes():
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
