"""An adversarial review of the fleet (issue 15): docs/fleet.md's claims against a real
redis-server (tests/redis_server.py). A claim that held is a plain test; so is each bug
found (a cancelled asyncio probe kept its permit, every asyncio.run leaked a client, a
name with a newline was never told by message), now fixed.

Each ``RedisBackend`` has its own connections, worker threads and subscription, so
several backends on one URL stand for several processes. Backends get ``timeout=2.0``
(a loaded machine's round trip) except where a fault is the point.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import resilient.redis as fleet
from resilient import CircuitBreaker, CircuitOpenError, ConfigError, RateLimiter, State
from resilient.redis import RedisBackend
from tests.fleet_helpers import PAST_SPELL, SMALL, SPELL, ok, trip, wait_until
from tests.redis_server import Blackhole, DelayProxy, RedisServer

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
ONE: dict[str, Any] = {**SMALL, "half_open_calls": 1}


def away_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "resilient.fleet"
        and r.levelno == logging.WARNING
        and "Redis is away" in r.getMessage()
    )


class Backends:
    """Backends standing for processes, all closed after the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[RedisBackend] = []

    def __call__(self, url: str | None = None, **options: Any) -> RedisBackend:
        options.setdefault("timeout", 2.0)
        backend = RedisBackend(url or self.url, **options)
        self.made.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.made:
            backend.close()
        self.made.clear()


@pytest.fixture
def backends(redis_flushed: RedisServer) -> Iterator[Backends]:
    made = Backends(redis_flushed.url)
    yield made
    made.close()


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Redis must never be found away here (the fleet's guarantees hold only then)."""
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    yield caplog
    assert away_lines(caplog) == 0


@pytest.fixture
def no_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' periodic read paused: what reaches a backend comes by message."""
    monkeypatch.setattr(fleet, "REFRESH", 3600.0)


@pytest.fixture
def looker(redis_flushed: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_flushed.url, socket_timeout=5.0)
    yield client
    client.close()


def probe_until_admitted(breaker: CircuitBreaker, seconds: float) -> str | None:
    """Calls ``ok`` through ``breaker`` until one is admitted (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return breaker.call(ok)
        except CircuitOpenError:
            time.sleep(0.05)
    return None


# -- bugs found, now fixed -------------------------------------------------------------


def test_a_cancelled_asyncio_probe_gives_its_permit_back(
    backends: Backends, redis_flushed: RedisServer, looker: redis.Redis
) -> None:
    # The probing process's Redis answers 0.4 s late (within its timeout of 2 s): its
    # probe request reaches the server at once, the permit comes back late, and the
    # task is cancelled meanwhile (an asyncio.wait_for, a client's timeout...).
    with DelayProxy(redis_flushed.port, delay=0.4) as proxy:
        here = backends()
        slow = backends(proxy.url)
        options = {**SMALL, "open_for": SPELL, "half_open_calls": 1}
        mine = CircuitBreaker("cancelled", backend=here, **options)
        theirs = CircuitBreaker("cancelled", backend=slow, **options)
        trip(mine)
        wait_until(lambda: theirs.state is OPEN, "the trip told")
        time.sleep(PAST_SPELL)
        key = "resilient:{cancelled}:breaker"

        async def ok_async() -> str:
            return "ok"

        async def main() -> None:
            task = asyncio.ensure_future(theirs.call_async(ok_async))
            deadline = time.monotonic() + 10.0
            while looker.hget(key, "probes") != b"1":  # the script ran; its answer is held
                assert time.monotonic() < deadline
                assert not task.done()
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.5)  # (the answer arrives on a closed connection)
            await slow.aclose()

        try:
            asyncio.run(main())
            # The permit the cancelled task was given is back: another process probes.
            assert probe_until_admitted(mine, 2.0) == "ok"
        finally:
            slow.close()  # (before its proxy goes)


def test_the_async_client_of_a_finished_event_loop_is_released(
    redis_flushed: RedisServer,
) -> None:
    backend = RedisBackend(redis_flushed.url, timeout=2.0)
    limiter = RateLimiter(1000, name="loops", burst=1000, backend=backend)

    async def one() -> None:
        await limiter.call_async(asyncio.sleep, 0)

    try:
        for _ in range(3):
            asyncio.run(one())
        gc.collect()
        assert len(backend._by_loop) == 0
    finally:
        with warnings.catch_warnings():  # the leaked connections close (and warn) here
            warnings.simplefilter("ignore")
            backend._by_loop.clear()
            gc.collect()
        backend.close()


def test_a_name_with_a_newline_is_refused_with_a_backend(backends: Backends) -> None:
    """The change message is newline-separated: a name with a control character would
    never be told by message, so it is refused (with a backend only)."""
    with pytest.raises(ConfigError, match="control characters"):
        CircuitBreaker("pay\nments", backend=backends(), **SMALL)
    CircuitBreaker("pay\nments", **SMALL)  # (local: fine)


# -- claims that held ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a:b", "with space", "x" * 300, "trailing:"])
def test_odd_names_are_told_by_message(
    backends: Backends, quiet: pytest.LogCaptureFixture, no_refresh: None, name: str
) -> None:
    a = CircuitBreaker(name, backend=backends(), **SMALL, open_for=60.0)
    b = CircuitBreaker(name, backend=backends(), **SMALL, open_for=60.0)
    trip(a)
    wait_until(lambda: b.state is OPEN, "the trip told", timeout=3.0)


def race_for_permits(breakers: list[CircuitBreaker], callers: int, passing: bool) -> int:
    """``callers`` threads call at once through ``breakers`` (round robin), each probe
    held until every caller is answered; the number of probes that ran."""
    ran: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()
    release = threading.Event()
    start = threading.Barrier(callers)

    def probe(i: int) -> str:
        with lock:
            ran.append(i)
        release.wait(10.0)
        if not passing:
            raise ValueError("still down")
        return "ok"

    def caller(i: int) -> None:
        try:
            start.wait(10.0)
            breakers[i % len(breakers)].call(probe, i)
        except CircuitOpenError:
            with lock:
                refused.append(i)
        except ValueError:
            pass

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(ran) + len(refused) == callers, "all answered", 10.0)
    finally:
        release.set()
        for thread in threads:
            thread.join(10.0)
    assert not any(thread.is_alive() for thread in threads)
    return len(ran)


def test_exactly_half_open_calls_under_a_tiny_switch_interval(
    backends: Backends, quiet: pytest.LogCaptureFixture, looker: redis.Redis
) -> None:
    """3 processes x 5 threads race for 2 permits with the GIL switched every µs; two
    spells in a row (the first's probes fail, the second's pass)."""
    processes, callers, permits = 3, 15, 2
    breakers = [
        CircuitBreaker(
            "race", backend=backends(), **SMALL, open_for=SPELL, half_open_calls=permits
        )
        for _ in range(processes)
    ]
    trip(breakers[0])
    wait_until(lambda: all(b.state is OPEN for b in breakers), "every process OPEN")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for passing, want in ((False, OPEN), (True, CLOSED)):
            time.sleep(PAST_SPELL)
            assert race_for_permits(breakers, callers, passing) == permits
            wait_until(lambda want=want: all(b.state is want for b in breakers), f"{want}")
    finally:
        sys.setswitchinterval(old)
    assert looker.hget("resilient:{race}:breaker", "state") == b"closed"


@pytest.mark.parametrize("how", ["ignored", "base_exception"])
def test_a_probe_that_counts_as_nothing_gives_its_permit_back_fleet_wide(
    backends: Backends, quiet: pytest.LogCaptureFixture, how: str
) -> None:
    class Interrupt(BaseException):
        pass

    options = {**SMALL, "open_for": SPELL, "half_open_calls": 1, "ignore": KeyError}
    a = CircuitBreaker("given-back", backend=backends(), **options)
    b = CircuitBreaker("given-back", backend=backends(), **options)
    trip(a)
    wait_until(lambda: b.state is OPEN, "the trip told")
    time.sleep(PAST_SPELL)
    error: BaseException = KeyError("ignored") if how == "ignored" else Interrupt()

    def neither() -> None:
        raise error

    with pytest.raises(type(error)):
        a.call(neither)
    assert probe_until_admitted(b, 3.0) == "ok"  # the permit came back; b's probe closes
    wait_until(lambda: a.state is CLOSED and b.state is CLOSED, "closed fleet-wide")


def test_two_prefixes_on_one_server_do_not_meet(
    backends: Backends, quiet: pytest.LogCaptureFixture, looker: redis.Redis
) -> None:
    one = CircuitBreaker("shared-name", backend=backends(prefix="one"), **SMALL, open_for=60.0)
    two = CircuitBreaker("shared-name", backend=backends(prefix="two"), **SMALL, open_for=60.0)
    one_too = CircuitBreaker("shared-name", backend=backends(prefix="one"), **SMALL, open_for=60.0)
    trip(one)
    wait_until(lambda: one_too.state is OPEN, "the trip told on prefix one")
    time.sleep(1.3)  # past a refresh of every worker
    assert two.state is CLOSED
    assert looker.exists("two:{shared-name}:breaker") == 0
    assert looker.hget("one:{shared-name}:breaker", "state") == b"open"


def test_health_with_a_black_holed_redis_is_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resilient

    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.2)
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    with Blackhole() as hole:
        backend = RedisBackend(f"redis://127.0.0.1:{hole.port}/0", timeout=0.05)
        try:
            breaker = CircuitBreaker("holed", backend=backend, **SMALL)
            for _ in range(3):
                time.sleep(0.25)  # past the back-off: health() asks Redis again
                started = time.monotonic()
                report = breaker._health()
                whole = resilient.health()
                assert time.monotonic() - started < 2.0  # (about two timeouts)
                assert report["fleet"]["shared"] is False
                assert report["fleet"]["history"] == []
                assert whole is not None
            assert away_lines(caplog) == 1
        finally:
            backend.close()


def test_open_for_that_raises_still_lets_the_fleet_probe(
    backends: Backends, quiet: pytest.LogCaptureFixture
) -> None:
    calls = [0]

    def flaky(times: int) -> float:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("open_for is broken")
        return SPELL

    a = CircuitBreaker("flaky-open-for", backend=backends(), **ONE, open_for=SPELL)
    b = CircuitBreaker("flaky-open-for", backend=backends(), **ONE, open_for=flaky)
    trip(a)
    wait_until(lambda: b.state is OPEN, "the trip told")
    time.sleep(PAST_SPELL)
    assert b.call(ok) == "ok"  # its adoption of half_open calls the broken open_for
    wait_until(lambda: a.state is CLOSED and b.state is CLOSED, "closed fleet-wide")
