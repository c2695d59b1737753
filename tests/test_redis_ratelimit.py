"""RateLimiter(backend=...): the fleet's GCRA wired into the limiter, against our own
redis-server (tests/redis_server.py), nothing faked.

Two limiters with two backends stand for two processes: each backend has its own
connections, and only the server's key joins them. Budgets are spread over an hour
(``per=3600``), so no call earns a turn back while a test runs: counts are exact, and
each refusal's ``retry_after`` is the server's, nearly a whole interval. Outages are a
killed server of the test's own; the back-off before Redis is tried again is shortened
(``RETRY_AFTER``) so recovery takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio

import resilient
import resilient.redis as fleet
from resilient import ConfigError, RateLimitedError, RateLimiter
from resilient.redis import RedisBackend
from tests.redis_server import RedisServer

HOUR = 3600.0


def outcomes(limiters: list[RateLimiter], calls: int) -> list[float]:
    """``calls`` acquisitions taking turns over ``limiters``: 0.0 for each admitted, the
    refusal's retry_after for each refused."""
    got = []
    for i in range(calls):
        try:
            limiters[i % len(limiters)].acquire()
            got.append(0.0)
        except RateLimitedError as refused:
            got.append(refused.retry_after)
    return got


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A server of this test's own, to kill; Redis tried again 0.2 s after a failure."""
    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.2)
    with RedisServer() as server:
        yield server


def fleet_warnings(caplog: pytest.LogCaptureFixture, says: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "resilient.fleet" and r.levelno == logging.WARNING and says in r.message
    )


def test_two_processes_share_one_budget(redis_flushed: RedisServer) -> None:
    a = RateLimiter(5, HOUR, name="shared", backend=RedisBackend(redis_flushed.url))
    b = RateLimiter(5, HOUR, name="shared", backend=RedisBackend(redis_flushed.url))
    got = outcomes([a, b], 10)
    assert got[:5] == [0.0] * 5  # the burst of 5, fleet-wide: not 5 each
    interval = HOUR / 5
    assert all(interval - 10 < wait <= interval for wait in got[5:]), got
    assert a.metrics.rejected + b.metrics.rejected == 5
    other = RateLimiter(5, HOUR, name="other", backend=RedisBackend(redis_flushed.url))
    assert outcomes([other], 5) == [0.0] * 5  # one key per name


def test_a_refusal_carries_the_servers_retry_after(redis_flushed: RedisServer) -> None:
    backend = RedisBackend(redis_flushed.url)
    limiter = RateLimiter(2, HOUR, burst=1, name="exact", backend=backend)
    limiter.acquire()
    with pytest.raises(RateLimitedError) as refused:
        limiter.acquire()
    asked = backend.gcra("exact", HOUR / 2, 0.0)  # the same question, a moment later
    assert not asked.admitted
    assert 0.0 <= refused.value.retry_after - asked.retry_after < 5.0
    assert refused.value.name == "exact"
    assert limiter.try_acquire() is False
    assert limiter.metrics.rejected == 2


def test_a_call_allowed_to_wait_sleeps_the_servers_wait_and_goes(
    redis_flushed: RedisServer,
) -> None:
    a = RateLimiter(10, 1.0, burst=1, max_wait=5.0, name="paced", backend=redis_flushed.url)
    started = time.monotonic()
    for _ in range(3):
        a.acquire()
    assert time.monotonic() - started >= 0.15  # the server spaced them 0.1 s apart
    b = RateLimiter(1, HOUR, max_wait=60.0, name="hourly", backend=redis_flushed.url)
    b.acquire()
    with pytest.raises(RateLimitedError, match=r"beyond max_wait=60s") as refused:
        b.acquire()  # its turn is an hour off: beyond its max_wait, refused at once
    assert HOUR - 10 < refused.value.retry_after <= HOUR


def test_the_environment_switches_a_named_limiter_to_the_fleet(
    redis_flushed: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = "RESILIENT_FLEET_ENV_RATE_LIMITER_BACKEND"
    local = RateLimiter(3, HOUR, name="fleet-env")
    assert local._plan.fleet is None
    monkeypatch.setenv(variable, redis_flushed.url)
    monkeypatch.setenv("RESILIENT_FLEET_ENV_RATE_LIMITER_FLEET_SIZE", "3")
    resilient.reload()  # the limiter made before the variable follows it
    assert local.settings.sources["backend"] == variable
    assert local.settings["fleet_size"] == 3
    made = RateLimiter(3, HOUR, name="fleet-env")  # and one made after it
    other = RateLimiter(3, HOUR, name="fleet-env", backend=RedisBackend(redis_flushed.url))
    assert outcomes([local, made, other], 6)[:3] == [0.0] * 3
    assert local.metrics.rejected + made.metrics.rejected + other.metrics.rejected == 3
    assert "backend=RedisBackend('redis://127.0.0.1" in repr(made)
    monkeypatch.delenv(variable)
    resilient.reload()
    assert local._plan.fleet is None  # back to this process alone


def test_a_backend_is_checked_early(redis_flushed: RedisServer) -> None:
    with pytest.raises(ConfigError, match=r"backend=.*a named RateLimiter"):
        RateLimiter(5, backend=redis_flushed.url)
    with pytest.raises(ConfigError, match="backend='http://x' is invalid"):
        RateLimiter(5, name="bad-url", backend="http://x")
    with pytest.raises(ConfigError, match="backend=42 is invalid"):
        RateLimiter(5, name="bad-type", backend=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fleet_size=0 is invalid"):
        RateLimiter(5, name="bad-size", fleet_size=0)
    with pytest.raises(ConfigError, match="name="):
        RateLimiter(5, name="a{b}", backend=redis_flushed.url)


def test_while_redis_is_away_each_process_admits_its_share(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    backend = RedisBackend(own_server.url)
    limiter = RateLimiter(10, HOUR, name="share", fleet_size=5, backend=backend)
    assert outcomes([limiter], 3) == [0.0] * 3  # Redis decides: 3 of the fleet's 10
    own_server.kill()
    got = outcomes([limiter], 6)  # the local share: 10 / 5 = 2 an hour, a burst of 2
    assert got[:2] == [0.0, 0.0]
    share_interval = HOUR / 2
    assert all(share_interval - 10 < wait <= share_interval for wait in got[2:]), got
    assert fleet_warnings(caplog, "Redis is away") == 1
    started = time.monotonic()
    outcomes([limiter], 20)  # within the back-off: Redis is not tried (0.05 s a try)
    assert time.monotonic() - started < 0.5
    time.sleep(0.25)  # past the back-off, still down: tried, failed, not told again
    outcomes([limiter], 3)
    assert fleet_warnings(caplog, "Redis is away") == 1
    own_server.start()  # empty: a fresh fleet budget
    time.sleep(0.25)
    assert outcomes([limiter], 10) == [0.0] * 10  # Redis decides again: the whole 10
    assert fleet_warnings(caplog, "Redis answers again") == 1
    assert fleet_warnings(caplog, "Redis is away") == 1
    backend.close()


def test_asyncio_calls_share_the_fleet_and_fall_back(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resilient.fleet")

    async def main() -> None:
        one, two = RedisBackend(own_server.url), RedisBackend(own_server.url)
        a = RateLimiter(4, HOUR, name="tasks", fleet_size=2, backend=one)
        b = RateLimiter(4, HOUR, name="tasks", fleet_size=2, backend=two)

        @a
        async def work(i: int) -> int:
            await asyncio.sleep(0)
            return i

        results = await asyncio.gather(
            *(work(i) for i in range(3)), b.acquire_async(), return_exceptions=True
        )
        assert results == [0, 1, 2, None]
        with pytest.raises(RateLimitedError) as refused:
            await b.acquire_async()
        assert HOUR / 4 - 10 < refused.value.retry_after <= HOUR / 4
        own_server.kill()
        got = await asyncio.gather(*(work(i) for i in range(4)), return_exceptions=True)
        refusals = [e for e in got if isinstance(e, RateLimitedError)]
        assert len(refusals) == 2  # the share: 4 / 2, whichever tasks failed over first
        assert all(HOUR / 2 - 10 < e.retry_after <= HOUR / 2 for e in refusals)
        own_server.start()
        await asyncio.sleep(0.25)
        assert await work(7) == 7
        await one.aclose()
        await two.aclose()

    asyncio.run(main())
    assert fleet_warnings(caplog, "Redis is away") == 1
    assert fleet_warnings(caplog, "Redis answers again") == 1


def on_trio(limiter: RateLimiter, calls: int) -> list[bool]:
    """``calls`` acquisitions in a trio task, each admitted or refused."""

    async def main() -> list[bool]:
        got = []
        for _ in range(calls):
            try:
                await limiter.acquire_async()
                got.append(True)
            except RateLimitedError:
                got.append(False)
        return got

    return anyio.run(main, backend="trio")


def test_on_trio_async_calls_share_the_fleet_through_a_thread(
    redis_flushed: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """trio cannot run redis.asyncio: a task there asks the fleet through the sync client
    in a worker thread, and shares the fleet's budget (not the local share)."""
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    backend = RedisBackend(redis_flushed.url)
    limiter = RateLimiter(6, HOUR, name="on-trio", fleet_size=3, backend=backend)
    other = RateLimiter(
        6, HOUR, name="on-trio", fleet_size=3, backend=RedisBackend(redis_flushed.url)
    )
    assert [other.try_acquire() for _ in range(2)] == [True, True]  # another process's

    assert on_trio(limiter, 6) == [True] * 4 + [False] * 2  # the fleet's 6
    assert fleet_warnings(caplog, "") == 0
    assert not backend.gcra("on-trio", HOUR / 6, 5 * HOUR / 6).admitted  # all spent
    backend.close()
    other._plan.fleet.backend.close()  # type: ignore[union-attr]


def test_on_trio_a_redis_asyncio_client_given_leaves_the_local_share(
    redis_flushed: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a redis.asyncio client given cannot be used from trio: the local share,
    told once."""
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    backend = RedisBackend(redis.asyncio.Redis.from_url(redis_flushed.url))
    limiter = RateLimiter(6, HOUR, name="on-trio-async", fleet_size=3, backend=backend)

    assert on_trio(limiter, 4) == [True, True, False, False]  # 6 / 3
    assert fleet_warnings(caplog, "trio") == 1


def test_without_a_backend_nothing_of_redis_is_loaded() -> None:
    code = (
        "import sys, resilient\n"
        "limiter = resilient.RateLimiter(3, name='alone')\n"
        "limiter.acquire(); limiter.try_acquire()\n"
        "assert limiter._plan.fleet is None and limiter._admit(limiter._plan) is None\n"
        "print(sorted(m for m in sys.modules if 'redis' in m))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_health_shows_whether_the_limit_is_shared(redis_flushed: RedisServer) -> None:
    backend = RedisBackend(redis_flushed.url)
    limiter = RateLimiter(6, HOUR, name="healthy", fleet_size=3, backend=backend)
    (found,) = resilient.health(names=["healthy"])["policies"]
    fleet_part = found["fleet"]
    assert fleet_part == {"backend": repr(backend), "shared": True, "fleet_size": 3}
    assert "fleet" not in RateLimiter(6, name="alone")._health()
    assert limiter.try_acquire()
    backend.close()
