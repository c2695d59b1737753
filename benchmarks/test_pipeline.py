"""Pipeline: a full pipeline against each of its policies alone, so that its cost can be
read as the sum of its parts.

``Pipeline(Retry(3), CircuitBreaker(), Bulkhead(10), Timeout(10))`` guards the same ``f``
or ``af`` as each of its four policies does alone in the other rows, and as the same four
decorators stacked by hand (``Retry(3)(CircuitBreaker()(...))``). A pipeline builds that
same chain of wrappers once, when it decorates, so it should cost what the hand-stacked
chain costs, and no more than the sum of what each policy adds to a bare call. Nothing
fails, waits or expires: this is the path of a healthy call.

A sync Timeout runs every call on a worker thread (Python cannot interrupt one that
overruns), which costs a thread hand-off, tens of microseconds, and dwarfs the rest; so
the sync group also has the pipeline without its Timeout, labelled as such, and, for
reference, the same hand-off through a ``ThreadPoolExecutor``: what any thread costs.

Rounds as in test_async.py (``AWAITS`` awaits in one event loop created once per module)
and test_sync.py (``CALLS`` direct calls in a loop); the summary reports per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from resilient import Bulkhead, CircuitBreaker, Pipeline, Retry, Timeout

from ._subjects import AsyncFn, Loop, af, bench_asyncio, calls, f

CALLS = 1000


def parts() -> tuple[Retry, CircuitBreaker, Bulkhead, Timeout]:
    """Fresh policies for one subject: none is shared between rows."""
    return Retry(3), CircuitBreaker(), Bulkhead(10), Timeout(10)


def by_hand(fn: Any, *policies: Any) -> Any:
    """``fn`` decorated by ``policies``, the first outermost, without a Pipeline."""
    for policy in reversed(policies):
        fn = policy(fn)
    return fn


# -- async -----------------------------------------------------------------------------------

ASYNC: dict[str, AsyncFn] = {
    "bare": af,
    "Retry(3)": Retry(3)(af),
    "CircuitBreaker()": CircuitBreaker()(af),
    "Bulkhead(10)": Bulkhead(10)(af),
    "Timeout(10)": Timeout(10)(af),
    "pipeline": Pipeline(*parts())(af),
    "stacked by hand": by_hand(af, *parts()),
}


@pytest.mark.benchmark(group="pipeline and its parts (asyncio)")
@pytest.mark.parametrize("name", list(ASYNC))
def test_async_pipeline(benchmark: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    bench_asyncio(benchmark, loop, ASYNC[name], baseline=name == "bare")


# -- sync --------------------------------------------------------------------------------------


def handed_off(fn: Callable[[int], int]) -> Callable[[int], int]:
    """``fn`` run on a pool thread while the caller waits: a sync Timeout's floor."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="benchmark-hand-off")

    def run(x: int) -> int:
        return pool.submit(fn, x).result()

    return run


SYNC: dict[str, Loop] = {
    "bare": calls(f),
    "Retry(3)": calls(Retry(3)(f)),
    "CircuitBreaker()": calls(CircuitBreaker()(f)),
    "Bulkhead(10)": calls(Bulkhead(10)(f)),
    "Timeout(10) (worker thread)": calls(Timeout(10)(f)),
    "pipeline without Timeout": calls(Pipeline(*parts()[:3])(f)),
    "stacked by hand without Timeout": calls(by_hand(f, *parts()[:3])),
    "pipeline (Timeout: worker thread)": calls(Pipeline(*parts())(f)),
    "ThreadPoolExecutor hand-off (reference)": calls(handed_off(f)),
}


@pytest.mark.benchmark(group="pipeline and its parts (sync)")
@pytest.mark.parametrize("name", list(SYNC))
def test_sync_pipeline(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare")
    assert benchmark(SYNC[name], CALLS) == 1
