"""DVC stage ``fetch``: put a dataset into ``data/raw/{Positive,Negative}``.

``data.source`` picks where it comes from: ``mendeley`` (download, verify and
extract the public RAR), ``sample`` (the bundled offline sample), or a local
folder; the work is :mod:`crackcls.data.fetching`. Writes ``reports/fetch.json``.
"""

from __future__ import annotations

from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.data.fetching import class_stats, copy_dataset, fetch_mendeley
from crackcls.util import atomic, paths
from crackcls.util.errors import user_errors_exit

REPORT_FILE = paths.REPORTS_DIR / "fetch.json"


def run(config: Config, workspace: Path) -> dict:
    """Fetch ``data.source`` into data/raw and write reports/fetch.json."""
    source = config.data.source
    raw = workspace / paths.RAW_DIR
    skipped: list[dict[str, str]] = []
    if source == "mendeley":
        skipped = fetch_mendeley(config.data.download, workspace, raw).skipped
    else:
        folder = workspace / paths.SAMPLE_DIR if source == "sample" else paths.resolve(source, workspace)
        copy_dataset(folder, raw)
    report = {"source": source, **class_stats(raw), "skipped_entries": skipped}
    atomic.write_json(workspace / REPORT_FILE, report)
    return report


@user_errors_exit
def main() -> None:
    report = run(load_config(), paths.workspace_root())
    counts = ", ".join(f"{n} {label}" for label, n in report["files"].items())
    print(f"fetch: {report['source']} -> {paths.RAW_DIR.as_posix()}: {counts}; {len(report['skipped_entries'])} skipped")


if __name__ == "__main__":
    main()
