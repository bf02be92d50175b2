"""DVC stage ``features``: backbone features for the frozen training phase, computed once.

DVC caches this stage's outputs keyed on the backbone, weights, image size,
augmentation and split, so ``dvc exp run -S train.epochs=30`` retrains the head
in seconds without touching the images. Training from scratch (``weights: none``)
and ``feature_cache: false`` have no frozen phase on features: the stage then only
records that, in a second. The work is :func:`crackcls.model.features.build_cache`.
"""

from __future__ import annotations

from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.model import features
from crackcls.util import paths
from crackcls.util.errors import user_errors_exit


def run(config: Config, workspace: Path) -> dict:
    return features.build_cache(config.model, config.train, workspace)


@user_errors_exit
def main() -> None:
    report = run(load_config(), paths.workspace_root())
    print(f"features: {report}")


if __name__ == "__main__":
    main()
