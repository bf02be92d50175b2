"""One typed config, loaded from params.yaml and validated before any work starts.

A bad value raises :class:`ConfigError` with a single message naming the key, the
value and what is allowed, so a user never waits for a download or a training run
to discover a typo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
)

from crackcls.data.settings import (  # noqa: F401 - the data sections are part of this module's interface
    MENDELEY_SHA256,
    MENDELEY_URL,
    DataConfig,
    DownloadConfig,
    SplitRatios,
)
from crackcls.model.settings import (  # noqa: F401 - the model sections are part of this module's interface
    BACKBONES,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    AugmentConfig,
    Backbone,
    ModelConfig,
    ScratchConfig,
    TrainConfig,
)
from crackcls.util import paths
from crackcls.util.errors import CrackclsError
from crackcls.util.schema import Section

PromoteMetric = Literal["accuracy", "precision", "recall", "f1", "roc_auc"]


class ConfigError(CrackclsError, ValueError):
    """params.yaml holds a value the pipeline cannot use."""


class EvaluateConfig(Section):
    threshold: float = Field(default=0.5, gt=0, lt=1)
    # set: the threshold is chosen on the validation split to reach this recall (crackcls.trust.thresholds)
    target_recall: float | None = Field(default=None, gt=0, le=1)
    batch_size: int = Field(default=64, gt=0)
    extra_sets: list[str] = []


class ScanConfig(Section):
    """Whole photos cut into tiles at the scale the model was trained on (``crackcls scan``)."""

    tile: int = Field(default=256, ge=8, le=4096, description="tile side in photo pixels")
    stride: int | None = Field(default=None, ge=8, le=4096, description="step between tiles; null = tile")
    tiles_across: int | None = Field(default=None, ge=1, le=512, description="set: tile = a photo's longest side / this")
    # fitted: the photo rule fitted with the model on its validation photos (stored beside it), where it has one;
    # fixed: the model's patch threshold and the two values below
    rule: Literal["fitted", "fixed"] = "fitted"
    target_photo_recall: float | None = Field(default=0.95, gt=0, le=1, description="photo recall the fitted rule aims for")
    min_region_tiles: int = Field(default=1, ge=1, description="tiles a region needs to count (fixed rule)")
    peak_threshold: float = Field(default=1.0, gt=0, le=1, description="peak that makes a smaller region count (fixed rule)")
    background_margin: float | None = Field(default=None, ge=0, le=1, description="a tile must also reach its photo's median plus this (fixed rule)")
    connectivity: Literal[4, 8] = 8
    overlay_size: int = Field(default=1024, ge=64, le=8192, description="longest side of an overlay PNG")


class RegistryConfig(Section):
    model_name: str = Field(default="crackcls", min_length=1)
    promote_metric: PromoteMetric = "f1"
    min_improvement: float = Field(default=0.0, ge=0)
    # exact McNemar p-value the challenger must beat; 1.0 turns the paired test off
    max_p_value: float = Field(default=0.05, gt=0, le=1)


class MlflowConfig(Section):
    experiment: str = Field(default="crackcls", min_length=1)


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    scan: ScanConfig = ScanConfig()
    registry: RegistryConfig = RegistryConfig()
    mlflow: MlflowConfig = MlflowConfig()


def _describe(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"{source}: {key}: got {error['input']!r}; allowed values: {allowed}"
    if kind == "extra_forbidden":
        return f"{source}: {key}: unknown key (check the spelling against params.yaml and docs/pipeline.md)"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error["input"], dict):  # a whole section: the message names what is wrong in it
        return f"{source}: {key}: {message}"
    return f"{source}: {key}: {message} (got {error['input']!r})"


def parse_config(raw: dict[str, Any] | None, source: str = "params.yaml") -> Config:
    """Validate a params mapping; the first problem becomes one readable ConfigError."""
    try:
        return Config.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], source)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate params.yaml (default: the workspace's)."""
    params_path = Path(path) if path else paths.workspace_root() / "params.yaml"
    try:
        raw = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{params_path}: not found; run from the project root") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{params_path}: not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{params_path}: expected a mapping at the top level")
    return parse_config(raw, source=params_path.name)
