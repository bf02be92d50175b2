"""Device policy: mixed precision only where a GPU is, float32 probabilities either way."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crackcls.model import runtime
from crackcls.config import parse_config
from crackcls.model.build import build_model


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_cpu_only_machine_uses_float32_and_the_default_strategy(monkeypatch, restore_policy):
    monkeypatch.setattr(runtime, "gpus", lambda: ())
    assert runtime.configure_precision() == "float32"
    assert runtime.strategy.__wrapped__().num_replicas_in_sync == 1


def test_gpu_machine_gets_mixed_precision_with_a_float32_output(monkeypatch, restore_policy):
    monkeypatch.setattr(runtime, "gpus", lambda: ("/physical_device:GPU:0",))
    assert runtime.configure_precision() == "mixed_float16"
    config = parse_config({"model": {"weights": "none", "image_size": 32}})
    crack = build_model(config.model, config.train)
    assert crack.backbone.compute_dtype == "float16"
    output = crack.model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert keras.backend.standardize_dtype(output.dtype) == "float32"


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_training_from_scratch_uses_bfloat16_only_where_the_cpu_has_it(monkeypatch, restore_policy, has_bf16):
    monkeypatch.setattr(runtime, "gpus", lambda: ())
    monkeypatch.setattr(runtime, "cpu_has_bfloat16", lambda: has_bf16)
    assert runtime.configure_precision("auto", scratch=True) == ("mixed_bfloat16" if has_bf16 else "float32")
    assert runtime.configure_precision("auto", scratch=False) == "float32"  # frozen features, inference
    assert runtime.configure_precision("float32", scratch=True) == "float32"  # an explicit setting wins


def test_a_model_trained_in_bfloat16_is_saved_as_float32_with_the_same_weights(restore_policy):
    from crackcls.model.build import rebuilt

    config = parse_config({"model": {"backbone": "compact_cnn", "weights": "none", "image_size": 32}})
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    trained = build_model(config.model, config.train)
    assert trained.model.dtype_policy.name == "mixed_bfloat16"
    plain = rebuilt(trained, config.model, config.train)
    assert plain.model.dtype_policy.name == "float32" and keras.mixed_precision.global_policy().name == "float32"
    for mine, theirs in zip(plain.model.get_weights(), trained.model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    close = np.asarray(trained.model(images)), np.asarray(plain.model(images))
    np.testing.assert_allclose(*close, atol=0.02)  # bfloat16 keeps about 3 significant digits


def test_a_strided_stem_keeps_the_compact_shapes_and_cuts_the_full_resolution_work():
    shapes = {}
    for stride in (1, 2):
        config = parse_config({"model": {"backbone": "compact_cnn", "weights": "none", "image_size": 96,
                                         "compact": {"stem_stride": stride}}})  # fmt: skip
        crack = build_model(config.model, config.train)
        shapes[stride] = (crack.backbone.output_shape, crack.model.count_params())
        names = [layer.name for layer in crack.backbone.layers]
        assert ("block1_pool" in names) == (stride == 1)
        assert crack.backbone.get_layer("block1_conv").strides == (stride, stride)
    assert shapes[1] == shapes[2] == ((None, 6, 6, 128), shapes[1][1])
