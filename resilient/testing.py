"""Test support shipped with the package: drive policies through time without waiting."""

from __future__ import annotations

import threading
from types import TracebackType

from resilient._core.configuration import testmode
from resilient._core.execution.backend import checkpoint
from resilient._errors import ConfigError

__all__ = ["ManualClock", "set_testing"]


class set_testing:
    """Make every retry wait zero seconds (and give up after ``attempts``) for a test suite.

    Takes effect at once, process-wide; use it as a context manager to restore the
    previous mode on exit, or call ``set_testing(False)`` to switch it off::

        with resilient.testing.set_testing(attempts=2):
            ...  # retries run back to back, at most 2 attempts each
    """

    def __init__(self, enabled: bool = True, *, attempts: int | None = None) -> None:
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ConfigError(
                "attempts", attempts, "None or a whole number >= 1", owner="set_testing"
            )
        self._mode = testmode.TestMode(bool(enabled), attempts)
        self._previous = testmode.replace(self._mode)

    def __enter__(self) -> set_testing:
        if testmode.current() is not self._mode:  # made earlier, entered now
            self._previous = testmode.replace(self._mode)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        testmode.replace(self._previous)


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
        await checkpoint()  # still a scheduling point, as a real sleep is

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"
