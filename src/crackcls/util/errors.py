"""User-facing failures: printed as one line, never as a traceback."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class CrackclsError(Exception):
    """A problem the user can act on; its message says what happened and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) arrived: unwind like Ctrl-C so that ``finally`` blocks clean up.

    Python's default action for SIGTERM kills the process on the spot, leaving
    half-built staging folders behind; raising instead lets ``atomic_dir`` remove
    them and keeps the previous outputs exactly as they were. A subclass of
    KeyboardInterrupt, so code that already treats Ctrl-C as "stop now" (thread
    pools, progress bars, TensorFlow) treats it the same way, and ``except
    Exception`` blocks never swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


TERMINATING_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


# The terminating signals received inside terminate_as_interrupt(): a Terminated raised while a C
# extension runs can come out as another error (CPython reports "SystemError: ... bad argument to
# internal function" when TensorFlow is tracing), and the exit must still say it was a SIGTERM.
_RECEIVED: list[int] = []


def _raise_terminated(signum: int, frame: object) -> None:
    # A second signal while unwinding kills at once (the default action), so a
    # cleanup that hangs can still be stopped.
    signal.signal(signum, signal.SIG_DFL)
    _RECEIVED.append(signum)
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM/SIGHUP raise :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = {}
    _RECEIVED.clear()
    for signum in TERMINATING_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # nohup and friends asked us to ignore it: keep ignoring
        previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest we can restore
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def user_errors_exit(func: Callable[..., T]) -> Callable[..., T]:
    """Turn CrackclsError, Ctrl-C and SIGTERM into a clean message and a non-zero exit code.

    Exit codes: 2 for a CrackclsError, 130 for Ctrl-C, 128 + the signal number for
    SIGTERM/SIGHUP (143/129), as a shell reports a process killed by that signal.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            with terminate_as_interrupt():
                return func(*args, **kwargs)
        except CrackclsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except Terminated as exc:
            print(f"interrupted: {exc}", file=sys.stderr)
            raise SystemExit(128 + exc.signum) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception:
            if not _RECEIVED:
                raise
            # the Terminated came out of a C extension as another error; the cleanup has run all the same
            signum = _RECEIVED[-1]
            print(f"interrupted: terminated by {signal.Signals(signum).name}", file=sys.stderr)
            raise SystemExit(128 + signum) from None

    return wrapper
