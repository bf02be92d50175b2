"""User-facing failures: printed as one line, never as a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CrackclsError(Exception):
    """A problem the user can act on; its message says what happened and what to do."""


def user_errors_exit(func: Callable[..., T]) -> Callable[..., T]:
    """Turn CrackclsError (and Ctrl-C) into a clean message and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **kwargs)
        except CrackclsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
