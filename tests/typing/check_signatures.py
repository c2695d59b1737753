"""Checked by mypy --strict, never run: decorated callables keep their types."""

from __future__ import annotations

from typing_extensions import assert_type

from resilient import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Pipeline,
    Policy,
    RateLimiter,
    Retry,
    Timeout,
    backoff,
)

breaker = CircuitBreaker("typing")
timed = CircuitBreaker("t", window_type="time", window_size=0.5, slow_call_duration=0.1)


class Ticks:
    def monotonic(self) -> float:
        return 0.0


ticking = CircuitBreaker(clock=Ticks())


@breaker
def add(a: int, b: int = 0) -> int:
    return a + b


@breaker
async def fetch(url: str) -> bytes:
    return url.encode()


class Client:
    @breaker
    def get(self, path: str) -> str:
        return path

    @classmethod
    @breaker
    def build(cls, name: str) -> Client:
        return cls()

    @breaker
    @staticmethod
    def version() -> int:
        return 1


async def use() -> None:
    assert_type(add(1, b=2), int)
    assert_type(await fetch("x"), bytes)
    assert_type(Client().get("/"), str)
    assert_type(Client.build("n"), Client)
    assert_type(Client.version(), int)
    assert_type(breaker.call(add, 1, 2), int)
    assert_type(await breaker.call_async(fetch, "u"), bytes)
    add("1")  # type: ignore[arg-type]
    breaker.call(add, "1")  # type: ignore[arg-type]
    with breaker:
        pass
    async with breaker:
        pass


retry = Retry(3, wait=backoff.exponential(), on=(ConnectionError, TimeoutError))


def tenacity_strategies() -> None:
    """tenacity's strategies are typed parameters too, with no Any in the signature."""
    import tenacity

    Retry(
        wait=tenacity.wait_exponential() + tenacity.wait_random(0, 1),
        on=tenacity.retry_if_exception_type(OSError),
        stop=tenacity.stop_after_delay(10) | tenacity.stop_after_attempt(5),
    )
    Retry(wait=lambda attempt, exc: 0.1 * attempt, on=lambda exc: isinstance(exc, OSError))
    Retry(wait="250ms", stop=lambda state: False)
    Retry(wait=object())  # type: ignore[arg-type]
    Retry(stop=3)  # type: ignore[arg-type]


fallback = Fallback(0)


@retry
def compute(a: int) -> int:
    return a


@fallback
@retry
async def acompute(a: int) -> int:
    return a


async def use_retry() -> None:
    assert_type(compute(1), int)
    assert_type(await acompute(1), int)
    assert_type(retry.call(compute, 2), int)
    assert_type(await retry.call_async(acompute, 2), int)
    compute("x")  # type: ignore[arg-type]
    for attempt in retry:
        with attempt:
            pass
    async for attempt in retry:
        with attempt:
            pass


timeout = Timeout(2.5, name="typing")
bulkhead = Bulkhead(4, max_wait=0.5)
limiter = RateLimiter(50, burst=5, max_wait=0.1, name="typing")
pipeline = Pipeline(bulkhead, Timeout(10), retry, breaker, timeout)


@pipeline
def through(a: int, *, b: str = "") -> float:
    return float(a)


@timeout
@bulkhead
@limiter
async def athrough(a: int) -> bytes:
    return b""


async def use_pipeline() -> None:
    assert_type(through(1, b="x"), float)
    assert_type(await athrough(1), bytes)
    assert_type(pipeline.call(through, 1), float)
    assert_type(await pipeline.call_async(athrough, 1), bytes)
    assert_type(timeout.metrics.expired, int)
    assert_type(bulkhead.metrics.in_use, int)
    assert_type(limiter.metrics.available, int)
    assert_type(limiter(through)(1, b="y"), float)
    with limiter:
        pass
    through("1")  # type: ignore[arg-type]
    with bulkhead, timeout:
        pass
    async with pipeline:
        pass


def shapes() -> None:
    """Durations as the environment writes them, or a timedelta; lists of exception
    types; and the wrong shapes still refused by the type checker."""
    from datetime import timedelta

    Timeout("250ms")
    Timeout(timedelta(seconds=2), name="t")
    Retry(max_wait="1m", deadline=timedelta(minutes=1))
    Bulkhead(10, max_wait="250ms")
    CircuitBreaker(open_for="30s", record=[ConnectionError, TimeoutError], ignore=[KeyError])
    Fallback(0, on=[KeyError, ValueError])
    backoff.exponential(base="100ms", cap=timedelta(seconds=30))
    Timeout(2, "payments")  # type: ignore[call-arg]
    Retry(3, "payments")  # type: ignore[call-arg]
    Bulkhead(10, "payments")  # type: ignore[call-arg]
    RateLimiter(100, "1s", burst=10, max_wait="250ms")
    RateLimiter(100, 1, 10)  # type: ignore[call-arg]
    RateLimiter("100")  # type: ignore[arg-type]
    Retry(attempts="3")  # type: ignore[arg-type]
    CircuitBreaker(5)  # type: ignore[arg-type]
    CircuitBreaker(fail_max=5)  # type: ignore[call-arg]
    Retry(timeout=10)  # type: ignore[call-arg]
    Timeout()  # type: ignore[call-arg]
    CircuitBreaker(record=[ConnectionError, "x"])  # type: ignore[list-item]


# Pipeline takes any Policy: each resilient policy, a Pipeline, and nothing else.
every: list[Policy] = [breaker, retry, fallback, timeout, bulkhead, pipeline]
named = Pipeline(*every, name="typing")


def plain_decorator(fn: object) -> object:
    return fn


Pipeline(retry, plain_decorator)  # type: ignore[arg-type]
Pipeline(retry, 3)  # type: ignore[arg-type]
Pipeline(retry, name=3)  # type: ignore[arg-type]
