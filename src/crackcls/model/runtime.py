"""Devices: use what the machine has, through TensorFlow's own engines.

- More than one GPU: ``tf.distribute.MirroredStrategy`` (synchronous data parallel);
  the global batch is ``train.batch_size`` split across replicas.
- Any GPU: mixed precision (float16 compute, float32 variables and output), and
  XLA through Keras's ``jit_compile="auto"`` default.
- CPU only: the default strategy and float32; XLA is left off, since on CPU it
  compiles slower than it runs for these models.
"""

from __future__ import annotations

import functools
import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


@functools.cache
def gpus() -> tuple[str, ...]:
    return tuple(device.name for device in tf.config.list_physical_devices("GPU"))


@functools.cache
def strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across all visible GPUs when there are several, else the default."""
    if len(gpus()) > 1:
        mirrored = tf.distribute.MirroredStrategy()
        log.info("training on %d GPUs with MirroredStrategy", mirrored.num_replicas_in_sync)
        return mirrored
    return tf.distribute.get_strategy()


def configure_precision() -> str:
    """Mixed precision on GPUs, where it helps; float32 on CPUs, where it does not."""
    policy = "mixed_float16" if gpus() else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def describe() -> dict[str, object]:
    return {
        "gpus": len(gpus()),
        "replicas": strategy().num_replicas_in_sync,
        "precision": keras.mixed_precision.global_policy().name,
    }
