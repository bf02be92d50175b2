"""Image decoding: every kind of file a user may hand us is converted or skipped with a reason.

All fixtures are generated here with Pillow/numpy under tmp_path.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tempfile
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from crackcls.data import images
from crackcls.util.errors import CrackclsError
from crackcls.data.images import (
    CORRUPT,
    EMPTY,
    NOT_IMAGE,
    TOO_LARGE,
    TOO_SMALL,
    UNREADABLE,
    UNSUPPORTED,
    SkipReport,
    UnreadableImage,
    iter_images,
    load_batch,
    load_rgb,
    probe,
)

SIZE = 64
RED, BLUE, CYAN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 255), (255, 255, 255)


def save(im: Image.Image, path: Path, fmt: str | None = None, **kwargs: object) -> Path:
    im.save(path, fmt, **kwargs)
    return path


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))


def jpeg_bytes(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def reason_of(path: Path, size: int = SIZE) -> str:
    with pytest.raises(UnreadableImage) as info:
        load_rgb(path, size)
    return info.value.reason


def assert_rgb(array: np.ndarray, size: int = SIZE) -> None:
    assert array.shape == (size, size, 3)
    assert array.dtype == np.uint8


def close_to(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.asarray(colour)) <= tol))


# --- files that must be skipped -------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert reason_of(path) == EMPTY
    assert probe(path) == EMPTY


def test_truncated_jpeg_is_rejected_and_global_switch_untouched(tmp_path: Path) -> None:
    data = jpeg_bytes(noise(256, 256))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert reason_of(path) == CORRUPT
    assert probe(path) is None  # the header is fine; only a full decode finds the cut
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n" * 10)
    assert reason_of(path) == NOT_IMAGE
    assert probe(path) == NOT_IMAGE


def test_other_formats_are_unsupported(tmp_path: Path) -> None:
    ppm = save(Image.new("RGB", (32, 32)), tmp_path / "x.png", "PPM")
    heic = tmp_path / "phone.jpg"  # an iPhone photo renamed .jpg: ISO-BMFF 'ftyp heic' box
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(200))
    for path in (ppm, heic):
        assert reason_of(path) == UNSUPPORTED
        assert probe(path) == UNSUPPORTED


def test_missing_file_and_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for path in (tmp_path / "missing.jpg", folder):
        assert reason_of(path) == UNREADABLE
        assert probe(path) == UNREADABLE


def test_tiny_images(tmp_path: Path) -> None:
    ten = save(noise(10, 10), tmp_path / "ten.png")
    assert_rgb(load_rgb(ten, SIZE))
    assert probe(ten) is None
    strip = save(noise(images.MIN_SIDE - 1, 50), tmp_path / "strip.png")
    assert reason_of(strip) == TOO_SMALL
    assert probe(strip) == TOO_SMALL


def test_over_pixel_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (200, 100)), tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 200 * 100 - 1)
    assert reason_of(path) == TOO_LARGE
    assert probe(path) == TOO_LARGE
    monkeypatch.setattr(images, "MAX_PIXELS", 200 * 100)
    assert_rgb(load_rgb(path, SIZE))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims ``width`` x ``height``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"  # claims 20000 x 20000 in a few bytes; Pillow refuses on open
    path.write_bytes(png_claiming(20_000, 20_000))
    assert reason_of(path) == TOO_LARGE
    assert probe(path) == TOO_LARGE


def test_unreadable_image_is_a_picklable_user_error(tmp_path: Path) -> None:
    error = UnreadableImage(tmp_path / "a.jpg", CORRUPT, "OSError: boom")
    assert isinstance(error, CrackclsError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, copy.detail, str(copy)) == (error.path, CORRUPT, error.detail, str(error))


# --- files that must be converted -----------------------------------------------------


def two_tone(mode: str = "RGB") -> Image.Image:
    """Red left half, blue right half: checks channel order and that nothing is mirrored."""
    im = Image.new("RGB", (80, 60), BLUE)
    im.paste(RED, (0, 0, 40, 60))
    return im.convert(mode)


@pytest.mark.parametrize(
    ("fmt", "suffix", "kwargs"),
    [
        ("JPEG", ".jpg", {"quality": 95}),
        ("PNG", ".png", {}),
        ("BMP", ".bmp", {}),
        ("WEBP", ".webp", {"quality": 95}),
        ("TIFF", ".tif", {}),
        ("TIFF", ".tiff", {"compression": "tiff_lzw"}),
        ("GIF", ".gif", {}),
    ],
)
def test_formats(tmp_path: Path, fmt: str, suffix: str, kwargs: dict) -> None:
    path = save(two_tone(), tmp_path / f"img{suffix}", fmt, **kwargs)
    array = load_rgb(path, SIZE)
    assert_rgb(array)
    assert close_to(array[SIZE // 2, 4], RED) and close_to(array[SIZE // 2, -5], BLUE)
    assert probe(path) is None


def test_size_is_honoured_and_training_size_is_untouched(tmp_path: Path) -> None:
    im = noise(227, 227)
    path = save(im, tmp_path / "train.png")
    assert np.array_equal(load_rgb(path, 227), np.asarray(im))
    assert_rgb(load_rgb(path, 17), 17)


def test_grayscale_l(tmp_path: Path) -> None:
    array = load_rgb(save(Image.new("L", (30, 30), 100), tmp_path / "l.png"), SIZE)
    assert_rgb(array)
    assert np.all(array == 100)


def test_la_transparent_becomes_white(tmp_path: Path) -> None:
    array = load_rgb(save(Image.new("LA", (30, 30), (0, 0)), tmp_path / "la.png"), SIZE)
    assert np.all(array == 255)


def test_rgba_transparent_pixels_become_white_not_black(tmp_path: Path) -> None:
    im = Image.new("RGBA", (80, 60), (0, 0, 0, 0))  # transparent *black*
    im.paste((*RED, 255), (40, 0, 80, 60))
    array = load_rgb(save(im, tmp_path / "rgba.png"), SIZE)
    assert close_to(array[SIZE // 2, 2], WHITE, 0)
    assert close_to(array[SIZE // 2, -3], RED, 0)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, *RED] + [0] * (256 * 3 - 6))
    im.paste(1, (20, 0, 40, 40))
    array = load_rgb(save(im, tmp_path / "p.png", transparency=0), SIZE)
    assert close_to(array[SIZE // 2, 2], WHITE, 0)
    assert close_to(array[SIZE // 2, -3], RED, 0)
    plain = load_rgb(save(im, tmp_path / "p_opaque.gif"), SIZE)
    assert close_to(plain[SIZE // 2, 2], (0, 0, 0), 0)


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("TIFF", ".tif")])
def test_cmyk(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = save(Image.new("CMYK", (30, 30), (255, 0, 0, 0)), tmp_path / f"cmyk{suffix}", fmt)
    assert Image.open(path).mode == "CMYK"
    assert close_to(load_rgb(path, SIZE)[5, 5], CYAN, 8)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF")])
def test_16bit_gradient_spans_full_range(tmp_path: Path, mode: str, fmt: str) -> None:
    im = Image.fromarray(np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (16, 1)))
    if mode == "I;16B":
        im = Image.frombytes("I;16B", im.size, np.asarray(im).astype(">u2").tobytes())
    path = save(im, tmp_path / f"g16.{fmt.lower()}", fmt)
    assert Image.open(path).mode == mode
    array = load_rgb(path, 256)
    assert_rgb(array, 256)
    assert array.min() == 0 and array.max() == 255
    row = array[128, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0)  # still a ramp, not clipped to a step at 255
    assert 100 < row[128] < 156


def test_32bit_int_and_float_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(-1000, 5000, 64), (16, 1))
    signed = load_rgb(save(Image.fromarray(ramp.astype(np.int32)), tmp_path / "i.tif"), 64)
    assert signed.min() == 0 and signed.max() == 255  # out-of-nominal range: stretched
    unit = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (16, 1))
    unit[0, 0] = np.nan
    floats = load_rgb(save(Image.fromarray(unit), tmp_path / "f.tif"), 64)
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert floats[8, 0, 0] == 0 and floats[8, -1, 0] == 255 and 110 < floats[8, 32, 0] < 145
    half = np.full((16, 16), 0.5, np.float32)  # a [0, 1] float image keeps its brightness
    assert np.all(load_rgb(save(Image.fromarray(half), tmp_path / "h.tif"), 16) == 128)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (120, 60), (0, 0, 0))
    im.paste(WHITE, (0, 0, 30, 20))  # bright top-left corner of a wide image
    plain = load_rgb(save(im, tmp_path / "plain.jpg", quality=95), SIZE)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = load_rgb(save(im, tmp_path / "rotated.jpg", quality=95, exif=exif), SIZE)

    def bright_corners(array: np.ndarray) -> list[str]:
        q = SIZE // 8
        corners = {"tl": array[:q, :q], "tr": array[:q, -q:], "bl": array[-q:, :q], "br": array[-q:, -q:]}
        return [name for name, block in corners.items() if block.mean() > 200]

    assert bright_corners(plain) == ["tl"]
    assert bright_corners(rotated) == ["tr"]


def test_large_photo_uses_reduced_decode(tmp_path: Path) -> None:
    im = Image.new("RGB", (8000, 6000), (40, 90, 160))
    path = save(im, tmp_path / "camera.jpg", quality=80)
    del im
    array = load_rgb(path, 227)
    assert_rgb(array, 227)
    assert close_to(array[100, 100], (40, 90, 160), 4)
    with Image.open(path) as opened:
        opened.draft(None, (227, 227))
        assert opened.size == (1000, 750)  # what load_rgb decodes: 1/8 scale straight from the DCT


def test_multi_frame_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (30, 30), RED), Image.new("RGB", (30, 30), BLUE)]
    for suffix in (".gif", ".tif", ".webp"):
        path = tmp_path / f"anim{suffix}"
        frames[0].save(path, save_all=True, append_images=frames[1:])
        assert Image.open(path).n_frames == 2
        assert close_to(load_rgb(path, SIZE)[10, 10], RED, 20)


# --- batches, listings, reports -------------------------------------------------------


def test_load_batch_keeps_order_and_counts_skips(tmp_path: Path) -> None:
    colours = [RED, (0, 200, 0), BLUE]
    good = [save(Image.new("RGB", (50, 40), c), tmp_path / f"good{i}.png") for i, c in enumerate(colours)]
    empty = tmp_path / "empty.jpg"
    empty.touch()
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg_bytes(noise(200, 200))[:2000])
    other_empty = tmp_path / "empty2.png"
    other_empty.touch()
    order = [good[0], empty, text, good[1], cut, other_empty, good[2]]

    skips = SkipReport()
    batch, kept = load_batch([str(p) for p in order], SIZE, skips)
    assert batch.shape == (3, SIZE, SIZE, 3) and batch.dtype == np.uint8
    assert kept == good
    for array, colour in zip(batch, colours):
        assert close_to(array[5, 5], colour, 0)
    assert skips.count == 4
    assert skips.by_reason() == {EMPTY: 2, CORRUPT: 1, NOT_IMAGE: 1}
    assert list(skips.by_reason()) == [EMPTY, NOT_IMAGE, CORRUPT]  # most frequent first, then by name
    report = json.loads(json.dumps(skips.as_dict()))
    assert report["count"] == 4 and report["by_reason"] == skips.by_reason()
    assert report["files"][0] == {"path": str(empty), "reason": EMPTY}
    assert [f["path"] for f in report["files"]] == [str(p) for p in (empty, text, cut, other_empty)]


def test_load_batch_empty_and_matches_single_loads(tmp_path: Path) -> None:
    batch, kept = load_batch([], SIZE, SkipReport())
    assert batch.shape == (0, SIZE, SIZE, 3) and kept == []
    files = [save(noise(90, 70, seed), tmp_path / f"n{seed}.jpg") for seed in range(12)]
    batch, kept = load_batch(files, SIZE, SkipReport())
    assert np.array_equal(batch, np.stack([load_rgb(p, SIZE) for p in files]))


def test_iter_images_sorted_recursive_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / ".dvc" / "tmp" / "exps" / "copy" / "Positive"  # a hidden ancestor is fine
    for rel in [
        "b.JPG",
        "a.png",
        "a/z.jpeg",
        "a/y.TIFF",
        "c/d/e.webp",
        "c/f.bmp",
        "notes.txt",
        "noext",
        ".hidden.jpg",
        ".cache/x.jpg",
        "c/.thumbs/t.jpg",
        "g.tif",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "dir.jpg").mkdir()  # a folder named like an image is descended into, not listed
    (root / "dir.jpg" / "in.jpg").write_bytes(b"x")
    (root / "loop").symlink_to(root)  # a symlink loop must not recurse forever
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")  # listed, so loading reports it

    found = list(iter_images(root))
    assert found == sorted(found)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a/y.TIFF",
        "a/z.jpeg",
        "a.png",
        "b.JPG",
        "c/d/e.webp",
        "c/f.bmp",
        "dangling.jpg",
        "dir.jpg/in.jpg",
        "g.tif",
    ]
    assert list(iter_images(tmp_path / "missing")) == []
    assert probe(root / "dangling.jpg") == UNREADABLE


def test_skip_report_accepts_paths_and_strings() -> None:
    skips = SkipReport()
    assert skips.count == 0 and skips.by_reason() == {} and skips.as_dict()["files"] == []
    skips.add(Path("data/raw/Positive/a.jpg"), TOO_SMALL)
    skips.add("b.jpg", NOT_IMAGE)
    assert skips.by_reason() == {NOT_IMAGE: 1, TOO_SMALL: 1}
    assert skips.as_dict()["files"][0]["path"] == "data/raw/Positive/a.jpg"


# --- properties -----------------------------------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00", b"MM\x00*", b"GIF89a"]
SMALL_CAP = 4_000_000  # hostile headers may claim big sizes; keep allocations small in tests


def check_loads_or_unreadable(data: bytes, size: int = 32) -> None:
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(images, "MAX_PIXELS", SMALL_CAP):
        path = Path(folder) / "fuzz.jpg"
        path.write_bytes(data)
        try:
            array = load_rgb(path, size)
        except UnreadableImage as exc:
            assert exc.reason in images.REASONS
        else:
            assert_rgb(array, size)
        reason = probe(path)
        assert reason is None or reason in images.REASONS


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF it skips
@PROPERTY
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=2048))
def test_random_bytes_never_escape(magic: bytes, body: bytes) -> None:
    check_loads_or_unreadable(magic + body)


VALID_JPEG = jpeg_bytes(noise(40, 30))
VALID_PNG = (lambda b: (noise(40, 30).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())


@pytest.mark.filterwarnings("ignore::UserWarning")
@PROPERTY
@given(
    original=st.sampled_from([VALID_JPEG, VALID_PNG]),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
)
def test_damaged_images_never_escape(original: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(original[: max(1, len(original) - cut)])
    for index, value in flips:
        data[index % len(data)] = value
    check_loads_or_unreadable(bytes(data))


FORMAT_MODES = {
    "PNG": ["L", "RGB", "RGBA", "P", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "BMP": ["L", "RGB", "P"],
    "WEBP": ["RGB", "RGBA"],
    "TIFF": ["L", "RGB", "RGBA", "P", "CMYK", "I;16"],
}


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), np.uint16))
    bands = len(mode) if mode in ("RGB", "RGBA", "CMYK") else 1
    array = rng.integers(0, 256, (height, width, bands), np.uint8)
    im = Image.fromarray(array[..., 0] if bands == 1 else array, "L" if bands == 1 else mode)
    if mode == "P":
        im = im.convert("P")
        im.putpalette(rng.integers(0, 256, 768, np.uint8).tobytes())
    return im


@PROPERTY
@given(
    fmt_mode=st.sampled_from([(fmt, mode) for fmt, modes in FORMAT_MODES.items() for mode in modes]),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([16, 64, 227]),
)
def test_random_valid_images_convert(
    fmt_mode: tuple[str, str], width: int, height: int, seed: int, size: int
) -> None:
    fmt, mode = fmt_mode
    im = random_image(mode, width, height, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = save(im, Path(folder) / f"img.{fmt.lower()}", fmt)
        if min(width, height) < images.MIN_SIDE:
            assert reason_of(path, size) == TOO_SMALL
            assert probe(path) == TOO_SMALL
        else:
            assert_rgb(load_rgb(path, size), size)
            assert probe(path) is None
