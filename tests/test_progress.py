"""Progress bars: shown on a terminal for long work, absent from logs that are not a TTY."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from crackcls.model import features  # first: crackcls quiets TensorFlow's start-up
from crackcls.util import progress
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from crackcls.config import Config
from crackcls.data.pipeline import image_dataset
from crackcls.model.evaluation import evaluate_items
from crackcls.model.build import build_model
from crackcls.data.splitting import Item
from conftest import REPO_ROOT


class Terminal(io.StringIO):
    """A TTY that keeps everything written to it (a bar erases itself with ``\\r`` when done)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.written.append(text)
        return super().write(text)

    def getvalue(self) -> str:
        return "".join(self.written)


# pytest puts its own capture back on sys.stderr between a fixture's setup and the
# test's call, so each test swaps the stream itself.
def on_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def in_a_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    sink = io.StringIO()  # isatty() is False: a log file or a pipe
    monkeypatch.setattr(sys, "stderr", sink)
    return sink


def test_bar_shows_on_a_terminal_only(monkeypatch):
    terminal = on_terminal(monkeypatch)
    with progress.bar(10, "work") as bar:
        bar.update(10)
    shown = terminal.getvalue()
    assert "work:" in shown and "/10 [" in shown, shown


def test_no_bar_in_a_log(monkeypatch):
    log = in_a_log(monkeypatch)
    with progress.bar(10, "work") as bar:
        bar.update(10)
    assert log.getvalue() == ""


def test_no_bar_for_work_of_one_batch(monkeypatch):
    terminal = on_terminal(monkeypatch)
    with progress.bar(5, "work", min_total=16) as bar:
        bar.update(5)
    assert terminal.getvalue() == ""


def test_keras_training_drives_a_batch_bar_per_epoch(monkeypatch):
    terminal = on_terminal(monkeypatch)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((np.zeros((12, 2), np.float32), np.zeros(12, np.float32))).batch(4)
    model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[progress.keras_batch_bar()])
    shown = terminal.getvalue()
    assert "epoch 1/2" in shown and "epoch 2/2" in shown
    assert "0/3 [" in shown  # a bar of three batches per epoch


SAMPLE = sorted((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))[:5] + sorted((REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg"))[:5]


@pytest.fixture(scope="module")
def tiny_model():
    config = Config()
    model_cfg = config.model.model_copy(update={"weights": "none", "image_size": 32})
    return build_model(model_cfg, config.train)


def test_feature_extraction_reports_every_image(tiny_model):
    seen: list[int] = []
    ds = image_dataset(SAMPLE, None, 32, 4, keep_flags=True)
    values, kept = features.extract(tiny_model.features, tiny_model.augment, ds, views=1, on_batch=seen.append)
    assert seen == [4, 4, 2] and len(values) == len(kept) == 10


def test_evaluation_scoring_shows_a_bar_on_a_terminal(tiny_model, monkeypatch):
    terminal = on_terminal(monkeypatch)
    items = [Item(str(p), int("Positive" in str(p)), "") for p in SAMPLE]
    evaluate_items(tiny_model.model, items, 0.5, batch_size=4)
    assert "evaluate:" in terminal.getvalue() and "/10 [" in terminal.getvalue()
