"""RateLimiter: an admitted call and a refused one, next to a bare call, a CLOSED breaker
and the peers that limit a rate in memory.

Admitted: every limiter is set so high that no call of the run is ever refused (ours:
``RateLimiter(1_000_000, per=0.001, burst=1_000_000)``, a billion calls a second, so the
caller stays below the rate and never eats into the burst; checked after the run). The
targets: at most 15x a bare call, and at most 1.5x a CLOSED ``@CircuitBreaker()``. The
peers: ``limits``' three in-memory strategies (``hit()`` in a decorator that raises when it
says no), pyresilience's ``@resilient(rate_limiter=...)`` and its ``RateLimiter.acquire()``
alone in such a decorator, and on asyncio hyx's ``@tokenbucket`` (async only) and
pyresilience's async decorator.

Refused: the limiter already spent (ours: one call a second, burst 1, on a ManualClock that
never moves), against a bare raise-and-catch, since every refusal raises; only the peers
that refuse at once rather than wait.

Rounds as in test_sync.py and test_async.py (sync: ``CALLS`` calls in a loop, async:
``AWAITS`` awaits in one loop, trio: one ``trio.run``); sync rounds are timed with a setup
that empties ``limits``' storage before each, so its moving window (a list of every hit in
the window, each new one inserted at the front) never holds more than one round's hits.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import hyx.ratelimit
import limits
import pyresilience
import pytest
from limits.storage import MemoryStorage
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

from resilient import CircuitBreaker, RateLimitedError, RateLimiter
from resilient.testing import ManualClock

from ._subjects import (
    AWAITS,
    ROUNDS,
    AsyncFn,
    Boom,
    Loop,
    af,
    bench_asyncio,
    bench_trio,
    call_form,
    calls,
    f,
    raises,
    rejections,
    wraps_passthrough,
)

CALLS = 1000
#: Sync rounds of ``CALLS`` calls (fixed, not calibrated: each round may need a setup).
SYNC_ROUNDS = 300


class Refused(Exception):
    """What a decorator around a peer that answers False raises."""


def admitted() -> RateLimiter:
    return RateLimiter(1_000_000, per=0.001, burst=1_000_000)


def spent(clock: ManualClock | None) -> RateLimiter:
    """One call a second (an hour on the system clock), burst 1, its one call made."""
    limiter = RateLimiter(1, per=1.0 if clock else 3600.0, burst=1, clock=clock)
    limiter.call(f, 1)
    return limiter


def gated(allow: Callable[[], bool]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorator a user writes around a limiter that answers True or False."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not allow():
                raise Refused
            return fn(*args, **kwargs)

        return wrapper

    return decorate


@dataclass(frozen=True)
class Subject:
    run: Loop
    setup: Callable[[], None] | None = None  # before each round, untimed
    check: Callable[[], None] | None = None  # after the run


def ours(limiter: RateLimiter, run: Loop) -> Subject:
    """Ours, checked after the run: no call refused."""

    def check() -> None:
        assert limiter.metrics.rejected == 0, limiter.metrics

    return Subject(run, check=check)


def limits_admitted() -> dict[str, Subject]:
    """Each in-memory strategy's ``hit(item, "f")`` in :func:`gated` around ``f``, at a
    billion hits a second, its storage emptied before each round."""
    subjects = {}
    for name, strategy in STRATEGIES.items():
        storage = MemoryStorage()
        hit = functools.partial(strategy(storage).hit, PER_SECOND, "f")
        subjects[name] = Subject(calls(gated(hit)(f)), setup=emptying(storage))
    return subjects


def emptying(storage: MemoryStorage) -> Callable[[], None]:
    """A setup that empties ``storage`` (returning None: pedantic would take what
    ``reset()`` returns for the arguments)."""

    def setup() -> None:
        storage.reset()

    return setup


def limits_spent() -> dict[str, Subject]:
    """Each in-memory strategy at one hit an hour, its one hit made."""
    subjects = {}
    for name, strategy in STRATEGIES.items():
        hit = functools.partial(strategy(MemoryStorage()).hit, HOURLY, "f")
        subjects[name] = Subject(rejections(used(gated(hit)(f)), Refused))
    return subjects


def used(guarded: Callable[[int], int]) -> Callable[[int], int]:
    """``guarded`` after its one admitted call."""
    assert guarded(1) == 1
    return guarded


def pyresilience_decorated(max_calls: int, period: float) -> Callable[..., Any]:
    config = pyresilience.RateLimiterConfig(max_calls=max_calls, period=period)
    return pyresilience.resilient(rate_limiter=config)  # type: ignore[no-any-return]


def pyresilience_acquire(max_calls: int, period: float) -> Callable[[int], int]:
    config = pyresilience.RateLimiterConfig(max_calls=max_calls, period=period)
    return gated(pyresilience.RateLimiter(config).acquire)(f)


def bench_sync(benchmark: Any, subject: Subject, *, baseline: bool, result: int) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=baseline)
    got = benchmark.pedantic(
        subject.run, args=(CALLS,), setup=subject.setup, rounds=SYNC_ROUNDS, warmup_rounds=1
    )
    assert got == result
    if subject.check is not None:
        subject.check()


# -- sync, admitted -------------------------------------------------------------------------

PER_SECOND = limits.RateLimitItemPerSecond(10**9)
HOURLY = limits.RateLimitItemPerHour(1)
STRATEGIES: dict[str, type[limits.strategies.RateLimiter]] = {
    "limits FixedWindow": FixedWindowRateLimiter,
    "limits MovingWindow": MovingWindowRateLimiter,
    "limits SlidingWindowCounter": SlidingWindowCounterRateLimiter,
}

SYNC: dict[str, Subject] = {
    "bare": Subject(calls(f)),
    "functools.wraps": Subject(calls(wraps_passthrough(f))),
    "resilient CircuitBreaker()": Subject(calls(CircuitBreaker()(f))),
    "resilient RateLimiter": ours(limiter := admitted(), calls(limiter(f))),
    **limits_admitted(),
    "pyresilience @resilient": Subject(calls(pyresilience_decorated(10**6, 0.001)(f))),
    "pyresilience RateLimiter.acquire": Subject(calls(pyresilience_acquire(10**6, 0.001))),
    # Our other form, for reference; the targets are about the decorator.
    "resilient RateLimiter.call": ours(limiter := admitted(), call_form(limiter)),
}


@pytest.mark.benchmark(group="rate limiter, admitted (sync)")
@pytest.mark.parametrize("name", list(SYNC))
def test_sync_admitted(benchmark: Any, name: str) -> None:
    bench_sync(benchmark, SYNC[name], baseline=name == "bare", result=1)


# -- sync, refused --------------------------------------------------------------------------

REFUSED: dict[str, Subject] = {
    "bare raise-catch": Subject(raises),
    "resilient RateLimiter": Subject(rejections(spent(ManualClock())(f), RateLimitedError)),
    # The same on the system clock (one call an hour): a C call to read it, not a method.
    "resilient RateLimiter, system clock": Subject(rejections(spent(None)(f), RateLimitedError)),
    **limits_spent(),
    "pyresilience @resilient": Subject(
        rejections(used(pyresilience_decorated(1, 3600)(f)), pyresilience.RateLimitExceededError)
    ),
    "pyresilience RateLimiter.acquire": Subject(
        rejections(used(pyresilience_acquire(1, 3600)), Refused)
    ),
}


@pytest.mark.benchmark(group="rate limiter, refused (sync)")
@pytest.mark.parametrize("name", list(REFUSED))
def test_sync_refused(benchmark: Any, name: str) -> None:
    bench_sync(benchmark, REFUSED[name], baseline=name == "bare raise-catch", result=CALLS)


# -- async ----------------------------------------------------------------------------------
# hyx's limiter takes the running loop when it is made: each subject is made in the loop.

Make = Callable[[], Awaitable[AsyncFn]]


async def made(fn: AsyncFn) -> AsyncFn:
    return fn


async def hyx_tokenbucket(max_executions: float, per: float, bucket: float) -> AsyncFn:
    return hyx.ratelimit.tokenbucket(max_executions, per, bucket)(af)  # type: ignore[no-any-return]


ADMITTED_LIMITER = admitted()

ASYNCIO: dict[str, Make] = {
    "bare": lambda: made(af),
    "resilient CircuitBreaker()": lambda: made(CircuitBreaker()(af)),
    "resilient RateLimiter": lambda: made(ADMITTED_LIMITER(af)),
    "hyx @tokenbucket": lambda: hyx_tokenbucket(10**6, 0.001, 10**6),
    "pyresilience @resilient": lambda: made(pyresilience_decorated(10**6, 0.001)(af)),
}


@pytest.mark.benchmark(group="rate limiter, admitted (asyncio)")
@pytest.mark.parametrize("name", list(ASYNCIO))
def test_asyncio_admitted(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    fn = loop.run_until_complete(ASYNCIO[name]())
    bench_asyncio(benchmark, loop, fn, baseline=name == "bare")
    assert ADMITTED_LIMITER.metrics.rejected == 0


TRIO: dict[str, AsyncFn] = {
    "bare": af,
    "resilient CircuitBreaker()": CircuitBreaker()(af),
    "resilient RateLimiter": ADMITTED_LIMITER(af),
}


@pytest.mark.benchmark(group="rate limiter, admitted (trio)")
@pytest.mark.parametrize("name", list(TRIO))
def test_trio_admitted(benchmark: Any, name: str) -> None:
    bench_trio(benchmark, TRIO[name], baseline=name == "bare")
    assert ADMITTED_LIMITER.metrics.rejected == 0


async def boom(x: int) -> int:
    raise Boom()


async def refusals(fn: AsyncFn, error: type[Exception], n: int) -> int:
    """``n`` awaits of ``fn(1)`` that must be refused; returns how many were."""
    caught = 0
    for _ in repeat(None, n):
        try:
            await fn(1)
        except error:
            caught += 1
    return caught


async def spent_async(fn: Awaitable[AsyncFn]) -> AsyncFn:
    """The limited ``fn`` after its one admitted await."""
    limited = await fn
    assert await limited(1) == 1
    return limited


REFUSED_ASYNC: dict[str, tuple[Make, type[Exception]]] = {
    "bare raise-catch": (lambda: made(boom), Boom),
    "resilient RateLimiter": (
        lambda: spent_async(made(RateLimiter(1, burst=1, clock=ManualClock())(af))),
        RateLimitedError,
    ),
    "hyx @tokenbucket": (
        lambda: spent_async(hyx_tokenbucket(1, 3600, 1)),
        hyx.ratelimit.exceptions.RateLimitExceeded,
    ),
    "pyresilience @resilient": (
        lambda: spent_async(made(pyresilience_decorated(1, 3600)(af))),
        pyresilience.RateLimitExceededError,
    ),
}


@pytest.mark.benchmark(group="rate limiter, refused (asyncio)")
@pytest.mark.parametrize("name", list(REFUSED_ASYNC))
def test_asyncio_refused(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    make, error = REFUSED_ASYNC[name]
    fn = loop.run_until_complete(make())
    benchmark.extra_info.update(ops=AWAITS, baseline=name == "bare raise-catch")
    caught = benchmark.pedantic(
        lambda: loop.run_until_complete(refusals(fn, error, AWAITS)),
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    assert caught == AWAITS
