"""What every benchmark wraps, and the loops that call it: one copy for every file."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any

Loop = Callable[[int], int]
AsyncFn = Callable[[int], Awaitable[int]]

#: Awaits in one asyncio round, and rounds of our rows (peers may take fewer).
AWAITS = 10_000
ROUNDS = 30
#: trio.run costs about 250 us to start; over 50,000 awaits that is 5 ns each, in every row.
TRIO_AWAITS = 50_000


def f(x: int) -> int:
    return x


async def af(x: int) -> int:
    return x


def wraps_passthrough(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The least any ``*args, **kwargs`` wrapper costs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def calls(fn: Callable[[int], int]) -> Loop:
    """``n`` calls of ``fn(1)``; returns the last result, for the smoke run to check."""

    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = fn(1)
        return result

    return loop


def call_form(policy: Any) -> Loop:
    """``n`` calls of ``policy.call(f, 1)``."""

    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = policy.call(f, 1)
        return result

    return loop


async def awaits(fn: AsyncFn, n: int) -> int:
    """``n`` awaits of ``fn(1)``; returns the last result, for the smoke run to check."""
    result = 0
    for _ in range(n):
        result = await fn(1)
    return result


def bench_asyncio(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    fn: AsyncFn,
    *,
    baseline: bool,
    rounds: int = ROUNDS,
) -> None:
    """Time rounds of :data:`AWAITS` awaits of ``fn`` in ``loop``, reported per await."""
    benchmark.extra_info.update(ops=AWAITS, baseline=baseline)
    result = benchmark.pedantic(
        lambda: loop.run_until_complete(awaits(fn, AWAITS)), rounds=rounds, warmup_rounds=1
    )
    assert result == 1


def bench_trio(benchmark: Any, fn: AsyncFn, *, baseline: bool) -> None:
    """Time rounds of :data:`TRIO_AWAITS` awaits of ``fn`` in one ``trio.run`` each."""
    import trio

    benchmark.extra_info.update(ops=TRIO_AWAITS, baseline=baseline)
    result = benchmark.pedantic(
        trio.run, args=(awaits, fn, TRIO_AWAITS), rounds=ROUNDS // 2, warmup_rounds=1
    )
    assert result == 1


class Boom(Exception):
    """The baseline's exception: a plain subclass, raised fresh each time."""


def flaky(x: int) -> int:
    """Fails for a negative argument, so that one call can trip a breaker."""
    if x < 0:
        raise ValueError(x)
    return x


def raises(n: int) -> int:
    """``n`` bare raise-and-catch; returns how many were caught, for the smoke run."""
    caught = 0
    for _ in repeat(None, n):
        try:
            raise Boom()
        except Boom:
            caught += 1
    return caught


def rejections(guarded: Callable[[int], int], error: type[Exception]) -> Loop:
    """``n`` calls that must be rejected; returns how many were."""

    def loop(n: int) -> int:
        caught = 0
        for _ in repeat(None, n):
            try:
                guarded(1)
            except error:
                caught += 1
        return caught

    return loop


def locked_breaker(**options: Any) -> Any:
    """A CircuitBreaker on the locked window a free-threaded build would give it."""
    from unittest import mock

    from resilient import CircuitBreaker
    from resilient._core.state import window

    with mock.patch.object(window, "LOCK_FREE", False):
        breaker = CircuitBreaker(**options)
    assert type(breaker._state.window) is window.LockedCountWindow
    return breaker
