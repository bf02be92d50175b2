"""DVC stage ``split``: dedupe by content hash across sources, then a seeded split by source, label and parent.

Reads ``data/raw/<source>`` for every entry of ``data.sources`` (and ``data/field`` when it
holds images) and writes manifests to ``data/split/{train,val,test}.csv`` plus
``reports/split.json`` (DVC metrics: numbers only, overall and per source) and
``reports/split_skipped.json`` (every skipped file and why).
"""

from __future__ import annotations

from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.data import manifest
from crackcls.data.collection import collect, source_folders
from crackcls.data.images import SkipReport
from crackcls.data.splitting import cap_per_class, collapse_duplicates, split_by_source, split_counts
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError, user_errors_exit


def run(config: Config, workspace: Path) -> dict:
    data = config.data
    skips = SkipReport()
    folders = source_folders(data.sources, workspace)
    items = collect(folders, workspace, skips)
    unique, dedupe = collapse_duplicates(items)
    for name in paths.LABELS:
        if not any(it.label == paths.LABELS.index(name) for it in unique):
            raise CrackclsError(f"no usable {name} images found in any source; check data/raw/*/{name}")
    caps = {folder.source: folder.max_per_class for folder in folders if folder.max_per_class}
    selected = cap_per_class(unique, data.max_per_class, data.seed, caps)
    ratios = data.split
    parts = split_by_source(selected, ratios.train, ratios.val, ratios.test, data.seed, ratios.val_whole_grids)

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
        "val_whole_grids": ratios.val_whole_grids,  # asked per source; each source's whole_grid_parents says where they went
        **split_counts(parts),
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
    sources = ", ".join(f"{name} {counts['total']}" for name, counts in report["sources"].items())
    print(
        f"split: {report['train']['total']} train / {report['val']['total']} val / "
        f"{report['test']['total']} test ({sources}); {report['duplicates_removed']} duplicates removed, "
        f"{report['label_conflicts_removed']} label conflicts dropped, {report['skipped']} unreadable files skipped"
    )
    for name, counts in report["sources"].items():
        if counts.get("parents"):
            whole = counts.get("whole_grid_parents")
            grids = f"; whole grids (train/val/test): {whole['train']}/{whole['val']}/{whole['test']}" if whole else ""
            print(f"split: {name}: {counts['parents']} parent photos, each in one split{grids}")
        if not counts["test"]["total"]:
            print(f"split: WARNING: {name} has no test images; the test metrics say nothing about it")


if __name__ == "__main__":
    main()
