"""Retry: the success path (first attempt succeeds), sync and async, and one retry cycle.

Every sync subject wraps the same ``f``, every async one the same ``af``, each with three
attempts at most, so what differs is the wrapper's own cost. Targets: the success path of
``@Retry(attempts=3)`` at most 15x a bare call, and at most 10x a bare await.

As in test_sync.py, a sync round is ``CALLS`` direct calls ``fn(1)`` in a loop, so that the
harness adds nothing to the ratios; as in test_async.py, an async round is ``AWAITS``
awaits inside one event loop created once per module. Every row of a group makes as many
calls a round, so pytest-benchmark's own table compares like with like; the async peers,
which take some 30 us an await, only run fewer rounds.

The retry cycle (a call whose first attempt fails and whose second succeeds, with no wait)
is informational. tenacity, stamina and backoff all call ``time.sleep(0)`` for a zero
wait, which takes some 80 us on Linux; ours does not sleep at all. So the group also has
``time.sleep(0)`` on its own, and tenacity with a no-op ``sleep=`` to show its own cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from itertools import cycle, repeat
from typing import Any

import backoff
import pytest
import stamina
import stamina.instrumentation
import tenacity

from resilient import Retry

from ._subjects import (
    ROUNDS,
    AsyncFn,
    Loop,
    af,
    bench_asyncio,
    call_form,
    calls,
    f,
    wraps_passthrough,
)

CALLS = 1000
PEER_ROUNDS = 10  # and for the peers, whose rounds take some 300 ms
CYCLES = 200  # retry cycles a round: the peers' take some 130 us each


def block_form(retry: Retry) -> Loop:
    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            for attempt in retry:
                with attempt:
                    result = f(1)
        return result

    return loop


# -- the success path, sync --------------------------------------------------------------

SYNC: dict[str, Loop] = {
    "bare": calls(f),
    "functools.wraps": calls(wraps_passthrough(f)),
    "resilient": calls(Retry(attempts=3)(f)),
    # Our other forms, and a tenacity strategy as `on`, for reference; the target is
    # about @Retry with its own options.
    "resilient-call": call_form(Retry(attempts=3)),
    "resilient-for_attempt": block_form(Retry(attempts=3)),
    "resilient-on_tenacity": calls(
        Retry(attempts=3, on=tenacity.retry_if_exception_type(Exception))(f)
    ),
    "tenacity": calls(tenacity.retry(stop=tenacity.stop_after_attempt(3))(f)),
    "stamina": calls(stamina.retry(on=Exception, attempts=3)(f)),
    "backoff": calls(backoff.on_exception(backoff.expo, Exception, max_tries=3)(f)),
}


@pytest.mark.benchmark(group="retry success path (sync)")
@pytest.mark.parametrize("name", list(SYNC))
def test_retry_success_path(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare")
    assert benchmark(SYNC[name], CALLS) == 1


# -- the success path, async -------------------------------------------------------------


ASYNC: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": Retry(attempts=3)(af),
    "tenacity": tenacity.retry(stop=tenacity.stop_after_attempt(3))(af),
    "stamina": stamina.retry(on=Exception, attempts=3)(af),
    "backoff": backoff.on_exception(backoff.expo, Exception, max_tries=3)(af),
}


@pytest.mark.benchmark(group="retry success path (asyncio)")
@pytest.mark.parametrize("name", list(ASYNC))
def test_async_retry_success_path(
    benchmark: Any, loop: asyncio.AbstractEventLoop, name: str
) -> None:
    rounds = ROUNDS if name in ("bare", "resilient") else PEER_ROUNDS
    bench_asyncio(benchmark, loop, ASYNC[name], baseline=name == "bare", rounds=rounds)


# -- one retry cycle (informational) -----------------------------------------------------


class Flaky(Exception):
    """What the first attempt of every call raises."""


def fails_every_other() -> Callable[[int], int]:
    """A fresh ``f`` that fails on its 1st, 3rd, 5th... call: each retried call fails once."""
    fails = cycle((True, False)).__next__

    def flaky(x: int) -> int:
        if fails():
            raise Flaky(x)
        return x

    return flaky


def by_hand(flaky: Callable[[int], int]) -> Loop:
    """The baseline: the same two attempts, retried by hand."""

    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            try:
                result = flaky(1)
            except Flaky:
                result = flaky(1)
        return result

    return loop


def sleeps(n: int) -> int:
    """What every peer pays on top for a zero wait: ``time.sleep(0)``."""
    for _ in repeat(None, n):
        time.sleep(0)
    return 1


def _no_sleep(seconds: float) -> None:
    return None


CYCLE: dict[str, Loop] = {
    "bare try/except": by_hand(fails_every_other()),
    "resilient": calls(Retry(attempts=3, wait=0)(fails_every_other())),
    "tenacity": calls(tenacity.retry(stop=tenacity.stop_after_attempt(3))(fails_every_other())),
    "tenacity-no_op_sleep": calls(
        tenacity.retry(stop=tenacity.stop_after_attempt(3), sleep=_no_sleep)(fails_every_other())
    ),
    "stamina": calls(
        stamina.retry(on=Exception, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)(
            fails_every_other()
        )
    ),
    "backoff": calls(
        backoff.on_exception(backoff.constant, Exception, max_tries=3, interval=0, jitter=None)(
            fails_every_other()
        )
    ),
    "time.sleep(0)": sleeps,
}


@pytest.fixture
def stamina_quiet() -> Iterator[None]:
    """stamina logs a warning on every retry by default (structlog, prometheus if found):
    switched off, so that every subject does the same work, and restored after."""
    stamina.instrumentation.set_on_retry_hooks([])
    yield
    stamina.instrumentation.set_on_retry_hooks(None)


@pytest.mark.benchmark(group="retry: one failure, then success (informational)")
@pytest.mark.parametrize("name", list(CYCLE))
@pytest.mark.usefixtures("stamina_quiet")
def test_retry_cycle(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CYCLES, baseline=name == "bare try/except")
    assert benchmark(CYCLE[name], CYCLES) == 1
