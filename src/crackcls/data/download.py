"""Resumable, verified HTTP downloads.

A 240 MB dataset over a flaky link must survive dropped connections without
starting over, and must never leave a half-written or tampered file under its
final name: bytes go to ``<dest>.part``, resume with ``Range``, and the file is
renamed into place only after its checksum matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from pathlib import Path

import requests
from tqdm import tqdm
from urllib3.exceptions import NameResolutionError

from crackcls.util.errors import CrackclsError

log = logging.getLogger(__name__)

# A dropped connection loses the chunk being read, so network reads stay small.
NET_CHUNK_BYTES = 1 << 16
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0
# Connecting is quick or hopeless; a long read timeout must not also make an
# unreachable host hang for minutes.
MAX_CONNECT_TIMEOUT_S = 15.0


class DownloadError(CrackclsError):
    """A download failed for good; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, url: str, status: int | None = None, kind: str = "http") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.kind = kind  # http | unreachable | exhausted | checksum | size | disk | url


class _Transient(Exception):
    """One attempt failed in a way worth retrying (resuming from what is on disk)."""

    def __init__(self, message: str, wait_s: float = 0.0) -> None:
        super().__init__(message)
        self.wait_s = wait_s  # the server's Retry-After, when it gave one


# Retrying these cannot help: the URL itself is unusable.
_BAD_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.TooManyRedirects,
)


def default_advice(dest: Path) -> str:
    """What a user can do when the network route fails."""
    return (
        "Try the mirror (set data.download.mirror_url), or download the file in a browser and "
        f"save it as {dest}, then rerun; or run `make demo` to work offline with the bundled sample."
    )


def _advised(message: str, advice: str) -> str:
    return f"{message}. {advice}" if advice else f"{message}."


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file in ``algorithm``, streamed so a large archive never sits in memory."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    return file_digest(path, "sha256")


def matches_checksum(path: Path, checksum: str | None, algorithm: str = "sha256") -> bool:
    """Whether ``path`` is a file with that digest; with no ``checksum``, whether it is a file at all."""
    return Path(path).is_file() and (checksum is None or file_digest(path, algorithm) == checksum.lower())


def unreachable_reason(exc: BaseException) -> str | None:
    """Name the cause when the host cannot be reached at all (DNS failure, connection refused).

    Retrying those only delays the inevitable when offline, so they are final.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (NameResolutionError, socket.gaierror)):
            return "the host name does not resolve"
        if isinstance(err, ConnectionRefusedError):
            return "the connection was refused"
        linked = [getattr(err, "reason", None), err.__cause__, err.__context__, *err.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return None


def _content_range_total(response: requests.Response) -> int | None:
    match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _content_range_start(response: requests.Response) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _retry_after(response: requests.Response) -> float:
    value = response.headers.get("Retry-After", "")
    return min(float(value), MAX_BACKOFF_S) if value.isdigit() else 0.0


def _final_http_error(url: str, response: requests.Response, advice: str) -> DownloadError:
    reason = response.reason or ""
    return DownloadError(
        _advised(f"download failed: {url} answered HTTP {response.status_code} {reason}".rstrip(), advice),
        url=url,
        status=response.status_code,
    )


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    timeout: tuple[float, float],
    advice: str,
) -> None:
    """One request that appends to (or restarts) the part file; raises _Transient to retry."""
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have >= expected_size:
        if have == expected_size:
            return  # complete already; the checksum decides whether it is right
        part.unlink()  # more bytes than the file has: the part is from something else
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status == 416 and have:
            total = _content_range_total(response)
            if total == have or (total is None and expected_size in (None, have)):
                return  # the part file is already complete
            part.unlink()
            raise _Transient("HTTP 416 for a part file of the wrong size; restarting")
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status} {response.reason or ''}".rstrip(), _retry_after(response))
        if status >= 400:
            raise _final_http_error(url, response, advice)
        resuming = status == 206
        if resuming and _content_range_start(response) != have:
            part.unlink(missing_ok=True)
            raise _Transient("server resumed at the wrong offset; restarting")
        if not resuming:
            have = 0  # server ignored Range (or there was none): start clean
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        total = have + body if body is not None else expected_size
        got = _stream_to(part, response, append=resuming, have=have, total=total)
        if total is not None and got < total:
            raise _Transient(f"connection dropped after {got} bytes")


def _stream_to(part: Path, response: requests.Response, *, append: bool, have: int, total: int | None) -> int:
    """Write the body to the part file as it arrives (kept on disk if the link drops); return its new size."""
    with part.open("ab" if append else "wb") as out, tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=None, leave=False,
    ) as bar:
        for chunk in response.iter_content(NET_CHUNK_BYTES):
            out.write(chunk)
            bar.update(len(chunk))
            have += len(chunk)
    return have


def _fetch_part(
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    retries: int,
    timeout_s: float,
    user_agent: str,
    backoff_s: float,
    advice: str,
) -> None:
    """Bring the part file to completion, retrying transient failures with exponential backoff."""
    timeout = (min(timeout_s, MAX_CONNECT_TIMEOUT_S), timeout_s)
    with requests.Session() as session:
        # An explicit agent: the Mendeley host answers 403 to some default clients.
        # identity encoding keeps byte offsets meaningful for Range resumes.
        session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "identity"})
        last, wait_s = "", 0.0
        for attempt in range(retries + 1):
            if attempt:
                delay = max(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S), wait_s)
                log.warning("download: %s; retry %d/%d in %.1fs", last, attempt, retries, delay)
                time.sleep(delay)
            try:
                _attempt(session, url, part, expected_size=expected_size, timeout=timeout, advice=advice)
                return
            except _Transient as exc:
                last, wait_s = str(exc), exc.wait_s
            except _BAD_URL as exc:
                raise DownloadError(f"cannot download {url!r}: {exc}", url=url, kind="url") from None
            except requests.RequestException as exc:
                wait_s = 0.0
                reason = unreachable_reason(exc)
                if reason:
                    raise DownloadError(
                        _advised(f"cannot reach {url}: {reason} (offline?)", advice), url=url, kind="unreachable"
                    ) from None
                last = f"{type(exc).__name__}: {exc}"
    raise DownloadError(
        _advised(f"download failed: {url}: gave up after {retries + 1} attempts (last: {last})", advice),
        url=url,
        kind="exhausted",
    )


def _expected_digest(sha256: str | None, checksum: str | None, algorithm: str) -> tuple[str | None, str]:
    """The digest to verify against (None: unverified) and its algorithm."""
    if sha256 and checksum:
        raise TypeError("download(): pass sha256= or checksum=, not both")
    if sha256:
        return sha256.lower(), "sha256"
    if algorithm not in hashlib.algorithms_guaranteed:
        raise ValueError(f"download(): unknown checksum algorithm {algorithm!r}")
    return (checksum.lower() if checksum else None), algorithm


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    checksum: str | None = None,
    algorithm: str = "sha256",
    expected_size: int | None,
    retries: int,
    timeout_s: float,
    user_agent: str,
    backoff_s: float = 1.0,
    advice: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``; resumable, retried, and verified before it gets its name.

    The file is verified against ``checksum``, a hex digest in ``algorithm`` (any of
    hashlib's guaranteed ones; some hosts publish only an MD5); ``sha256=`` is short for
    ``checksum=..., algorithm="sha256"``. With neither, the file is not verified.
    ``advice`` ends every error message (default: mirror, manual download to ``dest``,
    ``make demo``). An existing ``dest`` whose checksum matches (or any existing ``dest``
    when unverified) is used without network.
    """
    dest = Path(dest)
    checksum, algorithm = _expected_digest(sha256, checksum, algorithm)
    advice = default_advice(dest) if advice is None else advice
    if matches_checksum(dest, checksum, algorithm):
        return dest
    if dest.is_file():
        log.warning("%s exists but its %s does not match; downloading it again", dest, algorithm)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch_part(
            url, part, expected_size=expected_size, retries=retries, timeout_s=timeout_s,
            user_agent=user_agent, backoff_s=backoff_s, advice=advice,
        )
    except OSError as exc:  # network errors were handled inside; this is the local disk
        raise DownloadError(
            f"could not write {part}: {exc}. Free disk space or fix permissions and rerun; the download resumes.",
            url=url,
            kind="disk",
        ) from None
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(
            _advised(f"download failed: {url} gave {size} bytes, expected {expected_size}", advice), url=url, kind="size"
        )
    if checksum is not None:
        got = file_digest(part, algorithm)
        if got != checksum:
            part.unlink()
            raise DownloadError(
                _advised(
                    f"checksum mismatch for {url}: expected {algorithm} {checksum}, got {got}; the file was deleted. "
                    "The upstream file may have changed or been corrupted in transit",
                    advice,
                ),
                url=url,
                kind="checksum",
            )
    os.replace(part, dest)
    return dest
