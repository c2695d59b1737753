"""The fleet's GCRA (resilient.redis) against a real redis-server of our own.

Nothing is faked: the server is started by tests/redis_server.py on 127.0.0.1; its
clock decides. Exactness is checked against a model fed with the server's own times (the
script returns them), never against this process's clock. Faults are real too: a killed
server, a port that accepts and never answers, a proxy that delays replies. Each timing
assertion leaves a wide margin (a call bounded by 0.05 s must end within 1 s).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

import tests.redis_server as helper
from resilient import ConfigError
from resilient.redis import Admission, RedisBackend
from tests.redis_server import Blackhole, DelayProxy, RedisServer

ROOT = Path(__file__).resolve().parent.parent


class Model:
    """The GCRA worked out here from the server's times: what each reply must be."""

    def __init__(self, interval: float, tolerance: float) -> None:
        self.interval, self.tolerance = interval * 1e6, tolerance * 1e6
        self.ahead = 0.0
        self.stamp: int | None = None

    def check(self, got: Admission) -> None:
        ahead = 0.0 if self.stamp is None else self.ahead - (got.now_us - self.stamp)
        ahead = max(ahead, 0.0)
        if ahead <= self.tolerance + self.interval * 1e-9:
            self.ahead, self.stamp = ahead + self.interval, got.now_us
            assert got == Admission(True, 0.0, got.now_us, pytest.approx(self.ahead, abs=1e-6))
        else:
            wait = (ahead - self.tolerance) / 1e6
            assert got.admitted is False
            assert got.retry_after == pytest.approx(wait, abs=1e-12)
            assert got.ahead_us == pytest.approx(ahead, abs=1e-6)


def server_time_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1_000_000 + micros


def keys_without_ttl(server: RedisServer) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return [key.decode() for key in client.scan_iter() if client.pttl(key) < 0]
    finally:
        client.close()


@pytest.fixture
def backend(redis_flushed: RedisServer) -> Iterator[RedisBackend]:
    made = RedisBackend(redis_flushed.url)
    yield made
    made.close()


@pytest.fixture
def patient(redis_flushed: RedisServer) -> Iterator[RedisBackend]:
    """A backend with 2 s per operation, for the counts under load: on a busy machine 50
    tasks on one event loop (or 16 threads) wait longer than 0.05 s for their turn."""
    made = RedisBackend(redis_flushed.url, timeout=2.0)
    yield made
    made.close()


# -- exact results ------------------------------------------------------------------------


def test_a_burst_then_refusals_whose_retry_after_is_exact(
    backend: RedisBackend, redis_flushed: RedisServer
) -> None:
    interval, tolerance = 10.0, 20.0  # burst 3; no turn comes back during the test
    model = Model(interval, tolerance)
    before = server_time_us(backend._client())
    answers = [backend.gcra("exact", interval, tolerance) for _ in range(6)]
    after = server_time_us(backend._client())
    for answer in answers:
        model.check(answer)
        assert before <= answer.now_us <= after  # the server's clock, not ours
    assert [a.admitted for a in answers] == [True, True, True, False, False, False]
    # three turns taken: the schedule is 30 s on from the first call; a refusal waits for
    # the part of it beyond the 20 s tolerance: 10 s, less the time since the first call
    first, fourth = answers[0], answers[3]
    assert fourth.retry_after == pytest.approx(10.0 - (fourth.now_us - first.now_us) / 1e6)
    assert backend.acquire("exact", interval, tolerance) == (False, pytest.approx(10, abs=1))
    # the key expires when the schedule catches up with the clock: 30 s after the third
    client = backend._client()
    pttl = client.pttl("resilient:{exact}:gcra")
    assert 29_000 < pttl <= 30_000 - (answers[2].now_us - first.now_us) // 1000
    assert keys_without_ttl(redis_flushed) == []


def test_one_call_per_interval_after_the_burst(backend: RedisBackend) -> None:
    interval = 0.05
    model = Model(interval, 0.0)  # burst 1
    first = backend.gcra("paced", interval, 0.0)
    model.check(first)
    assert first.admitted
    for _ in range(3):
        refused = backend.gcra("paced", interval, 0.0)
        model.check(refused)
        assert not refused.admitted
        assert 0 < refused.retry_after <= interval
        time.sleep(refused.retry_after + 0.002)  # (later is only ever more admitted)
        admitted = backend.gcra("paced", interval, 0.0)
        model.check(admitted)
        assert admitted.admitted


def test_an_idle_limiter_gives_a_full_burst_and_its_key_expires(
    backend: RedisBackend, redis_flushed: RedisServer
) -> None:
    assert backend.acquire("idle", 0.01, 0.01) == (True, 0.0)
    assert backend.acquire("idle", 0.01, 0.01) == (True, 0.0)  # burst 2
    deadline = time.monotonic() + 5
    while redis_flushed.command("EXISTS", "resilient:{idle}:gcra") != b":0\r\n":
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.01)
    answers = [backend.acquire("idle", 10.0, 10.0) for _ in range(3)]
    assert [admitted for admitted, _ in answers] == [True, True, False]


def test_keys_are_prefixed_and_hash_tagged_by_the_name(redis_flushed: RedisServer) -> None:
    backend = RedisBackend(redis_flushed.url, prefix="svc.a")
    try:
        backend.acquire("search", 1.0, 0.0)
        assert backend.key("search", "gcra") == "svc.a:{search}:gcra"
        client = backend._client()
        assert sorted(k.decode() for k in client.scan_iter()) == ["svc.a:{search}:gcra"]
    finally:
        backend.close()


def test_limiters_with_other_names_or_prefixes_are_apart(redis_flushed: RedisServer) -> None:
    one, other = RedisBackend(redis_flushed.url), RedisBackend(redis_flushed.url, prefix="b")
    try:
        assert one.acquire("a", 10.0, 0.0)[0]
        assert not one.acquire("a", 10.0, 0.0)[0]
        assert one.acquire("b", 10.0, 0.0)[0]
        assert other.acquire("a", 10.0, 0.0)[0]
    finally:
        one.close()
        other.close()


def test_async_calls_share_the_schedule_with_sync_ones(backend: RedisBackend) -> None:
    model = Model(10.0, 10.0)

    async def main() -> list[Admission]:
        try:
            return [await backend.gcra_async("both", 10.0, 10.0) for _ in range(2)]
        finally:
            await backend.aclose()

    answers = [backend.gcra("both", 10.0, 10.0), *asyncio.run(main())]
    for answer in answers:
        model.check(answer)
    assert [a.admitted for a in answers] == [True, True, False]

    async def again() -> tuple[bool, float]:
        try:
            return await backend.acquire_async("both", 10.0, 10.0)
        finally:
            await backend.aclose()

    assert asyncio.run(again())[0] is False  # a new loop, a new client: the same state


# -- many callers -------------------------------------------------------------------------


def bound(admitted_times: list[int], interval: float, burst: int) -> float:
    """The most GCRA may admit between the first and the last admitted call."""
    span = (max(admitted_times) - min(admitted_times)) / 1e6
    return burst + span / interval + 1e-6


def test_threads_hammering_one_limiter_stay_within_the_bound(patient: RedisBackend) -> None:
    interval, burst, threads = 0.01, 5, 16
    tolerance = (burst - 1) * interval
    admitted: list[int] = []
    refused = [0]
    calls = [0]
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait(5)
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            answer = patient.gcra("hammered", interval, tolerance)
            with lock:
                calls[0] += 1
                if answer.admitted:
                    admitted.append(answer.now_us)
                else:
                    refused[0] += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=hammer) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    finally:
        sys.setswitchinterval(switch)
    assert not any(worker.is_alive() for worker in workers)
    assert len(admitted) + refused[0] == calls[0]
    assert burst <= len(admitted) <= bound(admitted, interval, burst)
    assert refused[0] > 0


def test_many_tasks_stay_within_the_bound(patient: RedisBackend) -> None:
    interval, burst = 0.01, 5
    tolerance = (burst - 1) * interval
    admitted: list[int] = []
    calls = [0]

    async def caller() -> None:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            answer = await patient.gcra_async("tasks", interval, tolerance)
            calls[0] += 1
            if answer.admitted:
                admitted.append(answer.now_us)

    async def main() -> None:
        try:
            await asyncio.gather(*(caller() for _ in range(50)))
        finally:
            await patient.aclose()

    asyncio.run(main())
    assert burst <= len(admitted) <= bound(admitted, interval, burst)
    assert calls[0] > len(admitted)


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from resilient.redis import RedisBackend

    url, seconds, interval, tolerance = sys.argv[1], *map(float, sys.argv[2:])
    backend = RedisBackend(url, timeout=1.0)
    backend._client().ping()
    print("ready", flush=True)
    sys.stdin.readline()
    admitted, calls = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        answer = backend.gcra("fleet", interval, tolerance)
        calls += 1
        if answer.admitted:
            admitted.append(answer.now_us)
    backend.close()
    print(json.dumps({"admitted": admitted, "calls": calls}), flush=True)
    """
)


def test_processes_sharing_one_limiter_get_the_fleet_rate(redis_flushed: RedisServer) -> None:
    processes, seconds, interval, burst = 6, 3.0, 0.005, 20  # 200/s for the fleet
    tolerance = (burst - 1) * interval
    args = [str(seconds), repr(interval), repr(tolerance)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_flushed.url, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:  # all at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=30)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    admitted = [t for result in results for t in result["admitted"]]
    most = bound(admitted, interval, burst)
    assert len(admitted) <= most
    assert sum(result["calls"] for result in results) > 2 * most  # demand exceeded it
    assert len(admitted) >= 0.9 * most
    assert all(result["admitted"] for result in results)  # every process got turns


# -- the server's state lost, and faults --------------------------------------------------


def test_flushall_mid_run_starts_afresh(backend: RedisBackend, redis_flushed: RedisServer) -> None:
    assert [backend.acquire("f", 10.0, 10.0)[0] for _ in range(3)] == [True, True, False]
    redis_flushed.flushall()
    assert [backend.acquire("f", 10.0, 10.0)[0] for _ in range(3)] == [True, True, False]


def test_script_flush_and_a_restart_load_the_script_again(
    backend: RedisBackend, redis_flushed: RedisServer
) -> None:
    assert backend.acquire("s", 10.0, 0.0)[0]
    assert redis_flushed.command("SCRIPT", "FLUSH").startswith(b"+OK")
    assert not backend.acquire("s", 10.0, 0.0)[0]  # NOSCRIPT, then EVAL: state kept
    redis_flushed.restart()  # no keys, no scripts, and the pooled connection is dead
    assert backend.acquire("s", 10.0, 0.0)[0]

    async def main() -> None:
        try:
            assert (await backend.acquire_async("a", 10.0, 0.0))[0]
            assert redis_flushed.command("SCRIPT", "FLUSH").startswith(b"+OK")
            assert not (await backend.acquire_async("a", 10.0, 0.0))[0]
        finally:
            await backend.aclose()

    asyncio.run(main())


def fails_fast(call: object, times: int = 5) -> list[BaseException]:
    """Each call raises redis-py's error within 1 s (its bound is 0.05 s)."""
    errors = []
    for _ in range(times):
        began = time.monotonic()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)) as caught:
            call()  # type: ignore[operator]
        assert time.monotonic() - began < 1.0
        errors.append(caught.value)
    return errors


def test_a_killed_server_fails_each_call_fast_and_it_rejoins(
    backend: RedisBackend, redis_flushed: RedisServer
) -> None:
    assert backend.acquire("k", 10.0, 0.0)[0]
    redis_flushed.kill()
    fails_fast(lambda: backend.acquire("k", 10.0, 0.0))

    async def main() -> None:
        try:
            await backend.acquire_async("k", 10.0, 0.0)
        finally:
            await backend.aclose()

    fails_fast(lambda: asyncio.run(main()))
    redis_flushed.start()
    assert backend.acquire("k", 10.0, 0.0)[0]  # empty again: a full burst


def test_a_black_holed_port_fails_each_call_within_the_timeout() -> None:
    with Blackhole() as hole:
        backend = RedisBackend(f"redis://127.0.0.1:{hole.port}/0", timeout=0.05)
        errors = fails_fast(lambda: backend.acquire("b", 1.0, 0.0))
        assert all(isinstance(error, redis.TimeoutError) for error in errors)

        async def main() -> None:
            try:
                await backend.acquire_async("b", 1.0, 0.0)
            finally:
                await backend.aclose()

        fails_fast(lambda: asyncio.run(main()), times=3)
        backend.close()


def test_a_slow_server_fails_each_call_within_the_timeout(redis_flushed: RedisServer) -> None:
    with DelayProxy(redis_flushed.port, delay=0.3) as proxy:
        backend = RedisBackend(proxy.url, timeout=0.05)
        errors = fails_fast(lambda: backend.acquire("slow", 1.0, 0.0), times=3)
        assert all(isinstance(error, redis.TimeoutError) for error in errors)
        backend.close()
    with DelayProxy(redis_flushed.port, delay=0.01) as proxy:
        backend = RedisBackend(proxy.url, timeout=2.0)  # slow, but within its timeout
        assert backend.acquire("slow", 1.0, 0.0)[0]
        backend.close()


# -- configuration ------------------------------------------------------------------------


def test_a_url_makes_clients_with_the_timeout_and_no_retries(redis_flushed: RedisServer) -> None:
    backend = RedisBackend(redis_flushed.url, timeout=0.25)
    try:
        pool = backend._client().connection_pool
        assert pool.connection_kwargs["socket_timeout"] == 0.25
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.25
        assert pool.connection_kwargs["retry"].get_retries() == 0
        connection = pool.get_connection()
        try:
            assert connection.retry.get_retries() == 0
            assert connection.retry_on_error == []
        finally:
            pool.release(connection)

        async def main() -> None:
            client = await backend._client_async()
            try:
                kwargs = client.connection_pool.connection_kwargs
                assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
                assert kwargs["retry"].get_retries() == 0
                assert type(kwargs["retry"]).__module__ == "redis.asyncio.retry"
            finally:
                await backend.aclose()

        asyncio.run(main())
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("option", "kwargs"),
    [
        ("timeout", {"timeout": 0}),
        ("timeout", {"timeout": -1}),
        ("timeout", {"timeout": math.nan}),
        ("timeout", {"timeout": math.inf}),
        ("timeout", {"timeout": True}),
        ("timeout", {"timeout": "0.05"}),
        ("timeout", {"timeout": 61}),
        ("prefix", {"prefix": ""}),
        ("prefix", {"prefix": "a b"}),
        ("prefix", {"prefix": "a{b"}),
        ("prefix", {"prefix": "a}"}),
        ("prefix", {"prefix": "x" * 101}),
        ("prefix", {"prefix": 5}),
    ],
)
def test_bad_options_are_config_errors(option: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisBackend("redis://127.0.0.1:1/0", **kwargs)  # type: ignore[arg-type]
    assert caught.value.option == option
    assert caught.value.value is kwargs[option] or caught.value.value != caught.value.value


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("http://127.0.0.1:6379", "redis://"),
        ("redis://127.0.0.1:1/0?socket_timeout=5", "socket_timeout"),
        ("redis://127.0.0.1:1/0?retry_on_timeout=yes", "retry_on_timeout"),
        (42, "a Redis URL"),
        (None, "a Redis URL"),
    ],
)
def test_bad_clients_and_urls_are_config_errors(given: object, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        RedisBackend(given)  # type: ignore[arg-type]


def test_names_that_would_break_the_hash_tag_are_refused() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    for name in ("", "a{b", "a}b"):
        with pytest.raises(ConfigError, match="hash tag"):
            backend.acquire(name, 1.0, 0.0)
    with pytest.raises(ValueError, match="interval"):
        backend.acquire("a", 0.0, 0.0)
    with pytest.raises(ValueError, match="tolerance"):
        backend.acquire("a", 1.0, -1.0)


def test_a_given_client_is_used_as_it_is(redis_flushed: RedisServer) -> None:
    client = redis.Redis.from_url(redis_flushed.url)
    backend = RedisBackend(client)
    assert backend.acquire("given", 10.0, 0.0) == (True, 0.0)
    backend.close()  # not ours to close
    assert client.ping()
    with pytest.raises(TypeError, match="sync"):
        asyncio.run(backend.acquire_async("given", 10.0, 0.0))
    client.close()

    async def main() -> None:
        aclient = redis.asyncio.Redis.from_url(redis_flushed.url)
        try:
            abackend = RedisBackend(aclient)
            assert (await abackend.acquire_async("given", 10.0, 0.0))[0] is False
            with pytest.raises(TypeError, match="async"):
                abackend.acquire("given", 10.0, 0.0)
        finally:
            await aclient.aclose()

    asyncio.run(main())


# -- the test server itself ---------------------------------------------------------------


def test_without_redis_server_the_tests_skip_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(helper.shutil, "which", lambda name: None)
    monkeypatch.setattr(helper.os, "access", lambda path, mode: False)
    monkeypatch.setattr(helper, "REQUIRED", False)
    monkeypatch.delenv(helper.REQUIRE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y redis-server"):
        helper.redis_binary()
    monkeypatch.setenv(helper.REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y redis-server"):
        helper.redis_binary()
