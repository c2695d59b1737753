"""Events and their listeners: a listener's error is logged, never raised into the call.

Policies publish frozen event objects after the fact (a transition is complete before
anyone hears of it), outside any lock, to listeners added with ``add``. Adding and
removing copy the tuple of listeners, so publishing iterates a snapshot without a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from resilient._core.configuration.options import is_async_callable
from resilient._errors import logger

__all__ = ["Listeners"]


E = TypeVar("E")
L = TypeVar("L", bound=Callable[..., object])


class Listeners(Generic[E]):
    """The listeners of one policy."""

    __slots__ = ("_fns", "_lock")

    def __init__(self) -> None:
        self._fns: tuple[Callable[[E], object], ...] = ()
        self._lock = threading.Lock()

    def add(self, fn: L) -> L:
        if not callable(fn) or is_async_callable(fn):
            raise TypeError(f"a listener must be a plain (not async) callable, not {fn!r}")
        with self._lock:
            self._fns = (*self._fns, fn)
        return fn

    def remove(self, fn: Callable[[E], object]) -> None:
        with self._lock:
            fns = list(self._fns)
            fns.remove(fn)  # ValueError for a listener that was never added, as list does
            self._fns = tuple(fns)

    def __bool__(self) -> bool:
        return bool(self._fns)

    def emit(self, event: E) -> None:
        for fn in self._fns:
            try:
                fn(event)
            except BaseException:  # SystemExit, KeyboardInterrupt too: never the call's
                logger().exception("listener %r failed on %r; the call goes on", fn, event)
