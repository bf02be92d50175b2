"""Keep TensorFlow's C++ start-up chatter (oneDNN, CUDA stubs, cuInit) off a CPU user's terminal.

TensorFlow writes these lines through absl *before* its log level applies, so
``TF_CPP_MIN_LOG_LEVEL`` cannot hide them, and on a machine without a GPU they
include ``E0000 ... failed call to cuInit``, which reads like a failure. While
TensorFlow is first imported and looks for devices, file descriptor 2 goes to a
temporary file; afterwards every line except the known start-up lines is written
back to stderr, so real warnings and errors still show (later, not lost). GPU
lines are only dropped when the machine has no NVIDIA device, where they cannot
matter. After start-up, ``TF_CPP_MIN_LOG_LEVEL`` (:func:`default_log_level`) applies.
``TF_CPP_MIN_LOG_LEVEL=0`` (or 1) set by the user turns all of this off.

Pure standard library: importing it costs nothing, and TensorFlow itself is only
imported when some module asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Always noise: oneDNN's notice, CPU-instruction hints, duplicate CUDA plugin registration.
_ALWAYS = (
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"[IW]\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\] .*",
    rb"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.",
    rb"[EW]\d{4} [\d:.]+ +\d+ cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register .* factory: .*",
    rb"[EW]\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports DT_HALF only on platforms with AVX-512\..*",
)
# Noise only without an NVIDIA device: "no CUDA driver" and the cuInit failure that follows.
_NO_GPU = (
    rb"[IWE]\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] .*",
    rb"[IWE]\d{4} [\d:.]+ +\d+ cuda_(platform|executor|diagnostics)\.cc:\d+\] .*",
)


def has_nvidia_device() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def noise_pattern(gpu_present: bool) -> re.Pattern[bytes]:
    patterns = _ALWAYS if gpu_present else _ALWAYS + _NO_GPU
    return re.compile(b"|".join(b"(?:" + p + b")" for p in patterns))


def drop_noise(text: bytes, gpu_present: bool | None = None) -> bytes:
    """``text`` without TensorFlow's start-up lines; everything else, in order."""
    pattern = noise_pattern(has_nvidia_device() if gpu_present is None else gpu_present)
    kept = [line for line in text.splitlines(keepends=True) if not pattern.fullmatch(line.rstrip(b"\r\n"))]
    return b"".join(kept)


def default_log_level() -> str:
    """TensorFlow's C++ log level: errors too are hidden on a CPU machine, kept where a GPU is.

    On a CPU machine TensorFlow's C++ error lines are notices (oneDNN's float16 fallback,
    graph attributes its own Python adds); a real failure raises a Python exception that
    carries the message. Where a GPU is, an error line may be the only word on a driver problem.
    """
    return "2" if has_nvidia_device() else "3"


def enabled() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") not in ("0", "1")


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Send fd 2 to a temporary file while inside, then replay it without the noise lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = drop_noise(sink.read())
            if kept:
                os.write(2, kept)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """On the first ``import tensorflow``: import it and find its devices inside :func:`filtered_stderr`."""

    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name != "tensorflow":
            return None
        uninstall()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):  # type: ignore[no-untyped-def]
            try:
                with filtered_stderr():
                    exec_module(module)
                    module.config.list_physical_devices("GPU")  # cuInit runs (and complains) here
            finally:
                del spec.loader.exec_module  # back to the class's own method

        spec.loader.exec_module = quiet_exec_module  # type: ignore[method-assign]
        return spec


_FINDER = _QuietTensorFlowImport()


def install() -> None:
    """Filter TensorFlow's first import, whenever and wherever it happens (idempotent)."""
    if enabled() and "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)
