"""RateLimiter on Redis (``backend=RedisBackend(url)``): an admitted call and a refused
one, next to a bare ``PING`` round trip (the floor: the target is about one round trip),
``limits``' Redis moving and fixed windows, and a bare call for reference.

One redis-server of our own for the module (tests/redis_server.py: skipped, or failed with
``CI_REQUIRE_REDIS=1``, where the binary is missing), on a free port of 127.0.0.1, nothing
saved to disk. Every row's calls go to it over TCP on the loopback, one round trip each
(ours: ``EVALSHA`` of the fleet's GCRA; ``limits``: ``EVALSHA`` of its own Lua scripts).

Groups of their own ("rate limiter on Redis, ..."): in test_ratelimit.py's, a round trip
would dwarf every in-memory row. Each group's baseline, what the ratios printed after the
run divide by, is the round trip: ``PING`` by a redis-py client with its defaults (a ``PING`` and a
raise-and-catch for the refused calls). Also for reference: our GCRA script by
``EVALSHA`` on a plain client, the call less resilient's Python. Every client is
redis-py's as installed; without ``hiredis`` its parser is pure Python, and a reply of
four values (ours) costs more to parse than ``+PONG``.

Admitted: every limiter is set so high that no call of the run is ever refused (ours:
``RateLimiter(1_000_000, per=0.001, burst=1_000_000)``, a billion calls a second, the
most its options allow; ``limits``: a billion hits a second). One call of each is made
and checked before the timing. Refused: each limiter already spent (ours: one call an
hour, burst 1; ``limits``: one hit an hour), against a bare raise-and-catch.

A limiter on a backend falls back to its local share when Redis fails (a timeout, say),
silently for the caller; a row timed on that path would measure no round trip at all.
So after each run of ours the server's own count of ``EVALSHA`` calls must match the
calls made: every one asked Redis. The backend's timeout is 1 s rather than its default
50 ms, so a stall of the shared machine cannot send a call to the local share; the
timeout is a socket option, the same cost per call whatever its value.

This machine's speed drifts between rows timed one after another by more than the
differences to be measured, so each Redis row also runs a round of its group's baseline
before its first round and after each one (as test_httpx.py does, in
``extra_info["paired"]``); the summary gives what the row adds to a round trip from those
interleaved rounds (conftest.py, ``_paired``), the "added" columns.

Rounds are shorter than test_ratelimit.py's (``CALLS`` calls, or ``AWAITS`` awaits, a
round): a round trip costs hundreds of times what an in-memory decision does. ``limits``'
key is deleted before each round (untimed), as test_ratelimit.py empties its storage, so
its moving window (a Redis list of every hit in the window) never holds more than one
round's hits.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
import pytest
import redis
import redis.asyncio
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from resilient import RateLimitedError, RateLimiter
from resilient.redis import GCRA_SCRIPT, RedisBackend
from tests.redis_server import RedisServer

from ._subjects import AsyncFn, Boom, Loop, af, awaits, call_form, calls, f, raises, rejections

#: Calls in a sync round, awaits in an asyncio round, and rounds of each row.
CALLS = 100
AWAITS = 100
ROUNDS = 100
WARMUP = 1
#: Seconds per Redis operation for our backend (its default: 0.05), see above.
TIMEOUT = 1.0

PER_SECOND = limits.RateLimitItemPerSecond(10**9)
HOURLY = limits.RateLimitItemPerHour(1)
HOUR = 3600.0

#: Names of our limiters: each its own key in Redis.
_names = (f"bench-{n}" for n in count())


class Refused(Exception):
    """What a decorator around a peer that answers False raises."""


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


def gated_async(allow: Callable[[], Awaitable[bool]]) -> Callable[[AsyncFn], AsyncFn]:
    """:func:`gated` for ``async def``, around an async limiter."""

    def decorate(fn: AsyncFn) -> AsyncFn:
        @functools.wraps(fn)
        async def wrapper(x: int) -> int:
            if not await allow():
                raise Refused
            return await fn(x)

        return wrapper

    return decorate


# -- the server and the clients on it -------------------------------------------------------


@dataclass
class Fleet:
    """The module's redis-server, and what the rows make on it (closed at the end)."""

    server: RedisServer
    loop: asyncio.AbstractEventLoop
    #: For the checks (INFO), never timed.
    admin: redis.Redis = field(init=False)
    backend: RedisBackend = field(init=False)
    #: The baselines' clients: one each, for their rows and the paired rounds alike.
    pinger: redis.Redis = field(init=False)
    pinger_async: redis.asyncio.Redis = field(init=False)
    closing: list[Callable[[], Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = self.sync_client()
        self.backend = RedisBackend(self.server.url, timeout=TIMEOUT)
        self.pinger = self.sync_client()
        self.pinger_async = self.async_client()
        # Cached on the server from the start: no EVALSHA of ours ever fails (NOSCRIPT),
        # so the server's count of them is the count of our calls that asked it.
        self.admin.script_load(GCRA_SCRIPT)

    @property
    def url(self) -> str:
        return self.server.url

    def sync_client(self) -> redis.Redis:
        client = redis.Redis.from_url(self.url)
        self.closing.append(client.close)
        return client

    def async_client(self) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(self.url)
        self.closing.append(lambda: self.loop.run_until_complete(client.aclose()))
        return client

    def limits_storage(self) -> RedisStorage:
        storage = RedisStorage(self.url)
        self.closing.append(storage.storage.close)
        return storage

    def limits_storage_async(self) -> limits.aio.storage.RedisStorage:
        """limits' asyncio storage on redis-py's redis.asyncio (its default is coredis)."""
        storage = limits.aio.storage.RedisStorage("async+" + self.url, implementation="redispy")
        bridge = storage.bridge
        assert isinstance(bridge, RedispyBridge)
        client: redis.asyncio.Redis = bridge.storage
        self.closing.append(lambda: self.loop.run_until_complete(client.aclose()))
        return storage

    def evalsha(self) -> int:
        """How many EVALSHA the server has run, by its own count."""
        stats = self.admin.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0))

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.aclose())
        self.backend.close()
        for close in reversed(self.closing):
            close()


@pytest.fixture(scope="module")
def fleet(loop: asyncio.AbstractEventLoop) -> Iterator[Fleet]:
    with RedisServer() as server:
        fleet = Fleet(server, loop)
        try:
            yield fleet
        finally:
            fleet.close()


# -- the subjects ---------------------------------------------------------------------------


@dataclass
class Subject:
    """A row: ``run(n)`` makes ``n`` calls; ``setup`` runs before each round, untimed;
    ``check(made)`` after the run, given how many calls the rounds made."""

    run: Loop
    setup: Callable[[], None] | None = None
    check: Callable[[int], None] | None = None


Make = Callable[[Fleet], Subject]


def ours_admitted(fleet: Fleet, call: Callable[[RateLimiter], Loop]) -> Subject:
    limiter = RateLimiter(
        1_000_000, per=0.001, burst=1_000_000, name=next(_names), backend=fleet.backend
    )
    run = call(limiter)
    before = fleet.evalsha()
    assert run(1) == 1
    assert fleet.evalsha() == before + 1, "the call did not ask Redis"
    return Subject(run, check=asked(fleet, limiter, before + 1, rejected=False))


def ours_refused(fleet: Fleet) -> Subject:
    """One call an hour, burst 1, its one call made: every call after it refused."""
    limiter = RateLimiter(1, per=HOUR, burst=1, name=next(_names), backend=fleet.backend)
    before = fleet.evalsha()
    assert limiter.call(f, 1) == 1
    assert fleet.evalsha() == before + 1, "the call did not ask Redis"
    run = rejections(limiter(f), RateLimitedError)
    assert run(1) == 1
    return Subject(run, check=asked(fleet, limiter, before + 2, rejected=True))


def asked(
    fleet: Fleet, limiter: RateLimiter, before: int, *, rejected: bool
) -> Callable[[int], None]:
    """The check after a run of ours: each call asked Redis, and was admitted (or refused)."""
    refusals = limiter.metrics.rejected

    def check(made: int) -> None:
        assert fleet.evalsha() - before == made, "calls answered locally, not by Redis"
        assert limiter.metrics.rejected - refusals == (made if rejected else 0), limiter.metrics

    return check


def limits_sync(strategy: type[limits.strategies.RateLimiter], item: limits.RateLimitItem) -> Make:
    """``hit(item, key)`` of a strategy on limits' RedisStorage in :func:`gated` around
    ``f``, its first hit made (and admitted); at a billion hits a second, its key deleted
    before each round."""

    def make(fleet: Fleet) -> Subject:
        limiter = strategy(fleet.limits_storage())
        key = next(_names)  # (each row its own: the strategies' values differ in type)
        guarded = gated(functools.partial(limiter.hit, item, key))(f)
        assert guarded(1) == 1
        if item is HOURLY:  # spent
            return Subject(rejections(guarded, Refused))

        def setup() -> None:
            limiter.clear(item, key)

        return Subject(calls(guarded), setup=setup)

    return make


def pinged(client: redis.Redis) -> Callable[[int], int]:
    def ping(x: int) -> int:
        client.ping()
        return x

    return ping


def evalsha(fleet: Fleet) -> Subject:
    """Our script run bare, by a plain client: the round trip less our Python."""
    client = fleet.sync_client()
    sha = client.script_load(GCRA_SCRIPT)
    key = fleet.backend.key(next(_names), "gcra")
    interval, tolerance = 1e-9, 999_999 * 1e-9  # (seconds) as our admitted rows'
    args = repr(interval * 1e6), repr(tolerance * 1e6)

    def run(x: int) -> int:
        client.evalsha(sha, 1, key, *args)
        return x

    assert run(1) == 1
    return Subject(calls(run))


def bench(
    benchmark: Any,
    run: Callable[[], int],
    *,
    ops: int,
    setup: Callable[[], None] | None,
    baseline: bool,
    paired: Callable[[], object] | None,
) -> int:
    """Time ``ROUNDS`` rounds of ``run()``, reported per op; with ``paired`` (a round of
    the group's baseline), that round timed before the first and after each too."""
    benchmark.extra_info.update(ops=ops, baseline=baseline, added=baseline)
    times: list[float] = []

    def between(*_: object) -> None:
        assert paired is not None
        start = time.perf_counter()
        paired()
        times.append(time.perf_counter() - start)

    teardown = None
    if paired is not None and not benchmark.disabled:
        between()
        teardown = between
    result: int = benchmark.pedantic(
        run, setup=setup, teardown=teardown, rounds=ROUNDS, warmup_rounds=WARMUP
    )
    if times:
        benchmark.extra_info["paired"] = times
    return result


def bench_sync(
    benchmark: Any, subject: Subject, *, baseline: bool, paired: Loop | None, result: int
) -> None:
    made = 0

    def run() -> int:
        nonlocal made
        made += CALLS
        return subject.run(CALLS)

    between = None if paired is None else functools.partial(paired, CALLS)
    got = bench(benchmark, run, ops=CALLS, setup=subject.setup, baseline=baseline, paired=between)
    assert got == result
    if subject.check is not None:
        subject.check(made)


# -- sync, admitted -------------------------------------------------------------------------

SYNC: dict[str, Make] = {
    "bare": lambda fleet: Subject(calls(f)),
    "redis PING": lambda fleet: Subject(calls(pinged(fleet.pinger))),
    # Our script's round trip, for reference: what the call costs less resilient's Python.
    "redis EVALSHA (the GCRA script)": evalsha,
    "resilient RateLimiter": lambda fleet: ours_admitted(fleet, lambda limiter: calls(limiter(f))),
    "resilient RateLimiter.call": lambda fleet: ours_admitted(fleet, call_form),
    "limits MovingWindow": limits_sync(MovingWindowRateLimiter, PER_SECOND),
    "limits FixedWindow": limits_sync(FixedWindowRateLimiter, PER_SECOND),
}
#: Rows without a round trip: no baseline rounds between theirs.
LOCAL = ("bare", "bare raise-catch")


@pytest.mark.benchmark(group="rate limiter on Redis, admitted (sync)")
@pytest.mark.parametrize("name", list(SYNC))
def test_sync_admitted(benchmark: Any, fleet: Fleet, name: str) -> None:
    base = "redis PING"
    paired = None if name in (base, *LOCAL) else calls(pinged(fleet.pinger))
    subject = SYNC[name](fleet)
    bench_sync(benchmark, subject, baseline=name == base, paired=paired, result=1)


# -- sync, refused --------------------------------------------------------------------------


def ping_raises(client: redis.Redis) -> Loop:
    """A round trip, then a raise-and-catch: the least a refusal from Redis costs."""
    ping = pinged(client)

    def refused(x: int) -> int:
        ping(x)
        raise Boom()

    return rejections(refused, Boom)


REFUSED: dict[str, Make] = {
    "bare raise-catch": lambda fleet: Subject(raises),
    "redis PING, raise-catch": lambda fleet: Subject(ping_raises(fleet.pinger)),
    "resilient RateLimiter": ours_refused,
    "limits MovingWindow": limits_sync(MovingWindowRateLimiter, HOURLY),
    "limits FixedWindow": limits_sync(FixedWindowRateLimiter, HOURLY),
}


@pytest.mark.benchmark(group="rate limiter on Redis, refused (sync)")
@pytest.mark.parametrize("name", list(REFUSED))
def test_sync_refused(benchmark: Any, fleet: Fleet, name: str) -> None:
    base = "redis PING, raise-catch"
    paired = None if name in (base, *LOCAL) else ping_raises(fleet.pinger)
    subject = REFUSED[name](fleet)
    bench_sync(benchmark, subject, baseline=name == base, paired=paired, result=CALLS)


# -- asyncio, admitted ----------------------------------------------------------------------
# Every client's connections belong to the module's loop: each subject is made in it.


@dataclass
class AsyncSubject:
    """An asyncio row: awaits of ``fn``; ``setup`` before each round (untimed, run in the
    loop), ``check(made)`` after the run."""

    fn: AsyncFn
    setup: Callable[[], Awaitable[None]] | None = None
    check: Callable[[int], None] | None = None


MakeAsync = Callable[[Fleet], Awaitable[AsyncSubject]]


async def plain(fleet: Fleet) -> AsyncSubject:
    return AsyncSubject(af)


def pinged_async(client: redis.asyncio.Redis) -> AsyncFn:
    async def ping(x: int) -> int:
        await client.ping()
        return x

    return ping


async def ping_async(fleet: Fleet) -> AsyncSubject:
    ping = pinged_async(fleet.pinger_async)
    assert await ping(1) == 1
    return AsyncSubject(ping)


async def ours_async(fleet: Fleet) -> AsyncSubject:
    limiter = RateLimiter(
        1_000_000, per=0.001, burst=1_000_000, name=next(_names), backend=fleet.backend
    )
    limited = limiter(af)
    before = fleet.evalsha()  # (blocking the loop a moment: this is not timed)
    assert await limited(1) == 1
    assert fleet.evalsha() == before + 1, "the call did not ask Redis"
    return AsyncSubject(limited, check=asked(fleet, limiter, before + 1, rejected=False))


def limits_async(strategy: type[limits.aio.strategies.RateLimiter]) -> MakeAsync:
    """:func:`limits_sync` on asyncio: limits' async RedisStorage on redis.asyncio."""

    async def make(fleet: Fleet) -> AsyncSubject:
        limiter = strategy(fleet.limits_storage_async())
        key = next(_names)
        limited = gated_async(functools.partial(limiter.hit, PER_SECOND, key))(af)
        assert await limited(1) == 1

        async def setup() -> None:
            await limiter.clear(PER_SECOND, key)

        return AsyncSubject(limited, setup=setup)

    return make


ASYNCIO: dict[str, MakeAsync] = {
    "bare": plain,
    "redis.asyncio PING": ping_async,
    "resilient RateLimiter": ours_async,
    "limits MovingWindow": limits_async(limits.aio.strategies.MovingWindowRateLimiter),
    "limits FixedWindow": limits_async(limits.aio.strategies.FixedWindowRateLimiter),
}


def awaited(loop: asyncio.AbstractEventLoop, fn: AsyncFn) -> Callable[[], int]:
    """A round: ``AWAITS`` awaits of ``fn(1)`` in one task."""
    return lambda: loop.run_until_complete(awaits(fn, AWAITS))


@pytest.mark.benchmark(group="rate limiter on Redis, admitted (asyncio)")
@pytest.mark.parametrize("name", list(ASYNCIO))
def test_asyncio_admitted(benchmark: Any, fleet: Fleet, name: str) -> None:
    loop, base = fleet.loop, "redis.asyncio PING"
    subject = loop.run_until_complete(ASYNCIO[name](fleet))
    one_round = awaited(loop, subject.fn)
    made = 0

    def run() -> int:
        nonlocal made
        made += AWAITS
        return one_round()

    def setup() -> None:
        assert subject.setup is not None
        loop.run_until_complete(subject.setup())

    paired = None if name in (base, *LOCAL) else awaited(loop, pinged_async(fleet.pinger_async))
    got = bench(
        benchmark,
        run,
        ops=AWAITS,
        setup=setup if subject.setup is not None else None,
        baseline=name == base,
        paired=paired,
    )
    assert got == 1
    if subject.check is not None:
        subject.check(made)
