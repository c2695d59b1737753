"""CircuitBreaker(backend=...): the fleet's breaker against our own redis-server
(tests/redis_server.py), nothing faked, in one test process.

Each ``RedisBackend`` has its own connections, worker threads and subscription, so
several backends on one URL stand for several processes: only the server joins them
(tests/test_redis_fleet_processes.py runs real processes). A breaker's OPEN spell is on
the server's clock, so the spells here are real and short (0.3 s), and every wait for
the fleet is a bounded poll. The backends of these tests get ``timeout=1.0`` (what a
loaded machine may need for a round trip) except where a fault is the point: the
fleet's guarantees hold while Redis answers within the timeout, and each such test
checks that Redis never went away.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import select
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import redis

import resilient
import resilient.redis as fleet
from resilient import CircuitBreaker, CircuitOpenError, ConfigError, State
from resilient.events import FleetRestored, FleetUnavailable
from resilient.redis import BreakerLink, RedisBackend
from tests.fleet_helpers import PAST_SPELL, SMALL, SPELL, Named, boom, ok, trip, wait_until
from tests.redis_server import Blackhole, DelayProxy, RedisServer

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
FORCED_OPEN, DISABLED = State.FORCED_OPEN, State.DISABLED
DAY_MS = 86_400_000
WHY = "2 of the last 2 calls failed, at or over failure_rate=0.5"
WHY4 = "2 of the last 4 calls failed, at or over failure_rate=0.5"  # (after successes)


def short_then_long(times_opened: int) -> float:
    """open_for: SPELL for the first spell, a minute for a reopened one (so a test
    sees the reopened spell whole)."""
    return SPELL if times_opened == 1 else 60.0


def states(breakers: list[CircuitBreaker]) -> list[State]:
    return [b.state for b in breakers]


def text(mapping: Any) -> dict[str, str]:
    """A reply's hash or stream entry, as text."""
    return {k.decode(): v.decode() for k, v in mapping.items()}


def fleet_lines(caplog: pytest.LogCaptureFixture, says: str, backend: Any = None) -> int:
    """WARNINGs on resilient.fleet saying ``says`` (of ``backend``, if given)."""
    return sum(
        1
        for r in caplog.records
        if r.name == "resilient.fleet"
        and r.levelno == logging.WARNING
        and says in r.getMessage()
        and (backend is None or (isinstance(r.args, tuple) and r.args[:1] == (backend,)))
    )


def fleet_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("resilient-fleet-")]


class Fleet:
    """Backends standing for processes, all closed after the test (together)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backends: list[RedisBackend] = []

    def backend(self, url: str | None = None, **options: Any) -> RedisBackend:
        options.setdefault("timeout", 1.0)
        backend = RedisBackend(url or self.url, **options)
        self.backends.append(backend)
        return backend

    def breakers(self, count: int, name: str, **options: Any) -> list[CircuitBreaker]:
        """``count`` breakers called ``name``, one per new backend (process)."""
        made = {**SMALL, **options}
        return [CircuitBreaker(name, backend=self.backend(), **made) for _ in range(count)]

    def close(self) -> None:
        closing = [threading.Thread(target=b.close) for b in self.backends]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(10.0)
        assert not any(thread.is_alive() for thread in closing), "a backend did not close"
        self.backends.clear()


@pytest.fixture
def fleet_of(redis_flushed: RedisServer) -> Iterator[Fleet]:
    """Backends on the session's server, empty for this test."""
    made = Fleet(redis_flushed.url)
    yield made
    made.close()


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A server of this test's own (to kill, or to count its commands undisturbed);
    Redis tried again 0.2 s after a failure rather than 1 s."""
    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.2)
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_fleet(own_server: RedisServer) -> Iterator[Fleet]:
    made = Fleet(own_server.url)
    yield made
    made.close()


@pytest.fixture
def no_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' periodic read (the backstop for a message missed) paused for the
    backends the test makes: what reaches them comes by message, or not at all."""
    monkeypatch.setattr(fleet, "REFRESH", 3600.0)


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The test's fleet must never find Redis away (its guarantees hold only then)."""
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    yield caplog
    assert fleet_lines(caplog, "Redis is away") == 0


Connect = Callable[[str], redis.Redis]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Clients of the test's own, to look at the server (closed after the test)."""
    made: list[redis.Redis] = []

    def connect(url: str) -> redis.Redis:
        made.append(redis.Redis.from_url(url, socket_timeout=5.0))
        return made[-1]

    yield connect
    for one in made:
        one.close()


def keys(name: str) -> tuple[str, str]:
    return f"resilient:{{{name}}}:breaker", f"resilient:{{{name}}}:history"


def stream(r: redis.Redis, name: str) -> list[dict[str, str]]:
    entries: Any = r.xrange(keys(name)[1])
    return [text(fields) for _, fields in entries]


# -- 1. a trip propagates; the keys; their TTL -------------------------------------------


def test_a_trip_in_one_process_opens_the_breaker_in_every_other(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, no_refresh: None, connect: Connect
) -> None:
    r = connect(fleet_of.url)
    breakers = fleet_of.breakers(4, "trip", open_for=SPELL, half_open_calls=1)
    assert states(breakers) == [CLOSED] * 4
    assert r.exists(*keys("trip")) == 0  # nothing shared before a change
    trip(breakers[0])
    wait_until(lambda: states(breakers) == [OPEN] * 4, "every process OPEN", timeout=2.0)
    who = fleet_of.backends[0].who
    assert who == f"{socket.gethostname()}:{os.getpid()}"
    assert breakers[0].history[-1].reason == WHY  # decided here...
    for breaker in breakers[1:]:  # ...and told by the fleet, naming who decided
        change = breaker.history[-1]
        assert (change.old, change.new, change.times_opened) == (CLOSED, OPEN, 1)
        assert change.reason == f"the fleet: {WHY} (by {who})"
        assert change.until is not None
        assert 0.0 < change.until - change.at <= SPELL + 1e-6
        assert len(breaker.history) == 1
    shared = text(r.hgetall(keys("trip")[0]))
    gen = int(shared["gen"])
    assert (shared["state"], shared["opened"], shared["by"], shared["why"]) == (
        "open",
        "1",
        who,
        WHY,
    )
    assert int(shared["until"]) - int(shared["since"]) == 300  # open_for, to the ms
    assert {b._link.known for b in breakers if b._link is not None} == {gen}
    assert stream(r, "trip") == [
        {
            "from": "closed",
            "to": "open",
            "gen": str(gen),
            "left_ms": "300",
            "opened": "1",
            "by": who,
            "reason": WHY,
        }
    ]
    for key in keys("trip"):  # while OPEN: a day after the spell, at most
        assert DAY_MS - 60_000 < r.pttl(key) <= DAY_MS + 300

    time.sleep(PAST_SPELL)  # the rest of the cycle: half-open, a probe, closed
    assert breakers[2].call(ok) == "ok"
    wait_until(lambda: states(breakers) == [CLOSED] * 4, "every process CLOSED again")
    assert [(e["from"], e["to"], e["reason"]) for e in stream(r, "trip")] == [
        ("closed", "open", WHY),
        ("open", "half_open", "open_for has passed"),
        ("half_open", "closed", "1 of 1 probes succeeded"),
    ]
    shared = text(r.hgetall(keys("trip")[0]))
    assert (shared["state"], shared["opened"], shared["probes"]) == ("closed", "0", "0")
    assert sorted(r.keys("*")) == sorted(k.encode() for k in keys("trip"))
    for key in keys("trip"):  # nothing without a TTL: a day after the last change
        assert DAY_MS - 60_000 < r.pttl(key) <= DAY_MS

    trip(breakers[3])  # a trip after a close is the first of its run, as in one process
    wait_until(lambda: states(breakers) == [OPEN] * 4, "the second trip told")
    assert [b.history[-1].times_opened for b in breakers] == [1] * 4
    assert r.hget(keys("trip")[0], "opened") == b"1"


def test_a_breaker_hears_every_change_made_after_it_is_made(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, no_refresh: None
) -> None:
    """A breaker is made subscribed (RedisBackend.link waits for Redis to confirm it,
    within the timeout): a trip right after it is made reaches it by message."""
    for i in range(5):
        name = f"fresh-{i}"
        tripper = CircuitBreaker(name, backend=fleet_of.backend(), **SMALL, open_for=60.0)
        fresh = CircuitBreaker(name, backend=fleet_of.backend(), **SMALL, open_for=60.0)
        assert fresh.state is CLOSED
        trip(tripper)
        heard = functools.partial(lambda breaker: breaker.state is OPEN, fresh)
        wait_until(heard, f"{name}: the trip heard")


# -- 2. exactly half_open_calls probes fleet-wide ----------------------------------------


@pytest.mark.parametrize("probes_pass", [True, False], ids=["probes-pass", "probes-fail"])
def test_exactly_half_open_calls_probes_run_fleet_wide(
    fleet_of: Fleet,
    quiet: pytest.LogCaptureFixture,
    no_refresh: None,
    probes_pass: bool,
    connect: Connect,
) -> None:
    r = connect(fleet_of.url)
    processes, threads_each, permits = 4, 4, 3
    callers = processes * threads_each
    breakers = fleet_of.breakers(
        processes, "probes", open_for=short_then_long, half_open_calls=permits
    )
    trip(breakers[1])
    wait_until(lambda: states(breakers) == [OPEN] * processes, "every process OPEN")
    time.sleep(PAST_SPELL)

    lock = threading.Lock()
    ran: list[int] = []
    refused: list[CircuitOpenError] = []
    unexpected: list[BaseException] = []
    release = threading.Event()
    start = threading.Barrier(callers)

    def probe(i: int) -> str:
        with lock:
            ran.append(i)
        release.wait(10.0)  # held until every other caller has been answered
        if not probes_pass:
            raise ValueError("still down")
        return "ok"

    def caller(i: int) -> None:
        try:
            start.wait(10.0)
            breakers[i % processes].call(probe, i)
        except CircuitOpenError as error:
            with lock:
                refused.append(error)
        except ValueError:
            pass
        except BaseException as error:  # pragma: no cover - reported below
            unexpected.append(error)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(ran) + len(refused) == callers, "every caller answered", 10.0)
        assert len(ran) == permits  # fleet-wide, whichever processes got them
        assert len(refused) == callers - permits
        assert all(error.state is HALF_OPEN for error in refused)
        assert sum(b.metrics.rejected for b in breakers) == callers - permits
        assert text(r.hgetall(keys("probes")[0]))["probes"] == str(permits)
    finally:
        release.set()
        for worker in workers:
            worker.join(10.0)
    assert not unexpected
    assert not any(worker.is_alive() for worker in workers)

    who = fleet_of.backends[0].who
    if probes_pass:  # the last probe's outcome closes it in every process
        wait_until(lambda: states(breakers) == [CLOSED] * processes, "every process CLOSED")
        why = f"{permits} of {permits} probes succeeded"
        assert text(r.hgetall(keys("probes")[0]))["opened"] == "0"
    else:  # or reopens it everywhere, for open_for(2)
        wait_until(lambda: states(breakers) == [OPEN] * processes, "every process reopened")
        why = f"{permits} of {permits} probes failed, at or over failure_rate=0.5"
        assert [b.history[-1].times_opened for b in breakers] == [2] * processes
        shared = text(r.hgetall(keys("probes")[0]))
        assert (shared["state"], shared["opened"]) == ("open", "2")
        assert int(shared["until"]) - int(shared["since"]) == 60_000
        with pytest.raises(CircuitOpenError) as rejected:
            breakers[3].call(ok)
        assert 50.0 < (rejected.value.retry_after or 0.0) <= 60.0
    for breaker in breakers:
        assert breaker.history[-1].old is HALF_OPEN
        # (a process that ran every probe decided at once, in its own words)
        assert breaker.history[-1].reason in (why, f"the fleet: {why} (by {who})")
    assert stream(r, "probes")[-1]["reason"] == why
    assert len(ran) == permits  # nothing ran since


# -- 3. a process started late -----------------------------------------------------------


@pytest.mark.parametrize("how", ["tripped", "force_open"])
def test_a_breaker_made_late_is_open_before_its_first_call(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, how: str
) -> None:
    first, other = fleet_of.breakers(2, "late", open_for=60.0)
    if how == "tripped":
        trip(first)
        kind, why = OPEN, WHY
    else:
        first.force_open()
        kind, why = FORCED_OPEN, "force_open()"
    wait_until(lambda: other.state is kind, "the fleet changed")
    who = fleet_of.backends[0].who

    late = CircuitBreaker("late", backend=fleet_of.backend(), **SMALL, open_for=60.0)
    assert late.state is kind  # no call, no wait: read as it was made
    assert [(c.old, c.new, c.reason) for c in late.history] == [
        (CLOSED, kind, f"the fleet: {why} (by {who})")
    ]
    assert late._link is not None
    assert [(c["from"], c["to"], c["reason"], c["by"]) for c in late._link.history(10)] == [
        ("closed", kind.value, why, who)
    ]
    ran = []
    with pytest.raises(CircuitOpenError) as rejected:
        late.call(lambda: ran.append(1))
    assert ran == []
    assert rejected.value.state is kind
    if kind is OPEN:  # the fleet's spell, as the server counts it
        assert late.history[-1].times_opened == 1
        assert 50.0 < (rejected.value.retry_after or 0.0) <= 60.0
    else:
        assert rejected.value.retry_after is None


# -- 4. a stale change cannot undo a newer state -----------------------------------------


def test_a_stale_change_cannot_undo_a_newer_state(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, connect: Connect
) -> None:
    r = connect(fleet_of.url)
    a, b = fleet_of.breakers(2, "stale", open_for=60.0)
    # The same two processes hold a second breaker: a marker for the listeners, below.
    mark_a = CircuitBreaker("mark", backend=fleet_of.backends[0], **SMALL)
    mark_b = CircuitBreaker("mark", backend=fleet_of.backends[1], **SMALL)
    trip(a)
    wait_until(lambda: b.state is OPEN, "the trip told")
    old_gen = int(r.hget(keys("stale")[0], "gen") or 0)
    b.reset()
    wait_until(lambda: a.state is CLOSED, "the reset told")
    shared_before = r.hgetall(keys("stale")[0])
    gen = int(shared_before[b"gen"])
    assert gen > old_gen
    length = r.xlen(keys("stale")[1])
    assert a._link is not None
    assert b._link is not None

    # A process that still believes the old generation trips, then reports a probe.
    answer = a._link.run("open", str(old_gen), "60000", "a stale trip")
    assert (answer.state, answer.gen, answer.permit) == ("closed", gen, False)
    answer = a._link.run("probed", str(old_gen), "fail", "1", "0.5", "2", "60000")
    assert (answer.state, answer.gen) == ("closed", gen)
    assert r.hgetall(keys("stale")[0]) == shared_before
    assert r.xlen(keys("stale")[1]) == length

    # A stale message on the channel (a late delivery): heard, and changes nothing.
    stale = "\n".join(["stale", "open", str(old_gen), "60000", "1", "someone", "an old trip"])
    newer = "\n".join(["mark", "forced_open", str(gen + 1), "0", "0", "someone", "a marker"])
    assert r.publish("resilient:changes:0", stale) == 2
    assert r.publish("resilient:changes:0", newer) == 2
    # Each listener hears in order: once the marker is adopted, the stale one was heard.
    wait_until(lambda: mark_a.state is mark_b.state is FORCED_OPEN, "the marker adopted")
    assert (a.state, b.state) == (CLOSED, CLOSED)
    assert a._link.known == b._link.known == gen

    # The current generation is taken, for contrast.
    answer = a._link.run("open", str(gen), "60000", "a current trip")
    assert answer.state == "open"
    assert answer.gen > gen
    wait_until(lambda: a.state is b.state is OPEN, "the current trip told")
    assert b.history[-1].reason == f"the fleet: a current trip (by {a._link.backend.who})"


# -- 5, 6. no Redis on the CLOSED path, none for an OPEN rejection -----------------------


def command_counts(r: redis.Redis) -> collections.Counter[str]:
    stats = r.info("commandstats")
    return collections.Counter(
        {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    )


def commands_during(r: redis.Redis, run: Callable[[], None]) -> tuple[dict[str, int], float]:
    """The server's commands (by name, but INFO) while ``run`` ran, and its seconds."""
    before = command_counts(r)
    started = time.monotonic()
    run()
    took = time.monotonic() - started
    after = command_counts(r)
    after.subtract(before)
    return {k: v for k, v in after.items() if v and k != "info"}, took


def assert_only_refreshes(done: dict[str, int], took: float, backends: int) -> None:
    """Nothing but the workers' refreshes: each a pipelined TIME and one HMGET per
    breaker (one here), once a second per backend. No script: no EVALSHA, no EVAL."""
    refreshes = done.get("time", 0)
    assert done == ({"time": refreshes, "hmget": refreshes} if refreshes else {}), done
    assert refreshes <= backends * (took / fleet.REFRESH + 2)


def test_a_rejection_of_a_fleet_open_breaker_makes_no_redis_command(
    own_fleet: Fleet,
    own_server: RedisServer,
    quiet: pytest.LogCaptureFixture,
    no_refresh: None,
    connect: Connect,
) -> None:
    r = connect(own_server.url)
    breakers = own_fleet.breakers(4, "rejects", open_for=60.0)
    told: list[Any] = []
    breakers[3].add_listener(told.append)  # a listener: every rejection is told (_admit)
    trip(breakers[0])
    wait_until(lambda: states(breakers) == [OPEN] * 4, "every process OPEN")
    calls = 1000

    def reject() -> None:
        for breaker in breakers:
            for _ in range(calls):
                with pytest.raises(CircuitOpenError):
                    breaker.call(ok)

        async def main() -> None:
            for breaker in breakers:
                for _ in range(calls):
                    with pytest.raises(CircuitOpenError):
                        await breaker.call_async(asyncio.sleep, 0)

        asyncio.run(main())

    done, _ = commands_during(r, reject)
    assert done == {}  # not one command (the refresh is paused here: see the next test)
    assert [b.metrics.rejected for b in breakers] == [2 * calls] * 4
    assert sum(type(e).__name__ == "Rejected" for e in told) == 2 * calls
    assert [len(b._by_loop) for b in own_fleet.backends] == [0] * 4  # no async client


def test_the_closed_path_makes_no_redis_command(
    own_fleet: Fleet, own_server: RedisServer, quiet: pytest.LogCaptureFixture, connect: Connect
) -> None:
    r = connect(own_server.url)
    breakers = own_fleet.breakers(4, "closed-path", window_size=100, min_calls=50)
    assert all(b._worker is not None for b in own_fleet.backends)  # the fleet is live
    calls = 1000

    def run() -> None:
        for breaker in breakers:
            for i in range(calls):
                if i % 100 == 0:  # failures that do not trip: 1 in 100
                    with pytest.raises(ValueError, match="down"):
                        breaker.call(boom)
                else:
                    assert breaker.call(ok) == "ok"

        async def main() -> None:
            for breaker in breakers:
                for _ in range(calls):
                    await breaker.call_async(asyncio.sleep, 0)

        asyncio.run(main())

    done, took = commands_during(r, run)
    assert_only_refreshes(done, took, backends=4)
    assert states(breakers) == [CLOSED] * 4
    assert r.exists(*keys("closed-path")) == 0


# -- 7. faults ---------------------------------------------------------------------------


class Costs:
    """Each call timed: the slowest must stay within about the backend's timeout
    (asserted generously: under a second)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.seconds.append(time.monotonic() - started)

    def check(self) -> None:
        assert self.seconds
        assert max(self.seconds) < 1.0, max(self.seconds)


def call_quietly(breaker: CircuitBreaker, fn: Callable[[], Any]) -> Any:
    try:
        return breaker.call(fn)
    except (ValueError, CircuitOpenError) as error:
        return error


def test_redis_killed_then_restarted(
    own_fleet: Fleet, own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    one, two = own_fleet.backend(), own_fleet.backend()
    a = CircuitBreaker("svc", backend=one, **SMALL, open_for=SPELL, half_open_calls=1)
    a_other = CircuitBreaker("other", backend=one, **SMALL)
    b = CircuitBreaker("svc", backend=two, **SMALL, open_for=SPELL, half_open_calls=1)
    heard: dict[str, list[str]] = {"a": [], "a_other": [], "b": []}
    for key, breaker in (("a", a), ("a_other", a_other), ("b", b)):
        breaker.add_listener(
            lambda e, k=key: heard[k].append(type(e).__name__), FleetUnavailable, FleetRestored
        )
    b.force_open()  # a fleet change before the outage: each process knows a generation
    wait_until(lambda: a.state is FORCED_OPEN, "force_open() told")
    b.reset()
    wait_until(lambda: a.state is CLOSED, "reset() told")
    assert a._link is not None
    assert a._link.known > 0
    cost = Costs()
    own_server.kill()
    for _ in range(20):  # calls go on
        for breaker in (a, a_other, b):
            assert cost(breaker.call, ok) == "ok"
    for _ in range(2):  # a local trip still opens, here only
        assert isinstance(cost(call_quietly, a, boom), ValueError)
    assert a.state is OPEN
    wait_until(lambda: one._away is not None and two._away is not None, "the outage noticed")
    assert b.state is CLOSED
    assert cost(b.call, ok) == "ok"
    assert a.history[-1].reason == WHY4
    time.sleep(PAST_SPELL)  # the local spell ends; its probe is admitted and decides here

    def slow_probe() -> str:
        one._retry_at = 0.0  # the back-off over while it ran: yet its spell is this
        return "ok"  # process's own, and its outcome decides here, not in the lost fleet

    assert a.call(slow_probe) == "ok"
    assert a.state is CLOSED
    assert [(c.old, c.new) for c in a.history[-2:]] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    for _ in range(10):  # over several back-offs (0.2 s): the workers try Redis again,
        # failing each time: not told again
        for breaker in (a, a_other, b):
            cost(breaker.call, ok)
        time.sleep(0.05)
    cost.check()
    assert fleet_lines(caplog, "Redis is away", one) == fleet_lines(caplog, "Redis is away", two)
    assert fleet_lines(caplog, "Redis is away") == 2  # one per backend (process)
    assert heard == {
        "a": ["FleetUnavailable"],
        "a_other": ["FleetUnavailable"],
        "b": ["FleetUnavailable"],
    }

    own_server.start()  # empty: no keys, no scripts
    wait_until(lambda: one._away is None and two._away is None, "Redis found again", 5.0)
    wait_until(  # (told just after: the state clears first, then the line and the events)
        lambda: (
            all(fleet_lines(caplog, "Redis answers again", x) for x in (one, two))
            and all(len(events) == 2 for events in heard.values())
        ),
        "the recovery told",
    )
    assert fleet_lines(caplog, "Redis answers again", one) == 1
    assert fleet_lines(caplog, "Redis answers again", two) == 1
    assert all(events == ["FleetUnavailable", "FleetRestored"] for events in heard.values())
    trip(b)  # shared again: a trip propagates
    wait_until(lambda: a.state is OPEN, "the trip told after the restart")
    assert a.history[-1].reason == f"the fleet: {WHY4} (by {two.who})"
    assert a_other.state is CLOSED
    assert fleet_lines(caplog, "Redis is away") == 2


def test_a_black_holed_port_costs_each_call_about_the_timeout(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.2)
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    with Blackhole() as hole:
        url = f"redis://127.0.0.1:{hole.port}/0"
        made = Fleet(url)
        try:
            backend = made.backend(timeout=0.05)
            started = time.monotonic()
            breaker = CircuitBreaker(
                "hole", backend=backend, **SMALL, open_for=SPELL, half_open_calls=1
            )
            assert time.monotonic() - started < 1.0  # the read as it is made: one timeout
            local_calls_decide(breaker, caplog, backend)
        finally:
            made.close()


def test_a_slow_redis_costs_each_call_about_the_timeout(
    redis_flushed: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.2)
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    with DelayProxy(redis_flushed.port, delay=0.3) as proxy:
        made = Fleet(proxy.url)
        try:
            backend = made.backend(timeout=0.05)
            started = time.monotonic()
            breaker = CircuitBreaker(
                "slow", backend=backend, **SMALL, open_for=SPELL, half_open_calls=1
            )
            assert time.monotonic() - started < 1.0
            local_calls_decide(breaker, caplog, backend)
        finally:
            made.close()


def local_calls_decide(
    breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture, backend: RedisBackend
) -> None:
    """Redis never answers in time: calls run, trip and recover on local state (twice,
    so past the back-off Redis is asked again in a probe's way), each within the bound;
    told once."""
    cost = Costs()
    for _ in range(2):
        assert breaker.state is CLOSED
        for _ in range(20):
            assert cost(breaker.call, ok) == "ok"
        for _ in range(2):
            assert isinstance(cost(call_quietly, breaker, boom), ValueError)
        assert breaker.state is OPEN
        assert isinstance(cost(call_quietly, breaker, ok), CircuitOpenError)
        time.sleep(PAST_SPELL)  # longer than the back-off (0.2 s)
        assert cost(breaker.call, ok) == "ok"  # a probe: Redis asked, then local
        assert breaker.state is CLOSED
    cost.check()
    assert backend._away is not None
    assert fleet_lines(caplog, "Redis is away", backend) == 1
    assert fleet_lines(caplog, "Redis answers again") == 0


def test_flushall_mid_run_reinitialises(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, connect: Connect
) -> None:
    r = connect(fleet_of.url)
    breakers = fleet_of.breakers(3, "flushed", open_for=SPELL, half_open_calls=2)
    trip(breakers[0])
    wait_until(lambda: states(breakers) == [OPEN] * 3, "every process OPEN")
    gen = int(r.hget(keys("flushed")[0], "gen") or 0)

    r.flushall()  # while OPEN: the spell runs out; nothing shared: each probes on its own
    time.sleep(PAST_SPELL)
    for breaker in breakers:
        assert breaker.call(ok) == "ok"
        assert breaker.state is HALF_OPEN  # its own spell: 2 probes of its own
        assert breaker.call(ok) == "ok"
        assert breaker.state is CLOSED
    assert r.exists(*keys("flushed")) == 0  # a spell of its own is never shared

    trip(breakers[1])  # the next trip writes the hash afresh, and everyone adopts it
    wait_until(lambda: states(breakers) == [OPEN] * 3, "the fresh trip told")
    shared = text(r.hgetall(keys("flushed")[0]))
    assert (shared["state"], shared["opened"]) == ("open", "1")
    assert int(shared["gen"]) > gen
    assert [e["reason"] for e in stream(r, "flushed")] == [WHY]
    assert all(r.pttl(key) > 0 for key in keys("flushed"))

    breakers[2].reset()  # FLUSHALL while CLOSED: the next trip is taken too
    wait_until(lambda: states(breakers) == [CLOSED] * 3, "the reset told")
    r.flushall()
    trip(breakers[2])
    wait_until(lambda: states(breakers) == [OPEN] * 3, "the trip after the second flush")
    assert [e["reason"] for e in stream(r, "flushed")] == [WHY]


# -- 8. async probes ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_async_probes_get_exactly_half_open_calls_permits(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, no_refresh: None, mode: str
) -> None:
    processes, tasks_each, permits = 4, 8, 3
    tasks = processes * tasks_each
    breakers = fleet_of.breakers(
        processes, f"async-{mode}", open_for=short_then_long, half_open_calls=permits
    )
    trip(breakers[0])
    wait_until(lambda: states(breakers) == [OPEN] * processes, "every process OPEN")
    time.sleep(PAST_SPELL)

    async def main() -> tuple[int, int, list[int]]:
        ran = refused = 0
        release = anyio.Event()

        async def probe() -> str:
            nonlocal ran
            ran += 1
            await release.wait()
            return "ok"

        async def one(breaker: CircuitBreaker) -> None:
            nonlocal refused
            try:
                await breaker.call_async(probe)
            except CircuitOpenError:
                refused += 1

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for i in range(tasks):
                    group.start_soon(one, breakers[i % processes])
                while ran + refused < tasks:
                    await anyio.sleep(0.005)
                counted = ran, refused
                release.set()
            while states(breakers) != [CLOSED] * processes:
                await anyio.sleep(0.005)
        clients = [len(b._by_loop) for b in fleet_of.backends]
        for backend in fleet_of.backends:
            if mode == "asyncio":
                await backend.aclose()
        return (*counted, clients)

    ran, refused, clients = anyio.run(main, backend=mode)
    assert (ran, refused) == (permits, tasks - permits)
    # asyncio: each process asked through redis.asyncio; trio: the sync client, in threads
    assert clients == ([1] * processes if mode == "asyncio" else [0] * processes)
    why = f"{permits} of {permits} probes succeeded"
    told = f"the fleet: {why} (by {fleet_of.backends[0].who})"
    assert {b.history[-1].reason for b in breakers} <= {why, told}  # (see above)


# -- 9. manual control: fleet-wide or local ----------------------------------------------


def test_force_open_and_reset_are_fleet_wide_disable_and_env_pins_stay_local(
    fleet_of: Fleet,
    quiet: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    connect: Connect,
) -> None:
    r = connect(fleet_of.url)
    a, b, c = breakers = fleet_of.breakers(3, "ctl", open_for=60.0)
    who = fleet_of.backends[0].who
    a.force_open()
    wait_until(lambda: states(breakers) == [FORCED_OPEN] * 3, "force_open() told")
    assert c.history[-1].reason == f"the fleet: force_open() (by {who})"
    with pytest.raises(CircuitOpenError) as rejected:
        c.call(ok)
    assert rejected.value.retry_after is None
    b.reset()
    wait_until(lambda: states(breakers) == [CLOSED] * 3, "reset() told")

    a.disable()  # this process's own: not sent, and the fleet's changes do not reach it
    assert a.state is DISABLED
    c.force_open()
    wait_until(lambda: b.state is FORCED_OPEN, "force_open() told")
    assert a._link is not None
    known = a._link.known
    time.sleep(0.3)  # (b heard it; a pinned breaker takes nothing, not even its generation)
    assert a.state is DISABLED
    assert a._link.known == known
    a.reset()  # sent after anything a sent before (one worker, in order)
    wait_until(lambda: states(breakers) == [CLOSED] * 3, "reset() told")
    assert [(e["to"], e["reason"]) for e in stream(r, "ctl")] == [
        ("forced_open", "force_open()"),
        ("closed", "reset()"),
        ("forced_open", "force_open()"),
        ("closed", "reset()"),
    ]

    variable = "RESILIENT_CTL_BREAKER_STATE"
    monkeypatch.setenv(variable, "forced_open")
    resilient.reload()
    assert states(breakers) == [FORCED_OPEN] * 3
    assert a.history[-1].reason == "the environment's state=forced_open"
    gen = int(r.hget(keys("ctl")[0], "gen") or 0)
    tripped = a._link.run("open", str(gen), "60000", "another process tripped")
    assert tripped.state == "open"
    time.sleep(0.3)  # (told by message in ms: a pinned breaker takes none of it)
    assert states(breakers) == [FORCED_OPEN] * 3  # the pin wins over the fleet
    monkeypatch.delenv(variable)
    resilient.reload()  # lifted: the fleet's state, read again at once
    assert states(breakers) == [OPEN] * 3
    for breaker in breakers:
        breaker.reset()  # one from each process: after whatever each sent before
    wait_until(lambda: len(stream(r, "ctl")) == 8, "three resets")
    assert [(e["to"], e["reason"]) for e in stream(r, "ctl")[4:]] == [
        ("open", "another process tripped"),
        ("closed", "reset()"),
        ("closed", "reset()"),
        ("closed", "reset()"),
    ]  # nothing of the pin, its lift or disable()
    wait_until(lambda: states(breakers) == [CLOSED] * 3, "closed")


# -- 10. the environment moves a breaker to the fleet and back ----------------------------


def test_the_environment_moves_a_named_breaker_to_the_fleet_and_back(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = "RESILIENT_ENVSW_BREAKER_BACKEND"
    local = CircuitBreaker("envsw", **SMALL, open_for=60.0)  # this process alone
    coded = CircuitBreaker("envsw", backend=fleet_of.backend(), **SMALL, open_for=60.0)
    elsewhere_at = fleet_of.backend()
    elsewhere = BreakerLink(elsewhere_at, Named("envsw"))  # another process's changes
    assert local._link is None
    elsewhere.run("open", "0", "60000", "tripped elsewhere")
    wait_until(lambda: coded.state is OPEN, "the trip told")
    assert local.state is CLOSED  # not in the fleet

    monkeypatch.setenv(variable, "http://not-redis")
    with pytest.raises(ConfigError, match=f"{variable}='http://not-redis' is invalid"):
        resilient.reload()
    assert local._link is None

    # A URL's backend is made once per process (backend_for); this test's has a timeout
    # a loaded machine can meet (the default, 0.05 s, is the fault tests' business).
    shared = fleet_of.backend()
    monkeypatch.setitem(fleet._by_url, fleet_of.url, shared)
    monkeypatch.setenv(variable, fleet_of.url)
    resilient.reload()
    made = CircuitBreaker("envsw", **SMALL, open_for=60.0)  # and one made after it
    for breaker in (local, coded, made):  # every breaker of the name: the variable wins
        assert breaker.settings.sources["backend"] == variable
        assert breaker._link is not None
        assert breaker._link.backend is shared
        assert breaker.state is OPEN  # moved: the fleet's state read at once
        assert breaker.history[-1].reason == f"the fleet: tripped elsewhere (by {shared.who})"
    assert len(shared._links["envsw"]) == 3  # each of the name hears the fleet
    assert "envsw" not in fleet_of.backends[0]._links  # coded's own backend: left
    elsewhere.run("force", "closed", "reset elsewhere")
    wait_until(lambda: local.state is coded.state is made.state is CLOSED, "the reset told")

    monkeypatch.setenv(variable, "none")  # none: this process alone, whatever the code says
    resilient.reload()
    assert [b._link for b in (local, coded, made)] == [None] * 3
    assert "envsw" not in shared._links
    elsewhere.run("force", "forced_open", "forced elsewhere")
    monkeypatch.delenv(variable)
    resilient.reload()  # the code's backend again (reading the fleet), or none
    assert coded._link is not None
    assert coded._link.backend is fleet_of.backends[0]
    assert coded.state is FORCED_OPEN
    assert [local._link, made._link] == [None, None]
    assert local.state is made.state is CLOSED


def test_a_backend_is_checked_as_the_breaker_is_made(redis_flushed: RedisServer) -> None:
    url = redis_flushed.url
    with pytest.raises(ConfigError, match=r"backend=.*a named CircuitBreaker"):
        CircuitBreaker(backend=url)
    backend = RedisBackend(url)
    try:
        with pytest.raises(ConfigError, match=r"backend=.*a named CircuitBreaker"):
            CircuitBreaker(backend=backend)
        with pytest.raises(ConfigError, match=r"name='a\{b' is invalid"):
            CircuitBreaker("a{b", backend=backend)
    finally:
        backend.close()
    with pytest.raises(ConfigError, match=r"name='a\{b' is invalid"):
        CircuitBreaker("a{b", backend=url)
    with pytest.raises(ConfigError, match="backend='http://x' is invalid"):
        CircuitBreaker("bad-url", backend="http://x")
    with pytest.raises(ConfigError, match="without socket_timeout"):
        CircuitBreaker("bad-url", backend=url + "?socket_timeout=5")
    with pytest.raises(ConfigError, match="backend=42 is invalid"):
        CircuitBreaker("bad-type", backend=42)  # type: ignore[arg-type]


# -- 11. nothing leaks -------------------------------------------------------------------


def test_close_joins_the_threads_and_closes_the_connections(
    own_server: RedisServer, quiet: pytest.LogCaptureFixture, connect: Connect
) -> None:
    r = connect(own_server.url)
    r.ping()
    baseline = len(r.client_list())  # this observer's own connection
    threads_before = set(fleet_threads())
    made = Fleet(own_server.url)
    try:
        backends = [made.backend(prefix="leaks") for _ in range(3)]
        breakers = [
            CircuitBreaker(name, backend=backend, **SMALL, open_for=SPELL, half_open_calls=1)
            for backend in backends
            for name in ("one", "two")
        ]
        mine = [t for t in fleet_threads() if t.name.endswith(" leaks")]
        assert len(mine) == 2 * len(backends)  # a sender and a listener each
        trip(breakers[0])
        wait_until(lambda: breakers[2].state is OPEN, "the trip told")
        time.sleep(PAST_SPELL)

        async def probe() -> None:
            assert await breakers[4].call_async(asyncio.sleep, 0, "ok") == "ok"
            await backends[2].aclose()

        asyncio.run(probe())
        wait_until(lambda: breakers[0].state is CLOSED, "the probe told")
        assert len(r.client_list()) > baseline
        assert sorted(r.keys("leaks:*")) == [b"leaks:{one}:breaker", b"leaks:{one}:history"]
        assert all(r.pttl(key) > 0 for key in r.keys("leaks:*"))
    finally:
        made.close()
    assert not any(t.is_alive() for t in mine)
    assert set(fleet_threads()) == threads_before
    wait_until(lambda: len(r.client_list()) == baseline, "every connection closed")


# -- 12. fork ----------------------------------------------------------------------------


def read_line(fd: int, timeout: float) -> str:
    """A line from a pipe, waiting at most ``timeout`` seconds ("" if none came)."""
    got = b""
    deadline = time.monotonic() + timeout
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            return ""
        got += chunk
    return got.decode().rstrip("\n")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_hears_a_trip_made_in_the_parent(
    fleet_of: Fleet, quiet: pytest.LogCaptureFixture
) -> None:
    parent, child = fleet_of.breakers(2, "forked", open_for=60.0)
    child_backend = fleet_of.backends[1]
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (3.12: fork with threads)
        pid = os.fork()
    if pid == 0:  # the child: wait (bounded) for the parent's trip, report, exit
        code = 1
        try:
            os.close(read)
            worker = child_backend._worker
            restarted = worker is not None and worker.pid == os.getpid()
            if worker is not None:  # (the trip comes as a message, then: no refresh needed)
                worker.listening.wait(5.0)
            os.write(write, b"ready\n")
            deadline = time.monotonic() + 10.0
            while child.state is not OPEN and time.monotonic() < deadline:
                time.sleep(0.005)
            said = f"{restarted}|{child.state.value}|{child.history[-1].reason}"
            os.write(write, said.encode() + b"\n")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        assert read_line(read, 10.0) == "ready"
        trip(parent)
        said = read_line(read, 15.0)
    finally:
        os.close(read)
        deadline = time.monotonic() + 15.0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert done
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == f"True|open|the fleet: {WHY} (by {fleet_of.backends[0].who})"


def test_a_trip_right_after_a_reset_is_agreed_in_the_fleet(
    fleet_of: Fleet, connect: Connect, quiet: pytest.LogCaptureFixture
) -> None:
    """reset() and a trip at once, before the worker has run the reset: the trip builds
    on the reset's generation (it is not refused as stale), and the reset's answer does
    not undo the trip made here since."""
    r = connect(fleet_of.url)

    def agreed(name: str) -> bool:
        return bool(r.hget(keys(name)[0], "state") == b"open")

    for round_ in range(5):
        name = f"race-{round_}"
        here, there = fleet_of.breakers(2, name, open_for=60.0)
        link = here._link
        assert link is not None
        trip(here)
        wait_until(functools.partial(lambda b: b.state is OPEN, there), "the first trip heard")
        here.reset()
        trip(here)  # (queued behind the reset's script)
        wait_until(functools.partial(agreed, name), "the second trip agreed")
        wait_until(functools.partial(lambda k: k.pending == 0, link), "every answer in")
        time.sleep(0.05)  # (a late message would show now)
        assert here.state is OPEN
        assert there.state is OPEN
        assert [e["to"] for e in stream(r, name)] == ["open", "closed", "open"]
        assert [c.new for c in here.history] == [OPEN, CLOSED, OPEN]


def test_a_probe_outcome_redis_could_not_take_decides_here(
    own_fleet: Fleet, own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet probe reported while Redis answered, and Redis died before the worker
    sent the outcome: this process's probes decide its state (it is not left HALF_OPEN,
    refusing, for the whole outage)."""
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    backend = own_fleet.backend()
    breaker = CircuitBreaker("unsent", backend=backend, half_open_calls=2, open_for=SPELL, **SMALL)
    trip(breaker)
    wait_until(lambda: breaker._link is not None and breaker._link.known != 0, "trip agreed")
    time.sleep(PAST_SPELL)
    # Another process takes the spell's first permit, and never reports (it is slow).
    elsewhere = BreakerLink(own_fleet.backend(), Named("unsent"))
    assert elsewhere.run("probe", "2", "60000").permit
    held, release = threading.Event(), threading.Event()

    class Holding(BreakerLink):
        """A link whose change holds the worker until released (so the probe's outcome
        waits in the queue behind it)."""

        def run(self, command: str, *args: str) -> Any:
            held.set()
            release.wait(5.0)
            raise redis.ConnectionError("held")

    holder = Holding(backend, breaker)
    holder.pending = 1
    backend._enqueue(holder, "read", ())
    assert held.wait(5.0)
    assert breaker.call(ok) == "ok"  # the fleet's permit; its outcome queued
    assert breaker.state is HALF_OPEN
    own_server.kill()
    release.set()
    wait_until(lambda: breaker.state is CLOSED, "the probe decided here")
    assert breaker.history[-1].reason == "1 of 1 probes succeeded"
    assert fleet_lines(caplog, "Redis is away") == 1


def test_a_default_backend_variable_shares_named_policies_and_leaves_unnamed_ones_local(
    fleet_of: Fleet, monkeypatch: pytest.MonkeyPatch, quiet: pytest.LogCaptureFixture
) -> None:
    """RESILIENT_DEFAULT_BREAKER_BACKEND (and the rate limiter's) puts every named policy
    on the fleet; an unnamed one (a library's own) stays local instead of failing."""
    monkeypatch.setenv("RESILIENT_DEFAULT_BREAKER_BACKEND", fleet_of.url)
    monkeypatch.setenv("RESILIENT_DEFAULT_RATE_LIMITER_BACKEND", fleet_of.url)
    unnamed = CircuitBreaker(**SMALL)
    limiter = resilient.RateLimiter(5)
    named = CircuitBreaker("by-default", **SMALL)
    assert unnamed._link is None
    assert limiter._plan.fleet is None
    assert named._link is not None
    assert named._link.backend is fleet.backend_for(fleet_of.url)
    trip(unnamed)
    assert limiter.try_acquire()
    named.reset()
