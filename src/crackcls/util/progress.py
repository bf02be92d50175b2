"""Progress bars for work that takes more than a few seconds: on a terminal only, on stderr.

tqdm's ``disable=None`` hides a bar when stderr is not a TTY, so DVC logs, CI and
pipes get no bar lines. The Keras callback gives training on images a per-batch bar
under the same rule.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str = "img", min_total: int = 0) -> tqdm:
    """A bar of ``total`` units (None: a counter), shown only on a terminal and when ``total > min_total``."""
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
        disable=None if total is None or total > min_total else True,
    )  # fmt: skip


def keras_batch_bar():  # noqa: ANN201 - a keras.callbacks.Callback
    """A Keras callback: one bar per epoch, advanced per training batch (terminal only)."""
    import keras

    class BatchBar(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._bar: tqdm | None = None

        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[override]
            steps = (self.params or {}).get("steps") or 0
            epochs = (self.params or {}).get("epochs") or "?"
            self._bar = bar(steps, f"epoch {epoch + 1}/{epochs}", unit="batch")

        def on_train_batch_end(self, batch, logs=None):  # type: ignore[override]
            if self._bar is not None:
                self._bar.update(1)

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[override]
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    return BatchBar()
