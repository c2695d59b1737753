"""Hedge: an ``async def`` that answers well before its delay, per await, on each loop.

Every subject awaits the same ``af``; the Hedge's delay (10 s) never passes, so what
differs is what arming and disarming its alarm costs: ``@Hedge(10)`` next to a bare await
and to ``@Timeout(10)`` (which needs a timer too: the target is at most its cost on
asyncio), plus ``asyncio.timeout(10)`` for reference, and a Hedge whose delay is a
percentile (``"p95"``, known: it also records each call's latency). Rounds as in
test_timeout.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import Hedge, Timeout

from ._subjects import AsyncFn, af, bench_asyncio, bench_trio

LIMIT = 10.0


async def asyncio_timeout(x: int) -> int:
    async with asyncio.timeout(LIMIT):
        return await af(x)


def percentile() -> AsyncFn:
    """A p95 Hedge whose percentile is known (min_calls latencies recorded) and far off."""
    hedge = Hedge("p95", min_calls=1, window=1000, min_delay=LIMIT)
    hedged = hedge(af)
    asyncio.run(hedged(1))
    assert hedge.delay == LIMIT
    return hedged


ASYNCIO: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": Hedge(LIMIT)(af),
    "resilient-p95": percentile(),
    "Timeout": Timeout(LIMIT)(af),
    "asyncio.timeout": asyncio_timeout,
}
if not hasattr(asyncio, "timeout"):  # Python 3.10
    del ASYNCIO["asyncio.timeout"]


@pytest.mark.benchmark(group="hedge, answered before the delay (asyncio)")
@pytest.mark.parametrize("name", list(ASYNCIO))
def test_asyncio_hedge(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    bench_asyncio(benchmark, loop, ASYNCIO[name], baseline=name == "bare")


TRIO: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": Hedge(LIMIT)(af),
    "Timeout": Timeout(LIMIT)(af),
}


@pytest.mark.benchmark(group="hedge, answered before the delay (trio)")
@pytest.mark.parametrize("name", list(TRIO))
def test_trio_hedge(benchmark: Any, name: str) -> None:
    bench_trio(benchmark, TRIO[name], baseline=name == "bare")
