"""resilient.httpx against a real HTTP server on 127.0.0.1 (tests/faultserver.py): sync,
asyncio and trio, no mock of httpx anywhere.

Each scenario is written once as an async function of a ``Client`` (the sync flavour's
calls block inside it), and run in every mode. Breakers and retries take a ManualClock
where their waits would otherwise cost time; the timeouts that are the point of a test are
short, and everything waited for on the server side has a bounded wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

import resilient
import resilient.httpx as rh
from resilient import Bulkhead, CircuitBreaker, ConfigError, Retry, State, registry
from resilient.testing import ManualClock

from .faultserver import Blackhole, FaultServer, Reply, no_leaks, refused_url

MODES = ("sync", "asyncio", "trio")


class Client:
    """One httpx client of the mode's kind over a resilient transport, awaitable alike."""

    def __init__(self, mode: str, **options: Any) -> None:
        self.mode = mode
        options.setdefault("retry", Retry(3, wait=0.0))
        options.setdefault("breaker", None)
        if mode == "sync":
            self.transport: Any = rh.ResilientTransport(**options)
            self.client: Any = httpx.Client(transport=self.transport)
        else:
            self.transport = rh.AsyncResilientTransport(**options)
            self.client = httpx.AsyncClient(transport=self.transport)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.mode == "sync":
            return self.client.request(method, url, **kwargs)  # type: ignore[no-any-return]
        return await self.client.request(method, url, **kwargs)  # type: ignore[no-any-return]

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def close(self) -> None:
        if self.mode == "sync":
            self.client.close()
        else:
            await self.client.aclose()


def run(mode: str, scenario: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(scenario, backend="asyncio" if mode == "sync" else mode)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


RETRY_AFTER = "Retry-After"


# -- per-host breakers ---------------------------------------------------------------------


def test_a_hosts_breaker_opens_and_recovers_and_the_other_host_is_untouched(mode: str) -> None:
    clock = ManualClock()
    template = CircuitBreaker(
        min_calls=2, window_size=2, open_for=30, half_open_calls=1, clock=clock
    )

    async def scenario() -> None:
        with FaultServer() as bad, FaultServer() as good:
            client = Client(mode, name="hosts", retry=None, breaker=template)
            bad.script(Reply(503), Reply(500))
            assert (await client.get(bad.url)).status_code == 503
            assert (await client.get(bad.url)).status_code == 500
            with pytest.raises(httpx.TransportError) as info:
                await client.get(bad.url + "/more")
            rejection = info.value
            assert isinstance(rejection, rh.CircuitOpenError)
            assert isinstance(rejection, resilient.CircuitOpenError)
            assert rejection.retry_after == 30.0
            assert rejection.request.url == bad.url + "/more"
            assert bad.count() == 2  # the rejected request never left

            for _ in range(3):
                assert (await client.get(good.url)).status_code == 200
            good_breaker = client.transport.breaker_for(f"127.0.0.1:{good.port}")
            bad_breaker = client.transport.breaker_for(bad.url)
            assert (good_breaker.state, bad_breaker.state) == (State.CLOSED, State.OPEN)
            assert bad_breaker.name == f"hosts.127.0.0.1:{bad.port}"
            assert registry.get(bad_breaker.name) is bad_breaker

            clock.advance(30)  # the open spell ends: one probe, which succeeds
            assert (await client.get(bad.url)).status_code == 200
            assert bad_breaker.state is State.CLOSED
            assert set(client.transport.breakers) == {
                f"127.0.0.1:{bad.port}",
                f"127.0.0.1:{good.port}",
            }
            await client.close()

    run(mode, scenario)


def test_a_host_that_refuses_connections_opens_only_its_own_breaker(mode: str) -> None:
    template = CircuitBreaker(min_calls=2, window_size=2, clock=ManualClock())

    async def scenario() -> None:
        with FaultServer() as up:
            client = Client(mode, name="down", retry=Retry(2), breaker=template)
            with pytest.raises(httpx.ConnectError):
                await client.post(refused_url())  # two attempts, two failures: open
            with pytest.raises(rh.CircuitOpenError):
                await client.post(refused_url())
            assert (await client.post(up.url)).status_code == 200
            assert client.transport.breaker_for(up.url).state is State.CLOSED
            assert client.transport.breaker_for(refused_url()).state is State.OPEN
            await client.close()

    run(mode, scenario)


def test_connection_errors_and_timeouts_are_failures_and_404_is_not(mode: str) -> None:
    clock = ManualClock()
    template = CircuitBreaker(failure_rate=1.0, min_calls=3, window_size=3, clock=clock)

    async def scenario() -> None:
        with FaultServer() as server:
            # (a hang is cut at the attempt timeout; the answers must come within it
            # even on a busy machine: a second)
            client = Client(mode, retry=None, breaker=template, attempt_timeout=1.0)
            server.script(Reply(404), Reply(501), Reply(505), Reply(400))
            for _ in range(4):
                await client.get(server.url)
            breaker = client.transport.breaker_for(server.url)
            assert breaker.metrics.failures == 0
            server.script(Reply(action="reset"), Reply(action="hang"), Reply(429))
            for _ in range(2):
                with pytest.raises(httpx.HTTPError):
                    await client.get(server.url)
            assert (await client.get(server.url)).status_code == 429
            assert breaker.state is State.OPEN
            server.release()
            await client.close()

    run(mode, scenario)


def test_a_named_templates_variables_come_after_the_transports(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("RESILIENT_SHARED_TMPL_BREAKER_OPEN_FOR", "40")
    env.setenv("RESILIENT_SHARED_TMPL_BREAKER_MIN_CALLS", "7")
    env.setenv("RESILIENT_NEAREST_BREAKER_MIN_CALLS", "9")
    template = CircuitBreaker("shared-tmpl")
    transport = rh.ResilientTransport(name="nearest", breaker=template)
    breaker = transport.breaker_for("a.example:443")
    assert breaker.name == "nearest.a.example:443"
    assert (breaker.settings["open_for"], breaker.settings["min_calls"]) == (40.0, 9)
    assert breaker.settings.sources["open_for"] == "RESILIENT_SHARED_TMPL_BREAKER_OPEN_FOR"


def test_variables_configure_every_host_or_one(mode: str, env: pytest.MonkeyPatch) -> None:
    env.setenv("RESILIENT_FLEET_BREAKER_OPEN_FOR", "45")

    async def scenario() -> None:
        with FaultServer() as a, FaultServer() as b:
            env.setenv(f"RESILIENT_FLEET_127_0_0_1_{b.port}_BREAKER_OPEN_FOR", "90")
            client = Client(mode, name="fleet", breaker=CircuitBreaker(open_for=10))
            await client.get(a.url)
            await client.get(b.url)
            breakers = client.transport.breakers
            assert breakers[f"127.0.0.1:{a.port}"].settings["open_for"] == 45.0
            assert breakers[f"127.0.0.1:{b.port}"].settings["open_for"] == 90.0
            env.setenv("RESILIENT_FLEET_BREAKER_OPEN_FOR", "50")
            resilient.reload()
            assert breakers[f"127.0.0.1:{a.port}"].settings["open_for"] == 50.0
            await client.close()

    run(mode, scenario)


def test_the_least_recently_used_hosts_breaker_is_dropped_past_max_hosts() -> None:
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), name="lru", max_hosts=2
    )
    with httpx.Client(transport=transport) as client:
        for host in ("a", "b", "a", "c"):
            client.get(f"https://{host}.example/")
    assert set(transport.breakers) == {"a.example:443", "c.example:443"}
    gc.collect()
    with pytest.raises(KeyError):
        registry.get("lru.b.example:443")
    assert registry.get("lru.a.example:443").state is State.CLOSED


def test_the_template_gives_its_listeners_and_code_options_but_not_its_name() -> None:
    """Its name is not theirs: its variables apply to them after the transport's."""
    changes: list[Any] = []
    template = CircuitBreaker("tmpl", min_calls=1, window_size=1, open_for=7)
    template.add_listener(changes.append)
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(502)),
        name="listened",
        retry=None,
        breaker=template,
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://x.example/")
    breaker = transport.breaker_for("x.example:443")
    assert breaker.settings["open_for"] == 7.0
    assert [c.new for c in changes] == [State.OPEN]
    assert changes[0].breaker.name == "listened.x.example:443"
    assert template.state is State.CLOSED  # the template itself guards nothing


def test_many_threads_over_many_hosts_keep_the_bound_and_lose_no_request(
    switch_often: None,
) -> None:
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, text=request.url.host)),
        name="hammer",
        max_hosts=8,
    )
    answers: list[str] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with httpx.Client(transport=transport) as client:
                for i in range(60):
                    host = f"h{(n * 7 + i) % 20}.example"
                    answers.append(client.get(f"https://{host}/").text)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(answers) == 12 * 60
    assert len(transport.breakers) <= 8


# -- retries: Retry-After, exhaustion, the commit point -------------------------------------


def _date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        (((RETRY_AFTER, "3"),), 3.0, 3.0),
        (((RETRY_AFTER, "1.5"),), 1.5, 1.5),
        ((("retry-after-ms", "2500"),), 2.5, 2.5),
        (((RETRY_AFTER, "@date+40"),), 38.0, 40.0),  # an HTTP-date: whole seconds
        (((RETRY_AFTER, "@date-40"),), 0.25, 0.25),  # in the past: 0, then the backoff
        (((RETRY_AFTER, "1m0s"),), 0.25, 0.25),  # unreadable: the backoff
        (((RETRY_AFTER, "9" * 40),), 0.25, 0.25),  # overflowing: the backoff
    ],
    ids=["seconds", "fraction", "ms", "date", "past-date", "unreadable", "overflow"],
)
def test_retry_after_in_each_form_is_honoured(
    mode: str, server: FaultServer, headers: Any, low: float, high: float
) -> None:
    if headers[0][1].startswith("@date"):
        headers = ((RETRY_AFTER, _date(float(headers[0][1][5:]))),)
    clock = ManualClock()

    async def scenario() -> None:
        client = Client(mode, retry=Retry(3, wait=0.25, clock=clock), total_timeout=None)
        server.script(Reply(503, headers=headers))
        response = await client.get(server.url)
        assert response.status_code == 200
        assert low <= clock.monotonic() <= high
        await client.close()

    run(mode, scenario)


def test_a_hint_longer_than_the_time_left_returns_that_answer_at_once(
    mode: str, server: FaultServer
) -> None:
    clock = ManualClock()

    async def scenario() -> None:
        client = Client(
            mode, retry=Retry(5, wait=0.1, clock=clock), attempt_timeout=5, total_timeout=5
        )
        server.script(Reply(429, headers=((RETRY_AFTER, "20"),)))
        response = await client.post(server.url)
        assert response.status_code == 429
        assert response.headers[RETRY_AFTER] == "20"
        assert response.read() == b"ok" if mode == "sync" else True
        assert (server.count(), clock.monotonic()) == (1, 0.0)
        await client.close()
        # beyond max_wait (60 s): the same, with no total at all
        client = Client(mode, retry=Retry(5, clock=clock), total_timeout=None)
        server.script(Reply(503, headers=((RETRY_AFTER, "3600"),)))
        assert (await client.get(server.url)).status_code == 503
        assert (server.count(), clock.monotonic()) == (2, 0.0)
        await client.close()

    run(mode, scenario)


def test_when_retries_run_out_the_last_answer_is_returned_and_the_others_closed(
    mode: str, server: FaultServer
) -> None:
    async def scenario() -> None:
        client = Client(mode, retry=Retry(3))
        server.script(Reply(503, body=b"one"), Reply(502, body=b"two"), Reply(504, body=b"three"))
        response = await client.get(server.url)
        assert (response.status_code, response.content) == (504, b"three")
        # each retried answer was closed, so its connection went back to the pool: every
        # attempt went over one connection
        assert {seen.connection for seen in server.seen()} == {1}
        await client.close()
        server.wait_connections(0)

    run(mode, scenario)


@pytest.mark.parametrize(
    ("method", "headers", "reply", "sent"),
    [
        ("GET", {}, Reply(503), 3),
        ("PUT", {}, Reply(500), 3),
        ("DELETE", {}, Reply(action="reset"), 3),
        ("POST", {}, Reply(503), 1),  # may have been carried out: not again
        ("PATCH", {}, Reply(action="reset"), 1),
        ("POST", {"Idempotency-Key": "k-1"}, Reply(503), 3),
        ("POST", {"Idempotency-Key": "k-2"}, Reply(action="reset"), 3),
        ("POST", {}, Reply(429), 3),  # refused unprocessed: safe for any method
        ("POST", {}, Reply(408), 3),
        ("GET", {}, Reply(501), 1),  # not a failure at all
    ],
)
def test_what_is_retried_follows_the_commit_point(
    mode: str, server: FaultServer, method: str, headers: dict[str, str], reply: Reply, sent: int
) -> None:
    async def scenario() -> None:
        client = Client(mode)
        server.script(reply, reply, reply)
        if reply.action == "answer":  # the last answer comes back, retried or not
            response = await client.request(method, server.url, headers=headers, content=b"{}")
            assert response.status_code == reply.status
        else:
            with pytest.raises(httpx.HTTPError) as info:
                await client.request(method, server.url, headers=headers, content=b"{}")
            told = notes(info.value)
            if sent == 1:
                assert f"not retried: {method} may have reached the server" in told
            else:
                assert "gave up after 3 attempts" in told
        assert server.count() == sent
        await client.close()

    run(mode, scenario)


def test_a_post_is_retried_after_a_connect_error(mode: str) -> None:
    async def scenario() -> None:
        client = Client(mode)
        with pytest.raises(httpx.ConnectError) as info:
            await client.post(refused_url(), content=b"charge")
        assert "Retry('http'): gave up after 3 attempts" in notes(info.value)
        await client.close()

    run(mode, scenario)


def test_a_post_is_not_retried_after_a_read_timeout_unless_it_has_a_key(mode: str) -> None:
    async def scenario() -> None:
        with Blackhole() as hole:
            client = Client(mode, attempt_timeout=0.5)  # (the connect takes none of it)
            with pytest.raises(httpx.ReadTimeout) as info:
                await client.post(hole.url, content=b"charge")
            assert "not retried: POST may have reached the server (ReadTimeout)" in notes(
                info.value
            )
            hole.wait_for(lambda: hole.accepted >= 1)  # (its accept thread may lag)
            assert hole.accepted == 1
            with pytest.raises(httpx.ReadTimeout):
                await client.post(hole.url, content=b"charge", headers={"Idempotency-Key": "x"})
            hole.wait_for(lambda: hole.accepted >= 4)  # three attempts, each a new connection
            assert hole.accepted == 4
            await client.close()

    run(mode, scenario)


def test_a_streamed_body_is_sent_once(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        client = Client(mode)
        if mode == "sync":
            body: Any = iter([b"part one, ", b"part two"])
        else:

            async def parts() -> AsyncIterator[bytes]:
                yield b"part one, "
                yield b"part two"

            body = parts()
        headers = {"Idempotency-Key": "upload-1"}  # retryable, but for its body
        server.script(Reply(503))
        response = await client.request("PUT", server.url, content=body, headers=headers)
        assert response.status_code == 503
        assert [s.body for s in server.seen()] == [b"part one, part two"]
        server.script(Reply(action="reset"))
        with pytest.raises(httpx.HTTPError) as info:
            await client.request(
                "PUT", server.url, content=iter([b"x"]) if mode == "sync" else parts()
            )
        assert "not retried: its body is streamed, so it is sent once" in notes(info.value)
        assert server.count() == 2
        await client.close()

    run(mode, scenario)


def test_a_body_over_max_replay_bytes_is_sent_once(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        client = Client(mode, max_replay_bytes=10)
        server.script(Reply(action="reset"), Reply(action="reset"))
        with pytest.raises(httpx.HTTPError) as info:
            await client.request("PUT", server.url, content=b"x" * 11)
        assert "its body (11 bytes) is larger than max_replay_bytes (10)" in notes(info.value)
        assert server.count() == 1
        assert (await client.request("PUT", server.url, content=b"y" * 10)).status_code == 200
        assert [s.body for s in server.seen()[1:]] == [b"y" * 10, b"y" * 10]  # resent whole
        await client.close()

    run(mode, scenario)


# -- time --------------------------------------------------------------------------------


def test_a_hung_request_ends_at_the_deadline(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        client = Client(mode)
        server.script(Reply(action="hang"))
        # (a second: the attempt must start before it is spent, even on a busy machine)
        with pytest.raises(httpx.ReadTimeout) as info, resilient.deadline(1.0):
            await client.get(server.url)
        assert "the deadline in force" in notes(info.value)
        server.wait_seen(1)  # (the server's thread may lag behind the client's timeout)
        assert server.count() == 1  # no time was left to try again
        server.release()
        with pytest.raises(rh.TimeoutExpired), resilient.deadline(0):
            await client.get(server.url)  # nothing left: not even sent
        assert server.count() == 1
        await client.close()

    run(mode, scenario)


def test_the_attempt_timeout_cuts_a_slow_answer_and_the_retry_tries_again(
    mode: str, server: FaultServer
) -> None:
    async def scenario() -> None:
        client = Client(mode, attempt_timeout=1.0, total_timeout=20)
        server.script(Reply(delay=30), Reply(delay=30))  # (cut short when the server closes)
        assert (await client.get(server.url)).status_code == 200
        assert len(server.wait_seen(3)) == 3
        await client.close()

    run(mode, scenario)


@pytest.mark.resilient_testing
def test_test_mode_makes_the_transports_waits_zero(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        client = Client(mode, retry=Retry(3, wait=300))  # five minutes, were it waited
        server.script(Reply(503), Reply(503))
        assert (await client.get(server.url)).status_code == 200
        assert server.count() == 3
        await client.close()

    run(mode, scenario)


# -- rejections, leaks, cancellation -------------------------------------------------------


def test_a_full_bulkhead_is_an_httpx_error_too(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        client = Client(mode, bulkhead=Bulkhead(1), retry=None)
        server.script(Reply(action="hang"))

        async def second() -> None:
            with anyio.fail_after(10):
                while not server.count():  # the first request holds the only slot
                    await anyio.sleep(0.005)
            with pytest.raises(httpx.TransportError) as info:
                await client.get(server.url)
            assert isinstance(info.value, rh.BulkheadFullError)
            assert isinstance(info.value, resilient.BulkheadFullError)
            assert info.value.request.url == server.url
            server.release()

        if mode == "sync":  # the first request blocks a thread of its own
            first = threading.Thread(target=lambda: _quietly(client.client.get, server.url))
            first.start()
            await second()
            first.join(10)
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_quietly_async, client.get, server.url)
                await second()
        assert server.count() == 1
        await client.close()

    run(mode, scenario)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except httpx.HTTPError:
        pass


async def _quietly_async(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    try:
        await fn(*args)
    except httpx.HTTPError:
        pass


def test_no_connection_thread_or_task_is_left_behind(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        tasks = len(asyncio.all_tasks()) if mode == "asyncio" else 0
        client = Client(mode, attempt_timeout=2.0)
        server.script(Reply(503), Reply(action="reset"), Reply(action="close"), Reply(502))
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)  # 503, reset, close: three attempts
        assert (await client.get(server.url)).status_code == 200  # 502, then 200
        with pytest.raises(httpx.ConnectError):
            await client.get(refused_url())
        await client.close()
        server.wait_connections(0)
        if mode == "asyncio":
            assert len(asyncio.all_tasks()) == tasks

    with no_leaks():
        run(mode, scenario)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_request_cancelled_while_it_waits_leaves_nothing_behind(
    backend: str, server: FaultServer
) -> None:
    """Cancelled during the retry's wait, after a 503 that was closed first: the
    connection is back in the pool, so the next request reuses it."""

    async def scenario() -> None:
        client = Client(backend, retry=Retry(3, wait=30), total_timeout=None)
        server.script(Reply(503))
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await client.get(server.url)

                tg.start_soon(call)
                with anyio.fail_after(10):
                    while not server.count():  # (no worker thread: nothing to leave behind)
                        await anyio.sleep(0.005)
                await anyio.sleep(0.05)  # into the retry's wait
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert (await client.get(server.url)).status_code == 200
        assert [s.connection for s in server.seen()] == [1, 1]
        await client.close()

    with no_leaks():
        anyio.run(scenario, backend=backend)


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [rh.ResilientTransport, rh.AsyncResilientTransport])
@pytest.mark.parametrize(
    ("options", "option", "expected"),
    [
        ({"attempt_timeout": 40}, "attempt_timeout", "at most total_timeout (30s)"),
        ({"attempt_timeout": 0}, "attempt_timeout", "seconds > 0"),
        ({"total_timeout": -1}, "total_timeout", "seconds > 0"),
        ({"retry": 3}, "retry", "a resilient.Retry, or None"),
        ({"breaker": Bulkhead(1)}, "breaker", "a resilient.CircuitBreaker"),
        ({"max_replay_bytes": -1}, "max_replay_bytes", "a whole number of bytes >= 0"),
        ({"max_replay_bytes": 1.5}, "max_replay_bytes", "a whole number of bytes >= 0"),
        ({"failure_statuses": [503, 99]}, "failure_statuses", "HTTP status codes 100-599"),
        ({"failure_statuses": 503}, "failure_statuses", "HTTP status codes 100-599"),
        ({"max_hosts": 0}, "max_hosts", "a whole number from 1 to 1,000,000"),
        ({"max_hosts": 2**70}, "max_hosts", "a whole number from 1 to 1,000,000"),
        ({"name": None}, "name", "a string with at least one ASCII letter or digit"),
        ({"name": "---"}, "name", "at least one ASCII letter or digit"),
        ({"transport": object()}, "transport", "None or an httpx."),
    ],
)
def test_bad_options_are_config_errors_that_say_what_is_expected(
    kind: Any, options: dict[str, Any], option: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        kind(**options)
    assert info.value.option == option
    assert expected in str(info.value)


def test_the_wrong_kind_of_transport_is_refused() -> None:
    with pytest.raises(ConfigError, match="AsyncBaseTransport"):
        rh.AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="BaseTransport"):
        rh.ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]


def test_the_transport_retry_is_its_own_named_after_it_and_reads_its_variables(
    env: pytest.MonkeyPatch, server: FaultServer
) -> None:
    env.setenv("RESILIENT_BILLING_RETRY_ATTEMPTS", "5")
    mine = Retry(2, wait=0)
    transport = rh.ResilientTransport(name="billing", retry=mine, breaker=None)
    assert transport.retry is not None
    assert transport.retry is not mine
    assert (transport.retry.name, transport.retry.attempts) == ("billing", 5)
    assert mine.name is None  # the given Retry is left as it was
    assert repr(transport.retry) == "<Retry('billing') attempts=5>"
    server.script(*[Reply(503)] * 4)
    with httpx.Client(transport=transport) as client:
        assert client.get(server.url).status_code == 200
    assert server.count() == 5


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork")
def test_a_child_forked_while_another_thread_holds_the_hosts_lock_still_sends() -> None:
    from .test_hardening import in_child

    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, text=request.url.host)),
        name="forked",
    )
    hosts = transport._hosts
    assert hosts is not None
    taken, go = threading.Event(), threading.Event()

    def hold() -> None:
        with hosts._lock:
            taken.set()
            go.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    try:

        def child() -> str:
            with httpx.Client(transport=transport) as client:
                return client.get("https://child.example/").text

        assert in_child(child) == "child.example"
    finally:
        go.set()
        holder.join(10)


# -- found by review: each a regression test ----------------------------------------------


def test_a_trickling_retried_answer_is_closed_not_drained_for_long(
    mode: str, server: FaultServer
) -> None:
    """Draining keeps a connection only when it is quick: a 503 whose body trickles is
    closed after a moment, and the retry goes on within its time on a new connection."""

    async def scenario() -> None:
        client = Client(mode, attempt_timeout=1, total_timeout=3)
        server.script(Reply(503, body=b"x" * 200, delay=0.05, action="drip"))
        response = await client.get(server.url)
        assert response.status_code == 200
        assert [s.connection for s in server.seen()] == [1, 2]
        await client.close()

    run(mode, scenario)


def test_a_retried_head_keeps_its_connection(mode: str, server: FaultServer) -> None:
    async def scenario() -> None:
        client = Client(mode)
        server.script(*[Reply(503, body=b"x" * 200_000)] * 2)  # HEAD: the length, no body
        assert (await client.request("HEAD", server.url)).status_code == 200
        assert [s.connection for s in server.seen()] == [1, 1, 1]
        await client.close()

    run(mode, scenario)


def test_a_redirected_request_is_retried_its_body_resent_whole(
    mode: str, server: FaultServer
) -> None:
    async def scenario() -> None:
        client = Client(mode)
        client.client.follow_redirects = True
        server.script(Reply(302, headers=(("Location", "/b"),)), path="/a")
        server.script(Reply(503), path="/b")
        assert (await client.get(server.url + "/a")).status_code == 200
        assert server.count("/b") == 2
        server.script(Reply(307, headers=(("Location", "/d"),)), path="/c")
        server.script(Reply(action="reset"), path="/d")
        response = await client.request("PUT", server.url + "/c", content=b"payload")
        assert response.status_code == 200
        assert [s.body for s in server.seen("/d")] == [b"payload", b"payload"]
        await client.close()

    run(mode, scenario)


def test_a_redirect_caps_from_the_callers_timeouts_not_the_last_attempts() -> None:
    seen: list[tuple[str, float]] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.extensions["timeout"]["read"]))
        if request.url.path == "/a":
            return httpx.Response(302, headers={"Location": "/b"})
        return httpx.Response(200)

    transport = rh.ResilientTransport(httpx.MockTransport(app), attempt_timeout=2)
    with httpx.Client(transport=transport, timeout=5, follow_redirects=True) as client:
        client.get("https://r.example/a")
        with resilient.deadline(1):
            client.get("https://r.example/a")
    assert [path for path, _ in seen] == ["/a", "/b", "/a", "/b"]
    assert [read for _, read in seen[:2]] == [2.0, 2.0]
    assert all(0 < read <= 1.0 for _, read in seen[2:])  # the deadline's, not the 2 s


def test_a_streamed_body_that_was_never_sent_is_retried(mode: str) -> None:
    async def scenario() -> None:
        client = Client(mode)
        if mode == "sync":
            body: Any = iter([b"never", b"read"])
        else:

            async def parts() -> AsyncIterator[bytes]:
                yield b"never"

            body = parts()
        with pytest.raises(httpx.ConnectError) as info:
            await client.request("PUT", refused_url(), content=body)
        assert "gave up after 3 attempts" in notes(info.value)
        await client.close()

    run(mode, scenario)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ProxyError("proxy refused"),
        httpx.UnsupportedProtocol("gopher"),
        httpx.LocalProtocolError("bad header"),
        RuntimeError("a bug in a transport"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_say_nothing_of_the_host_count_neither_way(error: Exception) -> None:
    def app(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/odd":
            raise error
        return httpx.Response(503)

    template = CircuitBreaker(min_calls=2, window_size=2, clock=ManualClock())
    transport = rh.ResilientTransport(httpx.MockTransport(app), retry=None, breaker=template)
    with httpx.Client(transport=transport) as client:
        client.get("https://odd.example/")
        with pytest.raises(type(error)):
            client.get("https://odd.example/odd")
        assert transport.breaker_for("odd.example:443").metrics.calls == 1
        client.get("https://odd.example/")
    assert transport.breaker_for("odd.example:443").state is State.OPEN


def test_the_url_to_host_table_stays_bounded_under_threads(switch_often: None) -> None:
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), name="bound", max_hosts=4
    )

    def worker(n: int) -> None:
        with httpx.Client(transport=transport) as client:
            for i in range(150):
                client.get(f"https://h{n}-{i % 30}.example:{8000 + i % 3}/")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    hosts = transport._hosts
    assert hosts is not None
    assert len(hosts._made) <= 4
    assert set(map(id, hosts._hits.values())) <= set(map(id, hosts._made.values()))
    assert len(hosts._hits) == sum(len(h.keys) for h in hosts._made.values())


def test_bad_variables_of_the_family_or_a_host_fail_the_construction(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("RESILIENT_BADFAM_BREAKER_OPEN_FOR", "soon")
    with pytest.raises(ConfigError) as info:
        rh.ResilientTransport(name="badfam")
    assert info.value.option == "RESILIENT_BADFAM_BREAKER_OPEN_FOR"
    env.delenv("RESILIENT_BADFAM_BREAKER_OPEN_FOR")
    env.setenv("RESILIENT_BADFAM_API_EXAMPLE_443_BREAKER_FAILURE_RATE", "2")
    with pytest.raises(ConfigError) as info:
        rh.ResilientTransport(name="badfam")
    assert info.value.option == "RESILIENT_BADFAM_API_EXAMPLE_443_BREAKER_FAILURE_RATE"
    rh.ResilientTransport(name="badfam", breaker=None)  # no breakers: nothing reads them


def test_a_reload_knows_the_familys_variables_before_any_host(env: pytest.MonkeyPatch) -> None:
    transport = rh.ResilientTransport(name="knownfam")
    env.setenv("RESILIENT_KNOWNFAM_BREAKER_OPEN_FOR", "20")
    resilient.reload()  # no ConfigWarning (warnings are errors here)
    env.setenv("RESILIENT_KNOWNFAM_BREAKER_OPEN_FOR", "never")
    with pytest.raises(ConfigError):
        resilient.reload()  # and a bad one fails the reload, not a later request
    assert transport.breakers == {}


def test_a_raising_user_predicate_leaves_the_answer_and_its_connection_alone(
    mode: str, server: FaultServer
) -> None:
    def on_result(response: httpx.Response) -> bool:
        return bool(response.json())  # the body is not read yet: this raises

    async def scenario() -> None:
        client = Client(mode, retry=Retry(3, on_result=on_result))
        server.script(Reply(200, body=b"[]"))
        response = await client.get(server.url)
        assert response.status_code == 200
        assert response.json() == []
        await client.close()
        server.wait_connections(0)

    run(mode, scenario)


def test_hosts_are_named_in_ascii_and_found_in_any_case() -> None:
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), name="idn"
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://Bücher.Example/")
        client.get("https://API.example.com/")
    assert set(transport.breakers) == {"xn--bcher-kva.example:443", "api.example.com:443"}
    assert (
        transport.breaker_for("API.Example.com:443") is transport.breakers["api.example.com:443"]
    )


def test_a_subclass_of_the_breaker_as_template_makes_breakers_of_that_class() -> None:
    class Noted(CircuitBreaker):
        pass

    transport = rh.ResilientTransport(name="sub", breaker=Noted())
    assert type(transport.breaker_for("a.example:443")) is Noted


def test_an_open_breaker_fails_fast_instead_of_holding_the_request(
    mode: str, server: FaultServer
) -> None:
    """The failure that opens the breaker is the last attempt: its answer comes back;
    later requests are refused at once, never held until a probe may go in."""
    clock = ManualClock()
    template = CircuitBreaker(min_calls=2, window_size=2, open_for=30, clock=clock)

    async def scenario() -> None:
        client = Client(mode, retry=Retry(5, wait=0.01), breaker=template)
        server.script(Reply(503), Reply(503))
        assert (await client.get(server.url)).status_code == 503  # 2 attempts: opened
        assert server.count() == 2
        with pytest.raises(rh.CircuitOpenError) as info:
            await client.get(server.url)
        assert info.value.retry_after == 30.0
        assert "not retried: circuit breaker" in notes(info.value)
        client.transport.breaker_for(server.url).force_open()
        with pytest.raises(rh.CircuitOpenError):
            await client.post(server.url)
        assert server.count() == 2
        await client.close()

    run(mode, scenario)


def test_the_timeouts_are_retuned_by_their_variables_and_lifted_by_the_switch(
    env: pytest.MonkeyPatch,
) -> None:
    seen: list[float] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(200)

    env.setenv("RESILIENT_TUNED_ATTEMPT_TIMEOUT_SECONDS", "2")
    transport = rh.ResilientTransport(httpx.MockTransport(app), name="tuned")
    assert registry.get("tuned.attempt").seconds == 2.0
    assert registry.get("tuned.total").seconds == 30.0
    with httpx.Client(transport=transport, timeout=5) as client:
        client.get("https://t.example/")
        env.setenv("RESILIENT_TUNED_ATTEMPT_TIMEOUT_SECONDS", "1.5")
        resilient.reload()
        client.get("https://t.example/")
        env.setenv("RESILIENT_ENABLED", "0")
        resilient.reload()
        client.get("https://t.example/")  # no policy: httpx's own 5 s
    assert seen == [2.0, 1.5, 5.0]


def test_an_attempt_timeout_set_above_the_total_by_a_variable_names_it(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("RESILIENT_LONG_ATTEMPT_TIMEOUT_SECONDS", "1m")
    with pytest.raises(ConfigError) as info:
        rh.ResilientTransport(name="long")
    assert info.value.option == "RESILIENT_LONG_ATTEMPT_TIMEOUT_SECONDS"
    assert "at most total_timeout (30s)" in str(info.value)


def test_a_transport_listener_hears_every_policy_of_it_and_every_host() -> None:
    heard: list[Any] = []
    answers = iter([503, 503, 200])
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(next(answers, 200))),
        name="heard",
        retry=Retry(3, wait=0.0),
        breaker=CircuitBreaker(),
    )
    early = transport.breaker_for("early.example:443")  # made before the listener
    transport.add_listener(heard.append)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://x.example/").status_code == 200
    assert [type(event).__name__ for event in heard] == ["RetryScheduled", "RetryScheduled"]
    early.force_open()
    assert heard[-1].policy is early
    transport.remove_listener(heard.append)
    early.reset()
    assert heard[-1].policy is early
    assert heard[-1].new is State.FORCED_OPEN
    with pytest.raises(ValueError, match="not"):
        transport.remove_listener(heard.append)
