"""Bad files in a training folder: converted or counted and listed, never a crash."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from conftest import REPO_ROOT, TINY_PARAMS, deep_merge, pretrained_params, run_pipeline_in_process, write_params
from PIL import Image


def odd_but_valid_images(folder: Path) -> int:
    """PNG, BMP, WebP, grayscale, RGBA, CMYK, 16-bit and tiny images; all must be used."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "as_png.png")
    Image.fromarray(pixels).save(folder / "as_bmp.bmp")
    Image.fromarray(pixels).save(folder / "as_webp.webp")
    Image.fromarray(pixels).convert("L").save(folder / "gray.jpg")
    Image.fromarray(pixels).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (60, 60))).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(pixels[:10, :10]).save(folder / "tiny10.png")
    return 8


def broken_files(folder: Path) -> dict[str, str]:
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("field notes, not a photo")
    buffer = io.BytesIO()
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return {"empty.jpg": "empty file", "notes.jpg": "not an image", "truncated.jpg": "truncated or corrupt"}


def test_split_and_training_count_and_list_bad_files(tiny_project):
    photos = tiny_project / "photos"
    for label in ("Positive", "Negative"):
        (photos / label).mkdir(parents=True)
        for image in sorted((REPO_ROOT / "sample" / "mendeley" / label).glob("*.jpg"))[:20]:
            shutil.copy(image, photos / label / image.name)
    valid_extra = odd_but_valid_images(photos / "Negative")
    rejected = broken_files(photos / "Positive")
    # The pretrained path, so the feature cache records which training images decoded.
    frozen = pretrained_params(tiny_project.parent / "weights", "mobilenet_v2", 48)
    write_params(tiny_project, deep_merge(deep_merge(TINY_PARAMS, {"data": {"sources": [str(photos)]}}), frozen))

    run_pipeline_in_process(tiny_project)

    split = json.loads((tiny_project / "reports/split.json").read_text())
    assert split["skipped"] == len(rejected)
    listed = json.loads((tiny_project / "reports/split_skipped.json").read_text())
    assert listed["by_reason"] == {"empty file": 1, "not an image": 1, "truncated or corrupt": 1}
    assert {Path(f["path"]).name: f["reason"] for f in listed["files"]} == rejected
    assert split["total"] == 40 + valid_extra  # every odd-but-valid image is used

    skipped_in_training = 0

    for part in ("train", "val"):
        with np.load(tiny_project / "data/features" / f"{part}.npz") as data:
            skipped_in_training += int((~data["kept"]).sum())
    evaluation = json.loads((tiny_project / "reports/skipped.json").read_text())
    assert skipped_in_training == evaluation["count"] == 0, "the split already removed every unreadable file"
