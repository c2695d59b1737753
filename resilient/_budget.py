"""Retry budgets: retries may add at most a share of recent traffic, fleet-wide in spirit.

Under stress every caller retrying multiplies the load on a struggling downstream (three
attempts each: three times the traffic). A budget caps what retries may add: over the
last ``window`` seconds, retries may number at most ``ratio`` of first attempts, plus
``min_per_second`` a second so that a quiet service can still retry (Finagle's
RetryBudget, gRPC's retry throttling). One budget is shared by any number of Retry
objects, e.g. every retry towards one downstream.

First attempts are recorded on the lock-free time window of the state core; a retry
checks and takes its place under a small lock, off the happy path, so the budget is
never overspent however many threads retry at once.
"""

from __future__ import annotations

import threading
from typing import Any

from resilient._core.configuration import options as opt
from resilient._core.configuration.shapes import shaped
from resilient._core.state.clock import SYSTEM_CLOCK, MonotonicClock
from resilient._core.state.window import FAILURE, SUCCESS, time_window

__all__ = ["RetryBudget"]

# A time window counts two kinds of event here: first attempts, and retries.
_FIRST_ATTEMPT = SUCCESS
_RETRY = FAILURE

OPTIONS = (
    opt.Option(
        "ratio",
        0.2,
        opt.rate,
        "a number with 0 < ratio <= 1",
        "Retries allowed per first attempt over the window. 0.2 (Finagle's default): a"
        " downstream in trouble sees at most 20% more traffic, not 200%.",
    ),
    opt.Option(
        "min_per_second",
        10.0,
        opt.per_second,
        "a number from 0 to 1,000,000",
        "Retries allowed a second whatever the ratio, so that low traffic can retry.",
    ),
    opt.Option(
        "window",
        10.0,
        opt.time_span,
        "seconds from 0.001 to 31,536,000 (a year)",
        "How much recent traffic the ratio is taken over.",
    ),
    opt.Option(
        "clock",
        None,
        opt.clock("monotonic"),
        "None or an object with a monotonic() method",
        "Where time comes from; tests pass ManualClock.",
    ),
)


class RetryBudget:
    """At most ``ratio`` retries per first attempt, plus ``min_per_second``, over ``window`` s."""

    def __init__(
        self,
        ratio: float = 0.2,
        *,
        min_per_second: float = 10.0,
        window: opt.Duration = 10.0,
        clock: MonotonicClock | None = None,
    ) -> None:
        cfg = opt.resolve(
            OPTIONS,
            {"ratio": ratio, "min_per_second": min_per_second, "window": window, "clock": clock},
            owner="RetryBudget",
        )
        self.ratio: float = cfg["ratio"]
        self.min_per_second: float = cfg["min_per_second"]
        self.window: float = cfg["window"]
        self._clock: MonotonicClock = cfg["clock"] or SYSTEM_CLOCK
        self._events = time_window(self.window)
        self._lock = threading.Lock()

    def _deposit(self) -> None:
        """A first attempt is starting (lock-free). Time is the budget's own: it is shared."""
        self._events.record(_FIRST_ATTEMPT, self._clock.monotonic())

    def _withdraw(self) -> bool:
        """May one retry go ahead? If so it is counted at once, under the lock."""
        now = self._clock.monotonic()
        with self._lock:
            events = self._events.tally(now)
            retries = events.failures
            first_attempts = events.calls - retries
            if retries + 1 > self.ratio * first_attempts + self.min_per_second * self.window:
                return False
            self._events.record(_RETRY, now)
            return True

    @property
    def available(self) -> int:
        """How many retries the budget would allow right now."""
        events = self._events.tally(self._clock.monotonic())
        retries = events.failures
        allowance = self.ratio * (events.calls - retries) + self.min_per_second * self.window
        return max(0, int(allowance - retries))

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio}, min_per_second={self.min_per_second},"
            f" window={self.window})"
        )


shaped(RetryBudget, decorates=False)  # a wrongly shaped call answers with the right one


def check_budget(value: Any) -> Any:
    """An option that takes a RetryBudget (a Retry's, a Hedge's): None or one."""
    if value is not None and not isinstance(value, RetryBudget):
        raise opt.Invalid
    return value


opt.written(check_budget, opt.none_or_import, "none, or a RetryBudget's import path")
