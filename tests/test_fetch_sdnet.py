"""fetch_sdnet2018(): the zip inside a zip, served from 127.0.0.1, mapped to decks/walls/pavements."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from pathlib import Path

import pytest
import test_download
import test_fetch_stage
from conftest import SHARED
from test_download import ScriptedServer
from test_fetch_stage import closed_port_url, tiny_jpeg

from crackcls.data.archive import CAP_KEY
from crackcls.data.download import DownloadError
from crackcls.data.sdnet import ARCHIVE_NAME, INNER_NAME, LANDING_PAGE, MANUAL_PATH, fetch_sdnet2018
from crackcls.data.settings import DownloadConfig
from crackcls.util.errors import CrackclsError

# The local servers those tests use, as fixtures here: a static folder, and one that resumes and drops on cue.
static_server = test_fetch_stage.served
scripted_server = test_download.server

SHARED_SDNET = SHARED / "data" / "sdnet2018-sample"
MB = 2**20
# Written out here rather than taken from the module, so a wrong mapping there fails: C* is cracked.
PROJECT_FOLDER = {
    "D/CD": "decks/Positive", "D/UD": "decks/Negative",
    "P/CP": "pavements/Positive", "P/UP": "pavements/Negative",
    "W/CW": "walls/Positive", "W/UW": "walls/Negative",
}
README = {"ReadMe.txt": b"SDNET2018, Maguire, Dorafshan, Thomas (2018). CC BY 4.0."}
# Upstream names, <parent>-<tile>.jpg with one _2 copy; uneven counts, so a swapped folder shows.
TILE_NAMES = {
    "D/CD": ["7001-12.jpg", "7001-13.jpg"],
    "D/UD": ["7002-1.jpg", "7002-2.jpg", "7002-2_2.jpg"],
    "P/CP": ["001-40.jpg"],
    "P/UP": ["002-7.jpg", "002-8.jpg", "003-1.jpg", "003-2.jpg"],
    "W/CW": ["7069-5.jpg", "7069-6.jpg", "7070-1.jpg", "7070-2.jpg", "7070-3.jpg"],
    "W/UW": ["7071-9.jpg", "7072-10.jpg", "7072-11.jpg", "7072-12.jpg", "7072-13.jpg", "7072-14.jpg"],
}


def generated_tiles() -> dict[str, bytes]:
    """Inner-zip entries: a tiny JPEG of its own shade for every upstream name."""
    names = [f"{code}/{name}" for code, tiles in TILE_NAMES.items() for name in tiles]
    return {name: tiny_jpeg(10 * i) for i, name in enumerate(names)}


def zipped(entries: dict[str, bytes], deflated: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED)
    return buf.getvalue()


def sdnet_zip(tiles: dict[str, bytes], outer_extra: dict[str, bytes] | None = None) -> bytes:
    """DATA_Maguire_20180517_ALL.zip as upstream ships it: a ReadMe beside SDNET2018.zip."""
    return zipped({**README, **(outer_extra or {}), INNER_NAME: zipped(tiles)})


def expected_layout(tiles: dict[str, bytes]) -> dict[str, bytes]:
    """Where each upstream class-folder entry must land under ``dest``."""
    layout = {}
    for name, data in tiles.items():
        code, _, file_name = name.rpartition("/")
        if code in PROJECT_FOLDER:
            layout[f"{PROJECT_FOLDER[code]}/{file_name}"] = data
    return layout


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def settings(url: str, payload: bytes, size: int | None = None, **shared: object) -> DownloadConfig:
    """Quick-failing download settings that expect ``payload``'s MD5."""
    sdnet = {"url": url, "md5": md5(payload), "size": size}
    return DownloadConfig(sdnet2018=sdnet, **{"retries": 1, "timeout_s": 5, **shared})


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def put_previous_data(dest: Path) -> dict[str, bytes]:
    for label in ("Positive", "Negative"):
        (dest / "decks" / label).mkdir(parents=True)
        (dest / "decks" / label / "old.jpg").write_bytes(tiny_jpeg(7 if label == "Positive" else 200))
    return files_under(dest)


def assert_untouched(dest: Path, before: dict[str, bytes]) -> None:
    assert files_under(dest) == before
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], "no staging folder left beside dest"


def save_manual_download(workspace: Path, payload: bytes) -> None:
    """The archive where a user saves a browser download."""
    (workspace / MANUAL_PATH).parent.mkdir()
    (workspace / MANUAL_PATH).write_bytes(payload)


def serve(www: Path, payload: bytes) -> None:
    (www / "viewcontent").write_bytes(payload)


def test_download_lands_in_the_mapped_layout(tmp_path: Path, static_server: tuple[Path, str]) -> None:
    www, base = static_server
    tiles = generated_tiles()
    odd = {"D/Thumbs.db": b"windows thumbnails", "X/odd.jpg": tiny_jpeg(1), "X/deeper/odd2.jpg": tiny_jpeg(2)}
    payload = sdnet_zip({**tiles, **odd})
    serve(www, payload)
    dest = tmp_path / "data" / "raw" / "sdnet2018"

    report = fetch_sdnet2018(settings(f"{base}/viewcontent", payload), tmp_path, dest)

    assert files_under(dest) == expected_layout(tiles)
    assert sorted(p.name for p in dest.iterdir()) == ["decks", "pavements", "walls"]
    assert len(list((dest / "walls" / "Negative").iterdir())) == 6
    assert (tmp_path / MANUAL_PATH).read_bytes() == payload
    skipped = {s["entry"]: s["reason"] for s in report.skipped}
    assert sorted(skipped) == ["ReadMe.txt", f"{INNER_NAME}/D/Thumbs.db", f"{INNER_NAME}/X/"]
    assert skipped[f"{INNER_NAME}/X/"].endswith("2 files")
    assert report.files == 1 + 1 + len(tiles) + len(odd)  # ReadMe, inner zip, its entries


def test_md5_mismatch_keeps_previous_data(tmp_path: Path, static_server: tuple[Path, str]) -> None:
    www, base = static_server
    payload = sdnet_zip(generated_tiles())
    serve(www, payload)
    dest = tmp_path / "raw" / "sdnet2018"
    fetch_sdnet2018(settings(f"{base}/viewcontent", payload), tmp_path, dest)
    before = files_under(dest)

    wrong = DownloadConfig(sdnet2018={"url": f"{base}/viewcontent", "md5": "0" * 32}, retries=1, timeout_s=5)
    with pytest.raises(DownloadError) as err:
        fetch_sdnet2018(wrong, tmp_path, dest)
    message = str(err.value)
    assert err.value.kind == "checksum"
    assert "checksum mismatch" in message and f"expected md5 {'0' * 32}, got {md5(payload)}" in message
    assert "data.download.sdnet2018.md5" in message
    assert_untouched(dest, before)
    assert (tmp_path / MANUAL_PATH).read_bytes() == payload, "the earlier verified download stays"
    assert not list((tmp_path / MANUAL_PATH).parent.glob("*.part"))


def test_manual_download_is_used_without_network(tmp_path: Path) -> None:
    tiles = generated_tiles()
    payload = sdnet_zip(tiles)
    save_manual_download(tmp_path, payload)
    dest = tmp_path / "raw" / "sdnet2018"
    fetch_sdnet2018(settings(closed_port_url(), payload), tmp_path, dest)
    assert files_under(dest) == expected_layout(tiles)


def test_dvc_temp_copy_reuses_the_projects_verified_archive(tmp_path: Path) -> None:
    tiles = generated_tiles()
    payload = sdnet_zip(tiles)
    save_manual_download(tmp_path, payload)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    fetch_sdnet2018(settings(closed_port_url(), payload), copy, copy / "raw" / "sdnet2018")
    assert files_under(copy / "raw" / "sdnet2018") == expected_layout(tiles)
    assert not (copy / MANUAL_PATH.parent).exists(), "the copy must not download its own archive"


def test_offline_fails_fast_with_advice(tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "sdnet2018"
    before = put_previous_data(dest)
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch_sdnet2018(DownloadConfig(sdnet2018={"url": url}), tmp_path, dest)  # default retries and timeouts
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert err.value.kind == "unreachable"
    assert url in message and LANDING_PAGE in message and f"downloads/{ARCHIVE_NAME}" in message
    assert "677411e784f194422c90f52d9ed0d7c6" in message and "sdnet2018-sample" in message
    assert_untouched(dest, before)


@pytest.mark.parametrize("interruption", ["part_file_on_disk", "connection_dropped"])
def test_partial_download_is_resumed(
    tmp_path: Path, scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, interruption: str
) -> None:
    monkeypatch.setattr("crackcls.data.download.time.sleep", lambda s: None)
    tiles = generated_tiles()
    # bigger than a network read, so a dropped connection keeps some bytes on disk
    payload = sdnet_zip(tiles, outer_extra={"SDNET2018 paper.pdf": os.urandom(200_000)})
    scripted_server.body = payload
    half = len(payload) // 2
    if interruption == "part_file_on_disk":
        (tmp_path / MANUAL_PATH).parent.mkdir()
        (tmp_path / f"{MANUAL_PATH}.part").write_bytes(payload[:half])
    else:
        scripted_server.plan = [("drop", half)]
    dest = tmp_path / "raw" / "sdnet2018"
    fetch_sdnet2018(settings(scripted_server.url, payload, size=len(payload)), tmp_path, dest)
    ranges = [seen.get("Range") for seen in scripted_server.seen]
    if interruption == "part_file_on_disk":
        assert ranges == [f"bytes={half}-"]
    else:
        assert len(ranges) == 2 and ranges[0] is None
        assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= half
    assert files_under(dest) == expected_layout(tiles)
    assert not (tmp_path / f"{MANUAL_PATH}.part").exists()


@pytest.mark.parametrize("level", ["inner", "outer"])
def test_decompression_bomb_keeps_previous_data(tmp_path: Path, level: str) -> None:
    bomb = {"bomb.bmp": bytes(3 * MB)}
    if level == "inner":
        tiles = {**generated_tiles(), "D/CD/bomb.bmp": bytes(3 * MB)}
        payload = zipped({**README, INNER_NAME: zipped(tiles, deflated=("D/CD/bomb.bmp",))})
        with zipfile.ZipFile(io.BytesIO(payload)) as outer:
            assert sum(info.file_size for info in outer.infolist()) < MB, "the outer zip alone must fit the cap"
    else:
        payload = zipped({**README, **bomb, INNER_NAME: zipped(generated_tiles())}, deflated=("bomb.bmp",))
    save_manual_download(tmp_path, payload)
    dest = tmp_path / "raw" / "sdnet2018"
    before = put_previous_data(dest)
    with pytest.raises(CrackclsError, match=CAP_KEY):
        fetch_sdnet2018(settings(closed_port_url(), payload, max_extract_mb=1), tmp_path, dest)
    assert_untouched(dest, before)


def test_disk_full_while_extracting_keeps_previous_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = sdnet_zip(generated_tiles())
    save_manual_download(tmp_path, payload)
    dest = tmp_path / "raw" / "sdnet2018"
    before = put_previous_data(dest)
    real_open = Path.open

    def full_disk_open(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if mode == "xb" and self.parent.name == "CD":  # the extractor's writes, once the inner zip is reached
            raise OSError(28, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr("crackcls.data.archive.Path.open", full_disk_open)
    with pytest.raises(CrackclsError, match="No space left on device"):
        fetch_sdnet2018(settings(closed_port_url(), payload), tmp_path, dest)
    assert_untouched(dest, before)


def _without(folder: str) -> dict[str, bytes]:
    return {name: data for name, data in generated_tiles().items() if not name.startswith(f"{folder}/")}


BROKEN = {
    "no_inner_zip": (zipped(README), f"holds no {INNER_NAME}"),
    "missing_class_folder": (sdnet_zip(_without("W/UW")), r"lacks W/UW/ \(its top level holds: D, P, W\)"),
    "missing_surface": (sdnet_zip(_without("P")), "lacks P/CP/, P/UP/"),
    "class_folder_without_images": (sdnet_zip({**_without("W/UW"), "W/UW/Thumbs.db": b"x"}), "W/UW/ holds no images"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_wrong_layout_is_a_clear_error_and_keeps_previous_data(tmp_path: Path, case: str) -> None:
    payload, expected = BROKEN[case]
    save_manual_download(tmp_path, payload)
    dest = tmp_path / "raw" / "sdnet2018"
    before = put_previous_data(dest)
    with pytest.raises(CrackclsError, match=expected):
        fetch_sdnet2018(settings(closed_port_url(), payload), tmp_path, dest)
    assert_untouched(dest, before)


@pytest.fixture
def shared_sdnet_sample() -> Path:
    if not (SHARED_SDNET / "decks" / "Positive").is_dir():
        pytest.skip("shared SDNET2018 sample not available")
    return SHARED_SDNET


def test_real_shared_tiles_round_trip(
    tmp_path: Path, static_server: tuple[Path, str], shared_sdnet_sample: Path
) -> None:
    """Real upstream tiles, put back in upstream's layout, land byte for byte under their own names."""
    tiles = {}
    for code, folder in PROJECT_FOLDER.items():
        for image in sorted((shared_sdnet_sample / folder).glob("*.jpg"))[:3]:
            tiles[f"{code}/{image.name}"] = image.read_bytes()
    assert len(tiles) == 3 * len(PROJECT_FOLDER)
    www, base = static_server
    payload = sdnet_zip(tiles)
    serve(www, payload)
    dest = tmp_path / "raw" / "sdnet2018"
    report = fetch_sdnet2018(settings(f"{base}/viewcontent", payload), tmp_path, dest)
    landed = files_under(dest)
    assert landed == expected_layout(tiles)
    for relative, data in landed.items():
        assert data == (shared_sdnet_sample / relative).read_bytes()
    assert [s["entry"] for s in report.skipped] == ["ReadMe.txt"]


def test_fetch_and_split_stages_take_sdnet_beside_mendeley(
    tmp_path: Path, static_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """params.yaml lists both sets: each lands in its folder, and split keeps every SDNET parent in one split."""
    import yaml

    from crackcls.config import load_config
    from crackcls.data import manifest
    from crackcls.stages import fetch, split

    www, base = static_server
    names = [f"{code}/{i}0{p}-{t}.jpg" for i, code in enumerate(PROJECT_FOLDER) for p in (1, 2, 3) for t in range(4)]
    tiles = {name: tiny_jpeg(3 * n) for n, name in enumerate(names)}  # 72 distinct shades: no duplicates
    payload = sdnet_zip(tiles)
    serve(www, payload)
    project = tmp_path / "project"
    (project / "sample").mkdir(parents=True)
    (project / "sample" / "mendeley").symlink_to(test_fetch_stage.REPO_SAMPLE / "mendeley")
    params = {
        "data": {
            "sources": ["sample", "sdnet2018"],
            "download": {"sdnet2018": {"url": f"{base}/viewcontent", "md5": md5(payload)}, "retries": 1, "timeout_s": 5},
            "max_per_class": 30,
        }
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    config = load_config(project / "params.yaml")

    report = fetch.run(config, project)["sources"]
    assert report["sdnet2018"]["kind"] == "sdnet2018" and sorted(report["sdnet2018"]["subsets"]) == ["decks", "pavements", "walls"]
    assert report["sdnet2018"]["files"] == {"Negative": 36, "Positive": 36}
    assert files_under(project / "data/raw/sdnet2018") == expected_layout(tiles)

    counts = split.run(config, project)["sources"]
    assert sorted(counts) == ["decks", "mendeley", "pavements", "walls"]
    assert counts["mendeley"]["total"] == 60 and counts["decks"]["parents"] == 6
    where: dict[tuple[str, str], set[str]] = {}
    for name in manifest.SPLITS:
        for item in manifest.read(manifest.manifest_path(name, project / "data/split")):
            if item.source != "mendeley":
                assert item.parent and item.path.startswith(f"data/raw/sdnet2018/{item.source}/")
                where.setdefault((item.source, item.parent), set()).add(name)
    assert len(where) == 18 and all(len(splits) == 1 for splits in where.values())
