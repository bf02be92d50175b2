"""DVC's hashes, computed from the files: what ties an MLflow dataset input to ``dvc.lock``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.tree import Tree

from crackcls import lineage


def test_dir_hash_matches_dvc_data(tmp_path: Path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    files = {"train.csv": b"path,label,sha256\n", "b/c/ü.txt": "ünïcode".encode(), "a.bin": bytes(range(256)) * 9}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tree = Tree()
    for name, data in files.items():
        tree.add(tuple(name.split("/")), None, HashInfo("md5", hashlib.md5(data).hexdigest()))
    tree.digest()
    assert lineage.dir_hash(tmp_path) == tree.hash_info.value
    assert lineage.dir_hash(tmp_path).endswith(".dir")


def test_cache_path_is_dvc3s_layout(tmp_path: Path):
    assert lineage.cache_file(tmp_path, "e27bfd2ab384b5fa5b1517351c8d820b.dir") == (
        tmp_path / "files" / "md5" / "e2" / "7bfd2ab384b5fa5b1517351c8d820b.dir"
    )
