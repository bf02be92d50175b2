"""Split manifests: ``path,label,sha256,source,parent`` rows pointing at images rather than copies."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from crackcls.data.splitting import Item
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError

FIELDS = ("path", "label", "sha256", "source", "parent")
SPLITS = ("train", "val", "test")


def manifest_path(split: str, split_dir: Path | None = None) -> Path:
    return (split_dir or paths.resolve(paths.SPLIT_DIR)) / f"{split}.csv"


def to_csv(items: list[Item]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for item in items:
        writer.writerow((item.path, item.label, item.sha256, item.source, item.parent))
    return buffer.getvalue()


def write(path: str | os.PathLike[str], items: list[Item]) -> None:
    atomic.write_text(path, to_csv(items))


def read(path: str | os.PathLike[str]) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise CrackclsError(f"manifest {path} not found; run `dvc repro split` first")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise CrackclsError(
                f"manifest {path} has columns {reader.fieldnames}, expected {list(FIELDS)}; rerun `dvc repro split`"
            )
        return [Item(row["path"], int(row["label"]), row["sha256"], row["source"], row["parent"]) for row in reader]

