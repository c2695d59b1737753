"""The closed path of a guarded ``async def``, per await, next to a bare await and aiobreaker.

A round is many awaits inside one event loop: on asyncio a loop created once per module
(entering it costs some 8 us, under 1 ns an await), on trio one ``trio.run``. So neither
loop start-up nor the harness is what gets measured; ``extra_info["ops"]`` makes the
summary report per await. The target: at most 8x a bare await. None of these coroutines
suspends, so the loop itself is never entered; trio shows our path costs the same on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiobreaker
import circuitbreaker
import pytest

from resilient import CircuitBreaker

from ._subjects import AsyncFn, af, bench_asyncio, bench_trio

SUBJECTS: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": CircuitBreaker()(af),
    "aiobreaker": aiobreaker.CircuitBreaker()(af),
    "circuitbreaker": circuitbreaker.circuit(af),
}


@pytest.mark.benchmark(group="async closed path (asyncio)")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_asyncio_closed_path(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    bench_asyncio(benchmark, loop, SUBJECTS[name], baseline=name == "bare")


@pytest.mark.benchmark(group="async closed path (trio)")
@pytest.mark.parametrize("name", ["bare", "resilient"])
def test_trio_closed_path(benchmark: Any, name: str) -> None:
    bench_trio(benchmark, SUBJECTS[name], baseline=name == "bare")
