"""Outputs appear whole or not at all: write beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over the target on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else (EPERM), or we cannot tell: keep it
    return True


def remove_stale_staging(target: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.<name>.new.<pid>.*`` / ``.<name>.old.<pid>.*`` folders left by dead processes.

    A process killed outright (SIGKILL, the OOM killer, a power cut) cannot run its
    ``finally`` blocks, so its staging folder stays behind. Such leftovers are never
    read (every reader skips dot-folders and only the real name is ever swapped in),
    but they waste disk space; the next :func:`atomic_dir` on the same target removes
    them. Folders whose process is still alive (a concurrent run) are left alone.
    """
    target = Path(target)
    removed: list[Path] = []
    for kind in ("new", "old"):
        prefix = f".{target.name}.{kind}."
        try:
            candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
        except OSError:
            continue
        for candidate in candidates:
            pid = candidate.name[len(prefix) :].split(".", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary name; swap it in for ``target`` only on success.

    On failure (an exception, Ctrl-C, or SIGTERM under ``user_errors_exit``) the
    staging folder is removed and the previous ``target`` stays exactly as it was.
    A process killed outright leaves ``.<name>.new.<pid>.*`` behind, which nothing
    reads and the next run removes; killed outright between the two renames it
    leaves ``target`` absent (never half-written).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    pid = os.getpid()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new.{pid}.", dir=target.parent))
    try:
        yield staging
        old = None
        try:
            if target.exists() or target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.{pid}.", dir=target.parent))
                os.rmdir(old)
                os.replace(target, old)
            os.replace(staging, target)
        except BaseException:
            # interrupted (or failed) between the two renames: put the previous output back
            if old is not None and old.exists() and not (target.exists() or target.is_symlink()):
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
