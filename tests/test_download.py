"""download(): resume, restart, retry and verify, against a scripted server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NameResolutionError

from crackcls.data.download import DownloadError, download, sha256_file, unreachable_reason

BODY = os.urandom(256 * 1024)
SHA = hashlib.sha256(BODY).hexdigest()
AGENT = "crackcls-test/1.0"


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers each request with the next step of ``plan`` and records the request headers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body = BODY
        self.plan: list[object] = []
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/file.bin"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.seen.append(dict(self.headers))
        step = self.server.plan.pop(0) if self.server.plan else "normal"
        if isinstance(step, int):
            self._status(step)
        elif isinstance(step, tuple) and isinstance(step[0], int):
            self._status(*step)
        elif step == "ignore_range":
            self._send(200, self.server.body)
        elif isinstance(step, tuple) and step[0] == "drop":
            self._send_then_drop(step[1])
        else:
            self._ranged()

    def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in {"Content-Length": "0", **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()

    def _start(self) -> int:
        value = self.headers.get("Range", "")
        return int(value.removeprefix("bytes=").split("-")[0]) if value else 0

    def _ranged(self) -> None:
        body, start = self.server.body, self._start()
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif start:
            self._send(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:
            self._send(200, body)

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in {"Content-Length": str(len(payload)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_then_drop(self, n: int) -> None:
        """Promise the whole body, send ``n`` bytes, then hang up."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body[:n])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        self.close_connection = True


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def fetch(url: str, dest: Path, **overrides: object) -> Path:
    kwargs: dict = {
        "sha256": SHA, "expected_size": len(BODY), "retries": 3, "timeout_s": 5.0,
        "user_agent": AGENT, "backoff_s": 0.01,
    }
    kwargs.update(overrides)
    return download(url, dest, **kwargs)


def test_plain_download_verifies_and_sends_user_agent(server: ScriptedServer, tmp_path: Path) -> None:
    dest = fetch(server.url, tmp_path / "f.bin")
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "f.bin.part").exists()
    assert server.seen[0]["User-Agent"] == AGENT


def test_wrong_sha256_deletes_the_file(server: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        fetch(server.url, tmp_path / "f.bin", sha256="0" * 64)
    assert err.value.kind == "checksum"
    assert "0" * 64 in str(err.value) and SHA in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_resumes_after_the_connection_drops(server: ScriptedServer, tmp_path: Path) -> None:
    server.plan = [("drop", 100_000)]
    dest = fetch(server.url, tmp_path / "f.bin")
    assert len(server.seen) == 2
    assert "Range" not in server.seen[0]
    assert server.seen[1]["Range"].startswith("bytes=")
    assert int(server.seen[1]["Range"].removeprefix("bytes=").rstrip("-")) > 0
    assert sha256_file(dest) == SHA


def test_existing_part_file_is_resumed(server: ScriptedServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(BODY[:1234])
    fetch(server.url, tmp_path / "f.bin")
    assert server.seen[0]["Range"] == "bytes=1234-"


def test_complete_part_file_and_416_means_done(server: ScriptedServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(BODY)
    assert fetch(server.url, tmp_path / "f.bin", expected_size=None).read_bytes() == BODY
    assert len(server.seen) == 1 and server.seen[0]["Range"] == f"bytes={len(BODY)}-"


def test_complete_part_of_known_size_needs_no_request(tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(BODY)
    assert fetch(closed_port_url(), tmp_path / "f.bin").read_bytes() == BODY


def test_invalid_url_is_final(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        fetch("htp://example.invalid/x", tmp_path / "f.bin", retries=5, backoff_s=1.0)
    assert err.value.kind == "url"


def test_server_ignoring_range_restarts_cleanly(server: ScriptedServer, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that must not survive")
    server.plan = ["ignore_range"]
    dest = fetch(server.url, tmp_path / "f.bin")
    assert "Range" in server.seen[0]
    assert dest.read_bytes() == BODY


def test_503_is_retried(server: ScriptedServer, tmp_path: Path) -> None:
    server.plan = [503]
    assert fetch(server.url, tmp_path / "f.bin").read_bytes() == BODY
    assert len(server.seen) == 2


def test_429_honours_retry_after(server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("crackcls.data.download.time.sleep", sleeps.append)
    server.plan = [(429, {"Retry-After": "7"})]
    assert fetch(server.url, tmp_path / "f.bin").read_bytes() == BODY
    assert sleeps == [7.0]


def test_retries_exhausted(server: ScriptedServer, tmp_path: Path) -> None:
    server.plan = [503] * 10
    with pytest.raises(DownloadError) as err:
        fetch(server.url, tmp_path / "f.bin", retries=2)
    assert err.value.kind == "exhausted" and "503" in str(err.value)
    assert len(server.seen) == 3


@pytest.mark.parametrize("status", [403, 404])
def test_final_http_errors_name_url_and_status(server: ScriptedServer, tmp_path: Path, status: int) -> None:
    server.plan = [status] * 5
    with pytest.raises(DownloadError) as err:
        fetch(server.url, tmp_path / "f.bin")
    message = str(err.value)
    assert server.url in message and str(status) in message
    assert "mirror_url" in message and "make demo" in message and str(tmp_path / "f.bin") in message
    assert err.value.status == status
    assert len(server.seen) == 1  # no retry loop for a final answer


def test_connection_refused_fails_fast(tmp_path: Path) -> None:
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "f.bin", retries=5, backoff_s=1.0)
    assert time.monotonic() - start < 3
    assert err.value.kind == "unreachable"
    assert url in str(err.value) and "make demo" in str(err.value)


def test_name_resolution_failure_is_final() -> None:
    """No real DNS lookups in tests: build the exception chain requests raises."""
    cause = NameResolutionError("nohost.invalid", None, socket.gaierror(-2, "Name or service not known"))  # type: ignore[arg-type]
    exc = requests.ConnectionError(MaxRetryError(None, "/", cause))  # type: ignore[arg-type]
    assert unreachable_reason(exc) == "the host name does not resolve"
    assert unreachable_reason(requests.ReadTimeout("slow")) is None


def test_existing_verified_file_needs_no_network(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(BODY)
    assert fetch(closed_port_url(), dest) == dest
