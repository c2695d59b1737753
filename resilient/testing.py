"""Test support shipped with the package: drive policies through time without waiting."""

from __future__ import annotations

import threading

import anyio

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that moves only when told to; its sleeps return at once, having moved it.

    Pass it as ``clock=`` to any policy. ``advance(seconds)`` moves time forward;
    ``sleep`` and ``sleep_async`` advance it by the requested amount instead of waiting,
    so a retry's backoff or a breaker's open period takes no real time in a test.
    Safe to share between threads.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"ManualClock.advance(seconds={seconds!r}): expected seconds >= 0")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    async def sleep_async(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()  # still a scheduling point, as a real sleep is

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"
