"""Turn any image file a user hands us into the model's square RGB input, or say why not.

Training, evaluation and prediction all decode through :func:`load_rgb`, so every stage
sees identical pixels and every odd file (16-bit TIFF, palette PNG, rotated phone photo,
a text file named ``.jpg``) is handled, or rejected with a short reason, in one place.

Pillow and numpy only. :func:`load_rgb` runs in tf.data map threads, so nothing here keeps
shared mutable state or flips Pillow's process-wide switches (``LOAD_TRUNCATED_IMAGES``,
``MAX_IMAGE_PIXELS``): a truncated file is reported, never silently half-decoded.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from crackcls.util.errors import CrackclsError
from crackcls.util.paths import IMAGE_SUFFIXES, LABELS

# Largest image decoded, in pixels (width * height from the header, checked before decoding).
# Above any camera in use (~100 MP medium format) while bounding memory per decoding thread.
# Pillow's own DecompressionBombError (above ~179 MP by default) is reported the same way.
MAX_PIXELS = 150_000_000
# Smallest side accepted. Below 8 px (one JPEG block) an image holds no texture a crack
# detector can use: icons, spacer pixels, thumbnails of thumbnails. 10x10 is upsampled.
MIN_SIDE = 8
# Formats decoded. Anything else Pillow recognises (EPS, PSD, ICO, PPM, ...) is refused as
# "unsupported format": it is not a field photo, and some of those plugins run external tools.
FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF", "AVIF"})
# Downscaling filter; reducing_gap lets Pillow box-reduce big images first (fast, same look).
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0

# Skip reasons: short, stable strings that reports count by.
EMPTY = "empty file"
UNREADABLE = "cannot read file"
NOT_IMAGE = "not an image"
UNSUPPORTED = "unsupported format"
CORRUPT = "truncated or corrupt"
TOO_LARGE = "too large"
TOO_SMALL = "too small"
REASONS = (EMPTY, UNREADABLE, NOT_IMAGE, UNSUPPORTED, CORRUPT, TOO_LARGE, TOO_SMALL)

# Nominal value ranges tried in order when mapping 16-bit / int / float pixels to 8 bits.
_NOMINAL_TOPS = (1.0, 255.0, 65535.0)

# Register every Pillow plugin now, once, rather than lazily from many decoding threads.
Image.init()
# Pillow warns from ~89 MP; MAX_PIXELS is the bound enforced here, so the warning only adds noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImage(CrackclsError):
    """A file that cannot be used as an image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: object = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = str(detail) if detail is not None else ""
        suffix = f" ({self.detail})" if self.detail else ""
        super().__init__(f"{self.path}: {reason}{suffix}; fix or remove the file")

    def __reduce__(self) -> tuple[type[UnreadableImage], tuple[Path, str, str]]:
        # Keeps the exception picklable (process pools, tf.data) despite the custom __init__.
        return (type(self), (self.path, self.reason, self.detail or None))  # type: ignore[return-value]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _unidentified_reason(path: str | os.PathLike[str]) -> str:
    """Tell HEIC/HEIF phone photos (an ISO-BMFF 'ftyp' box) apart from non-images."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return NOT_IMAGE
    return UNSUPPORTED if head[4:8] == b"ftyp" else NOT_IMAGE


def _check_header(path: str | os.PathLike[str], im: Image.Image) -> None:
    if im.format not in FORMATS:
        raise UnreadableImage(path, UNSUPPORTED, im.format)
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise UnreadableImage(path, TOO_LARGE, f"{width}x{height} exceeds {MAX_PIXELS} pixels")
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(path, TOO_SMALL, f"{width}x{height}, minimum side {MIN_SIDE}")


@contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """Open ``path`` (header only) and turn any failure, in here or in the block, into UnreadableImage.

    Third-party format parsers raise almost any exception type on hostile input, and a bad
    file must never stop a run, so everything but UnreadableImage itself is translated.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableImage(path, UNREADABLE, "not a regular file")
        if info.st_size == 0:
            raise UnreadableImage(path, EMPTY)
        with Image.open(path) as im:
            _check_header(path, im)
            yield im
    except UnreadableImage:
        raise
    except UnidentifiedImageError as exc:
        raise UnreadableImage(path, _unidentified_reason(path)) from exc
    except (Image.DecompressionBombError, MemoryError) as exc:
        raise UnreadableImage(path, TOO_LARGE, _describe(exc)) from exc
    except OSError as exc:
        # Operating-system errors carry an errno (missing, permission, I/O); Pillow's decode
        # errors ("image file is truncated", "decoder error -2") do not.
        reason = UNREADABLE if exc.errno is not None else CORRUPT
        raise UnreadableImage(path, reason, _describe(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise UnreadableImage(path, CORRUPT, _describe(exc)) from exc


def probe(path: str | os.PathLike[str]) -> str | None:
    """Reason ``path`` is certainly unusable, judged from its header alone; None if it may be fine.

    Cheap enough to screen tens of thousands of files: nothing is decoded, so a truncated
    body is only caught later by :func:`load_rgb`.
    """
    try:
        with _opened(path):
            pass
    except UnreadableImage as exc:
        return exc.reason
    return None


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Map high-depth pixels (16-bit, 32-bit int, float) onto 0..255 by scaling, never clipping.

    Values are read against the first nominal range holding them all (0..1, 0..255,
    0..65535), so an ordinary 16-bit or [0, 1]-float image keeps its brightness; anything
    else (negative or huge values) is stretched from its own min..max. NaN/inf become 0.
    """
    data = values.astype(np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.uint8)
    lo, hi = float(data[finite].min()), float(data[finite].max())
    top = next((t for t in _NOMINAL_TOPS if lo >= 0.0 and hi <= t), None)
    if top is not None:
        lo, hi = 0.0, top
    scaled = (data - lo) * np.float32(255.0 / ((hi - lo) or 1.0))
    return np.rint(np.where(finite, scaled, 0.0)).clip(0, 255).astype(np.uint8)


def resized_rgb(im: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to width x height RGB; transparency goes onto white.

    Resizing happens in the smallest sensible mode (L stays L) and before compositing, which
    Pillow does on premultiplied alpha, so transparent pixels never bleed dark edges.
    """
    if im.mode == "F" or im.mode.startswith("I"):
        im = Image.fromarray(_to_uint8(np.asarray(im)))
    if im.has_transparency_data:
        im = im.convert("RGBA")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    im = im.resize((width, height), RESAMPLE, reducing_gap=REDUCING_GAP)
    if im.mode == "RGBA":
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


def square_rgb(im: Image.Image, size: int) -> Image.Image:
    """Squash to size x size RGB: the training images are square."""
    return resized_rgb(im, size, size)


def patch_rgb(im: Image.Image, size: int) -> Image.Image:
    """A decoded patch as :func:`load_rgb` makes it from a JPEG file: box-reduced by the power of two
    (at most 8) its DCT-scaled draft would use, then squashed to size x size RGB.

    For a scan tile cut from a photo in memory, so its pixels follow the same steps as the
    JPEG training patches (and the resize does a third of the work).
    """
    factor = min(im.width // size, im.height // size, 8)
    factor = 1 << (factor.bit_length() - 1) if factor >= 1 else 1
    if factor > 1 and im.mode in ("L", "RGB"):
        im = im.reduce(factor)
    return square_rgb(im, size)


@contextmanager
def decoded(path: str | os.PathLike[str], draft_size: int | None = None) -> Iterator[Image.Image]:
    """``path`` decoded and turned upright (EXIF orientation), checked as :func:`load_rgb` checks it.

    ``draft_size`` lets a JPEG decode at 1/2..1/8 scale straight from the DCT, never below
    that size on either side; without it the full resolution is decoded. Any failure, in
    here or in the block, becomes UnreadableImage.
    """
    with _opened(path) as im:
        if draft_size is not None:
            im.draft(None, (draft_size, draft_size))  # JPEG only
        im.load()
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception:  # noqa: BLE001 - a broken EXIF block only costs the orientation
            pass
        yield im


def header_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) as stored, from the header alone; None for a file that is certainly unusable."""
    try:
        with _opened(path) as im:
            return im.size
    except UnreadableImage:
        return None


def load_rgb(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode ``path`` into a (size, size, 3) uint8 RGB array, or raise UnreadableImage.

    Any format in :data:`FORMATS` and any Pillow mode; the first frame of animations; EXIF
    orientation applied; big JPEGs decoded at 1/2..1/8 scale straight from the DCT.
    Thread-safe: every call owns its file handle and image objects.
    """
    with decoded(path, size) as im:
        rgb = square_rgb(im, size)
    return np.asarray(rgb, dtype=np.uint8)


def _load_or_error(path: Path, size: int) -> np.ndarray | UnreadableImage:
    try:
        return load_rgb(path, size)
    except UnreadableImage as exc:
        return exc


def decode_each(paths: Iterable[str | os.PathLike[str]], size: int) -> list[np.ndarray | UnreadableImage]:
    """Each of ``paths`` decoded by :func:`load_rgb` in parallel threads, in order; a failure is its UnreadableImage."""
    files = [Path(p) for p in paths]
    with ThreadPoolExecutor() as pool:
        return list(pool.map(lambda p: _load_or_error(p, size), files))


def load_batch(
    paths: Iterable[str | os.PathLike[str]], size: int, skips: SkipReport
) -> tuple[np.ndarray, list[Path]]:
    """Decode ``paths`` in parallel threads; return (N, size, size, 3) uint8 and the kept paths.

    Input order is preserved; unreadable files are left out and recorded in ``skips``.
    """
    files = [Path(p) for p in paths]
    results = decode_each(files, size)
    kept: list[Path] = []
    arrays: list[np.ndarray] = []
    for path, result in zip(files, results):
        if isinstance(result, UnreadableImage):
            skips.add(path, result.reason)
        else:
            kept.append(path)
            arrays.append(result)
    batch = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return batch, kept


def layout_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot serve as a labelled dataset (Positive/ and Negative/ with images), or None."""
    for label in LABELS:
        class_dir = folder / label
        if not class_dir.is_dir():
            return f"'{folder}' has no {label}/ subfolder; a dataset folder needs Positive/ and Negative/"
        if next(iter_images(class_dir), None) is None:
            return f"class folder '{class_dir}' holds no images (zero images of types {', '.join(sorted(IMAGE_SUFFIXES))})"
    return None


def dataset_folders(folder: Path) -> dict[str, Path]:
    """A folder of datasets: its sub-folders that hold Positive/ or Negative/, by name; empty when ``folder`` is one."""
    if any((folder / label).is_dir() for label in LABELS):
        return {}
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return {}
    return {child.name: child for child in children if any((child / label).is_dir() for label in LABELS)}


def iter_images(root: Path) -> Iterator[Path]:
    """Files under ``root`` with an image suffix (any case), recursively, in sorted path order.

    Hidden files and folders (leading dot) below ``root`` are skipped; ``root`` itself may sit
    inside a hidden folder (DVC's ``.dvc/tmp/exps`` copies). Symlinked folders are followed
    once each; broken symlinks are listed so that loading reports them. A missing or
    unreadable folder yields nothing.
    """
    yield from _walk(Path(root), set())


def _walk(folder: Path, seen: set[Path]) -> Iterator[Path]:
    try:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            if entry.is_dir():
                yield from _walk(path, seen)
            elif path.suffix.lower() in IMAGE_SUFFIXES and (entry.is_file() or entry.is_symlink()):
                yield path
        except OSError:
            continue


@dataclass
class SkipReport:
    """Files a stage left out and why, for its counts and its JSON report."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str | os.PathLike[str], reason: str) -> None:
        self.skipped.append((os.fspath(path), reason))

    @property
    def count(self) -> int:
        return len(self.skipped)

    def by_reason(self) -> dict[str, int]:
        """Counts per reason, most frequent first (ties by name) so reports diff cleanly."""
        counts = Counter(reason for _, reason in self.skipped)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary_lines(self) -> list[str]:
        """The count by reason, then every skipped file with its reason: a command's closing lines."""
        if not self.count:
            return ["skipped 0 unreadable files"]
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.by_reason().items())
        return [
            f"skipped {self.count} unreadable files ({reasons}):",
            *(f"  {path}: {reason}" for path, reason in self.skipped),
        ]

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "by_reason": self.by_reason(),
            "files": [{"path": path, "reason": reason} for path, reason in self.skipped],
        }
