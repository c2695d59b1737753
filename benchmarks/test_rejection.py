"""What an open breaker costs to say no, against raising and catching an exception bare.

A rejection cannot be cheaper than an exception, so the baseline of the target (at most 3x)
is ``try: raise Boom() except Boom`` with a fresh exception, as every rejection raises one.
Breakers are opened two ways: pinned (``force_open()``) and tripped by a real failure
(OPEN, which also reads the clock to tell the caller when to retry). As in test_sync.py, a
round is ``CALLS`` tries in a loop, so the harness adds nothing to the ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any

import circuitbreaker
import pybreaker
import pytest

from resilient import CircuitBreaker, CircuitOpenError

from ._subjects import Boom, Loop, flaky, raises, rejections

CALLS = 1000


def forced_open() -> Callable[[int], int]:
    breaker = CircuitBreaker()
    breaker.force_open()
    return breaker(flaky)


def tripped(guarded: Callable[[int], int], *trip_errors: type[Exception]) -> Callable[[int], int]:
    try:
        guarded(-1)
    except trip_errors:
        pass
    return guarded


SUBJECTS: dict[str, Loop] = {
    "bare raise-catch": raises,
    "resilient-forced_open": rejections(forced_open(), CircuitOpenError),
    "resilient-open": rejections(
        tripped(CircuitBreaker(min_calls=1, open_for=3600)(flaky), ValueError),
        CircuitOpenError,
    ),
    "pybreaker-open": rejections(
        tripped(
            pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)(flaky),
            pybreaker.CircuitBreakerError,
        ),
        pybreaker.CircuitBreakerError,
    ),
    "circuitbreaker-open": rejections(
        tripped(
            circuitbreaker.circuit(failure_threshold=1, recovery_timeout=3600)(flaky), ValueError
        ),
        circuitbreaker.CircuitBreakerError,
    ),
}


@pytest.mark.benchmark(group="open rejection")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_open_rejection(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare raise-catch")
    assert benchmark(SUBJECTS[name], CALLS) == CALLS


def build_plain(n: int) -> int:
    for _ in repeat(None, n):
        Boom("name", 1.0, "open")  # the same three values, kept in args only
    return n


def build_ours(n: int) -> int:
    for _ in repeat(None, n):
        CircuitOpenError("name", 1.0, "open")
    return n


BUILDS: dict[str, Loop] = {"Boom(3 args)": build_plain, "CircuitOpenError(3 args)": build_ours}


@pytest.mark.benchmark(group="open rejection, part: building the exception")
@pytest.mark.parametrize("name", list(BUILDS))
def test_exception_construction(benchmark: Any, name: str) -> None:
    """Where a rejection's time goes: the exception it must build, next to a plain one."""
    benchmark.extra_info.update(ops=CALLS, baseline=name == "Boom(3 args)")
    assert benchmark(BUILDS[name], CALLS) == CALLS
