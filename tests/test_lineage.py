"""DVC's hashes, computed from the files: what ties an MLflow dataset input to ``dvc.lock``."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.tree import Tree

from crackcls.tracking import lineage


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


def test_logging_the_split_warns_nothing_and_tags_the_run(tiny_project: Path):
    import mlflow

    from crackcls.data import manifest
    from crackcls.tracking import store
    from crackcls.data.splitting import Item

    split_dir = tiny_project / "data" / "split"
    for n, split in enumerate(manifest.SPLITS):
        manifest.write(manifest.manifest_path(split, split_dir), [Item(f"data/raw/Positive/{split}.jpg", 1, "ab" * 32)] * (n + 1))
    (tiny_project / "dvc.lock").write_text("schema: '2.0'\n")
    store.configure("tests")
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run() as run:
        warnings.simplefilter("always")
        tags = lineage.log_split_lineage(tiny_project)
    assert [str(w.message) for w in caught] == []
    assert tags == {
        "dvc_split_md5": lineage.dir_hash(split_dir),
        "dvc_lock_md5": hashlib.md5(b"schema: '2.0'\n").hexdigest(),
    }
    logged = store.client().get_run(run.info.run_id)
    assert logged.data.tags["dvc_lock_md5"] == tags["dvc_lock_md5"]
    rows = {i.dataset.name: json.loads(i.dataset.profile)["num_rows"] for i in logged.inputs.dataset_inputs}
    assert rows == {"data/split/train.csv": 1, "data/split/val.csv": 2, "data/split/test.csv": 3}
