"""The httpx transports the benchmarks compare, and the loops that send through them.

Every subject is an httpx client with its default settings around one transport, so what
differs between two subjects is the transport alone: httpx's own, or ours around it.
Shared by ``test_httpx.py`` (pytest-benchmark) and ``httpx_overhead.py`` (paired rounds).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any, TypeVar

import httpx

from resilient.httpx import AsyncResilientTransport, ResilientTransport

from ._httpserver import BODY

T = TypeVar("T")

#: Requests in one round: enough that a round's fixed costs (entering the event loop,
#: the harness) are a fraction of a per cent of each request.
REQUESTS = 100
MOCK_REQUESTS = 500


def answer(request: httpx.Request) -> httpx.Response:
    """The in-memory server of the MockTransport rows: a fresh 200, as a transport makes."""
    return httpx.Response(200, content=BODY)


def sync_transports(
    inner: Callable[[], httpx.BaseTransport], name: str = "bench"
) -> dict[str, httpx.BaseTransport]:
    """httpx's transport alone, then ours around one like it: with its defaults (retry,
    a breaker per host, timeouts), and with the timeouts only, to split the cost."""
    return {
        "plain": inner(),
        "resilient": ResilientTransport(inner(), name=name),
        "resilient-timeouts_only": ResilientTransport(
            inner(), name=f"{name}-timeouts", retry=None, breaker=None
        ),
    }


def mock_transports() -> dict[str, httpx.BaseTransport]:
    """As :func:`sync_transports` on a MockTransport, and the other half of the split."""
    made = sync_transports(lambda: httpx.MockTransport(answer), "bench-mock")
    made["resilient-no_timeouts"] = ResilientTransport(
        httpx.MockTransport(answer), name="bench-mock-policies", attempt_timeout=None,
        total_timeout=None,
    )  # fmt: skip
    return made


def async_transports(
    inner: Callable[[], httpx.AsyncBaseTransport],
) -> dict[str, httpx.AsyncBaseTransport]:
    return {
        "plain": inner(),
        "resilient": AsyncResilientTransport(inner(), name="bench-async"),
        "resilient-timeouts_only": AsyncResilientTransport(
            inner(), name="bench-async-timeouts", retry=None, breaker=None
        ),
    }


def requests(client: httpx.Client, url: str, n: int) -> int:
    """``n`` GETs, one after another on the client's kept-alive connection; the last
    answer's status, for the smoke run to check."""
    response = None
    for _ in repeat(None, n):
        response = client.get(url)
    assert response is not None
    assert response.content == BODY
    return response.status_code


async def arequests(client: httpx.AsyncClient, url: str, n: int) -> int:
    response = None
    for _ in repeat(None, n):
        response = await client.get(url)
    assert response is not None
    assert response.content == BODY
    return response.status_code


class TrioThread:
    """One ``trio.run`` on a thread of its own for as long as the benchmarks need it.

    A trio client's connections belong to the run that opened them, so a round made of
    its own ``trio.run`` would reconnect and pay trio's start-up (some 250 us) every
    time. Here the run lasts, and each round is handed to it (``trio.from_thread``, a
    few tens of microseconds a round, in every row alike).
    """

    #: The longest the run lasts, even if nobody closes it; and the wait for its thread.
    LIMIT = 900.0
    JOIN = 10.0

    def __init__(self) -> None:
        import trio

        self._trio = trio
        started = threading.Event()
        self._token: Any = None
        self._stop: Any = None

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            started.set()
            with trio.move_on_after(self.LIMIT):
                await self._stop.wait()

        self._thread = threading.Thread(target=trio.run, args=(main,), name="benchmark-trio")
        self._thread.start()
        if not started.wait(self.JOIN):
            raise RuntimeError("trio did not start")

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the trio run; its result here."""
        return self._trio.from_thread.run(fn, *args, trio_token=self._token)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(self.JOIN)
