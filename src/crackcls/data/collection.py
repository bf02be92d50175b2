"""Every usable image of the fetched sources and the field images: checked, hashed, labelled by its folder, tagged with its source and parent photo."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from crackcls.data.download import sha256_file
from crackcls.data.field_labels import FIELD_PARENTS, FIELD_SOURCE, site_source
from crackcls.data.images import SkipReport, dataset_folders, iter_images, probe
from crackcls.data.settings import SourceConfig, repeated
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


@dataclass(frozen=True)
class SourceFolder:
    """A folder holding Positive/ and Negative/, the source its images count under, and how to read their parents."""

    root: Path
    source: str
    parents: re.Pattern[str] | None = None
    max_per_class: int | None = None


def parent_of(path: Path, parents: re.Pattern[str] | None) -> str:
    """The parent photo named by ``path``'s file name, or "" (no pattern, or a name it does not match)."""
    if parents is None:
        return ""
    match = parents.match(path.stem)
    return match.group("parent") if match else ""


def collect(folders: list[SourceFolder], workspace: Path, skips: SkipReport) -> list[Item]:
    """Hash every usable image under each folder's Positive/ and Negative/."""
    candidates: list[tuple[Path, int, SourceFolder]] = []
    for folder in folders:
        for label, name in enumerate(paths.LABELS):
            candidates.extend((p, label, folder) for p in iter_images(folder.root / name))
    results = hash_all([path for path, _, _ in candidates])
    items: list[Item] = []
    for (path, label, folder), (digest, reason) in zip(candidates, results):
        rel = Path(os.path.relpath(path, workspace)).as_posix()
        if reason:
            skips.add(rel, reason)
        else:
            items.append(Item(rel, label, digest, folder.source, parent_of(path, folder.parents)))  # type: ignore[arg-type]
    return items


def field_folders(field_dir: Path) -> list[SourceFolder]:
    """The field images: ``field`` for tiles at the top, ``field-<site>`` for each site's sub-folder; reviewed tiles name their photo."""
    def holds_images(folder: Path) -> bool:
        return any((folder / name).is_dir() and any(iter_images(folder / name)) for name in paths.LABELS)

    if not field_dir.is_dir():
        return []
    folders = [SourceFolder(field_dir, FIELD_SOURCE, FIELD_PARENTS)] if holds_images(field_dir) else []
    for site in sorted(p for p in field_dir.iterdir() if p.is_dir() and p.name not in paths.LABELS and not p.name.startswith(".")):
        if holds_images(site):
            folders.append(SourceFolder(site, site_source(site.name), FIELD_PARENTS))
    return folders


def source_folders(sources: list[SourceConfig], workspace: Path) -> list[SourceFolder]:
    """Where each configured source landed in data/raw, one entry per sub-source, plus the field images."""
    raw = workspace / paths.RAW_DIR
    folders: list[SourceFolder] = []
    for source in sources:
        root = raw / source.name
        subsets = dataset_folders(root)
        if not subsets and not all((root / name).is_dir() for name in paths.LABELS):
            raise CrackclsError(f"{root} lacks Positive/ and Negative/; run `dvc repro fetch` first")
        for name, folder in subsets.items() or [(source.name, root)]:
            folders.append(SourceFolder(folder, name, source.parents, source.max_per_class))
    folders.extend(field_folders(workspace / paths.FIELD_DIR))
    names = [folder.source for folder in folders]
    if twice := repeated(names):
        raise CrackclsError(f"two sources hold a sub-folder named {', '.join(twice)}; rename one so their metrics stay apart")
    return folders
