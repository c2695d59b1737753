"""A new user's walk through docs/fleet.md (issue 15): what worked as the docs say, and
what did not and is fixed (a URL with a query argument redis-py does not take was
accepted, then failed every operation; the process whose probe ended a spell refused its
own next call until the worker's round trip came back).

Real redis-server only (tests/redis_server.py fixtures); every wait is a bounded poll.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

import resilient
import resilient.redis as fleet
from resilient import CircuitBreaker, CircuitOpenError, ConfigError, State
from resilient.redis import RedisBackend
from tests.fleet_helpers import wait_until
from tests.redis_server import DelayProxy, RedisServer

SMALL = {"window_size": 2, "min_calls": 2}


def boom() -> None:
    raise ConnectionError("payments is down")


@pytest.fixture
def backends() -> Iterator[list[RedisBackend]]:
    made: list[RedisBackend] = []
    yield made
    for backend in made:
        backend.close()


def test_the_variable_alone_moves_an_existing_breaker_to_the_fleet(
    redis_flushed: RedisServer,
    backends: list[RedisBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/fleet.md: RESILIENT_<NAME>_BREAKER_BACKEND and a reload() move a live named
    breaker to the fleet: a trip in "another process" (a backend of its own) opens it."""
    mine = CircuitBreaker("nu15-pay", **SMALL, open_for=60.0)  # made local, no backend
    # The URL's backend (one per URL per process) with a timeout a busy machine meets.
    shared = RedisBackend(redis_flushed.url, timeout=1.0)
    backends.append(shared)
    monkeypatch.setitem(fleet._by_url, redis_flushed.url, shared)
    monkeypatch.setenv("RESILIENT_NU15_PAY_BREAKER_BACKEND", redis_flushed.url)
    resilient.reload()
    assert mine.settings.sources["backend"] == "RESILIENT_NU15_PAY_BREAKER_BACKEND"

    other_backend = RedisBackend(redis_flushed.url, timeout=1.0)
    backends.append(other_backend)
    other = CircuitBreaker("nu15-pay", backend=other_backend, **SMALL, open_for=60.0)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            other.call(boom)
    assert other.state is State.OPEN
    wait_until(lambda: mine.state is State.OPEN, "the other process's trip told")
    with pytest.raises(CircuitOpenError):
        mine.call(lambda: None)

    monkeypatch.setenv("RESILIENT_NU15_PAY_BREAKER_BACKEND", "none")  # and back
    resilient.reload()
    assert mine.settings.values["backend"] is None


def test_a_url_with_an_unknown_query_parameter_is_refused_at_once(
    redis_flushed: RedisServer, backends: list[RedisBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_flushed.url}?prefix=svc"  # a user hoping to set the prefix by URL
    with pytest.raises(ConfigError, match=r"query arguments .*prefix"):
        RedisBackend(url, timeout=1.0)
    monkeypatch.setenv("RESILIENT_NU15_Q_BREAKER_BACKEND", url)
    with pytest.raises(ConfigError, match="RESILIENT_NU15_Q_BREAKER_BACKEND"):
        CircuitBreaker("nu15-q")


def test_services_on_databases_of_their_own_never_hear_each_other(
    redis_flushed: RedisServer, backends: list[RedisBackend]
) -> None:
    """Redis's channels are not per database: the channel's name carries it."""
    zero = RedisBackend(redis_flushed.url, timeout=1.0)
    one = RedisBackend(redis_flushed.url[: -len("/0")] + "/1", timeout=1.0)
    watcher = RedisBackend(redis_flushed.url, timeout=1.0)
    backends.extend((zero, one, watcher))
    assert (zero.channel, one.channel) == ("resilient:changes:0", "resilient:changes:1")
    in_one = CircuitBreaker("nu15-db", backend=one, **SMALL, open_for=60.0)
    seen = CircuitBreaker("nu15-db", backend=watcher, **SMALL, open_for=60.0)
    tripped = CircuitBreaker("nu15-db", backend=zero, **SMALL, open_for=60.0)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            tripped.call(boom)
    wait_until(lambda: seen.state is State.OPEN, "db 0 told")
    time.sleep(0.3)  # (a message reaching db 1 would show by now)
    assert in_one.state is State.CLOSED


def breaker_health(name: str) -> dict:
    for policy in resilient.health()["policies"]:
        if policy["kind"] == "breaker" and policy["name"] == name:
            return policy
    raise AssertionError(f"no breaker {name!r} in health()")


def test_the_last_probe_closes_its_own_breaker_at_once(
    redis_flushed: RedisServer, backends: list[RedisBackend]
) -> None:
    with DelayProxy(redis_flushed.port, delay=0.3) as slow:  # a round trip: 0.3 s
        backend = RedisBackend(slow.url, timeout=2.0)
        backends.append(backend)
        breaker = CircuitBreaker(
            "nu15-probe", backend=backend, **SMALL, open_for=0.2, half_open_calls=1
        )
        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(boom)
        # The fleet has the trip, and this process has adopted the fleet's answer.
        direct = redis.Redis.from_url(redis_flushed.url, socket_timeout=5.0)
        key = "resilient:{nu15-probe}:breaker"
        wait_until(lambda: direct.hget(key, "state") == b"open", "the trip in Redis")
        gen = int(direct.hget(key, "gen") or 0)
        direct.close()
        wait_until(
            lambda: breaker_health("nu15-probe")["fleet"]["generation"] == gen,
            "the fleet's answer adopted",
        )
        time.sleep(0.3)  # past the spell
        assert breaker.call(lambda: "probed") == "probed"  # the one probe succeeds
        state_now = breaker.state
        try:
            breaker.call(lambda: None)
            refused = False
        except CircuitOpenError:
            refused = True
        wait_until(lambda: breaker.state is State.CLOSED, "the fleet closes it")
        assert (state_now, refused) == (State.CLOSED, False)
