"""The decoded-image cache: the same pixels as the decoder, rebuilt when its key changes, reused when not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from crackcls.data import decoded
from crackcls.data.images import load_rgb
from crackcls.data.pipeline import decoded_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "sample" / "mendeley"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with 6 images of each class, one of them a corrupt JPEG, and a second source."""
    root = tmp_path / "ws"
    for label in ("Positive", "Negative"):
        target = root / "data" / "raw" / "a" / label
        target.mkdir(parents=True)
        for source in sorted((SAMPLE / label).iterdir())[:6]:
            shutil.copy2(source, target / source.name)
    (root / "data/raw/a/Negative/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    other = root / "data" / "raw" / "b" / "Positive"
    other.mkdir(parents=True)
    for source in sorted((SAMPLE / "Positive").iterdir())[6:9]:
        shutil.copy2(source, other / source.name)
    return root


def files_of(root: Path, source: str = "a") -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "data" / "raw" / source).rglob("*.jpg"))


def test_pixels_match_the_decoder_and_unreadable_rows_are_counted(workspace: Path, tmp_path: Path) -> None:
    files = files_of(workspace)
    entry = decoded.decoded_images(files, 40, base=workspace, root=tmp_path / "cache")
    assert not entry.reused
    assert entry.images.shape == (len(files), 40, 40, 3) and entry.images.dtype == np.uint8
    broken = files.index("data/raw/a/Negative/broken.jpg")
    assert not entry.kept[broken] and entry.kept.sum() == len(files) - 1
    assert sum(entry.skipped.values()) == 1
    for row in entry.rows:
        np.testing.assert_array_equal(entry.images[row], load_rgb(workspace / files[row], 40))
    assert not entry.images.flags.writeable  # memory-mapped read-only: no run can change another's pixels


def test_reused_when_nothing_changed_rebuilt_when_the_key_changes(workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    files = files_of(workspace)
    first = decoded.decoded_images(files, 40, base=workspace, root=root)
    again = decoded.decoded_images(files, 40, base=workspace, root=root)
    assert again.reused and again.key == first.key

    other_size = decoded.decoded_images(files, 48, base=workspace, root=root)
    assert not other_size.reused and other_size.key != first.key and other_size.images.shape[1] == 48

    other_split = decoded.decoded_images(files[1:], 40, base=workspace, root=root)  # one row moved to another split
    assert not other_split.reused and other_split.key != first.key

    with_source = decoded.decoded_images(files + files_of(workspace, "b"), 40, base=workspace, root=root)
    assert not with_source.reused and with_source.key != first.key

    edited = workspace / files[0]
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 1_000_000_000))
    after_edit = decoded.decoded_images(files, 40, base=workspace, root=root)
    assert not after_edit.reused and after_edit.key != first.key
    assert decoded.decoded_images(files, 40, base=workspace, root=root).reused


def test_a_copied_workspace_reuses_the_entry(workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = decoded.decoded_images(files_of(workspace), 40, base=workspace, root=root)
    copy = tmp_path / "copy"
    shutil.copytree(workspace, copy)  # copy2 keeps modification times, as DVC's experiment copies do
    reused = decoded.decoded_images(files_of(copy), 40, base=copy, root=root)
    assert reused.reused and reused.key == first.key


def test_a_damaged_entry_is_rebuilt(workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    files = files_of(workspace)
    first = decoded.decoded_images(files, 40, base=workspace, root=root)
    pixels = first.folder / decoded.IMAGES_FILE
    pixels.write_bytes(pixels.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    rebuilt = decoded.decoded_images(files, 40, base=workspace, root=root)
    assert not rebuilt.reused and rebuilt.images.shape == first.images.shape
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_least_recently_used_entries_go_past_the_size_cap(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    files = files_of(workspace)
    old = decoded.decoded_images(files, 32, base=workspace, root=root)
    monkeypatch.setenv("CRACKCLS_CACHE_MAX_GB", "0.0001")  # 100 kB: room for one entry
    new = decoded.decoded_images(files, 40, base=workspace, root=root)
    assert not old.folder.exists() and new.folder.is_dir()


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRACKCLS_CACHE_DIR", str(tmp_path / "mine"))
    assert decoded.cache_root() == tmp_path / "mine" / "decoded"
    monkeypatch.delenv("CRACKCLS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert decoded.cache_root() == tmp_path / "xdg" / "crackcls" / "decoded"


def test_dataset_gives_each_kept_row_once_per_epoch_with_its_label_and_weight(workspace: Path, tmp_path: Path) -> None:
    files = files_of(workspace)
    entry = decoded.decoded_images(files, 40, base=workspace, root=tmp_path / "cache")
    labels = np.arange(len(files)) % 2
    weights = np.arange(len(files), dtype=np.float32) + 1.0  # each row's weight names the row

    def epoch(ds) -> list[tuple[int, int, np.ndarray]]:
        seen = []
        for images, y, w in ds:
            for image, label, weight in zip(images.numpy(), y.numpy(), w.numpy()):
                seen.append((int(weight) - 1, int(label), image))
        return seen

    ds = decoded_dataset(entry, 4, labels, shuffle_seed=7, weights=weights)
    first, second = epoch(ds), epoch(ds)
    assert sorted(row for row, _, _ in first) == list(entry.rows)
    assert [row for row, _, _ in first] != [row for row, _, _ in second]  # reshuffled each epoch
    for row, label, image in first:
        assert label == labels[row]
        np.testing.assert_array_equal(image, entry.images[row].astype(np.float32))
    repeat = decoded_dataset(entry, 4, labels, shuffle_seed=7, weights=weights)
    assert [row for row, _, _ in epoch(repeat)] == [row for row, _, _ in first]  # the seed fixes the order

    plain = np.concatenate([batch.numpy() for batch in decoded_dataset(entry, 5)])
    np.testing.assert_array_equal(plain, entry.images[entry.rows].astype(np.float32))
