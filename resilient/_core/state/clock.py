"""Time, injected: every policy reads durations from a :class:`Clock`, never from the wall.

Tests swap in :class:`resilient.testing.ManualClock` so a state machine can be walked
through minutes of simulated time without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "MonotonicClock", "SystemClock"]


@runtime_checkable
class MonotonicClock(Protocol):
    """All a policy that only measures time needs (a circuit breaker)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary fixed point; never goes backwards."""
        ...


@runtime_checkable
class Clock(MonotonicClock, Protocol):
    """Monotonic time in seconds, and the two ways of waiting on it (for policies that wait)."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def sleep_async(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` (asyncio or trio, through anyio)."""
        ...


class SystemClock:
    """The process's monotonic clock; the default for every policy."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    async def sleep_async(self, seconds: float) -> None:
        # The event loop's own sleep, found when first needed: the state layer knows no
        # event loop, and a sync program never imports one.
        from resilient._core.execution.backend import sleep

        await sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
