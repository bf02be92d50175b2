"""Devices: use what the machine has, through TensorFlow's own engines.

- More than one GPU: ``tf.distribute.MirroredStrategy`` (synchronous data parallel);
  the global batch is ``train.batch_size`` split across replicas.
- Any GPU: mixed precision (float16 compute, float32 variables and output). Keras's
  ``jit_compile="auto"`` compiles nothing here: op determinism (on, for reproducible
  runs) and the rotation augmentation both turn XLA off.
- CPU only: the default strategy; training from scratch computes in bfloat16 where the
  CPU has bfloat16 instructions (AVX512-BF16 or AMX), float32 elsewhere. Saved models are
  float32 whatever trained them (:func:`crackcls.model.build.rebuilt`), so inference gives
  the same probabilities on every machine. XLA is left off: on a 2-core Zen 3 it added 6%
  to ``compact_cnn``'s training rate, within that machine's noise (``bench/throughput.py``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

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


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bfloat16() -> bool:
    """True where the CPU computes bfloat16 natively; emulated bfloat16 is slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def precision_policy(setting: str = "auto", scratch: bool = False) -> str:
    """The Keras dtype policy for ``train.precision``; ``auto`` picks what is fastest here without hurting accuracy.

    ``auto``: mixed float16 on GPUs; on CPUs, mixed bfloat16 for training from scratch where the
    CPU has the instructions (1.35× the training steps per second of float32 for ``compact_cnn``
    at 96 px on a 2-core Zen 4, steps of each timed in turn), else float32 (frozen-backbone
    features and inference stay float32 on CPUs).
    """
    if setting != "auto":
        return setting
    if gpus():
        return "mixed_float16"
    return "mixed_bfloat16" if scratch and cpu_has_bfloat16() else "float32"


def configure_precision(setting: str = "auto", scratch: bool = False) -> str:
    policy = precision_policy(setting, scratch)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def describe() -> dict[str, object]:
    return {
        "gpus": len(gpus()),
        "replicas": strategy().num_replicas_in_sync,
        "precision": keras.mixed_precision.global_policy().name,
    }
