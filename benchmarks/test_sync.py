"""The closed path of a guarded sync call, next to a bare call and the wrappers it competes with.

Every subject wraps the same ``f``, so what differs is the wrapper's own cost. The bare call
is the baseline of the target (closed path at most 15x a bare call); the two pass-through
decorators show what any wrapper costs at all, with (wrapt) and without (functools) a proxy.

A round is ``CALLS`` direct calls ``fn(1)`` in a loop, as user code makes them: left to
itself, pytest-benchmark calls ``fn(*args, **kwargs)``, which adds some 30 ns to every row
and so flatters every ratio. pytest-benchmark's table is per round: with 1000 calls a round,
its microseconds read as nanoseconds per call.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import circuitbreaker
import pybreaker
import pytest
import wrapt

from resilient import CircuitBreaker

from ._subjects import Loop, call_form, calls, f, wraps_passthrough

CALLS = 1000


@wrapt.decorator
def wrapt_passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def with_form(breaker: CircuitBreaker) -> Loop:
    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            with breaker:
                result = f(1)
        return result

    return loop


SUBJECTS: dict[str, Loop] = {
    "bare": calls(f),
    "functools.wraps": calls(wraps_passthrough(f)),
    "wrapt": calls(wrapt_passthrough(f)),
    "resilient": calls(CircuitBreaker()(f)),
    "pybreaker": calls(pybreaker.CircuitBreaker()(f)),
    "circuitbreaker": calls(circuitbreaker.circuit(f)),
    # Our other forms, for reference; the target is about @breaker.
    "resilient-call": call_form(CircuitBreaker()),
    "resilient-with": with_form(CircuitBreaker()),
}


@pytest.mark.benchmark(group="sync closed path")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_sync_closed_path(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare")
    assert benchmark(SUBJECTS[name], CALLS) == 1
