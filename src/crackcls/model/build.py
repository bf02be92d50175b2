"""The classifier: a backbone, its own preprocessing, and a pooled dense head.

Backbones are the five ImageNet applications and ``compact_cnn``, a small network made
for this task that trains from random initialisation on a CPU in minutes. Inputs are RGB
images as float pixels in [0, 255]; each backbone's preprocessing is built into the
model, so a saved ``.keras`` file takes raw pixels and needs nothing else to predict.
Only built-in or registered layers are used, so models load with Keras's safe mode (no
Lambda layers).

Two ways to train (chosen by ``model.weights``):

- pretrained (``imagenet`` or a weights file): the backbone stays frozen, BatchNorm in
  inference mode, and only the head trains (then optionally the top layers);
- from scratch (``none``): every layer trains; BatchNorm uses batch statistics while
  training, a faster-moving average (``train.scratch.batchnorm_momentum``), and its
  inference statistics are recomputed from training images once training ends
  (:func:`calibrate_batchnorm`), so a model never meets test images with statistics
  that lag behind its weights.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import keras
from keras import layers, ops

from crackcls.model.settings import MIN_IMAGE_SIZE, ModelConfig, TrainConfig
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="crackcls")
class CaffePreprocess(layers.Layer):
    """ResNet50's 'caffe' preprocessing: RGB→BGR and ImageNet mean subtraction."""

    def call(self, inputs):  # type: ignore[override]
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=inputs.dtype)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., keras.Model]
    preprocess: Callable[[], list[layers.Layer]]
    options: dict


def _scale_to_unit_range() -> list[layers.Layer]:
    return [layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")]


def _built_in() -> list[layers.Layer]:
    return []  # MobileNetV3 and EfficientNet rescale inside the backbone


COMPACT_FILTERS = (32, 64, 128, 128)


def compact_cnn(
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] = (96, 96, 3),
    filters: tuple[int, ...] = COMPACT_FILTERS,
    stem_stride: int = 1,
) -> keras.Model:
    """Four Conv-BatchNorm-ReLU-MaxPool blocks: enough for crack texture, small enough for a CPU.

    ``stem_stride=2`` makes the first block convolve with stride 2 instead of pooling: the
    same shapes from then on, but the costliest activations (full resolution, in training
    with their gradients) are never computed. Same call signature as a Keras application
    (no top), so it plugs in beside them; ``weights`` is None or a weights file of this same
    architecture.
    """
    if include_top:
        raise ValueError("compact_cnn is a feature extractor; it has no classification top")
    if min(input_shape[:2]) < MIN_IMAGE_SIZE:  # the same floor, and wording, as the Keras applications
        raise ValueError(
            f"Input size must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; Received: input_shape={input_shape}"
        )
    inputs = keras.Input(shape=input_shape, name="compact_input")
    x = inputs
    for block, width in enumerate(filters, start=1):
        strided = block == 1 and stem_stride == 2
        x = layers.Conv2D(width, 3, strides=2 if strided else 1, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = layers.ReLU(name=f"block{block}_relu")(x)
        if not strided:
            x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    model = keras.Model(inputs, x, name="compact_cnn")
    if weights not in (None, "none"):
        if weights == "imagenet":
            raise ValueError("compact_cnn has no ImageNet weights; train it from scratch (weights: none)")
        model.load_weights(weights)
    return model


BACKBONES: dict[str, BackboneSpec] = {
    "compact_cnn": BackboneSpec(compact_cnn, _scale_to_unit_range, {}),
    "mobilenet_v2": BackboneSpec(keras.applications.MobileNetV2, _scale_to_unit_range, {}),
    "mobilenet_v3_small": BackboneSpec(
        keras.applications.MobileNetV3Small, _built_in, {"include_preprocessing": True}
    ),
    "mobilenet_v3_large": BackboneSpec(
        keras.applications.MobileNetV3Large, _built_in, {"include_preprocessing": True}
    ),
    "resnet50": BackboneSpec(keras.applications.ResNet50, lambda: [CaffePreprocess(name="preprocess")], {}),
    "efficientnet_b0": BackboneSpec(keras.applications.EfficientNetB0, _built_in, {}),
}


def build_backbone(config: ModelConfig) -> keras.Model:
    """The ImageNet feature extractor, with weights from ImageNet, none, or a local file."""
    spec = BACKBONES[config.backbone]
    weights = None if config.weights in ("none",) else config.weights
    if weights not in (None, "imagenet"):
        weights = str(paths.resolve(weights))
    size = config.image_size
    options = dict(spec.options)
    if config.backbone == "compact_cnn":
        options.update(filters=tuple(config.compact.filters), stem_stride=config.compact.stem_stride)
    try:
        return spec.build(include_top=False, weights=weights, input_shape=(size, size, 3), **options)
    except Exception as exc:  # Keras raises a bare Exception when get_file cannot fetch
        if weights == "imagenet" and str(exc).startswith(KERAS_FETCH_FAILURE):
            raise imagenet_weights_unavailable(config.backbone, str(exc)) from None
        raise


# What keras.utils.get_file's message starts with when a download fails.
KERAS_FETCH_FAILURE = "URL fetch failure on "


def keras_weights_folder() -> Path:
    """Where keras.utils.get_file looks for application weights before fetching them.

    ``$KERAS_HOME`` (read when Keras is imported) or ``~/.keras``, falling back to the
    temporary folder when that is read-only, as get_file does; then ``models/``.
    """
    from keras.src.backend.config import keras_home  # Keras has no public accessor

    home = Path(keras_home()).expanduser()
    if not os.access(home, os.W_OK):
        home = Path(tempfile.gettempdir()) / ".keras"
    return home / "models"


def imagenet_weights_unavailable(backbone: str, keras_message: str) -> CrackclsError:
    """An offline site's first run: say what failed and the three ways on, not Keras's traceback."""
    origin, _, reason = keras_message[len(KERAS_FETCH_FAILURE):].partition(": ")
    status, _, detail = reason.partition(" -- ")  # an HTTP status or errno, then the reason
    reason = detail if status in ("None", "") else f"{status} {detail}"
    file_name = origin.rsplit("/", 1)[-1]
    return CrackclsError(
        f"could not download the ImageNet weights of {backbone} from {origin} ({reason}); "
        "this machine may have no network. Any one of these fixes it:\n"
        "  - train from scratch, with no download: model.backbone: compact_cnn and model.weights: none "
        "(dvc exp run -S model.backbone=compact_cnn -S model.weights=none);\n"
        f"  - point model.weights at a weights file of {backbone} that you have (a path in params.yaml);\n"
        f"  - copy {file_name} from a machine with network into Keras' cache folder, "
        f"{keras_weights_folder()}, where Keras finds it without downloading."
    )


def augmentation(train: TrainConfig) -> list[layers.Layer]:
    """Seeded, training-only augmentation; a zero amount adds no layer, so old models keep their shape."""
    settings, seed = train.augment, train.seed
    augment: list[layers.Layer] = []
    if settings.flip:
        augment.append(layers.RandomFlip("horizontal_and_vertical", seed=seed, name="flip"))
    if settings.rotation > 0:
        augment.append(layers.RandomRotation(settings.rotation, fill_mode="reflect", seed=seed, name="rotate"))
    if settings.brightness > 0:
        augment.append(
            layers.RandomBrightness(settings.brightness, value_range=(0.0, 255.0), seed=seed, name="brightness")
        )
    if settings.contrast > 0:
        augment.append(layers.RandomContrast(settings.contrast, value_range=(0.0, 255.0), seed=seed, name="contrast"))
    return augment


def from_scratch(model_cfg: ModelConfig) -> bool:
    """``weights: none`` trains every layer; pretrained weights train the head on a frozen backbone."""
    return model_cfg.weights == "none"


@dataclass
class CrackModel:
    """The full model and the views of it that training needs."""

    model: keras.Model  # raw pixels → crack probability (augmentation active only in training)
    features: keras.Model  # raw pixels → pooled backbone features (no augmentation)
    head: keras.Model  # pooled features → crack probability
    backbone: keras.Model
    augment: keras.Sequential
    preprocess: list[layers.Layer]


def build_model(model_cfg: ModelConfig, train_cfg: TrainConfig) -> CrackModel:
    size = model_cfg.image_size
    backbone = build_backbone(model_cfg)
    scratch = from_scratch(model_cfg)
    backbone.trainable = scratch
    if scratch:
        set_batchnorm_momentum(backbone, train_cfg.scratch.batchnorm_momentum)
    augment = keras.Sequential(augmentation(train_cfg), name="augment")

    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = augment(inputs)
    preprocess = BACKBONES[model_cfg.backbone].preprocess()
    for layer in preprocess:
        x = layer(x)
    # From scratch, BatchNorm follows the call (batch statistics in fit, moving ones at inference).
    # Pretrained, it stays in inference mode, also when fine-tuning.
    x = backbone(x) if scratch else backbone(x, training=False)
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)

    dropout = layers.Dropout(model_cfg.dropout, name="dropout")
    # float32 output keeps the probability exact under mixed precision on GPUs
    classifier = layers.Dense(1, activation="sigmoid", dtype="float32", name="crack_probability")
    outputs = classifier(dropout(pooled))

    feature_inputs = keras.Input(shape=(pooled.shape[-1],), name="features")
    head = keras.Model(feature_inputs, classifier(dropout(feature_inputs)), name="head")
    return CrackModel(
        model=keras.Model(inputs, outputs, name=f"crackcls_{model_cfg.backbone}"),
        features=keras.Model(inputs, pooled, name="features"),
        head=head,
        backbone=backbone,
        augment=augment,
        preprocess=preprocess,
    )


def rebuilt(crack: CrackModel, model_cfg: ModelConfig, train_cfg: TrainConfig) -> CrackModel:
    """The trained weights in a freshly built float32 model: outside any distribution strategy and any
    mixed-precision policy, so what is saved, calibrated and served is the same on every machine."""
    keras.mixed_precision.set_global_policy("float32")
    plain = build_model(model_cfg, train_cfg)
    plain.model.set_weights(crack.model.get_weights())
    return plain


def batchnorm_layers(model: keras.Model) -> list[layers.BatchNormalization]:
    return [layer for layer in _all_layers(model) if isinstance(layer, layers.BatchNormalization)]


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Keras applications use 0.999, tuned for ImageNet-length runs; a short run needs faster statistics.

    At 0.999 the moving averages keep ~0.999**steps of their initial values: after a few
    hundred steps they still describe an untrained network, and the model collapses to
    one class at inference while training looks fine.
    """
    for layer in batchnorm_layers(model):
        layer.momentum = momentum


def calibrate_batchnorm(crack: CrackModel, batches: Iterable) -> int:
    """Recompute the backbone's BatchNorm inference statistics from real images; returns images used.

    After training from scratch, the moving mean/variance are an exponential average
    over weights that kept changing; one pass over training images (no augmentation)
    in training mode, with the running average made an exact mean, gives the
    statistics of the final weights ("precise BatchNorm"). Weights are not changed.
    """
    norms = batchnorm_layers(crack.backbone)
    momenta = [layer.momentum for layer in norms]
    was_trainable = crack.backbone.trainable
    crack.backbone.trainable = True
    seen = 0
    try:
        for step, images in enumerate(batches):
            for layer in norms:
                layer.momentum = step / (step + 1)  # cumulative average of the batch statistics
            x = images
            for layer in crack.preprocess:
                x = layer(x)
            crack.backbone(x, training=True)
            seen += int(images.shape[0])
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
        crack.backbone.trainable = was_trainable
    return seen


def _all_layers(model: keras.Model) -> list[layers.Layer]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def unfreeze_top(backbone: keras.Model, n_layers: int) -> int:
    """Make the top ``n_layers`` trainable, leaving BatchNorm frozen; returns how many."""
    backbone.trainable = True
    cutoff = max(len(backbone.layers) - n_layers, 0)
    unfrozen = 0
    for index, layer in enumerate(backbone.layers):
        trainable = index >= cutoff and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable)
    return unfrozen


def compile_binary(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
) -> None:
    """Adam (AdamW when ``weight_decay`` > 0) on binary cross-entropy."""
    model.compile(
        optimizer=adam(learning_rate, weight_decay),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def adam(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule, weight_decay: float = 0.0
) -> keras.optimizers.Optimizer:
    """Adam, or AdamW (decoupled weight decay) when ``weight_decay`` > 0."""
    if weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate)


def learning_rate_schedule(
    peak: float, schedule: str, steps_per_epoch: int, epochs: int, warmup_epochs: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to ``peak``, then cosine decay to zero over the run (or constant)."""
    if schedule == "constant":
        return peak
    total = max(steps_per_epoch * epochs, 1)
    warmup = min(steps_per_epoch * warmup_epochs, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10 if warmup else peak,
        decay_steps=total - warmup,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


