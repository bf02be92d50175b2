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
