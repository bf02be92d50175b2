"""The classifier: an ImageNet backbone, its own preprocessing, and a pooled dense head.

Inputs are RGB images as float pixels in [0, 255]; each backbone's preprocessing is
built into the model, so a saved ``.keras`` file takes raw pixels and needs nothing
else to predict. Only built-in or registered layers are used, so models load with
Keras's safe mode (no Lambda layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import keras
from keras import layers, ops

from crackcls import paths
from crackcls.config import ModelConfig, TrainConfig
from crackcls.errors import CrackclsError

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


BACKBONES: dict[str, BackboneSpec] = {
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
    return spec.build(
        include_top=False, weights=weights, input_shape=(size, size, 3), **spec.options
    )


def augmentation(train: TrainConfig) -> list[layers.Layer]:
    augment: list[layers.Layer] = []
    if train.augment.flip:
        augment.append(layers.RandomFlip("horizontal_and_vertical", seed=train.seed, name="flip"))
    if train.augment.rotation > 0:
        augment.append(
            layers.RandomRotation(train.augment.rotation, fill_mode="reflect", seed=train.seed, name="rotate")
        )
    return augment


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
    backbone.trainable = False
    augment = keras.Sequential(augmentation(train_cfg), name="augment")

    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = augment(inputs)
    preprocess = BACKBONES[model_cfg.backbone].preprocess()
    for layer in preprocess:
        x = layer(x)
    x = backbone(x, training=False)  # keep BatchNorm in inference mode, also when fine-tuning
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


def calibrate_batchnorm(crack: CrackModel, batches: Iterable) -> int:
    """Set an untrained backbone's BatchNorm statistics from real images; returns images used.

    With ``weights: none`` the moving mean/variance are the defaults (0 and 1), and
    in inference mode activations shrink to zero through the depth of the network,
    so every image gets the same (zero) features. One pass over a few batches in
    training mode, with the running average made exact, gives normalised random
    features the head can learn from. Pretrained weights never need this.
    """
    norms = [layer for layer in _all_layers(crack.backbone) if isinstance(layer, layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
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
        crack.backbone.trainable = False
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


def compile_binary(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )


def load_model_file(path: str | Path) -> keras.Model:
    """Load a ``.keras`` file in safe mode: a Lambda layer is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise CrackclsError(f"model file {path} not found")
    try:
        return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for bad files; all mean the same here
        raise CrackclsError(
            f"cannot load model {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "The file is corrupt, not a Keras model, or needs unsafe code (Lambda layers are refused)."
        ) from None
