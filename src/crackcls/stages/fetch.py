"""DVC stage ``fetch``: put every source of ``data.sources`` into ``data/raw/<source>``.

A public set (``mendeley``, ``sdnet2018``) is downloaded (or its verified archive reused),
verified and extracted; a folder source (the bundled samples among them) is copied with
hard links. Folders of sources no longer listed are removed, so ``data/raw`` holds
exactly what params.yaml names. The work is
:mod:`crackcls.data.fetching` and :mod:`crackcls.data.sdnet`. Writes ``reports/fetch.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.data.fetching import class_stats, copy_dataset, fetch_mendeley
from crackcls.data.sdnet import fetch_sdnet2018
from crackcls.data.settings import DownloadConfig, SourceConfig
from crackcls.util import atomic, paths
from crackcls.util.errors import user_errors_exit

REPORT_FILE = paths.REPORTS_DIR / "fetch.json"


def run(config: Config, workspace: Path) -> dict:
    """Fetch each source of ``data.sources`` into data/raw and write reports/fetch.json."""
    raw = workspace / paths.RAW_DIR
    report: dict = {"sources": {}}
    for source in config.data.sources:
        report["sources"][source.name] = fetch_source(source, config.data.download, workspace, raw / source.name)
    remove_unlisted(raw, {source.name for source in config.data.sources})
    atomic.write_json(workspace / REPORT_FILE, report)
    return report


def fetch_source(source: SourceConfig, download: DownloadConfig, workspace: Path, dest: Path) -> dict:
    """One source into ``dest``, swapped in whole; returns its fetch record."""
    skipped: list[dict[str, str]] = []
    if source.kind == "mendeley":
        skipped = fetch_mendeley(download, workspace, dest).skipped
    elif source.kind == "sdnet2018":
        skipped = fetch_sdnet2018(download, workspace, dest).skipped
    else:
        copy_dataset(paths.resolve(source.path or "", workspace), dest)
    return {"kind": source.kind, **class_stats(dest), "skipped_entries": skipped}


def remove_unlisted(raw: Path, names: set[str]) -> None:
    """Remove what data/raw holds beyond the listed sources (older layouts' Positive/ and Negative/ too)."""
    if not raw.is_dir():
        return
    for entry in raw.iterdir():
        if entry.name not in names and not entry.name.startswith("."):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


@user_errors_exit
def main() -> None:
    report = run(load_config(), paths.workspace_root())
    for name, record in report["sources"].items():
        counts = ", ".join(f"{n} {label}" for label, n in record["files"].items())
        how = f"{len(record['skipped_entries'])} archive entries skipped"
        subsets = f" ({', '.join(record['subsets'])})" if record.get("subsets") else ""
        print(f"fetch: {name}{subsets} -> {(paths.RAW_DIR / name).as_posix()}: {counts}; {how}")


if __name__ == "__main__":
    main()
