"""The fetch stage end to end in a throwaway project, against a static server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from crackcls.data import fetching
from crackcls.stages import fetch
from crackcls.util.errors import CrackclsError

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "sample"


def tiny_jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(buf, "JPEG")
    return buf.getvalue()


def dataset_zip(wrapper: str = "", per_class: int = 3, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, base in (("Positive", 0), ("Negative", 100)):
            for i in range(per_class):
                zf.writestr(f"{wrapper}{label}/{base + i:05d}.jpg", tiny_jpeg(base + i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP; returns (folder, base url). Missing files answer 404."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "sample").symlink_to(REPO_SAMPLE)
    monkeypatch.chdir(proj)
    return proj


MENDELEY_KEYS = ("url", "sha256", "size", "mirror_url")


def write_params(project: Path, source: str = "mendeley", **download: object) -> None:
    data: dict = {"sources": [source]}
    if download:
        mendeley = {"mirror_url": None, **{k: v for k, v in download.items() if k in MENDELEY_KEYS}}
        shared = {k: v for k, v in download.items() if k not in MENDELEY_KEYS}
        data["download"] = {"mendeley": mendeley, "retries": 1, "timeout_s": 5, **shared}
    (project / "params.yaml").write_text(yaml.safe_dump({"data": data}))


def run_main(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the stage as DVC would; return (exit code, stderr)."""
    try:
        fetch.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def raw_snapshot(project: Path, source: str = "mendeley") -> dict[str, str]:
    raw = project / "data" / "raw" / source
    return {p.relative_to(raw).as_posix(): sha(p.read_bytes()) for p in raw.rglob("*") if p.is_file()}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file_downloaded"


def test_mendeley_download_then_bad_checksum_keeps_previous_data(
    project: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    www, base = served
    payload = dataset_zip(wrapper="Concrete Crack Images/")  # tolerated wrapper folder
    (www / "file_downloaded").write_bytes(payload)
    write_params(project, url=f"{base}/file_downloaded", sha256=sha(payload), size=len(payload))

    assert run_main(capsys)[0] == 0
    before = raw_snapshot(project)
    assert sorted(before) == [f"Negative/{i:05d}.jpg" for i in range(100, 103)] + [f"Positive/{i:05d}.jpg" for i in range(3)]
    report = json.loads((project / "reports" / "fetch.json").read_text())["sources"]
    assert list(report) == ["mendeley"] and report["mendeley"]["files"] == {"Negative": 3, "Positive": 3}
    assert (project / fetching.MANUAL_PATH).is_file()

    write_params(project, url=f"{base}/file_downloaded", sha256="0" * 64, size=len(payload))
    code, err = run_main(capsys)
    assert code == 2 and "checksum mismatch" in err and "0" * 64 in err
    assert raw_snapshot(project) == before
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == ["mendeley"]  # no staging left over


def test_decompression_bomb_keeps_previous_data(
    project: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    www, base = served
    fetching.copy_dataset(REPO_SAMPLE / "mendeley", project / "data" / "raw" / "mendeley")
    before = raw_snapshot(project)
    payload = dataset_zip(extra={"Positive/huge.bmp": bytes(3 * 2**20)})
    (www / "f").write_bytes(payload)
    write_params(project, url=f"{base}/f", sha256=sha(payload), size=len(payload), max_extract_mb=1)
    code, err = run_main(capsys)
    assert code == 2 and "data.download.max_extract_mb" in err
    assert raw_snapshot(project) == before
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == ["mendeley"]


def test_manual_download_is_used_without_network(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = dataset_zip()
    (project / fetching.MANUAL_PATH).parent.mkdir()
    (project / fetching.MANUAL_PATH).write_bytes(payload)
    write_params(project, url=closed_port_url(), sha256=sha(payload), size=len(payload))
    assert run_main(capsys)[0] == 0
    assert len(raw_snapshot(project)) == 6


def test_dvc_temp_copy_reuses_the_projects_verified_archive(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = dataset_zip()
    (project / fetching.MANUAL_PATH).parent.mkdir()
    (project / fetching.MANUAL_PATH).write_bytes(payload)
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    (copy / "sample").symlink_to(REPO_SAMPLE)
    write_params(copy, url=closed_port_url(), sha256=sha(payload), size=len(payload))
    monkeypatch.chdir(copy)
    assert run_main(capsys)[0] == 0
    assert len(raw_snapshot(copy)) == 6
    assert not (copy / fetching.DOWNLOAD_DIR).exists(), "the copy must not download its own archive"
    assert (project / fetching.MANUAL_PATH).read_bytes() == payload


def test_mirror_zip_holding_the_rar(
    project: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    www, base = served
    rar = dataset_zip()  # libarchive sniffs formats, so a zip stands in for the RAR
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Concrete Crack Images for Classification.rar", rar)
    (www / "whole.zip").write_bytes(buf.getvalue())
    write_params(
        project, url=f"{base}/missing", mirror_url=f"{base}/whole.zip", sha256=sha(rar), size=len(rar)
    )
    assert run_main(capsys)[0] == 0
    assert len(raw_snapshot(project)) == 6


def test_offline_fails_fast_with_advice(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_port_url()
    (project / "params.yaml").write_text(
        yaml.safe_dump({"data": {"sources": ["mendeley"], "download": {"mendeley": {"url": url, "mirror_url": None}}}})
    )  # default retries and timeouts, as a user would have them
    start = time.monotonic()
    code, err = run_main(capsys)
    assert time.monotonic() - start < 5
    assert code == 2
    assert url in err and "make demo" in err and "downloads/concrete_crack_images.rar" in err
    assert "Traceback" not in err


def test_sample_source(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "data" / "raw" / "Positive").mkdir(parents=True)  # an older single-source layout
    write_params(project, source="sample")
    assert run_main(capsys)[0] == 0
    for label in ("Positive", "Negative"):
        expected = sorted(p.name for p in (REPO_SAMPLE / "mendeley" / label).iterdir() if p.suffix == ".jpg")
        assert sorted(p.name for p in (project / "data" / "raw" / "mendeley" / label).iterdir()) == expected
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == ["mendeley"]
    report = json.loads((project / "reports" / "fetch.json").read_text())["sources"]
    assert report["mendeley"]["kind"] == "folder" and report["mendeley"]["skipped_entries"] == []


def test_sdnet_sample_source_keeps_its_surfaces(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_params(project, source="sdnet2018-sample")
    assert run_main(capsys)[0] == 0
    report = json.loads((project / "reports" / "fetch.json").read_text())["sources"]["sdnet2018"]
    assert sorted(report["subsets"]) == ["decks", "pavements", "walls"]
    for surface in ("decks", "pavements", "walls"):
        for label in ("Positive", "Negative"):
            expected = sorted(p.name for p in (REPO_SAMPLE / "sdnet2018" / surface / label).glob("*.jpg"))
            assert sorted(p.name for p in (project / "data/raw/sdnet2018" / surface / label).iterdir()) == expected
            assert report["subsets"][surface]["files"][label] == len(expected) > 0


def test_folder_source(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for label, shade in (("Positive", 10), ("Negative", 200)):
        (project / "mine" / label / "nested").mkdir(parents=True)
        (project / "mine" / label / "nested" / "a.jpg").write_bytes(tiny_jpeg(shade))
        (project / "mine" / label / "notes.txt").write_text("not an image")
    write_params(project, source="mine")
    assert run_main(capsys)[0] == 0
    assert sorted(raw_snapshot(project, "mine")) == ["Negative/nested/a.jpg", "Positive/nested/a.jpg"]


def test_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d" / "Positive").mkdir(parents=True)
    (tmp_path / "d" / "Negative").mkdir()
    with pytest.raises(CrackclsError, match="holds no images"):
        fetching.copy_dataset(tmp_path / "d", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def serve_dataset(project: Path, served: tuple[Path, str]) -> None:
    """A dataset zip on the local server, with params pointing at it."""
    www, base = served
    payload = dataset_zip()
    (www / "file_downloaded").write_bytes(payload)
    write_params(project, url=f"{base}/file_downloaded", sha256=sha(payload), size=len(payload))


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


def test_disk_full_while_extracting_keeps_previous_data(
    project: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_dataset(project, served)
    assert run_main(capsys)[0] == 0
    before = raw_snapshot(project)

    import crackcls.data.archive

    real_open = Path.open

    def failing_open(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if mode == "xb":  # the extractor's file writes
            _disk_full()
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(crackcls.data.archive.Path, "open", failing_open)
    code, err = run_main(capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert raw_snapshot(project) == before
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == ["mendeley"]  # no half-extracted tree


def test_disk_full_while_downloading_is_a_clear_error(
    project: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_dataset(project, served)
    import crackcls.data.download

    monkeypatch.setattr(crackcls.data.download, "_stream_to", _disk_full)
    code, err = run_main(capsys)
    assert code == 2
    assert "No space left on device" in err and "Free disk space" in err and "Traceback" not in err
    assert not (project / "data" / "raw" / "mendeley").exists()
