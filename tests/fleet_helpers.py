"""What the fleet's tests share (tests/test_redis_breaker.py and the reviews beside it):
a small breaker's options, a bounded poll, a call that fails, a trip."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from resilient import CircuitBreaker, State

#: Two failures in a window of four: a trip (failure_rate 0.5, min_calls 2).
SMALL: dict[str, Any] = {"window_size": 4, "min_calls": 2}
SPELL = 0.3  # a short OPEN spell (the server's clock: real time)
#: Past a spell of SPELL seen from any process: its end is kept to the ms, and a process
#: that heard of it late ends it late, never early.
PAST_SPELL = SPELL + 0.2


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 5 ms, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.005)


def boom() -> None:
    raise ValueError("the dependency is down")


def ok() -> str:
    return "ok"


def trip(breaker: CircuitBreaker) -> None:
    """Two failures: the breaker opens locally, at once (its worker tells the fleet)."""
    for _ in range(2):
        with pytest.raises(ValueError, match="down"):
            breaker.call(boom)
    assert breaker.state is State.OPEN


class Named:
    """What a BreakerLink needs of a breaker: its name (for a process that only runs
    the fleet's script: another process, as far as this one can tell)."""

    def __init__(self, name: str) -> None:
        self.name = name
