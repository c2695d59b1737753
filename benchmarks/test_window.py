"""What a failing call through a CLOSED breaker costs as the window grows, 100 to 1,000,000.

A failure is the call that reads the window's tally (to decide whether to open), so if a
tally cost O(window), this is where a partial outage would show it. The target: the same
cost at window_size 100 and 1,000,000 (at most 1.5x), and at most 3 us at 1,000,000.

A breaker fed nothing but failures would open, so each operation is a failing call and a
successful one (a 50 % failure rate, under the breaker's 0.6): the success adds the
closed path's cost, the same in every row. A round is ``CALLS`` operations in a loop.
The window is filled before measuring, so failures also slide out of it as they would in
production. The locked row is the count window a free-threaded build uses.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import pytest

from resilient import CircuitBreaker, State

from ._subjects import Loop, locked_breaker

CALLS = 1000


def boom(fail: bool) -> int:
    if fail:
        raise ConnectionError
    return 1


def failing_and_succeeding(breaker: CircuitBreaker) -> Loop:
    guarded = breaker(boom)

    def loop(n: int) -> int:
        for _ in repeat(None, n):
            try:
                guarded(True)
            except ConnectionError:
                pass
            guarded(False)
        assert breaker.state is State.CLOSED
        return n

    loop(breaker.metrics.calls or 1)  # warm: nothing below depends on an empty window
    return loop


def filled(breaker: CircuitBreaker, size: int) -> CircuitBreaker:
    guarded = breaker(boom)
    for k in range(size):
        try:
            guarded(k % 2 == 0)
        except ConnectionError:
            pass
    return breaker


OPTIONS = {"failure_rate": 0.6}
SUBJECTS: dict[str, Any] = {
    f"window_size={size:,}": lambda size=size: filled(
        CircuitBreaker(window_size=size, **OPTIONS), size
    )
    for size in (100, 10_000, 1_000_000)
}
SUBJECTS["window_size=1,000,000 locked"] = lambda: filled(
    locked_breaker(window_size=1_000_000, **OPTIONS), 1_000_000
)
SUBJECTS["time window (60 s)"] = lambda: CircuitBreaker(
    window_type="time", window_size=60, **OPTIONS
)


@pytest.mark.benchmark(group="failing call, CLOSED breaker (a failure and a success per op)")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_failing_call(benchmark: Any, name: str) -> None:
    loop = failing_and_succeeding(SUBJECTS[name]())
    benchmark.extra_info.update(ops=CALLS, baseline=name == "window_size=100")
    assert benchmark(loop, CALLS) == CALLS
