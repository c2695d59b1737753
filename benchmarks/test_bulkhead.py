"""Bulkhead: the path of a call that finds a free slot, sync and async.

Every subject guards the same ``f`` or ``af`` with room for 10 calls at once, and no call
ever waits (one caller), so what is measured is taking and giving back a slot. Async:
``@Bulkhead(10)`` against a bare await and hyx's ``bulkhead(10, 100)`` (10 at once, 100
queued), and, for reference, ``async with asyncio.Semaphore(10)``, the least an asyncio
limiter can cost. Sync: ``@Bulkhead(10)`` against a bare call, a pass-through wrapper
and ``with threading.BoundedSemaphore(10)``, for reference. Target: ours at most 1/3 of
hyx's cost a call.

Rounds are as in test_async.py (async: ``AWAITS`` awaits in one event loop created once
per module; trio: one ``trio.run`` a round) and test_sync.py (sync: ``CALLS`` direct calls
in a loop); the summary reports per call.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from itertools import repeat
from typing import Any

import hyx.bulkhead
import pytest

from resilient import Bulkhead

from ._subjects import (
    AsyncFn,
    Loop,
    af,
    bench_asyncio,
    bench_trio,
    call_form,
    calls,
    f,
    wraps_passthrough,
)

CALLS = 1000


def semaphore_async(fn: AsyncFn) -> AsyncFn:
    semaphore = asyncio.Semaphore(10)

    @functools.wraps(fn)
    async def limited(x: int) -> int:
        async with semaphore:
            return await fn(x)

    return limited


def semaphore_sync(fn: Callable[[int], int]) -> Callable[[int], int]:
    semaphore = threading.BoundedSemaphore(10)

    @functools.wraps(fn)
    def limited(x: int) -> int:
        with semaphore:
            return fn(x)

    return limited


def with_form(bulkhead: Bulkhead) -> Loop:
    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            with bulkhead:
                result = f(1)
        return result

    return loop


# -- async ---------------------------------------------------------------------------------

ASYNCIO: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": Bulkhead(10)(af),
    "hyx": hyx.bulkhead.bulkhead(10, 100)(af),
    "asyncio.Semaphore": semaphore_async(af),
}


@pytest.mark.benchmark(group="bulkhead, slots free (asyncio)")
@pytest.mark.parametrize("name", list(ASYNCIO))
def test_asyncio_bulkhead(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    bench_asyncio(benchmark, loop, ASYNCIO[name], baseline=name == "bare")


TRIO: dict[str, AsyncFn] = {"bare": af, "resilient": Bulkhead(10)(af)}


@pytest.mark.benchmark(group="bulkhead, slots free (trio)")
@pytest.mark.parametrize("name", list(TRIO))
def test_trio_bulkhead(benchmark: Any, name: str) -> None:
    bench_trio(benchmark, TRIO[name], baseline=name == "bare")


# -- sync ----------------------------------------------------------------------------------

SYNC: dict[str, Loop] = {
    "bare": calls(f),
    "functools.wraps": calls(wraps_passthrough(f)),
    "resilient": calls(Bulkhead(10)(f)),
    "threading.BoundedSemaphore": calls(semaphore_sync(f)),
    # Our other forms, for reference; the target is about @bulkhead.
    "resilient-call": call_form(Bulkhead(10)),
    "resilient-with": with_form(Bulkhead(10)),
}


@pytest.mark.benchmark(group="bulkhead, slots free (sync)")
@pytest.mark.parametrize("name", list(SYNC))
def test_sync_bulkhead(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare")
    assert benchmark(SYNC[name], CALLS) == 1
