"""DVC stage ``features``: backbone features for the frozen training phase, computed once.

DVC caches this stage's outputs keyed on the backbone, weights, image size,
augmentation and split, so ``dvc exp run -S train.epochs=30`` retrains the head
in seconds without touching the images. Training from scratch (``weights: none``)
and ``feature_cache: false`` have no frozen phase on features: the stage then only
records that, in a second.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from crackcls import atomic, features, manifest, paths, progress, runtime
from crackcls.config import Config, load_config
from crackcls.data import manifest_dataset
from crackcls.errors import CrackclsError, user_errors_exit
from crackcls.model import build_model


def run(config: Config, workspace: Path) -> dict:
    out_dir = features.cache_dir(workspace)
    used = features.used(config)
    report: dict = {"feature_cache": used}
    if not used:
        with atomic.atomic_dir(out_dir) as staging:
            features.save_unused(staging)
        return report
    runtime.configure_precision()
    keras.utils.set_random_seed(config.train.seed)
    crack = build_model(config.model, config.train)
    split_dir = workspace / paths.SPLIT_DIR
    key = features.cache_key(config, split_dir)
    size, batch = config.model.image_size, config.train.batch_size
    started = time.perf_counter()
    with atomic.atomic_dir(out_dir) as staging:
        crack.backbone.save_weights(str(staging / features.BACKBONE_WEIGHTS_FILE))
        for split, views in (("train", config.train.cache_views), ("val", 1)):
            items = manifest.read(manifest.manifest_path(split, split_dir))
            if not items:
                if split == "train":
                    raise CrackclsError("the train split is empty; adjust data.split ratios")
                # data.split.val: 0 is allowed; training then early-stops on the training loss
                empty = np.zeros((0, 1, report["dims"]), np.float16)
                features.save(staging, split, features.FeatureSet(empty, np.zeros(0, np.float32), np.zeros(0, bool)))
                report[f"{split}_images"] = report[f"{split}_skipped"] = 0
                continue
            ds = manifest_dataset(items, size, batch, base=workspace, keep_flags=True)
            with progress.bar(len(items), f"features {split}") as bar:
                values, kept = features.extract(crack.features, crack.augment, ds, views, progress=bar.update)
            labels = [it.label for it, ok in zip(items, kept) if ok]
            features.save(
                staging, split, features.FeatureSet(values[kept], np.asarray(labels, np.float32), kept)
            )
            report[f"{split}_images"] = int(kept.sum())
            report[f"{split}_skipped"] = int((~kept).sum())
            report["dims"] = int(values.shape[-1])
        features.save_meta(staging, key, report["dims"])
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


@user_errors_exit
def main() -> None:
    report = run(load_config(), paths.workspace_root())
    print(f"features: {report}")


if __name__ == "__main__":
    main()
