"""A breaker with a Redis backend against the same breaker without: the fleet's targets.

- CLOSED success path with the backend: at most 1.1x the same breaker without it (the
  window stays local: the backend adds no work to a call, so the ratio is noise).
- A rejection from a fleet-OPEN breaker costs no Redis round trip: the rows beside a
  local OPEN breaker's, and each test counts the server's commands around its rounds
  (``INFO commandstats``): none may come from the calls.

Against a redis-server of our own on 127.0.0.1 (tests/redis_server.py; skipped without
one, unless CI_REQUIRE_REDIS=1). A round is ``CALLS`` calls in a loop, as in
test_sync.py and test_rejection.py: the table's microseconds read as ns per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilient import CircuitBreaker, CircuitOpenError

from ._subjects import Loop, calls, f, flaky, raises, rejections

CALLS = 1000

redis = pytest.importorskip("redis")


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from tests.redis_server import RedisServer

    with RedisServer() as running:
        yield running


@pytest.fixture(scope="module")
def backend(server: Any) -> Iterator[Any]:
    from resilient.redis import RedisBackend

    made = RedisBackend(server.url)
    yield made
    made.close()


def commands(server: Any) -> int:
    """Commands the server has run, but for INFO itself and the worker's refresh (a
    pipelined TIME and HMGET each second), which are not the calls'."""
    with redis.Redis.from_url(server.url) as client:
        stats = client.info("commandstats")
    skip = {"cmdstat_info", "cmdstat_time", "cmdstat_hmget", "cmdstat_ping", "cmdstat_client"}
    skip |= {"cmdstat_hello", "cmdstat_select", "cmdstat_subscribe"}  # (connections)
    return sum(int(v["calls"]) for k, v in stats.items() if k not in skip)


def opened(breaker: CircuitBreaker) -> Callable[[int], int]:
    guarded = breaker(flaky)
    try:
        guarded(-1)
    except ValueError:
        pass
    assert breaker.state == "open"
    return guarded


def subjects(group: str, backend: Any) -> dict[str, Loop]:
    if group == "closed":
        return {
            "bare": calls(f),
            "resilient": calls(CircuitBreaker()(f)),
            "resilient-fleet": calls(CircuitBreaker("bench-closed", backend=backend)(f)),
        }
    fleet = CircuitBreaker("bench-open", backend=backend, min_calls=1, open_for=3600)
    guarded = opened(fleet)
    deadline = time.monotonic() + 5.0  # the trip agreed in Redis (the worker's script)
    while fleet._link is not None and not fleet._link.known and time.monotonic() < deadline:
        time.sleep(0.001)
    return {
        "bare raise-catch": raises,
        "resilient-open": rejections(
            opened(CircuitBreaker(min_calls=1, open_for=3600)), CircuitOpenError
        ),
        "resilient-fleet-open": rejections(guarded, CircuitOpenError),
    }


@pytest.fixture(scope="module")
def closed_subjects(backend: Any) -> dict[str, Loop]:
    return subjects("closed", backend)


@pytest.fixture(scope="module")
def open_subjects(backend: Any) -> dict[str, Loop]:
    return subjects("open", backend)


@pytest.mark.benchmark(group="fleet closed path")
@pytest.mark.parametrize("name", ["bare", "resilient", "resilient-fleet"])
def test_fleet_closed_path(
    benchmark: Any, name: str, closed_subjects: dict[str, Loop], server: Any
) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "resilient")
    before = commands(server)
    assert benchmark(closed_subjects[name], CALLS) == 1
    assert commands(server) == before  # not one command from a CLOSED call


@pytest.mark.benchmark(group="fleet open rejection")
@pytest.mark.parametrize("name", ["bare raise-catch", "resilient-open", "resilient-fleet-open"])
def test_fleet_open_rejection(
    benchmark: Any, name: str, open_subjects: dict[str, Loop], server: Any
) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "resilient-open")
    before = commands(server)
    assert benchmark(open_subjects[name], CALLS) == CALLS
    assert commands(server) == before  # not one round trip from a rejection
