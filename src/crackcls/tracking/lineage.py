"""Data lineage: which exact split a training run used, in MLflow's own terms and DVC's.

The train, val and test manifests are logged as MLflow dataset inputs (the runs
table's *Dataset* column). Each input's digest is DVC's hash of ``data/split``, the
``md5`` that ``dvc.lock`` records for the split stage, and it carries the manifest's
own md5 (its entry in that DVC listing) as an input tag. With the DVC cache, the
digest alone leads back to the files: ``.dvc/cache/files/md5/<2>/<30>.dir`` lists the
manifests, each stored under its own md5 (:func:`cache_file`). The run is also tagged
with the hash of ``data/split`` and of ``dvc.lock`` as it stood at training time
(:func:`crackcls.tracking.store.git_tags` adds the DVC experiment name, ``dvc_exp_name``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from crackcls.data import manifest
from crackcls.util import paths

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
LOCK_FILE = "dvc.lock"
CHUNK = 1 << 20


def file_md5(path: str | os.PathLike[str]) -> str:
    """The md5 DVC 3 records for a file (its bytes, unchanged)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dir_listing(folder: Path) -> list[dict[str, str]]:
    """DVC's listing of a directory: ``{"md5", "relpath"}`` per file, sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [{"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()} for p in files]


def dir_hash(folder: Path) -> str:
    """DVC's hash of a directory: the md5 of its JSON listing, with ``.dir`` appended.

    As dvc_data computes it (``Tree.as_bytes``: ``json.dumps(listing, sort_keys=True)``).
    """
    listing = json.dumps(dir_listing(folder), sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def cache_file(cache_dir: Path, md5: str) -> Path:
    """Where DVC 3 keeps an object: ``files/md5/<first 2 hex>/<rest>`` (``.dir`` for a listing)."""
    return cache_dir / "files" / "md5" / md5[:2] / md5[2:]


def run_tags(workspace: Path, split_hash: str) -> dict[str, str]:
    tags = {"dvc_split_md5": split_hash}
    lock = workspace / LOCK_FILE
    if lock.is_file():
        tags["dvc_lock_md5"] = file_md5(lock)
    return tags  # the DVC experiment name (dvc_exp_name) comes with tracking.git_tags


def log_split_lineage(workspace: Path) -> dict[str, str]:
    """Log the split manifests as dataset inputs of the active run and tag it; returns the tags."""
    import mlflow
    import pandas as pd

    split_dir = workspace / paths.SPLIT_DIR
    split_hash = dir_hash(split_dir)
    source_dir = paths.project_root(workspace) / paths.SPLIT_DIR  # not DVC's temporary copy
    with warnings.catch_warnings():
        # MLflow's hints, not problems: labels are never missing, and a local path is a local file
        warnings.filterwarnings("ignore", message=r"Hint: Inferred schema contains integer column")
        warnings.filterwarnings("ignore", message=r"The specified dataset source can be interpreted in multiple ways")
        for split, context in CONTEXTS.items():
            path = manifest.manifest_path(split, split_dir)
            frame = pd.read_csv(path, dtype={"path": str, "label": "int64", "sha256": str})
            dataset = mlflow.data.from_pandas(
                frame,
                source=str(source_dir / path.name),
                targets="label",
                name=f"{paths.SPLIT_DIR.as_posix()}/{path.name}",
                digest=split_hash,
            )
            mlflow.log_input(dataset, context=context, tags={"dvc_file_md5": file_md5(path)})
    tags = run_tags(workspace, split_hash)
    mlflow.set_tags(tags)
    return tags
