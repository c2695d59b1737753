"""Fault injection switched off, or at rate 0: what shipping it in production code costs.

Every subject guards the same ``f`` or ``af``. Off (the default) and on at rate 0, an
injector's state is ``fast``, so the driver does what it does for a CLOSED breaker: one
attribute read before the call and one call of the state's ``passed`` after it. Rows:
a bare call (the baseline), a CLOSED ``CircuitBreaker`` for reference, ``InjectFault``
off and at rate 0, ``InjectLatency`` off; and, to show what switching it on costs, an
``InjectLatency`` on at rate 0.001 with a ManualClock (a draw per call, and a rare
injected wait that takes no real time). Target: off and rate 0 within a few ns of a
CLOSED breaker, so "about a bare call" as far as any guard is.

Rounds are as in test_sync.py (``CALLS`` direct calls in a loop) and test_async.py
(``AWAITS`` awaits in one asyncio loop); the summary reports per call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import CircuitBreaker, InjectFault, InjectLatency
from resilient.testing import ManualClock

from ._subjects import AsyncFn, Loop, af, bench_asyncio, calls, f

CALLS = 1000


def _subjects(fn: Any) -> dict[str, Any]:
    return {
        "bare": fn,
        "CircuitBreaker (CLOSED)": CircuitBreaker()(fn),
        "InjectFault off": InjectFault(ConnectionError)(fn),
        "InjectFault rate 0": InjectFault(ConnectionError, enabled=True, rate=0)(fn),
        "InjectLatency off": InjectLatency(1.0)(fn),
        "InjectLatency on, rate 0.001": InjectLatency(
            1e-9, enabled=True, rate=0.001, seed=1, clock=ManualClock()
        )(fn),
    }


SYNC: dict[str, Loop] = {name: calls(fn) for name, fn in _subjects(f).items()}


@pytest.mark.benchmark(group="fault injection off (sync)")
@pytest.mark.parametrize("name", list(SYNC))
def test_sync_fault_injection_off(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare")
    assert benchmark(SYNC[name], CALLS) == 1


ASYNCIO: dict[str, AsyncFn] = _subjects(af)


@pytest.mark.benchmark(group="fault injection off (asyncio)")
@pytest.mark.parametrize("name", list(ASYNCIO))
def test_asyncio_fault_injection_off(
    benchmark: Any, loop: asyncio.AbstractEventLoop, name: str
) -> None:
    bench_asyncio(benchmark, loop, ASYNCIO[name], baseline=name == "bare")
