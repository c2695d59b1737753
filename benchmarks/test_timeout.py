"""Timeout: an ``async def`` that finishes well within its limit, per await, on each loop.

Every subject awaits the same ``af`` under a 10 s limit that never fires, so what differs
is what arming and disarming the limit costs: ``@Timeout(10)`` against a bare await, the
loops' own ``asyncio.timeout(10)`` and ``trio.fail_after(10)``, anyio's ``fail_after(10)``
(on both loops), and hyx's ``timeout(10)`` on asyncio. The context managers are written
as ``async with ...: return await af(x)`` in an ``async def``, as user code guards a call
with them; hyx is its decorator, plus ``async with hyx.timeout.timeout(10)`` for reference
(its decorator runs each call in a task of its own, through ``asyncio.wait_for``).
Targets: ours at most ``asyncio.timeout``'s cost on asyncio and ``trio.fail_after``'s on trio.

As in test_async.py, an asyncio round is ``AWAITS`` awaits inside one event loop created
once per module, and a trio round is one ``trio.run`` of ``TRIO_AWAITS`` awaits; the
summary reports per await. Ours arms one loop timer (asyncio) or one watcher task a run
(trio) for all the calls of one Timeout, where the others each schedule and cancel a
deadline per call, so neither start-up is a per-call cost worth hiding: it is part of what
is compared. hyx's decorator, at some 13 us a call, runs fewer rounds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import hyx.timeout
import pytest
import trio

from resilient import Timeout

from ._subjects import ROUNDS, AsyncFn, af, bench_asyncio, bench_trio

PEER_ROUNDS = 10  # for hyx's decorator, whose rounds take some 130 ms
LIMIT = 10.0


async def asyncio_timeout(x: int) -> int:
    async with asyncio.timeout(LIMIT):
        return await af(x)


async def anyio_fail_after(x: int) -> int:
    with anyio.fail_after(LIMIT):
        return await af(x)


async def trio_fail_after(x: int) -> int:
    with trio.fail_after(LIMIT):
        return await af(x)


async def hyx_async_with(x: int) -> int:
    async with hyx.timeout.timeout(LIMIT):
        return await af(x)


async def hyx_decorated() -> AsyncFn:
    """hyx's decorator needs the running loop when it decorates: made inside the loop."""
    return hyx.timeout.timeout(LIMIT)(af)


# -- asyncio -----------------------------------------------------------------------------

ASYNCIO: dict[str, AsyncFn | None] = {
    "bare": af,
    "resilient": Timeout(LIMIT)(af),
    "asyncio.timeout": asyncio_timeout,
    "anyio.fail_after": anyio_fail_after,
    "hyx": None,  # decorated in the loop, below
    "hyx-async_with": hyx_async_with,
}
if not hasattr(asyncio, "timeout"):  # Python 3.10
    del ASYNCIO["asyncio.timeout"]


@pytest.mark.benchmark(group="timeout, nothing expires (asyncio)")
@pytest.mark.parametrize("name", list(ASYNCIO))
def test_asyncio_timeout(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    fn = ASYNCIO[name] or loop.run_until_complete(hyx_decorated())
    rounds = PEER_ROUNDS if name == "hyx" else ROUNDS
    bench_asyncio(benchmark, loop, fn, baseline=name == "bare", rounds=rounds)


# -- trio ----------------------------------------------------------------------------------

TRIO: dict[str, AsyncFn] = {
    "bare": af,
    "resilient": Timeout(LIMIT)(af),
    "trio.fail_after": trio_fail_after,
    "anyio.fail_after": anyio_fail_after,
}


@pytest.mark.benchmark(group="timeout, nothing expires (trio)")
@pytest.mark.parametrize("name", list(TRIO))
def test_trio_timeout(benchmark: Any, name: str) -> None:
    bench_trio(benchmark, TRIO[name], baseline=name == "bare")
