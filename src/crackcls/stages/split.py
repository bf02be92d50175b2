"""DVC stage ``split``: dedupe by content hash, then a stratified, seeded split.

Reads ``data/raw`` (and ``data/field`` when it holds images) and writes manifests
to ``data/split/{train,val,test}.csv`` plus ``reports/split.json`` (DVC metrics: numbers
only) and ``reports/split_skipped.json`` (every skipped file and why).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.data import manifest
from crackcls.data.collection import collect, source_roots
from crackcls.data.images import SkipReport
from crackcls.data.splitting import cap_per_class, collapse_duplicates, stratified_split
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError, user_errors_exit


def run(config: Config, workspace: Path) -> dict:
    skips = SkipReport()
    items = collect(source_roots(workspace), workspace, skips)
    unique, dedupe = collapse_duplicates(items)
    for name in paths.LABELS:
        if not any(it.label == paths.LABELS.index(name) for it in unique):
            raise CrackclsError(f"no usable {name} images found; check data/raw/{name}")
    selected = cap_per_class(unique, config.data.max_per_class, config.data.seed)
    ratios = config.data.split
    parts = stratified_split(selected, ratios.train, ratios.val, ratios.test, config.data.seed)

    split_dir = workspace / paths.SPLIT_DIR
    with atomic.atomic_dir(split_dir) as staging:
        for name, part in parts.items():
            manifest.write(manifest.manifest_path(name, staging), part)

    report = {
        "images_found": len(items) + skips.count,
        "duplicates_removed": dedupe.duplicates_removed,
        "label_conflicts_removed": dedupe.label_conflicts,
        "skipped": skips.count,  # by reason and by file in split_skipped.json: DVC metrics hold numbers only
        "total": sum(len(p) for p in parts.values()),
    }
    for name, part in parts.items():
        counts = Counter(it.label for it in part)
        report[name] = {
            "total": len(part),
            **{label.lower(): counts.get(i, 0) for i, label in enumerate(paths.LABELS)},
        }
    atomic.write_json(workspace / paths.REPORTS_DIR / "split.json", report)
    atomic.write_json(
        workspace / paths.REPORTS_DIR / "split_skipped.json",
        {**skips.as_dict(), "label_conflicts": dedupe.conflict_paths},
    )
    return report


@user_errors_exit
def main() -> None:
    config = load_config()
    report = run(config, paths.workspace_root())
    print(
        f"split: {report['train']['total']} train / {report['val']['total']} val / "
        f"{report['test']['total']} test; {report['duplicates_removed']} duplicates removed, "
        f"{report['skipped']} unreadable files skipped"
    )


if __name__ == "__main__":
    main()
