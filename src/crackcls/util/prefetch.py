"""Reading ahead: an iterator's items produced in a background thread, so decoding overlaps the work on them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

@dataclass
class _Failed:
    error: BaseException


_DONE = object()


def prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced in a background thread, at most ``depth`` ahead; its errors re-raised here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failed(exc))

    worker = threading.Thread(target=produce, name="crackcls-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
