"""What ResilientTransport adds to a request, next to httpx's own transport, in one run.

Every row is an httpx client with its default settings, sending GETs one after another
over one kept-alive connection to the same server on 127.0.0.1 (``_httpserver.py``: a
child process, so it takes nothing from the client's GIL and its work runs on the other
core). The rows differ by transport only: httpx's ``HTTPTransport``, ours around one with
its defaults (retry, a circuit breaker per host, attempt and total timeouts), and ours
with the timeouts only. The target: what ours adds is at most 5 % of the plain request's
median. All requests succeed (200): this is the happy path, the cost of every request.

A few per cent is less than this machine's speed drifts between two rows timed one after
the other, so every row but the baseline also runs a round of the baseline before its
first round and after each one (untimed by pytest-benchmark, timed here, in
``extra_info["paired"]``); the summary gives what the row adds from those interleaved
rounds (conftest.py, ``_paired``).

The MockTransport groups take the network away (an in-memory handler answers), which
shows what the transport itself costs, and split it between its timeouts and its
retry-and-breaker. A round is ``REQUESTS`` (``MOCK_REQUESTS``) requests; the summary
reports per request (``extra_info["ops"]``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ._http import (
    MOCK_REQUESTS,
    REQUESTS,
    TrioThread,
    answer,
    arequests,
    async_transports,
    mock_transports,
    requests,
    sync_transports,
)
from ._httpserver import LocalServer

ROUNDS = 40
MOCK_ROUNDS = 30
WARMUP = 2
SYNC = ASYNC = ["plain", "resilient", "resilient-timeouts_only"]
MOCK = [*SYNC, "resilient-no_timeouts"]
MOCK_URL = "http://127.0.0.1:8000/"  # never connected to: the MockTransport answers


def bench(
    benchmark: Any,
    name: str,
    run: Callable[[str], int],
    *,
    ops: int,
    rounds: int = ROUNDS,
) -> None:
    """Time rounds of ``run(name)``; for a row other than "plain", with a round of
    ``run("plain")`` before the first and after each (``extra_info["paired"]``)."""
    benchmark.extra_info.update(ops=ops, baseline=name == "plain", added=True)
    paired: list[float] = []

    def plain(*_: object) -> None:
        start = time.perf_counter()
        run("plain")
        paired.append(time.perf_counter() - start)

    teardown = None
    if name != "plain" and not benchmark.disabled:
        plain()
        teardown = plain
    result = benchmark.pedantic(
        run, args=(name,), teardown=teardown, rounds=rounds, warmup_rounds=WARMUP
    )
    if paired:
        benchmark.extra_info["paired"] = paired
    assert result == 200


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with LocalServer() as server:
        yield server.url


# -- sync ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_clients() -> Iterator[dict[str, httpx.Client]]:
    clients = {
        name: httpx.Client(transport=transport)
        for name, transport in sync_transports(httpx.HTTPTransport).items()
    }
    yield clients
    for client in clients.values():
        client.close()


@pytest.mark.benchmark(group="httpx transport (sync, 127.0.0.1)")
@pytest.mark.parametrize("name", SYNC)
def test_httpx_sync(
    benchmark: Any, url: str, sync_clients: dict[str, httpx.Client], name: str
) -> None:
    bench(
        benchmark,
        name,
        lambda subject: requests(sync_clients[subject], url, REQUESTS),
        ops=REQUESTS,
    )


@pytest.mark.benchmark(group="httpx transport (sync, MockTransport)")
@pytest.mark.parametrize("name", MOCK)
def test_httpx_sync_mock(benchmark: Any, name: str) -> None:
    transports = mock_transports()
    clients = {subject: httpx.Client(transport=transports[subject]) for subject in {"plain", name}}
    try:
        bench(
            benchmark,
            name,
            lambda subject: requests(clients[subject], MOCK_URL, MOCK_REQUESTS),
            ops=MOCK_REQUESTS,
            rounds=MOCK_ROUNDS,
        )
    finally:
        for client in clients.values():
            client.close()


# -- asyncio ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def async_clients(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, httpx.AsyncClient]]:
    clients = {
        name: httpx.AsyncClient(transport=transport)
        for name, transport in async_transports(httpx.AsyncHTTPTransport).items()
    }
    yield clients
    for client in clients.values():
        loop.run_until_complete(client.aclose())


@pytest.mark.benchmark(group="httpx transport (asyncio, 127.0.0.1)")
@pytest.mark.parametrize("name", ASYNC)
def test_httpx_asyncio(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    url: str,
    async_clients: dict[str, httpx.AsyncClient],
    name: str,
) -> None:
    def run(subject: str) -> int:
        return loop.run_until_complete(arequests(async_clients[subject], url, REQUESTS))

    bench(benchmark, name, run, ops=REQUESTS)


@pytest.mark.benchmark(group="httpx transport (asyncio, MockTransport)")
@pytest.mark.parametrize("name", ["plain", "resilient"])
def test_httpx_asyncio_mock(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    transports = async_transports(lambda: httpx.MockTransport(answer))
    clients = {
        subject: httpx.AsyncClient(transport=transports[subject]) for subject in {"plain", name}
    }

    def run(subject: str) -> int:
        return loop.run_until_complete(arequests(clients[subject], MOCK_URL, MOCK_REQUESTS))

    try:
        bench(benchmark, name, run, ops=MOCK_REQUESTS, rounds=MOCK_ROUNDS)
    finally:
        for client in clients.values():
            loop.run_until_complete(client.aclose())


# -- trio ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trio_clients() -> Iterator[tuple[TrioThread, dict[str, httpx.AsyncClient]]]:
    runner = TrioThread()
    try:
        transports = async_transports(httpx.AsyncHTTPTransport)
        clients = {name: httpx.AsyncClient(transport=transports[name]) for name in ASYNC[:2]}
        yield runner, clients
        for client in clients.values():
            runner.run(client.aclose)
    finally:
        runner.close()


@pytest.mark.benchmark(group="httpx transport (trio, 127.0.0.1)")
@pytest.mark.parametrize("name", ASYNC[:2])
def test_httpx_trio(
    benchmark: Any,
    url: str,
    trio_clients: tuple[TrioThread, dict[str, httpx.AsyncClient]],
    name: str,
) -> None:
    runner, clients = trio_clients
    bench(
        benchmark,
        name,
        lambda subject: runner.run(arequests, clients[subject], url, REQUESTS),
        ops=REQUESTS,
    )
