"""Safe extraction: real RAR fixtures from libarchive's suite and hostile zips built here."""

from __future__ import annotations

import hashlib
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import RAR_FIXTURES

from crackcls.data.archive import (
    CAP_KEY,
    ArchiveError,
    ArchiveReadError,
    extract,
    extract_dataset,
    find_dataset_root,
    libarchive_version,
)

MB = 2**20
RAR_FILES = (
    "rar4_files_dirs_symlink.rar",
    "rar4_high_ratio_20MB.rar",
    "rar4_truncated.rar",
    "rar4_unicode_names.rar",
    "rar5_compressed.rar",
)


def fixture(name: str) -> Path:
    """A RAR archive shipped in tests/fixtures/rar: a missing one fails, it never skips."""
    path = RAR_FIXTURES / name
    assert path.is_file(), f"RAR fixture {path} is missing from the checkout"
    return path


def test_rar_fixtures_ship_with_the_tests(rar_fixtures: Path) -> None:
    assert rar_fixtures.is_relative_to(Path(__file__).resolve().parent)
    for name in RAR_FILES:
        data = fixture(name).read_bytes()
        assert data.startswith(b"Rar!\x1a\x07"), name  # the RAR4/RAR5 signature
    assert "libarchive" in (rar_fixtures / "README.md").read_text()


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_rar4_files_dirs_and_symlink_skipped(tmp_path: Path) -> None:
    report = extract(fixture("rar4_files_dirs_symlink.rar"), tmp_path / "out", max_bytes=MB)
    assert files_under(tmp_path / "out") == {"test.txt", "testdir/test.txt"}
    assert (tmp_path / "out" / "testemptydir").is_dir()
    assert not (tmp_path / "out" / "testlink").exists() and not (tmp_path / "out" / "testlink").is_symlink()
    assert report.files == 2 and report.bytes == 40
    assert [s["entry"] for s in report.skipped] == ["testlink"]
    assert "symlink" in report.skipped[0]["reason"]


def test_rar5_compressed(tmp_path: Path) -> None:
    report = extract(fixture("rar5_compressed.rar"), tmp_path, max_bytes=MB)
    assert (tmp_path / "test.bin").stat().st_size == 1200
    assert report.files == 1 and report.skipped == []


def test_rar4_unicode_names(tmp_path: Path) -> None:
    report = extract(fixture("rar4_unicode_names.rar"), tmp_path, max_bytes=MB)
    assert "abcdefghijklmnopqrsテスト.txt" in files_under(tmp_path)
    assert "表だよ/漢字長いファイル名long-filename-in-漢字.txt" in files_under(tmp_path)
    assert report.files == 3 and len(report.skipped) == 1  # the symlink


def test_truncated_rar_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveReadError, match="truncated, corrupt"):
        extract(fixture("rar4_truncated.rar"), tmp_path, max_bytes=MB)


def test_not_an_archive_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.rar"
    junk.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(ArchiveReadError):
        extract(junk, tmp_path / "out", max_bytes=MB)


def test_decompression_bomb_hits_the_cap(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as err:
        extract(fixture("rar4_high_ratio_20MB.rar"), tmp_path, max_bytes=10 * MB)
    assert CAP_KEY in str(err.value) and "10 MB" in str(err.value)
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= 10 * MB


def test_high_ratio_under_the_cap_extracts(tmp_path: Path) -> None:
    try:
        report = extract(fixture("rar4_high_ratio_20MB.rar"), tmp_path, max_bytes=30 * MB)
    except ArchiveReadError as exc:
        # libarchive 3.6.x mis-decodes this multi-block RAR4 file (a false CRC error
        # near its end); the cap did not fire, which is what this test guards.
        version = tuple(int(p) for p in libarchive_version().split("."))
        if version < (3, 7, 4):
            pytest.xfail(f"libarchive {libarchive_version()} RAR4 decoder bug: {exc}")
        raise
    assert report.bytes == 20_131_111


def test_hostile_zip_entries_never_leave_the_target(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", b"fine")
        zf.writestr("../evil", b"x")
        zf.writestr("ok/../../evil2", b"x")
        zf.writestr("/tmp/crackcls_evil_abs", b"x")
        link = zipfile.ZipInfo("link")
        link.create_system = 3  # unix, so external_attr carries the file type
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    target = tmp_path / "sub" / "out"
    report = extract(archive, target, max_bytes=MB)
    assert files_under(target) == {"ok/a.txt"}
    assert {p.name for p in tmp_path.iterdir()} == {"evil.zip", "sub"}
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {"out"}
    assert not Path("/tmp/crackcls_evil_abs").exists()
    reasons = {s["entry"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"../evil", "ok/../../evil2", "/tmp/crackcls_evil_abs", "link"}
    assert "symlink" in reasons["link"] and "absolute" in reasons["/tmp/crackcls_evil_abs"]


def test_symlinked_folder_in_target_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "escape").symlink_to(outside)
    report = extract(make_zip(tmp_path / "a.zip", {"escape/x.txt": b"x"}), target, max_bytes=MB)
    assert list(outside.iterdir()) == []
    assert "outside the target" in report.skipped[0]["reason"]


@pytest.mark.parametrize("wrapper", ["", "Concrete Crack Images/"])
def test_find_dataset_root(tmp_path: Path, wrapper: str) -> None:
    for label in ("Positive", "Negative"):
        (tmp_path / wrapper / label).mkdir(parents=True)
    assert find_dataset_root(tmp_path) == tmp_path / wrapper.rstrip("/")


def test_find_dataset_root_missing(tmp_path: Path) -> None:
    (tmp_path / "Positive").mkdir()
    with pytest.raises(ArchiveError, match="no Positive/ and Negative/"):
        find_dataset_root(tmp_path)


def test_zip_holding_a_rar_extracts_the_inner_rar(tmp_path: Path) -> None:
    rar = fixture("rar4_files_dirs_symlink.rar")
    outer = make_zip(tmp_path / "whole.zip", {"data/set.rar": rar.read_bytes()})
    # The fixture has no Positive/Negative, so the final lookup fails, after the inner RAR was extracted.
    with pytest.raises(ArchiveError, match="no Positive/ and Negative/"):
        extract_dataset(outer, tmp_path / "out", MB)
    assert files_under(tmp_path / "out") == {"set.extracted/test.txt", "set.extracted/testdir/test.txt"}


def test_zip_holding_a_dataset_archive(tmp_path: Path) -> None:
    """libarchive sniffs the format, so a zip named .rar stands in for the upstream RAR."""
    inner = make_zip(tmp_path / "inner.zip", {"Positive/p.jpg": b"p", "Negative/n.jpg": b"n"}).read_bytes()
    outer = make_zip(tmp_path / "whole.zip", {"Concrete Crack Images.rar": inner})
    root, report = extract_dataset(outer, tmp_path / "out", MB, inner_sha256=hashlib.sha256(inner).hexdigest())
    assert files_under(root) == {"Positive/p.jpg", "Negative/n.jpg"}
    assert not (tmp_path / "out" / "Concrete Crack Images.rar").exists()
    assert report.files == 3  # the inner archive, then its two images


def test_inner_rar_checksum_mismatch(tmp_path: Path) -> None:
    outer = make_zip(tmp_path / "whole.zip", {"x.rar": fixture("rar5_compressed.rar").read_bytes()})
    with pytest.raises(ArchiveError, match="expected sha256"):
        extract_dataset(outer, tmp_path / "out", MB, inner_sha256="0" * 64)


def test_cap_covers_the_inner_rar(tmp_path: Path) -> None:
    outer = make_zip(tmp_path / "whole.zip", {"big.rar": fixture("rar4_high_ratio_20MB.rar").read_bytes()})
    with pytest.raises(ArchiveError, match=CAP_KEY):
        extract_dataset(outer, tmp_path / "out", 5 * MB)
