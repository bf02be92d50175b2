"""No TensorFlow start-up chatter on a CPU machine; real warnings and errors still reach stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import committed_file_text, subprocess_env

from crackcls.util import quiet

# What TensorFlow 2.21 prints on a CPU-only machine before any crackcls output.
START_UP = b"""\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795320500.918876    5085 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1795320500.919284    5085 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1795320507.021527    5098 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1795320505.397246    5085 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1795320636.069678    6019 util.cc:131] oneDNN supports DT_HALF only on platforms with AVX-512. Falling back to the default Eigen-based implementation if present.
"""
REAL = b"""\
/x/y.py:3: UserWarning: a real warning
E0000 00:00:1795320505.397246    5085 some_kernel.cc:52] a real TensorFlow error
Traceback (most recent call last):
"""
NOISE_MARKERS = ("cuInit", "oneDNN", "absl::InitializeLog", "cudart_stub", "cpu_feature_guard")


def test_drops_the_start_up_lines_and_keeps_everything_else():
    mixed = START_UP[:200].rsplit(b"\n", 1)[0] + b"\n" + REAL + START_UP
    assert quiet.drop_noise(mixed, gpu_present=False) == REAL


def test_keeps_cuda_lines_where_there_is_a_gpu():
    kept = quiet.drop_noise(START_UP, gpu_present=True).decode()
    assert "cuInit" in kept and "cudart_stub" in kept  # a GPU machine needs to know its driver failed
    assert "oneDNN custom operations" not in kept and "absl::InitializeLog" not in kept


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
        env={**subprocess_env(), **env}, timeout=300,
    )  # fmt: skip


@pytest.mark.skipif(quiet.has_nvidia_device(), reason="CUDA lines are kept on a machine with a GPU")
def test_importing_tensorflow_through_crackcls_is_silent_but_warnings_show(tmp_path):
    code = (
        "import os, warnings\n"
        "import crackcls, tensorflow as tf, keras\n"
        "tf.constant([1.0]) + 1\n"
        "os.write(2, b'written during start-up\\n')\n"
        "warnings.warn('a real warning')\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not [m for m in NOISE_MARKERS if m in result.stderr], result.stderr
    assert "UserWarning: a real warning" in result.stderr
    assert "written during start-up" in result.stderr


def test_lines_written_inside_the_filter_come_back_in_order(tmp_path):
    code = (
        "import os\nfrom crackcls.util import quiet\n"
        "with quiet.filtered_stderr():\n"
        f"    os.write(2, {START_UP!r})\n"
        "    os.write(2, b'first\\n')\n"
        "    print('second', file=__import__('sys').stderr)\n"
        "print('third', file=__import__('sys').stderr)\n"
    )
    result = run_python(code, tmp_path)
    assert result.stderr.splitlines() == ["first", "second", "third"]


@pytest.mark.skipif(quiet.has_nvidia_device(), reason="CUDA lines are kept on a machine with a GPU")
def test_a_stage_that_fails_shows_its_error_and_no_start_up_lines(tmp_path):
    (tmp_path / "params.yaml").write_text(committed_file_text("params.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "crackcls.stages.evaluate"], cwd=tmp_path, capture_output=True, text=True,
        env=subprocess_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "error:" in result.stderr and "models/run.json missing" in result.stderr
    assert not [m for m in NOISE_MARKERS if m in result.stderr + result.stdout], result.stderr


def test_the_user_can_ask_for_every_line(tmp_path):
    result = run_python("import crackcls, sys; from crackcls.util import quiet; print(quiet.enabled())", tmp_path, TF_CPP_MIN_LOG_LEVEL="0")
    assert result.stdout.strip() == "False"


def test_tensorflow_error_lines_are_hidden_only_without_a_gpu(tmp_path):
    env = {k: v for k, v in subprocess_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a fresh shell has it
    code = "import os, crackcls; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip() == ("2" if quiet.has_nvidia_device() else "3")
