"""The ``model`` and ``train`` sections of params.yaml: which network, and how it trains.

:mod:`crackcls.config` composes them with the other sections into the one validated
config; they live here so that the model wing reads typed settings without importing
anything above it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from crackcls.data.balance import Balance
from crackcls.util import paths
from crackcls.util.schema import Section

Backbone = Literal["compact_cnn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "efficientnet_b0"]
BACKBONES: tuple[str, ...] = Backbone.__args__  # type: ignore[attr-defined]
Schedule = Literal["cosine", "constant"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]


# Smallest input each Keras application accepts with include_top=False; the upper
# bound keeps a typo (2240) from exhausting memory.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024


class CompactConfig(Section):
    """The shape of ``compact_cnn``; unused by the ImageNet backbones."""

    filters: list[int] = Field(default=[32, 64, 128, 128], min_length=2, max_length=6, description="one block each")
    # 2: the first block convolves with stride 2 instead of pooling (same shapes after it, much less compute);
    # measured as accurate as 1 on the demo's data, at 1.9x its training speed (docs/benchmarks.md)
    stem_stride: Literal[1, 2] = 2

    @field_validator("filters")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if any(not 4 <= width <= 1024 for width in value):
            raise ValueError("each block's width must be between 4 and 1024 filters")
        return value


class ModelConfig(Section):
    backbone: Backbone = "mobilenet_v2"
    weights: str = "imagenet"
    image_size: int = 224
    dropout: float = Field(default=0.2, ge=0, lt=1)
    fine_tune_layers: int = Field(default=0, ge=0)
    compact: CompactConfig = CompactConfig()

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: int) -> int:
        if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
            raise ValueError(f"must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {value}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        if value in ("imagenet", "none"):
            return value
        if not paths.resolve(value).is_file():
            raise ValueError(f"'{value}' is not 'imagenet', 'none', or an existing weights file")
        return value

    @model_validator(mode="after")
    def _compact_has_no_imagenet(self) -> ModelConfig:
        if self.backbone == "compact_cnn" and self.weights == "imagenet":
            raise ValueError("compact_cnn has no ImageNet weights; use weights: none (train from scratch) or a weights file")
        return self


class AugmentConfig(Section):
    flip: bool = True
    rotation: float = Field(default=0.1, ge=0, le=0.5, description="fraction of a full turn")
    brightness: float = Field(default=0.0, ge=0, le=1, description="max shift, fraction of the pixel range")
    contrast: float = Field(default=0.0, ge=0, le=1, description="max contrast change, fraction")


class ScratchConfig(Section):
    """How every layer trains when ``model.weights`` is ``none``; unused with pretrained weights."""

    learning_rate: float = Field(default=3e-3, gt=0, description="peak, after warm-up")
    schedule: Schedule = "cosine"
    warmup_epochs: int = Field(default=1, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW decoupled weight decay")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    batchnorm_momentum: float = Field(default=0.9, gt=0, lt=1)
    batchnorm_recalibration_batches: int = Field(default=50, ge=0, description="0 keeps the moving averages")


class HardNegativesConfig(Section):
    """A last phase on the uncracked training images the model still scores highest (joints, holes, edges, shadows)."""

    epochs: int = Field(default=0, ge=0, description="0 turns the phase off")
    share: float = Field(default=0.2, gt=0, le=1, description="of each source's uncracked training images")
    weight: float = Field(default=3.0, ge=1, description="their weight multiplied by this (then scaled to a mean of 1)")
    learning_rate_scale: float = Field(default=0.1, gt=0, le=1, description="of the last phase's learning rate")


class AdaptConfig(Section):
    """How a model started from another (``train.init``) trains on: a few epochs at a low rate, not a new recipe."""

    epochs: int = Field(default=3, gt=0)
    learning_rate: float = Field(default=3e-4, gt=0, description="constant; about a tenth of a from-scratch peak")


START_ALIASES = ("champion", "challenger")


class TrainConfig(Section):
    # none: a new model (the recipe below); champion or challenger: the registry alias's weights, trained on for
    # train.adapt; models:/name/3, models:/name@alias or path/to/model.keras: that model's weights
    init: str = "none"
    adapt: AdaptConfig = AdaptConfig()
    epochs: int = Field(default=10, gt=0)
    patience: int = Field(default=3, ge=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    fine_tune_epochs: int = Field(default=5, ge=0)
    fine_tune_learning_rate: float = Field(default=1e-5, gt=0)
    augment: AugmentConfig = AugmentConfig()
    feature_cache: bool = True
    cache_views: int = Field(default=1, ge=1, le=64, description="views cached per image (1 = the plain image)")
    scratch: ScratchConfig = ScratchConfig()
    hard_negatives: HardNegativesConfig = HardNegativesConfig()
    # weights per image so that no source or class drowns the others (crackcls.data.balance)
    balance: Balance = "source_class"
    # compute precision while training (crackcls.model.runtime); saved models are float32 either way
    precision: Precision = "auto"
    seed: int = 42

    @field_validator("init")
    @classmethod
    def _init(cls, value: str) -> str:
        if value in ("none", *START_ALIASES) or value.startswith(("models:/", "runs:/")):
            return value
        if not (value.endswith(".keras") and paths.resolve(value).is_file()):
            raise ValueError(
                f"'{value}' is not none, {' or '.join(START_ALIASES)}, a models:/ or runs:/ URI, or an existing .keras file"
            )
        return value

    @property
    def adapting(self) -> bool:
        """True when training starts from an existing model's weights."""
        return self.init != "none"
