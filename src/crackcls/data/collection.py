"""Every usable image of the fetched data and the field images: checked, hashed and labelled by its folder."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

from tqdm import tqdm

from crackcls.data.download import sha256_file
from crackcls.data.images import SkipReport, iter_images, probe
from crackcls.data.splitting import Item
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

HASH_WORKERS = 8


def _check_and_hash(path: Path) -> tuple[str | None, str | None]:
    reason = probe(path)
    return (None, reason) if reason else (sha256_file(path), None)


def hash_all(files: list[Path], workers: int = HASH_WORKERS) -> list[tuple[str | None, str | None]]:
    """``_check_and_hash`` over ``files`` in worker threads; results in input order.

    Written for interruption: Ctrl-C or SIGTERM (turned into an exception in the main
    thread by ``user_errors_exit``) must stop the stage promptly and cleanly. A thread
    pool does not survive that: its ``submit``/``result`` bookkeeping runs in the main
    thread under Python-level locks, and an exception raised in the middle of it can
    leave a lock held, so the process hangs on exit or dies with a traceback. Here the
    main thread only sleeps and counts while the workers run, and the workers check a
    stop flag before each file, so an interrupt ends the stage within one file.
    """
    results: list[tuple[str | None, str | None] | None] = [None] * len(files)
    next_index = itertools.count()  # next() on it is atomic under the GIL
    done = [0] * workers
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            while not stop.is_set():
                i = next(next_index)
                if i >= len(files):
                    return
                results[i] = _check_and_hash(files[i])
                done[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(slot,), name=f"hash-{slot}", daemon=True) for slot in range(workers)]
    for thread in threads:
        thread.start()
    try:
        with tqdm(total=len(files), desc="hash", unit="img", disable=None) as progress:
            while any(thread.is_alive() for thread in threads):
                time.sleep(0.05)
                progress.update(sum(done) - progress.n)
            progress.update(sum(done) - progress.n)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def collect(roots: list[Path], workspace: Path, skips: SkipReport) -> list[Item]:
    """Hash every usable image under each root's Positive/ and Negative/ folders."""
    candidates: list[tuple[Path, int]] = []
    for root in roots:
        for label, name in enumerate(paths.LABELS):
            candidates.extend((p, label) for p in iter_images(root / name))
    results = hash_all([path for path, _ in candidates])
    items: list[Item] = []
    for (path, label), (digest, reason) in zip(candidates, results):
        rel = Path(os.path.relpath(path, workspace)).as_posix()
        if reason:
            skips.add(rel, reason)
        else:
            items.append(Item(rel, label, digest))  # type: ignore[arg-type]
    return items


def source_roots(workspace: Path) -> list[Path]:
    raw = workspace / paths.RAW_DIR
    if not all((raw / name).is_dir() for name in paths.LABELS):
        raise CrackclsError(f"{raw} lacks Positive/ and Negative/; run `dvc repro fetch` first")
    roots = [raw]
    field_dir = workspace / paths.FIELD_DIR
    if any((field_dir / name).is_dir() and any(iter_images(field_dir / name)) for name in paths.LABELS):
        roots.append(field_dir)
    return roots
