"""An adversarial review of the fleet breaker's state machine (issue 15): generations told
again, the local decision of a process that ran every probe, its own changes chained and
the others' deferred, a pin's lift, against a real redis-server (tests/redis_server.py).

A claim that held is a plain test; so is each bug found (now fixed), with its cause.
Each ``RedisBackend`` has its own connections, worker threads and subscription: several
backends on one URL stand for several processes.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import resilient
import resilient._breaker as breaker_module
import resilient.redis as fleet
from resilient import CircuitBreaker, CircuitOpenError, State
from resilient.redis import BreakerLink, RedisBackend
from tests.fleet_helpers import PAST_SPELL, SMALL, SPELL, Named, ok, trip, wait_until
from tests.redis_server import RedisServer

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
FORCED_OPEN = State.FORCED_OPEN


def admitted_within(breaker: CircuitBreaker, seconds: float) -> bool:
    """Calls ``ok`` every 20 ms until one is admitted (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            breaker.call(ok)
            return True
        except CircuitOpenError:
            time.sleep(0.02)
    return False


def shared_state(r: redis.Redis, name: str) -> tuple[str | None, int]:
    state, gen = r.hmget(f"resilient:{{{name}}}:breaker", "state", "gen")
    return (None if state is None else state.decode()), int(gen or 0)


class Backends:
    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[RedisBackend] = []

    def __call__(self, **options: Any) -> RedisBackend:
        options.setdefault("timeout", 2.0)
        backend = RedisBackend(self.url, **options)
        self.made.append(backend)
        return backend

    def breakers(self, count: int, name: str, **options: Any) -> list[CircuitBreaker]:
        return [CircuitBreaker(name, backend=self(), **{**SMALL, **options}) for _ in range(count)]

    def close(self) -> None:
        closing = [threading.Thread(target=b.close) for b in self.made]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(10.0)
        self.made.clear()


@pytest.fixture
def backends(redis_flushed: RedisServer) -> Iterator[Backends]:
    made = Backends(redis_flushed.url)
    yield made
    made.close()


@pytest.fixture
def looker(redis_flushed: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_flushed.url, socket_timeout=5.0)
    yield client
    client.close()


@pytest.fixture
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.3)


def read_line(fd: int, timeout: float) -> str:
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


# -- bugs ------------------------------------------------------------------------------


def test_a_half_open_spell_heals_after_a_flushall(backends: Backends, looker: redis.Redis) -> None:
    a, b = backends.breakers(2, "flushed-half", open_for=SPELL, half_open_calls=2)
    trip(a)
    wait_until(lambda: b.state is OPEN, "the trip heard")
    time.sleep(PAST_SPELL)
    assert a.call(ok) == "ok"  # the spell's first permit: 1 of 2 probes reported
    wait_until(lambda: b.state is HALF_OPEN and a.state is HALF_OPEN, "the spell heard")
    assert shared_state(looker, "flushed-half")[0] == "half_open"
    looker.flushall()  # (a Redis restarted empty does the same)
    # Three refresh periods of traffic: a process must not refuse for good.
    assert admitted_within(a, 3.5) or admitted_within(b, 0.5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_with_a_change_queued_still_hears_the_fleet(
    backends: Backends,
) -> None:
    here, there = backends.breakers(2, "forked-pending", open_for=60.0)
    backend = backends.made[0]
    link = here._link
    assert link is not None
    held, release = threading.Event(), threading.Event()

    class Holding(BreakerLink):
        """A change that holds the worker until released (the trip queues behind it)."""

        def run(self, command: str, *args: str) -> Any:
            held.set()
            release.wait(5.0)
            return super().run("read")

    holder = Holding(backend, Named("forked-pending-holder"))
    holder.pending = 1
    backend._enqueue(holder, "read", ())
    assert held.wait(5.0)
    trip(here)  # queued behind the holder: link.pending == 1
    assert link.pending == 1
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            worker = backend._worker
            if worker is not None:
                worker.listening.wait(5.0)
            os.write(write, b"ready\n")
            # The fleet is reset by another process: heard by message, or read by the
            # refresh within a second; 4 s here.
            deadline = time.monotonic() + 4.0
            while here.state is not CLOSED and time.monotonic() < deadline:
                time.sleep(0.01)
            os.write(write, f"{here.state.value}|{link.pending}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        release.set()
        assert read_line(read, 10.0) == "ready"
        wait_until(lambda: link.pending == 0 and there.state is OPEN, "the parent's trip")
        there.reset()
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
    assert said.split("|")[0] == "closed", said


def test_force_open_made_under_an_env_pin_holds_after_the_lift(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = backends.breakers(2, "pinlift", open_for=60.0)
    a.reset()  # the fleet has a state: CLOSED, shared
    wait_until(lambda: a._link is not None and a._link.known != 0, "the reset agreed")
    variable = "RESILIENT_PINLIFT_BREAKER_STATE"
    monkeypatch.setenv(variable, "disabled")
    resilient.reload()
    a.force_open()  # remembered: applies once the environment lifts its pin
    monkeypatch.delenv(variable)
    resilient.reload()
    time.sleep(0.2)
    # Without a backend the lift leaves FORCED_OPEN (docs of force_open()); with one,
    # either the fleet is forced open too, or at least this process still is.
    assert a.state is FORCED_OPEN


# -- claims that held ---------------------------------------------------------------------


def test_a_trip_made_while_away_stays_local_and_heals_at_its_spell_end(
    backends: Backends, looker: redis.Redis, quick_retry: None, caplog: Any
) -> None:
    """told_again: a trip decided while Redis was away (generation = the one known) is
    not undone by the refresh that reads CLOSED at that generation, nor shared; the
    process's own spell ends and its first call after closes it (no stuck state)."""
    caplog.set_level(logging.WARNING, logger="resilient.fleet")
    a, b = backends.breakers(2, "away-trip", open_for=SPELL * 3, half_open_calls=1)
    a.reset()
    wait_until(lambda: b._link is not None and b._link.known != 0, "the reset heard")
    gen = shared_state(looker, "away-trip")[1]
    backend = backends.made[0]
    backend._lost(redis.ConnectionError("test: away"))  # (the backend's own path)
    trip(a)
    time.sleep(0.5)  # past RETRY_AFTER: refreshes read CLOSED at the known generation
    assert shared_state(looker, "away-trip") == ("closed", gen)  # the trip not shared
    assert a.state is OPEN
    assert b.state is CLOSED
    with pytest.raises(CircuitOpenError):
        a.call(ok)
    time.sleep(SPELL * 3)
    assert a.call(ok) == "ok"  # a probe: the fleet said CLOSED, this process's own spell
    assert a.state is CLOSED
    assert b.state is CLOSED
    assert shared_state(looker, "away-trip") == ("closed", gen)


def test_refresh_converges_every_process_when_messages_are_missed(
    backends: Backends, looker: redis.Redis
) -> None:
    """The refresh backstop: changes made by a process the others never heard (run on
    another channel) reach every process within a few seconds, with no traffic."""
    a, b, c = backends.breakers(3, "backstop", open_for=60.0)
    a.reset()
    wait_until(lambda: all(x._link is not None and x._link.known for x in (a, b, c)), "gen")
    other = RedisBackend(backends.url, prefix="resilient", timeout=2.0)
    other.channel = "nobody-listens"
    try:
        link = BreakerLink(other, Named("backstop"))
        gen = shared_state(looker, "backstop")[1]
        opened = link.run("open", str(gen), "60000", "silent trip")
        assert opened.state == "open"
        wait_until(lambda: [a.state, b.state, c.state] == [OPEN] * 3, "refresh: OPEN", 4.0)
        link.run("force", "forced_open", "silent force")
        wait_until(lambda: [a.state, b.state, c.state] == [FORCED_OPEN] * 3, "FORCED", 4.0)
        link.run("force", "closed", "silent reset")
        wait_until(lambda: [a.state, b.state, c.state] == [CLOSED] * 3, "CLOSED", 4.0)
    finally:
        other.close()


def test_a_lease_restart_leaves_one_decision_fleet_wide(
    backends: Backends, looker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_fleet_probed: a process whose probes were all of a spell restarted after a lease
    decides at once, and the late outcome of the old spell's permit is refused by the
    fleet (a stale generation): the fleet and every process agree, CLOSED."""
    monkeypatch.setattr(breaker_module, "PROBE_LEASE", 0.3)
    a, b = backends.breakers(2, "lease", open_for=SPELL, half_open_calls=2)
    trip(a)
    wait_until(lambda: b.state is OPEN, "heard")
    time.sleep(PAST_SPELL)
    elsewhere = BreakerLink(backends(), Named("lease"))  # a process that will die
    first = elsewhere.run("probe", "2", "300")
    second = elsewhere.run("probe", "2", "300")
    assert first.permit
    assert second.permit
    assert first.gen == second.gen
    wait_until(lambda: a.state is HALF_OPEN and b.state is HALF_OPEN, "the spell heard")
    with pytest.raises(CircuitOpenError):
        a.call(ok)  # every permit out
    time.sleep(0.4)  # the lease passes: the next probe starts the spell again
    assert a.call(ok) == "ok"
    assert a.call(ok) == "ok"
    assert a.state is CLOSED  # its own probes were all of the spell: decided at once
    wait_until(lambda: a._link is not None and a._link.pending == 0, "answers in")
    late = elsewhere.run("probed", str(first.gen), "fail", "2", "0.5", "2", "60000")
    assert late.state == "closed"  # stale: refused
    wait_until(lambda: b.state is CLOSED, "the close heard")
    assert shared_state(looker, "lease")[0] == "closed"
    assert a.state is CLOSED


def test_threads_of_many_processes_run_exactly_half_open_calls_probes(
    backends: Backends, looker: redis.Redis
) -> None:
    """Six processes, four threads each, a switch interval of 1 us: exactly
    half_open_calls probes run fleet-wide, and every process ends CLOSED."""
    permits = 3
    breakers = backends.breakers(6, "many", open_for=SPELL, half_open_calls=permits)
    trip(breakers[0])
    wait_until(lambda: all(x.state is OPEN for x in breakers), "heard")
    time.sleep(PAST_SPELL)
    ran = []
    ran_lock = threading.Lock()
    gate = threading.Barrier(24)

    def probe() -> None:
        with ran_lock:
            ran.append(1)
        time.sleep(0.1)

    def worker(x: CircuitBreaker) -> None:
        gate.wait(5.0)
        try:
            x.call(probe)
        except CircuitOpenError:
            pass

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(x,)) for x in breakers for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10.0)
    finally:
        sys.setswitchinterval(old)
    assert len(ran) == permits
    wait_until(lambda: all(x.state is CLOSED for x in breakers), "closed everywhere")
    assert shared_state(looker, "many")[0] == "closed"


def test_databases_of_one_server_do_not_meet(backends: Backends) -> None:
    """The channel is per database ({prefix}:changes:<db>): a trip on db 1 reaches db 1's
    processes only; db 2's, same name and prefix, stay CLOSED past a refresh."""
    base = backends.url.rsplit("/", 1)[0]
    made = [RedisBackend(f"{base}/{db}", timeout=2.0) for db in (1, 1, 2)]
    backends.made.extend(made)
    assert [b.channel for b in made] == ["resilient:changes:1"] * 2 + ["resilient:changes:2"]
    one, other, apart = (CircuitBreaker("dbs", backend=b, **SMALL, open_for=60.0) for b in made)
    try:
        trip(one)
        wait_until(lambda: other.state is OPEN, "db 1 heard")
        time.sleep(1.3)  # a refresh period: db 2 reads its own (missing) hash
        assert apart.state is CLOSED
    finally:
        for b in made:
            client = redis.Redis.from_url(b._url or "", socket_timeout=5.0)
            client.flushdb()
            client.close()


def test_a_reload_that_ends_a_spell_tells_the_fleet(
    backends: Backends, looker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = backends.breakers(2, "fewer", open_for=SPELL, half_open_calls=3)
    trip(a)
    wait_until(lambda: b.state is OPEN, "heard")
    time.sleep(PAST_SPELL)
    assert a.call(ok) == "ok"
    assert a.call(ok) == "ok"  # 2 of 3 probes reported, by this process
    wait_until(lambda: a._link is not None and a._link.pending == 0, "answers in")
    monkeypatch.setenv("RESILIENT_FEWER_BREAKER_HALF_OPEN_CALLS", "2")
    resilient.reload()  # every process: 2 probes are enough now
    assert a.state is CLOSED  # its 2 probes decided here
    assert admitted_within(b, 3.0)  # the fleet must not keep b refusing
