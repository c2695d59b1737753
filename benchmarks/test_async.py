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
import trio

from resilient import CircuitBreaker

from ._subjects import AsyncFn, af, awaits

AWAITS = 10_000
# trio.run costs about 250 us to start; over 50,000 awaits that is 5 ns each, in every row.
TRIO_AWAITS = 50_000
ROUNDS = 30

SUBJECTS: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": CircuitBreaker()(af),
    "aiobreaker": aiobreaker.CircuitBreaker()(af),
    "circuitbreaker": circuitbreaker.circuit(af),
}


@pytest.mark.benchmark(group="async closed path (asyncio)")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_asyncio_closed_path(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    fn = SUBJECTS[name]
    benchmark.extra_info.update(ops=AWAITS, baseline=name == "bare")
    result = benchmark.pedantic(
        lambda: loop.run_until_complete(awaits(fn, AWAITS)), rounds=ROUNDS, warmup_rounds=1
    )
    assert result == 1


@pytest.mark.benchmark(group="async closed path (trio)")
@pytest.mark.parametrize("name", ["bare", "resilient"])
def test_trio_closed_path(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=TRIO_AWAITS, baseline=name == "bare")
    result = benchmark.pedantic(
        trio.run, args=(awaits, SUBJECTS[name], TRIO_AWAITS), rounds=ROUNDS // 2, warmup_rounds=1
    )
    assert result == 1
