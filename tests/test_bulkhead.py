"""Bulkhead: the cap under load, the FIFO hand-off, max_wait and max_waiting, no lost slot.

Bodies hold on ``threading.Event``/``anyio.Event`` gates, never on sleeps. A test waits for
a state (a call queued, a body inside) either by polling ``metrics`` with a bound, or,
inside one event loop, by running every task until all are blocked (:func:`settle`), so
the loop's own scheduling makes the order of events exact. Every thread is joined, and
every event loop runs in a thread that is joined, with a timeout: a lost wake-up fails
the test instead of hanging the suite. Only the max_wait tests measure time (0.1 s waits).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import itertools
import math
import pickle
import random
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient
from resilient import (
    Bulkhead,
    BulkheadFullError,
    BulkheadMetrics,
    ConfigError,
    RejectedError,
    ResilienceError,
    UsageError,
)

from .conftest import FORMS, Flavour, assert_config_error, cancellations_asked
from .test_concurrency import Countdown, call_async, call_sync, run_async, run_tasks, run_threads

#: How long any one gate, poll or join may take before the test fails (seconds).
WAIT = 10.0
#: A max_wait that never runs out here: these waits end by a slot or a cancellation.
LONG = 60.0
#: The max_wait (or deadline) of the tests that let a wait run out.
SHORT = 0.1
#: How much later than asked a timed-out wait may end, on a loaded machine.
SLACK = 0.5

ASYNC_MODES = ["asyncio", "trio"]


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt where a real one would stop pytest itself."""


def never() -> str:
    raise AssertionError("the body of a rejected call ran")


async def never_async() -> str:
    raise AssertionError("the body of a rejected call ran")


# -- helpers: threads, holders, gauges ------------------------------------------------------


class Worker(threading.Thread):
    """``fn(*args)`` on a daemon thread; ``outcome()`` joins it (bounded), returns or re-raises."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.fn_args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.fn_args)
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), f"{self.name} still running after {WAIT}s"
        if self.error is not None:
            raise self.error
        return self.result


class Holder:
    """A thread that calls through ``b`` and stays inside until ``release()``.

    ``with Holder(b):`` first waits until it is inside: one slot taken from outside for
    the block. Made without ``with``, it may be queued: ``inside`` tells when it got in.
    """

    def __init__(self, b: Bulkhead, form: str = "with") -> None:
        self.inside = threading.Event()
        self._release = threading.Event()
        self._worker = Worker(call_sync, form, b, self._body)

    def _body(self) -> str:
        self.inside.set()
        assert self._release.wait(WAIT), "never released"
        return "held"

    def release(self) -> Any:
        self._release.set()
        return self._worker.outcome()

    def __enter__(self) -> Holder:
        assert self.inside.wait(WAIT), "the holder never got in"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Gauge:
    """How many bodies are inside now, the most ever at once, and how many ever entered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.entered = 0

    def __enter__(self) -> None:
        with self._lock:
            self.inside += 1
            self.entered += 1
            self.peak = max(self.peak, self.inside)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.inside -= 1


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < end, f"waited {WAIT}s for {what}"
        time.sleep(0.0005)


def queued(b: Bulkhead, n: int) -> None:
    wait_until(lambda: b.metrics.waiting == n, f"{n} calls waiting in {b!r}")


def release_once_queued(b: Bulkhead, holder: Holder, done: threading.Event) -> Worker:
    """A thread that frees ``holder``'s slot once a call waits (or the call is ``done``),
    after a pause that lets the waiter block: the slot must wake it, not just be found."""

    def run() -> None:
        wait_until(lambda: b.metrics.waiting >= 1 or done.is_set(), "a call to queue")
        time.sleep(0.02)
        holder.release()

    return Worker(run)


def assert_all_slots_free(b: Bulkhead) -> None:
    """Every slot can be taken at once, right now, without waiting.

    Under ``deadline(0)`` a call that cannot get a slot at once is rejected, so this
    fails if a slot was lost, or if a ghost waiter is left in the queue (the slots would
    go to it first).
    """
    before = b.metrics
    assert (before.in_use, before.waiting) == (0, 0), before
    with resilient.deadline(0), contextlib.ExitStack() as stack:
        for _ in range(b.max_concurrent):
            stack.enter_context(b)
        assert b.metrics == before._replace(in_use=b.max_concurrent)
    assert b.metrics == before


# -- helpers: tasks that can be cancelled one by one ---------------------------------------


class Call:
    """One task started by :class:`Tasks`: ``cancel()`` it alone, ``await wait()`` its end."""

    def __init__(self) -> None:
        self.outcome: tuple[str, Any] | None = None
        self.done = anyio.Event()
        self.cancel: Callable[[], object] = lambda: None

    def finish(self, kind: str, value: Any = None) -> None:
        self.outcome = (kind, value)
        self.done.set()

    async def wait(self) -> tuple[str, Any]:
        with anyio.fail_after(WAIT):
            await self.done.wait()
        assert self.outcome is not None
        return self.outcome


class Tasks:
    """Start calls as tasks that can each be cancelled: plain asyncio Tasks cancelled with
    ``Task.cancel()``, or trio tasks each in a ``CancelScope`` of its own. An outcome is
    ``("ok", result)``, ``("error", exception)`` or ``("cancelled", None)``. Leaving the
    block cancels whatever has not finished."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls: list[Call] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._nursery_manager: Any = None
        self._nursery: Any = None

    async def __aenter__(self) -> Tasks:
        if self.mode == "trio":
            self._nursery_manager = trio.open_nursery()
            self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        for call in self.calls:
            if call.outcome is None:
                call.cancel()
        if self.mode == "trio":
            return await self._nursery_manager.__aexit__(*exc_info)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return None

    def start(self, fn: Callable[[], Awaitable[Any]]) -> Call:
        call = Call()
        self.calls.append(call)
        if self.mode == "asyncio":
            task = asyncio.ensure_future(fn())
            call.cancel = task.cancel
            task.add_done_callback(functools.partial(_task_ended, call))
            self._tasks.append(task)
        else:
            scope = trio.CancelScope()
            call.cancel = scope.cancel
            self._nursery.start_soon(_run_in_scope, call, scope, fn)
        return call


def _task_ended(call: Call, task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        call.finish("cancelled")
    elif task.exception() is not None:
        call.finish("error", task.exception())
    else:
        call.finish("ok", task.result())


async def _run_in_scope(call: Call, scope: trio.CancelScope, fn: Callable[[], Any]) -> None:
    result = None
    try:
        with scope:
            result = await fn()
    except Exception as exc:
        call.finish("error", exc)
        return
    call.finish("cancelled" if scope.cancelled_caught else "ok", result)


def _blocked(task: asyncio.Task[Any]) -> bool:
    waiter = task._fut_waiter  # type: ignore[attr-defined]
    return waiter is not None and not waiter.done()


async def settle() -> None:
    """Run every other task of this loop until all are blocked.

    (anyio's ``wait_all_tasks_blocked`` sleeps 0.1 s a round on asyncio: too slow here.)
    """
    if trio.lowlevel.in_trio_task():
        await trio.testing.wait_all_tasks_blocked()
        return
    me = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        if all(task is me or _blocked(task) for task in asyncio.all_tasks()):
            return
    raise AssertionError("the tasks never settled")


def start_call(tasks: Tasks, form: str, b: Bulkhead, body: Callable[[], Awaitable[Any]]) -> Call:
    return tasks.start(functools.partial(call_async, form, b, body))


# -- 1. options ----------------------------------------------------------------------------

INT_GE_1 = "an int >= 1"
SECONDS = "seconds >= 0, a finite number"
NONE_OR_INT = "None, or a whole number from 0 to 1,000,000"

BAD_OPTIONS = [
    ("max_concurrent", 0, INT_GE_1),
    ("max_concurrent", -1, INT_GE_1),
    ("max_concurrent", 1.5, INT_GE_1),
    ("max_concurrent", 2.0, INT_GE_1),
    ("max_concurrent", True, INT_GE_1),
    ("max_concurrent", "3", INT_GE_1),
    ("max_concurrent", None, INT_GE_1),
    ("max_wait", -1, SECONDS),
    ("max_wait", -0.001, SECONDS),
    ("max_wait", math.nan, SECONDS),
    ("max_wait", math.inf, SECONDS),
    ("max_wait", -math.inf, SECONDS),
    ("max_wait", "1 minute", SECONDS),
    ("max_wait", True, SECONDS),
    ("max_wait", None, SECONDS),
    ("max_waiting", -1, NONE_OR_INT),
    ("max_waiting", 1.5, NONE_OR_INT),
    ("max_waiting", True, NONE_OR_INT),
    ("max_waiting", "2", NONE_OR_INT),
    ("max_waiting", 10**40, NONE_OR_INT),
]


@pytest.mark.parametrize(("option", "value", "expected"), BAD_OPTIONS)
def test_a_bad_option_raises_config_error_naming_option_value_and_expectation(
    option: str, value: Any, expected: str
) -> None:
    options: dict[str, Any] = {"max_concurrent": 2, option: value}
    with pytest.raises(ConfigError) as info:
        Bulkhead(**options, name="db")
    assert_config_error(info.value, option, value, expected)
    assert str(info.value).startswith("Bulkhead('db'): ")
    with pytest.raises(ConfigError) as unnamed:
        Bulkhead(**options)
    assert str(unnamed.value).startswith("Bulkhead: ")


@pytest.mark.parametrize("name", ["", 3, b"db"])
def test_a_bad_name_raises_config_error(name: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Bulkhead(2, name=name)
    assert_config_error(
        info.value, "name", name, "None or a string with at least one ASCII letter or digit"
    )


def test_defaults_edge_values_and_repr() -> None:
    b = Bulkhead(3)
    assert (b.max_concurrent, b.max_wait, b.max_waiting, b.name) == (3, 0.0, None, None)
    assert b.metrics == BulkheadMetrics(3, 0, 0, 0)
    assert BulkheadMetrics._fields == ("max_concurrent", "in_use", "waiting", "rejected")
    edge = Bulkhead(1, max_wait=2, max_waiting=0, name="db")
    assert (edge.max_wait, edge.max_waiting, edge.name) == (2.0, 0, "db")
    assert isinstance(edge.max_wait, float)
    assert Bulkhead(10**6, max_wait=0).metrics == BulkheadMetrics(10**6, 0, 0, 0)
    assert repr(Bulkhead(3, max_wait=0.5, name="db")) == "Bulkhead(3, max_wait=0.5, name='db')"
    params = inspect.signature(Bulkhead).parameters
    assert params["max_concurrent"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert {n: p.default for n, p in params.items() if n != "max_concurrent"} == {
        "max_wait": 0.0,
        "max_waiting": None,
        "name": None,
    }
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY
        for n, p in params.items()
        if n != "max_concurrent"
    )


# -- 2. the error ----------------------------------------------------------------------------


def test_a_rejection_is_a_fresh_named_bulkhead_full_error_that_pickles() -> None:
    b = Bulkhead(1, name="db")
    errors = []
    with Holder(b):
        for _ in range(3):
            with pytest.raises(BulkheadFullError) as info:
                b.call(never)
            errors.append(info.value)
    assert len({id(e) for e in errors}) == 3
    error = errors[0]
    assert isinstance(error, RejectedError)
    assert isinstance(error, ResilienceError)
    assert (error.name, error.retry_after) == ("db", None)
    assert str(error) == "bulkhead 'db' is full"
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is BulkheadFullError
    assert (clone.name, clone.retry_after, str(clone)) == ("db", None, str(error))
    assert b.metrics == BulkheadMetrics(1, 0, 0, 3)

    unnamed = Bulkhead(1)
    with Holder(unnamed), pytest.raises(BulkheadFullError) as info:
        unnamed.call(never)
    assert info.value.name is None
    assert str(info.value) == "bulkhead (unnamed) is full"
    assert pickle.loads(pickle.dumps(info.value)).name is None


# -- 3. every form ---------------------------------------------------------------------------


def test_every_form_admits_runs_and_gives_the_slot_back(flavour: Flavour) -> None:
    b = Bulkhead(2)
    seen: list[BulkheadMetrics] = []
    assert flavour.call(b, "ok", before=lambda: seen.append(b.metrics)) == "ok"
    assert seen == [BulkheadMetrics(2, 1, 0, 0)]
    assert_all_slots_free(b)


def test_every_form_is_rejected_at_once_when_full(flavour: Flavour) -> None:
    b = Bulkhead(1, name="db")
    ran: list[int] = []
    with Holder(b):
        start = time.monotonic()
        with pytest.raises(BulkheadFullError) as info:
            flavour.call(b, "never", before=lambda: ran.append(1))
        assert time.monotonic() - start < SLACK
        assert b.metrics == BulkheadMetrics(1, 1, 0, 1)
    assert ran == []
    assert info.value.name == "db"
    assert b.metrics == BulkheadMetrics(1, 0, 0, 1)


@pytest.mark.parametrize(
    "error",
    [ConnectionError("boom"), KeyboardInterrupt(), Interrupt(), SystemExit(3)],
    ids=lambda e: type(e).__name__,
)
def test_every_form_gives_the_slot_back_when_the_body_raises(
    flavour: Flavour, error: BaseException
) -> None:
    """The caller's exception, even a BaseException, propagates as itself; the slot returns."""
    b = Bulkhead(2, max_wait=LONG)
    with pytest.raises(type(error)) as info:
        flavour.call(b, error)
    assert info.value is error
    assert_all_slots_free(b)
    assert b.metrics.rejected == 0


def test_decorating_keeps_name_signature_wrapped_and_coroutine_flag() -> None:
    b = Bulkhead(1)

    def square(x: int, *, offset: int = 0) -> int:
        """Square x."""
        return x * x + offset

    async def fetch(url: str, timeout: float = 1.0) -> str:
        """Fetch url."""
        await anyio.lowlevel.checkpoint()
        return f"{url}@{timeout}"

    guarded_square, guarded_fetch = b(square), b(fetch)
    for guarded, fn in ((guarded_square, square), (guarded_fetch, fetch)):
        assert guarded is not fn
        assert guarded.__wrapped__ is fn  # type: ignore[attr-defined]
        assert inspect.signature(guarded) == inspect.signature(fn)
        assert (guarded.__name__, guarded.__qualname__, guarded.__doc__) == (
            fn.__name__,
            fn.__qualname__,
            fn.__doc__,
        )
    assert not inspect.iscoroutinefunction(guarded_square)
    assert inspect.iscoroutinefunction(guarded_fetch)
    assert guarded_square(3, offset=1) == 10
    assert anyio.run(functools.partial(guarded_fetch, "u", timeout=2.0)) == "u@2.0"
    assert_all_slots_free(b)


def test_methods_classmethods_and_staticmethods_share_one_bulkhead() -> None:
    b = Bulkhead(1, name="svc")

    class Service:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @b
        def get(self, x: int) -> tuple[str, int, int]:
            return self.tag, x, b.metrics.in_use

        @b
        async def aget(self, x: int) -> tuple[str, int, int]:
            await anyio.lowlevel.checkpoint()
            return self.tag, x, b.metrics.in_use

        @b
        def hold(self, inside: threading.Event, release: threading.Event) -> str:
            inside.set()
            assert release.wait(WAIT)
            return self.tag

        @b  # type: ignore[arg-type]
        @classmethod
        def make(cls, tag: str) -> Service:
            assert b.metrics.in_use == 1
            return cls(tag)

        @classmethod
        @b
        def kind(cls) -> str:
            return f"{cls.__name__}:{b.metrics.in_use}"

        @b  # type: ignore[arg-type]
        @staticmethod
        def double(x: int) -> int:
            return 2 * x + b.metrics.in_use

        @staticmethod
        @b
        def triple(x: int) -> int:
            return 3 * x + b.metrics.in_use

    class Sub(Service):
        pass

    a = Service("a")
    assert a.get(1) == ("a", 1, 1)
    assert anyio.run(a.aget, 2) == ("a", 2, 1)
    assert anyio.run(a.aget, 3, backend="trio") == ("a", 3, 1)
    assert Service.make("m").tag == "m"
    assert isinstance(Sub.make("s"), Sub)
    assert (Service.kind(), Sub.kind()) == ("Service:1", "Sub:1")
    assert (Service.double(2), a.triple(3)) == (5, 10)
    assert inspect.iscoroutinefunction(Service.aget)
    assert list(inspect.signature(a.get).parameters) == ["x"]
    assert Service.get.__wrapped__.__name__ == "get"  # type: ignore[attr-defined]

    inside, release = threading.Event(), threading.Event()
    holding = Worker(Service("holder").hold, inside, release)
    try:
        assert inside.wait(WAIT)
        with pytest.raises(BulkheadFullError) as info:
            Service("b").get(1)  # another instance: the same bulkhead, and it is full
        assert info.value.name == "svc"
    finally:
        release.set()
    assert holding.outcome() == "holder"
    assert b.metrics == BulkheadMetrics(1, 0, 0, 1)


def test_call_forms_pass_arguments_and_refuse_what_they_cannot_guard() -> None:
    b = Bulkhead(1)
    assert b.call(divmod, 7, 2) == (3, 1)
    assert b.call(lambda *a, **k: (a, k), 1, x=2) == ((1,), {"x": 2})

    async def coro(x: int, *, y: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + y

    assert anyio.run(functools.partial(b.call_async, coro, 1, y=2)) == 3
    with pytest.raises(TypeError, match="call_async"):
        b.call(coro, 1, y=2)

    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        b(gen)
    # A plain function handed to call_async that returns no awaitable: a UsageError,
    # raised inside the guard, and the slot still comes back.
    with pytest.raises(UsageError):
        anyio.run(b.call_async, lambda: 42)
    assert_all_slots_free(b)
    assert b.metrics.rejected == 0


# -- 4. exact under load ------------------------------------------------------------------

CROWD = 50
CALLS_PER_THREAD = 200
CAP = 5


def test_50_threads_never_have_more_than_5_inside(switch_often: None) -> None:
    """50 threads x 200 calls through Bulkhead(5, max_wait=LONG), every sync form.

    Every call gets in and completes; never more than 5 bodies at once (and 5 are
    reached); a 51st thread reading metrics meanwhile never sees more than 5 in use or
    more than 45 waiting; at the end nothing is in use or waiting and nothing was rejected.
    """
    b = Bulkhead(CAP, max_wait=LONG)
    gauge = Gauge()
    finished = itertools.count()
    done = threading.Event()
    reads: list[BulkheadMetrics] = []
    first = itertools.count()
    all_in = threading.Barrier(CAP)  # the first CAP calls meet inside: the cap is reached
    queued = threading.Event()  # ... and stay until the reader has seen calls queue

    def body() -> int:
        with gauge:
            if next(first) < CAP:
                all_in.wait(timeout=LONG)
                queued.wait(timeout=LONG)
            time.sleep(0)  # let another thread run while inside
            return 1

    def worker(t: int) -> int:
        if t == CROWD:  # the reader
            while not done.is_set():  # (bounded: the first calls wait LONG at most)
                metrics = b.metrics
                if metrics.waiting:
                    queued.set()
                if len(reads) < 20_000:
                    reads.append(metrics)
                elif queued.is_set():
                    break
            return 0
        form = FORMS[t % len(FORMS)]
        total = sum(call_sync(form, b, body) for _ in range(CALLS_PER_THREAD))
        if next(finished) == CROWD - 1:
            done.set()
        return total

    results = run_threads(CROWD + 1, worker)
    assert results[:CROWD] == [CALLS_PER_THREAD] * CROWD
    assert gauge.entered == CROWD * CALLS_PER_THREAD
    assert gauge.peak == CAP
    assert gauge.inside == 0
    assert reads
    assert all(m.max_concurrent == CAP and m.rejected == 0 for m in reads)
    assert all(0 <= m.in_use <= CAP and 0 <= m.waiting <= CROWD - CAP for m in reads)
    assert any(m.waiting > 0 for m in reads), "no call ever queued: the test proves little"
    assert b.metrics == BulkheadMetrics(CAP, 0, 0, 0)
    assert_all_slots_free(b)


TASKS = 1000


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_1000_tasks_never_have_more_than_5_inside_and_get_in_in_arrival_order(
    mode: str,
) -> None:
    """1,000 tasks released together through Bulkhead(5, max_wait=LONG), every async form.

    All complete; never more than 5 inside. They get in in the order they arrived: on
    asyncio exactly; on trio, which runs the tasks woken in one batch in either order,
    each within the batch (at most 5) it was granted in.
    """

    async def main() -> tuple[list[int], list[int], list[int], Gauge, BulkheadMetrics]:
        b = Bulkhead(CAP, max_wait=LONG)
        gauge = Gauge()
        arrived: list[int] = []
        admitted: list[int] = []

        async def worker(i: int) -> int:
            async def body() -> int:
                with gauge:
                    admitted.append(i)
                    await anyio.lowlevel.checkpoint()
                    await anyio.lowlevel.checkpoint()
                return i

            arrived.append(i)  # admission follows at once, with no await in between
            return await call_async(FORMS[i % len(FORMS)], b, body)

        results = await run_tasks(TASKS, worker)
        assert_all_slots_free(b)
        return results, arrived, admitted, gauge, b.metrics

    results, arrived, admitted, gauge, metrics = run_async(mode, main)
    assert results == list(range(TASKS))
    assert (gauge.entered, gauge.peak, gauge.inside) == (TASKS, CAP, 0)
    assert metrics == BulkheadMetrics(CAP, 0, 0, 0)
    assert sorted(arrived) == sorted(admitted) == list(range(TASKS))
    if mode == "asyncio":
        assert admitted == arrived
    else:
        place = {i: n for n, i in enumerate(arrived)}
        assert max(abs(place[i] - n) for n, i in enumerate(admitted)) < CAP


ATTEMPTS_PER_THREAD = 400


def test_max_wait_zero_admitted_plus_rejected_is_exact_under_50_threads(
    switch_often: None,
) -> None:
    b = Bulkhead(CAP)
    gauge = Gauge()
    first = itertools.count()
    refused = threading.Event()  # the first CAP calls stay inside until a call is refused

    def body() -> None:
        with gauge:
            if next(first) < CAP:
                refused.wait(timeout=LONG)
            time.sleep(0)

    def worker(t: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        form = FORMS[t % len(FORMS)]
        for _ in range(ATTEMPTS_PER_THREAD):
            try:
                call_sync(form, b, body)
                seen["admitted"] += 1
            except BulkheadFullError:
                seen["rejected"] += 1
                refused.set()
        return seen

    seen = sum(run_threads(CROWD, worker), Counter())
    assert seen["admitted"] + seen["rejected"] == CROWD * ATTEMPTS_PER_THREAD
    assert seen["admitted"] > 0
    assert seen["rejected"] > 0, "no call was ever refused: the test proves little"
    assert gauge.entered == seen["admitted"]
    assert gauge.peak <= CAP
    assert b.metrics == BulkheadMetrics(CAP, 0, 0, seen["rejected"])
    assert_all_slots_free(b)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_max_wait_zero_admits_exactly_5_of_1000_tasks_and_rejects_the_rest(mode: str) -> None:
    async def main() -> tuple[list[Any], BulkheadMetrics, BulkheadMetrics]:
        b = Bulkhead(CAP, name="db")
        release = anyio.Event()
        decided = Countdown(TASKS)
        mid: list[BulkheadMetrics] = []

        async def body() -> str:
            decided.arrive()
            await release.wait()
            return "ran"

        async def worker(i: int) -> Any:
            try:
                return await call_async(FORMS[i % len(FORMS)], b, body)
            except BulkheadFullError as exc:
                decided.arrive()
                return exc

        async def conduct() -> None:
            try:
                await decided.wait()
                mid.append(b.metrics)
            finally:
                release.set()

        outcomes = await run_tasks(TASKS, worker, conduct)
        return outcomes, mid[0], b.metrics

    outcomes, mid, after = run_async(mode, main)
    rejections = [o for o in outcomes if isinstance(o, BulkheadFullError)]
    assert outcomes.count("ran") == CAP
    assert len(rejections) == TASKS - CAP
    assert {e.name for e in rejections} == {"db"}
    assert mid == BulkheadMetrics(CAP, CAP, 0, TASKS - CAP)
    assert after == BulkheadMetrics(CAP, 0, 0, TASKS - CAP)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_max_waiting_caps_the_queue_of_100_tasks(mode: str) -> None:
    """Bulkhead(5, max_wait=LONG, max_waiting=10), 100 tasks: 5 in, 10 wait, 85 refused
    at once; released, the 10 waiters get in, in the order they queued."""
    crowd, max_waiting = 100, 10

    async def main() -> tuple[list[Any], list[int], list[int], BulkheadMetrics]:
        b = Bulkhead(CAP, max_wait=LONG, max_waiting=max_waiting)
        release = anyio.Event()
        decided = Countdown(crowd - max_waiting)  # the 5 inside and the 85 refused
        arrived: list[int] = []
        admitted: list[int] = []
        mid: list[BulkheadMetrics] = []

        async def worker(i: int) -> Any:
            async def body() -> str:
                admitted.append(i)
                if len(admitted) <= CAP:
                    decided.arrive()
                await release.wait()
                return "ran"

            arrived.append(i)
            try:
                return await call_async(FORMS[i % len(FORMS)], b, body)
            except BulkheadFullError as exc:
                decided.arrive()
                return exc

        async def conduct() -> None:
            try:
                await decided.wait()
                mid.append(b.metrics)
            finally:
                release.set()

        outcomes = await run_tasks(crowd, worker, conduct)
        assert b.metrics == BulkheadMetrics(CAP, 0, 0, crowd - CAP - max_waiting)
        assert_all_slots_free(b)
        return outcomes, arrived, admitted, mid[0]

    outcomes, arrived, admitted, mid = run_async(mode, main)
    assert mid == BulkheadMetrics(CAP, CAP, max_waiting, crowd - CAP - max_waiting)
    assert outcomes.count("ran") == CAP + max_waiting
    assert sum(isinstance(o, BulkheadFullError) for o in outcomes) == crowd - CAP - max_waiting
    # The first 5 arrivals got in, the next 10 waited, everyone after was refused.
    assert sorted(admitted) == sorted(arrived[: CAP + max_waiting])
    assert admitted[:CAP] == arrived[:CAP]
    if mode == "asyncio":  # trio may wake the 10 released waiters in another order
        assert admitted == arrived[: CAP + max_waiting]


RACE_ROUNDS = 40


def test_max_waiting_holds_when_50_threads_race_to_queue(switch_often: None) -> None:
    """Bulkhead(1, max_wait=LONG, max_waiting=2), its slot held, 50 threads call at once.

    Exactly 2 may wait, so exactly 48 are refused, in every one of 40 rounds: the check
    "is there room in the queue" and the queueing must be one step, or two racers that
    both saw room both queue.
    """
    for round_ in range(RACE_ROUNDS):
        b = Bulkhead(1, max_wait=LONG, max_waiting=2)
        holder = Holder(b).__enter__()
        seen: list[BulkheadMetrics] = []

        def caller(i: int, b: Bulkhead = b) -> Any:
            try:
                return b.call(lambda: "ran")
            except BulkheadFullError as exc:
                return exc

        def conduct(
            b: Bulkhead = b, holder: Holder = holder, seen: list[BulkheadMetrics] = seen
        ) -> None:
            try:
                wait_until(lambda: sum(b.metrics[2:]) == CROWD, "all 50 to queue or be refused")
                seen.append(b.metrics)
            finally:
                holder.release()

        outcomes = run_threads(CROWD, caller, conduct)
        assert seen == [BulkheadMetrics(1, 1, 2, CROWD - 2)], f"round {round_}"
        assert outcomes.count("ran") == 2
        assert b.metrics == BulkheadMetrics(1, 0, 0, CROWD - 2)


def test_threads_that_give_up_waiting_lose_no_slot(switch_often: None) -> None:
    """30 threads x 100 calls, each under a random short deadline, so many waits run out
    just as a slot is handed over: every call is admitted or refused, counted exactly,
    and every slot is free at the end."""
    b = Bulkhead(3, max_wait=LONG)
    gauge = Gauge()
    threads, calls = 30, 100
    first = itertools.count()
    refused = threading.Event()  # the first 3 calls stay inside until a wait runs out

    def body() -> None:
        with gauge:
            if next(first) < 3:
                refused.wait(timeout=LONG)
            time.sleep(0)

    def worker(t: int) -> Counter[str]:
        rng = random.Random(t)
        seen: Counter[str] = Counter()
        for k in range(calls):
            with resilient.deadline(rng.choice((0.0, 1e-5, 1e-4, 1e-3))):
                try:
                    call_sync(FORMS[(t + k) % len(FORMS)], b, body)
                    seen["admitted"] += 1
                except BulkheadFullError:
                    seen["rejected"] += 1
                    refused.set()
        return seen

    seen = sum(run_threads(threads, worker), Counter())
    assert seen["admitted"] + seen["rejected"] == threads * calls
    assert seen["admitted"] > 0
    assert seen["rejected"] > 0
    assert gauge.entered == seen["admitted"]
    assert gauge.peak <= 3
    assert b.metrics == BulkheadMetrics(3, 0, 0, seen["rejected"])
    assert_all_slots_free(b)


# -- 5. no slot is ever lost -----------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_call_cancelled_inside_gives_its_slot_back(mode: str, form: str) -> None:
    """asyncio: Task.cancel(); trio: the task's CancelScope. The slot returns at once."""

    async def main() -> None:
        b = Bulkhead(2, max_wait=LONG)

        async def body() -> str:
            await anyio.sleep(LONG)
            return "never"

        async with Tasks(mode) as tasks:
            call = start_call(tasks, form, b, body)
            await settle()
            assert b.metrics == BulkheadMetrics(2, 1, 0, 0)
            call.cancel()
            assert await call.wait() == ("cancelled", None)
            assert b.metrics == BulkheadMetrics(2, 0, 0, 0)
            assert_all_slots_free(b)

    run_async(mode, main)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_call_cancelled_while_waiting_leaves_the_queue(mode: str, form: str) -> None:
    """The cancelled waiter leaves the queue (waiting drops), is not counted as rejected,
    and does not take the next free slot: a later waiter gets it, and then every slot."""

    async def main() -> None:
        b = Bulkhead(2, max_wait=LONG)
        gates = [anyio.Event() for _ in range(3)]

        async def hold(i: int) -> int:
            await gates[i].wait()
            return i

        async with Tasks(mode) as tasks:
            holders = [start_call(tasks, form, b, functools.partial(hold, i)) for i in (0, 1)]
            await settle()
            waiter = start_call(tasks, form, b, never_async)
            await settle()
            assert b.metrics == BulkheadMetrics(2, 2, 1, 0)
            waiter.cancel()
            assert await waiter.wait() == ("cancelled", None)
            assert b.metrics == BulkheadMetrics(2, 2, 0, 0)

            later = start_call(tasks, form, b, functools.partial(hold, 2))
            await settle()
            assert b.metrics == BulkheadMetrics(2, 2, 1, 0)
            gates[0].set()
            assert await holders[0].wait() == ("ok", 0)
            await settle()
            assert b.metrics == BulkheadMetrics(2, 2, 0, 0)  # the later waiter got in
            gates[1].set()
            gates[2].set()
            assert [await c.wait() for c in (holders[1], later)] == [("ok", 1), ("ok", 2)]
        assert_all_slots_free(b)

    run_async(mode, main)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_an_outer_timeout_while_waiting_cancels_the_wait_without_a_rejection(mode: str) -> None:
    async def main() -> None:
        b = Bulkhead(1, max_wait=LONG)
        with contextlib.ExitStack() as hold:
            hold.enter_context(b)
            start = time.monotonic()
            with anyio.move_on_after(SHORT) as scope:
                await b.call_async(never_async)
            assert scope.cancelled_caught
            assert time.monotonic() - start < SHORT + SLACK
            assert b.metrics == BulkheadMetrics(1, 1, 0, 0)
        assert_all_slots_free(b)
        if mode == "asyncio":
            outer = asyncio.current_task()
            assert outer is not None
            assert cancellations_asked(outer) == 0

    run_async(mode, main)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("freed_by", ["this task", "another thread"])
@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on(
    mode: str, freed_by: str, form: str
) -> None:
    """The slot is freed and the waiter it goes to is cancelled in one synchronous step,
    before the waiter runs again: the slot must reach the next waiter (or the pool),
    not vanish with the cancelled one. Freed by this task, the grant is immediate; by
    another thread, it travels through the loop's thread-safe entry and is still in
    flight when the cancellation lands."""

    async def main() -> None:
        admitted: list[int] = []

        async def body(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            admitted.append(i)
            return i

        for behind in (True, False):
            admitted.clear()
            b = Bulkhead(1, max_wait=LONG)
            async with Tasks(mode) as tasks:
                with contextlib.ExitStack() as stack:
                    if freed_by == "this task":
                        stack.enter_context(b)
                        free: Callable[[], object] = stack.close
                    else:
                        free = stack.enter_context(Holder(b)).release
                    first = start_call(tasks, form, b, functools.partial(body, 1))
                    await settle()
                    if behind:
                        second = start_call(tasks, form, b, functools.partial(body, 2))
                        await settle()
                    assert b.metrics == BulkheadMetrics(1, 1, 1 + behind, 0)
                    free()
                    first.cancel()  # no await since the slot was freed
                    assert await first.wait() == ("cancelled", None)
                    if behind:
                        assert await second.wait() == ("ok", 2)
            assert admitted == ([2] if behind else [])
            assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
            assert_all_slots_free(b)

    run_async(mode, main)


def test_a_waiter_granted_as_its_max_wait_runs_out_loses_no_slot() -> None:
    """asyncio: the slot is freed and the first waiter's max_wait timer fires in the same
    loop iteration (the loop was blocked past its max_wait). Either outcome is fair for
    the first waiter, admitted or refused, but the slot may not be lost nor left idle:
    the second waiter, whose max_wait has not run out, must get in."""

    async def main() -> None:
        b = Bulkhead(1, max_wait=SHORT / 2)
        ran: list[str] = []

        async def body(name: str) -> str:
            ran.append(name)
            return name

        async with Tasks("asyncio") as tasks:
            with contextlib.ExitStack() as hold:
                hold.enter_context(b)
                first = start_call(tasks, "call", b, functools.partial(body, "first"))
                await settle()
                assert b.metrics.waiting == 1
                time.sleep(SHORT)  # block the loop: the first waiter's timer is now due
                second = start_call(tasks, "call", b, functools.partial(body, "second"))
                # The next iteration runs the second (it queues), then us, then the timer.
                await asyncio.sleep(0)
                assert b.metrics == BulkheadMetrics(1, 1, 2, 0)
            kind, value = await first.wait()  # freed above, in the timer's iteration
            assert await second.wait() == ("ok", "second")
        if kind == "ok":
            assert value == "first"
            assert ran == ["first", "second"]
            assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
        else:
            assert kind == "error", (kind, value)
            assert isinstance(value, BulkheadFullError)
            assert ran == ["second"]
            assert b.metrics == BulkheadMetrics(1, 0, 0, 1)
        assert_all_slots_free(b)

    run_async("asyncio", main)


STRAND_ROUNDS = 2000


def test_a_slot_freed_just_as_a_thread_queues_is_never_left_idle(switch_often: None) -> None:
    """Two threads race 2,000 times: one leaves ``with b`` just as the other arrives.
    However the race goes (the slot taken straight, or queued then handed over), the
    arrival must get in at once: a slot left free while a call waits would show as the
    arrival's max_wait of 2 s running out."""
    b = Bulkhead(1, max_wait=2.0)
    race = threading.Barrier(2, timeout=WAIT)
    spins = [random.Random(7).randrange(40) for _ in range(STRAND_ROUNDS)]

    def worker(t: int) -> int:
        admitted = 0
        for r in range(STRAND_ROUNDS):
            if t == 0:  # the holder: inside before the race, leaves as it starts
                with b:
                    race.wait()
                    for _ in range(spins[r]):
                        pass
            else:  # the arrival
                race.wait()
                admitted += b.call(lambda: 1)
            race.wait()  # the round is over: the slot is free again
        return admitted

    assert run_threads(2, worker) == [0, STRAND_ROUNDS]
    assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
    assert_all_slots_free(b)


class ReleasingClock:
    """A monotonic clock that runs ``action`` (once) at its next reading once armed: a
    deterministic way to free a slot while a call is between "no slot is free" and
    blocking, since the wait reads the deadline's clock to know its limit."""

    def __init__(self) -> None:
        self.action: Callable[[], object] | None = None
        self.fired = 0

    def monotonic(self) -> float:
        action, self.action = self.action, None
        if action is not None:
            action()
            self.fired += 1
        return time.monotonic()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ["sync", *ASYNC_MODES])
def test_a_slot_freed_while_a_call_sets_up_its_wait_admits_it(mode: str, form: str) -> None:
    """The call found no slot; before it blocks, the slot comes free (released by this
    very thread, from inside the deadline's clock). The call must still get in, rather
    than queue behind a slot that nobody will hand over: with max_wait=0.1 a stranded
    call would be refused."""
    b = Bulkhead(1, max_wait=SHORT)
    clock = ReleasingClock()

    async def body() -> str:
        await anyio.lowlevel.checkpoint()
        return "in"

    async def main() -> str:
        with contextlib.ExitStack() as hold:
            hold.enter_context(b)
            async with resilient.deadline(LONG, clock=clock):
                clock.action = hold.close
                return await call_async(form, b, body)

    def run() -> str:
        if mode != "sync":
            return anyio.run(main, backend=mode)
        with contextlib.ExitStack() as hold:
            hold.enter_context(b)
            with resilient.deadline(LONG, clock=clock):
                clock.action = hold.close
                return call_sync(form, b, lambda: "in")

    assert Worker(run).outcome() == "in"
    assert clock.fired == 1
    assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
    assert_all_slots_free(b)


@pytest.mark.parametrize("form", FORMS)
def test_a_thread_interrupted_while_waiting_leaves_the_queue(form: str) -> None:
    """A signal handler raises a BaseException (as SIGINT raises KeyboardInterrupt) in the
    main thread while it waits for a slot: it propagates, the waiter leaves the queue,
    and the slot it never got is not lost."""
    assert threading.current_thread() is threading.main_thread()
    b = Bulkhead(1, max_wait=LONG)
    main = threading.get_ident()

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupt

    def kick() -> None:
        queued(b, 1)
        time.sleep(0.05)  # let it get past its bookkeeping and block on its lock
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with Holder(b):
            kicker = Worker(kick)
            with pytest.raises(Interrupt):
                call_sync(form, b, never)
            kicker.outcome()
            assert b.metrics == BulkheadMetrics(1, 1, 0, 0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert_all_slots_free(b)


class InterruptingClock:
    """A monotonic clock that raises Interrupt on every reading after the first: a stand-in
    for a KeyboardInterrupt that lands at whatever point the wait next reads the time."""

    def __init__(self) -> None:
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        if self.reads > 1:
            raise Interrupt
        return time.monotonic()


@pytest.mark.parametrize("mode", ["sync", *ASYNC_MODES])
def test_an_interrupt_during_the_wait_bookkeeping_leaves_no_ghost_waiter(mode: str) -> None:
    """Once queued, a call must leave the queue however it ends: an Interrupt raised while
    the wait works out its time limit (here: by the deadline's clock, deterministically)
    must not leave a ghost in the queue that later swallows a slot."""
    b = Bulkhead(1, max_wait=LONG)
    clock = InterruptingClock()

    async def wait_async() -> None:
        with resilient.deadline(LONG, clock=clock):
            await b.call_async(never_async)

    def wait() -> None:
        if mode == "sync":
            with resilient.deadline(LONG, clock=clock):
                b.call(never)
        else:
            run_async(mode, wait_async)

    with Holder(b) as holder:
        with pytest.raises(Interrupt):
            wait()
        assert clock.reads >= 2
        assert b.metrics == BulkheadMetrics(1, 1, 0, 0)
        holder.release()
    assert_all_slots_free(b)


CHAOS_CALLS = 400
CHAOS_CANCELS = 150


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_random_cancellations_while_waiting_and_inside_lose_no_slot(mode: str) -> None:
    """400 calls through Bulkhead(4, max_wait=LONG), a fifth of them under short
    deadlines; a seeded conductor cancels 150 at random, some queued, some inside. Every
    call ends (ok, refused or cancelled), never more than 4 inside, the refusals are
    counted exactly, and at the end every slot is free."""

    async def main() -> None:
        rng = random.Random(20_250_611)
        b = Bulkhead(4, max_wait=LONG)
        gauge = Gauge()
        state: dict[int, str] = {}
        cancelled_while: Counter[str] = Counter()

        async def one(i: int, hold: int, limit: float | None) -> int:
            async def body() -> int:
                with gauge:
                    state[i] = "inside"
                    for _ in range(hold):
                        await anyio.lowlevel.checkpoint()
                state[i] = "after"
                return i

            state[i] = "queued"  # admission is synchronous: from here, queued or inside
            with resilient.deadline(LONG if limit is None else limit):
                return await call_async(FORMS[i % len(FORMS)], b, body)

        async with Tasks(mode) as tasks:
            calls = [
                tasks.start(
                    functools.partial(
                        one, i, rng.randint(0, 4), rng.choice((None,) * 4 + (0.0, 1e-3, 1e-2))
                    )
                )
                for i in range(CHAOS_CALLS)
            ]
            for _ in range(50 * CHAOS_CALLS):
                await anyio.lowlevel.checkpoint()
                if all(call.outcome is not None for call in calls):
                    break
                if sum(cancelled_while.values()) < CHAOS_CANCELS and rng.random() < 0.5:
                    live = [
                        i
                        for i, call in enumerate(calls)
                        if call.outcome is None and state.get(i) in ("queued", "inside")
                    ]
                    inside = [i for i in live if state[i] == "inside"]
                    if inside and not cancelled_while["inside"]:
                        live = inside  # both kinds, however the scheduler ran the calls
                    if live:
                        i = rng.choice(live)
                        cancelled_while[state[i]] += 1
                        state[i] = "cancelled"
                        calls[i].cancel()
            assert all(call.outcome is not None for call in calls), "calls still running"

        outcomes = Counter(call.outcome[0] for call in calls if call.outcome is not None)
        errors = [call.outcome[1] for call in calls if call.outcome and call.outcome[0] == "error"]
        assert all(isinstance(e, BulkheadFullError) for e in errors), errors[:3]
        assert sum(outcomes.values()) == CHAOS_CALLS
        assert cancelled_while["queued"] > 0
        assert cancelled_while["inside"] > 0
        assert 0 < outcomes["cancelled"] <= sum(cancelled_while.values())
        assert errors, "no deadline ran out while waiting: the test proves little"
        assert gauge.peak == 4
        assert gauge.inside == 0
        assert b.metrics == BulkheadMetrics(4, 0, 0, len(errors))
        assert_all_slots_free(b)

    run_async(mode, main)


# -- 6. FIFO -----------------------------------------------------------------------------


def test_threads_get_in_in_the_order_they_queued_and_a_newcomer_waits_its_turn() -> None:
    """Bulkhead(1): this thread holds the slot, 8 threads queue one by one (each seen
    waiting before the next starts). At the instant the slot is freed it goes straight
    to the first: a call made in that instant finds none free. A newcomer arriving while
    others wait gets in after all of them."""
    b = Bulkhead(1, max_wait=LONG)
    order: list[int] = []
    first_in, go_on = threading.Event(), threading.Event()

    def enter(i: int) -> None:
        def body() -> None:
            order.append(i)
            if i == 1:
                first_in.set()
                assert go_on.wait(WAIT)

        call_sync(FORMS[i % len(FORMS)], b, body)

    workers = []
    try:
        with contextlib.ExitStack() as hold:
            hold.enter_context(b)
            for i in range(1, 9):
                workers.append(Worker(enter, i))
                queued(b, i)
        # The slot went to waiter 1 as it was freed, whether or not it has woken yet.
        assert b.metrics == BulkheadMetrics(1, 1, 7, 0)
        with resilient.deadline(0), pytest.raises(BulkheadFullError):
            b.call(never)
        assert first_in.wait(WAIT)
        workers.append(Worker(enter, 99))
        queued(b, 8)
        assert b.metrics == BulkheadMetrics(1, 1, 8, 1)
    finally:
        go_on.set()
    for worker in workers:
        worker.outcome()
    assert order == [1, 2, 3, 4, 5, 6, 7, 8, 99]
    assert b.metrics == BulkheadMetrics(1, 0, 0, 1)
    assert_all_slots_free(b)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_tasks_get_in_in_the_order_they_queued_and_a_newcomer_waits_its_turn(mode: str) -> None:
    async def main() -> list[int]:
        b = Bulkhead(1, max_wait=LONG)
        order: list[int] = []
        gates = {i: anyio.Event() for i in [*range(1, 9), 99]}

        async def body(i: int) -> int:
            order.append(i)
            await gates[i].wait()
            return i

        async with Tasks(mode) as tasks:
            calls = []
            with contextlib.ExitStack() as hold:
                hold.enter_context(b)
                for i in range(1, 9):
                    calls.append(start_call(tasks, FORMS[i % 3], b, functools.partial(body, i)))
                    await settle()
                    assert b.metrics.waiting == i
            # Freed in this step, before any task ran: the slot is already waiter 1's.
            assert b.metrics == BulkheadMetrics(1, 1, 7, 0)
            with resilient.deadline(0), pytest.raises(BulkheadFullError):
                b.call(never)
            calls.append(start_call(tasks, "call", b, functools.partial(body, 99)))
            await settle()
            assert order == [1]
            assert b.metrics == BulkheadMetrics(1, 1, 8, 1)
            for gate in gates.values():
                gate.set()
            assert [await c.wait() for c in calls] == [("ok", i) for i in [*range(1, 9), 99]]
        assert_all_slots_free(b)
        return order

    assert run_async(mode, main) == [*range(1, 9), 99]


# -- 7. max_wait, deadlines, max_waiting ---------------------------------------------------


def test_a_waiter_that_gets_no_slot_is_rejected_after_max_wait(flavour: Flavour) -> None:
    b = Bulkhead(1, max_wait=SHORT, name="db")
    ran: list[int] = []
    with Holder(b):
        start = time.monotonic()
        with pytest.raises(BulkheadFullError) as info:
            flavour.call(b, "never", before=lambda: ran.append(1))
        elapsed = time.monotonic() - start
        assert b.metrics == BulkheadMetrics(1, 1, 0, 1)
    assert SHORT * 0.9 <= elapsed < SHORT + SLACK
    assert info.value.name == "db"
    assert ran == []
    assert_all_slots_free(b)


@pytest.mark.parametrize("seconds", [SHORT, 0.0])
def test_an_enclosing_deadline_shorter_than_max_wait_ends_the_wait(
    flavour: Flavour, seconds: float
) -> None:
    b = Bulkhead(1, max_wait=LONG)
    with Holder(b):
        start = time.monotonic()
        with resilient.deadline(seconds), pytest.raises(BulkheadFullError):
            flavour.call(b, "never")
        elapsed = time.monotonic() - start
        assert b.metrics == BulkheadMetrics(1, 1, 0, 1)
    assert seconds * 0.9 <= elapsed < seconds + SLACK
    assert_all_slots_free(b)


def test_a_slot_freed_within_max_wait_admits_the_waiter(flavour: Flavour) -> None:
    b = Bulkhead(1, max_wait=LONG)
    seen: list[BulkheadMetrics] = []
    done = threading.Event()
    with Holder(b) as holder:
        releaser = release_once_queued(b, holder, done)
        start = time.monotonic()
        try:
            call = Worker(flavour.call, b, "ok", lambda: seen.append(b.metrics))
            assert call.outcome() == "ok"
        finally:
            done.set()
        assert time.monotonic() - start < WAIT
        releaser.outcome()
    assert seen == [BulkheadMetrics(1, 1, 0, 0)]
    assert_all_slots_free(b)
    assert b.metrics.rejected == 0


def test_a_very_long_max_wait_still_waits_for_the_slot(flavour: Flavour) -> None:
    """max_wait takes any finite number of seconds; 1e10 (about 317 years) is one."""
    b = Bulkhead(1, max_wait=1e10)
    done = threading.Event()
    with Holder(b) as holder:
        releaser = release_once_queued(b, holder, done)
        try:
            assert Worker(flavour.call, b, "ok").outcome() == "ok"
        finally:
            done.set()
        releaser.outcome()
    assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
    assert_all_slots_free(b)


@pytest.mark.parametrize("max_waiting", [2, 0])
def test_a_call_beyond_max_waiting_is_rejected_at_once(flavour: Flavour, max_waiting: int) -> None:
    b = Bulkhead(1, max_wait=LONG, max_waiting=max_waiting, name="db")
    waiters: list[Holder] = []
    with Holder(b):
        try:
            for form in FORMS[:max_waiting]:
                waiters.append(Holder(b, form))
                queued(b, len(waiters))
            start = time.monotonic()
            with pytest.raises(BulkheadFullError) as info:
                flavour.call(b, "never")
            assert time.monotonic() - start < SLACK
            assert info.value.name == "db"
            assert b.metrics == BulkheadMetrics(1, 1, max_waiting, 1)
        finally:
            for waiter in waiters:
                waiter._release.set()
    assert [waiter.release() for waiter in waiters] == ["held"] * max_waiting
    assert b.metrics == BulkheadMetrics(1, 0, 0, 1)
    assert_all_slots_free(b)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_task_is_left_uncancelled_after_its_wait_runs_out_or_succeeds(mode: str) -> None:
    """The timer behind max_wait (or a deadline) is the bulkhead's own business: after a
    refusal the task is not left cancelled, and after an admission no stale timer cancels
    the body later."""

    async def main() -> None:
        b = Bulkhead(1, max_wait=SHORT)
        task = asyncio.current_task() if mode == "asyncio" else None

        with contextlib.ExitStack() as hold:
            hold.enter_context(b)
            with pytest.raises(BulkheadFullError):
                await b.call_async(never_async)
            async with resilient.deadline(SHORT / 2):
                with pytest.raises(BulkheadFullError):
                    await b.call_async(never_async)
        assert task is None or cancellations_asked(task) == 0
        await anyio.sleep(SHORT)  # no late cancellation arrives
        assert b.metrics == BulkheadMetrics(1, 0, 0, 2)

        async def body() -> str:
            await anyio.sleep(2 * SHORT)  # outlives the max_wait it was admitted within
            return "finished"

        async with Tasks(mode) as tasks:
            with contextlib.ExitStack() as hold:
                hold.enter_context(b)
                waiter = start_call(tasks, "call", b, body)
                await settle()
                assert b.metrics.waiting == 1
            assert await waiter.wait() == ("ok", "finished")
        assert task is None or cancellations_asked(task) == 0
        assert_all_slots_free(b)

    run_async(mode, main)


# -- 8. threads and event loops sharing one bulkhead -------------------------------------------


def test_one_bulkhead_caps_threads_an_asyncio_loop_and_a_trio_run_together(
    switch_often: None,
) -> None:
    """Bulkhead(4): 8 threads x 150 calls, and in two more threads an asyncio loop and a
    trio run with 100 tasks x 5 calls each. Never more than 4 inside across all of them;
    every call completes; slots freed anywhere wake waiters anywhere."""
    b = Bulkhead(4, max_wait=LONG)
    gauge = Gauge()
    threads, thread_calls, tasks, task_calls = 8, 150, 100, 5
    first = itertools.count()
    all_in = threading.Barrier(4)  # the first 4 thread calls meet inside: the cap is reached

    def sync_body() -> int:
        with gauge:
            if next(first) < 4:
                all_in.wait(timeout=LONG)
            time.sleep(0)
            return 1

    async def async_body() -> int:
        with gauge:
            await anyio.lowlevel.checkpoint()
            return 1

    def worker(t: int) -> int:
        if t < threads:
            return sum(call_sync(FORMS[t % 3], b, sync_body) for _ in range(thread_calls))

        async def task(i: int) -> int:
            total = 0
            for _ in range(task_calls):
                total += await call_async(FORMS[i % 3], b, async_body)
            return total

        async def main() -> int:
            with anyio.fail_after(WAIT * 3):
                return sum(await run_tasks(tasks, task))

        return anyio.run(main, backend=ASYNC_MODES[t - threads])

    results = run_threads(threads + 2, worker)
    assert results == [thread_calls] * threads + [tasks * task_calls] * 2
    assert gauge.entered == threads * thread_calls + 2 * tasks * task_calls
    assert gauge.peak == 4
    assert gauge.inside == 0
    assert b.metrics == BulkheadMetrics(4, 0, 0, 0)
    assert_all_slots_free(b)


KINDS = ["thread", "asyncio", "trio"]


def hold_in(kind: str, b: Bulkhead, inside: threading.Event, release: threading.Event) -> str:
    if kind == "thread":
        with b:
            inside.set()
            assert release.wait(WAIT)
        return "released"

    async def main() -> str:
        async with b:
            inside.set()
            assert await anyio.to_thread.run_sync(release.wait, WAIT)
        return "released"

    return anyio.run(main, backend=kind)


def enter_in(kind: str, b: Bulkhead) -> str:
    if kind == "thread":
        return b.call(lambda: "thread got in")

    async def body() -> str:
        await anyio.lowlevel.checkpoint()
        return f"{kind} got in"

    async def main() -> str:
        with anyio.fail_after(WAIT):
            return await b.call_async(body)

    return anyio.run(main, backend=kind)


@pytest.mark.parametrize("waiter", KINDS)
@pytest.mark.parametrize("holder", KINDS)
def test_a_slot_freed_in_one_thread_or_loop_wakes_a_waiter_in_another(
    holder: str, waiter: str
) -> None:
    b = Bulkhead(1, max_wait=LONG)
    inside, release = threading.Event(), threading.Event()
    held = Worker(hold_in, holder, b, inside, release)
    try:
        assert inside.wait(WAIT)
        waiting = Worker(enter_in, waiter, b)
        queued(b, 1)
        assert b.metrics == BulkheadMetrics(1, 1, 1, 0)
    finally:
        release.set()
    assert waiting.outcome() == f"{waiter} got in"
    assert held.outcome() == "released"
    assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
    assert_all_slots_free(b)


# -- 9. metrics --------------------------------------------------------------------------------


def test_metrics_read_mid_flight() -> None:
    b = Bulkhead(3, max_wait=LONG, name="db")
    assert b.metrics == BulkheadMetrics(3, 0, 0, 0)
    made: list[Holder] = []
    try:
        for n in (1, 2, 3):
            made.append(Holder(b).__enter__())
            assert b.metrics == BulkheadMetrics(3, n, 0, 0)
        for n in (1, 2):
            made.append(Holder(b))
            queued(b, n)
        assert b.metrics == BulkheadMetrics(3, 3, 2, 0)
        with resilient.deadline(0), pytest.raises(BulkheadFullError):
            b.call(never)
        assert b.metrics == BulkheadMetrics(3, 3, 2, 1)
        assert made[0].release() == "held"
        assert made[3].inside.wait(WAIT)
        assert b.metrics == BulkheadMetrics(3, 3, 1, 1)  # the slot passed: still 3 in use
        assert made[1].release() == "held"
        assert made[4].inside.wait(WAIT)
        assert b.metrics == BulkheadMetrics(3, 3, 0, 1)
        assert made[2].release() == "held"
        assert b.metrics == BulkheadMetrics(3, 2, 0, 1)
        assert [h.release() for h in made[3:]] == ["held", "held"]
        assert b.metrics == BulkheadMetrics(3, 0, 0, 1)
    finally:
        for holder in made:
            holder._release.set()
    assert_all_slots_free(b)


# -- 10. a model of the queue, checked step by step -----------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["arrive", "arrive", "finish", "cancel_inside", "cancel_waiting"]),
        st.integers(0, 99),
    ),
    max_size=30,
)


@pytest.mark.parametrize("mode", ASYNC_MODES)
@settings(max_examples=40, deadline=None)
@given(ops=OPS, max_concurrent=st.integers(1, 3), max_waiting=st.none() | st.integers(0, 3))
def test_tasks_follow_a_fifo_model_step_by_step(
    mode: str, ops: list[tuple[str, int]], max_concurrent: int, max_waiting: int | None
) -> None:
    """Random arrivals, finishes and cancellations (inside or queued) of tasks in one loop,
    against a model: a call gets in if nobody waits and a slot is free, else queues if
    the queue has room, else is refused; a freed slot goes to the oldest waiter; a
    cancelled waiter just leaves. After every step the metrics and the order in which
    bodies started match the model, and every call ends as the model says."""

    async def main() -> None:
        b = Bulkhead(max_concurrent, max_wait=LONG, max_waiting=max_waiting)
        inside: list[int] = []
        queue: deque[int] = deque()
        admitted: list[int] = []
        expected: dict[int, str] = {}
        entered: list[int] = []
        gates: list[anyio.Event] = []

        async def body(i: int) -> int:
            entered.append(i)
            await gates[i].wait()
            return i

        def promote() -> None:
            if queue:
                i = queue.popleft()
                inside.append(i)
                admitted.append(i)

        async with Tasks(mode) as tasks:
            calls: list[Call] = []
            for op, n in ops:
                if op == "arrive":
                    i = len(calls)
                    gates.append(anyio.Event())
                    calls.append(start_call(tasks, FORMS[i % 3], b, functools.partial(body, i)))
                    expected[i] = "ok"
                    if not queue and len(inside) < max_concurrent:
                        inside.append(i)
                        admitted.append(i)
                    elif max_waiting is not None and len(queue) >= max_waiting:
                        expected[i] = "error"
                    else:
                        queue.append(i)
                elif op == "finish" and inside:
                    gates[inside.pop(n % len(inside))].set()
                    promote()
                elif op == "cancel_inside" and inside:
                    i = inside.pop(n % len(inside))
                    calls[i].cancel()
                    expected[i] = "cancelled"
                    promote()
                elif op == "cancel_waiting" and queue:
                    i = queue[n % len(queue)]
                    queue.remove(i)
                    calls[i].cancel()
                    expected[i] = "cancelled"
                await settle()
                rejected = sum(v == "error" for v in expected.values())
                assert b.metrics == BulkheadMetrics(
                    max_concurrent, len(inside), len(queue), rejected
                )
                assert entered == admitted
            while inside or queue:
                gates[inside.pop()].set()
                promote()
                await settle()
                assert entered == admitted
            outcomes = [await call.wait() for call in calls]
        assert [kind for kind, _ in outcomes] == [expected[i] for i in range(len(calls))]
        assert all(
            isinstance(value, BulkheadFullError) for kind, value in outcomes if kind == "error"
        )
        rejected = sum(kind == "error" for kind in expected.values())
        assert b.metrics == BulkheadMetrics(max_concurrent, 0, 0, rejected)
        assert_all_slots_free(b)

    run_async(mode, main)


def test_a_slot_given_back_while_a_call_queues_goes_to_that_call(lock_free: None) -> None:
    """The race behind test_a_slot_freed_just_as_a_thread_queues_is_never_left_idle, made
    deterministic: the holder gives its slot back (lock-free) after the arrival found no
    slot and before the arrival is in the queue, so the holder sees nobody waiting. The
    arrival must still get the slot at once, not wait out max_wait."""
    b = Bulkhead(1, max_wait=5.0)
    b.__enter__()  # the holder's slot, given back from inside the arrival's queueing

    class Queue(collections.deque):  # type: ignore[type-arg]
        def append(self, waiter: object) -> None:
            b.__exit__(None, None, None)  # finds the queue empty: returns the slot
            super().append(waiter)

    b._queue = Queue()
    started = time.monotonic()
    assert b.call(lambda: "in") == "in"
    assert time.monotonic() - started < 1.0
    assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
    assert_all_slots_free(b)


class Interleaving:
    """Pauses chosen threads right after their k-th operation on a bulkhead's deques.

    ``plan(thread_id, step1, step2, ...)``: right after that thread's first operation on
    either deque (a length check, a pop that found nothing, an append...) ``step1`` runs
    in it, then ``step2`` after its second, and so on: the thread is held there, between
    two operations, for as long as its step waits. Other threads run free.
    """

    def __init__(self, b: Bulkhead) -> None:
        self.plans: dict[int, list[Callable[[], None]]] = {}
        b._queue = Watched(b._queue, self)
        b._permits = Watched(b._permits, self)

    def plan(self, thread_id: int, *steps: Callable[[], None]) -> None:
        self.plans[thread_id] = list(steps)

    def after_op(self) -> None:
        steps = self.plans.get(threading.get_ident())
        if steps:
            steps.pop(0)()


class Watched(deque):  # type: ignore[type-arg]
    def __init__(self, items: deque[Any], interleaving: Interleaving) -> None:
        super().__init__(items)
        self.interleaving = interleaving

    def __len__(self) -> int:
        n = deque.__len__(self)
        self.interleaving.after_op()
        return n

    def __bool__(self) -> bool:  # what `if not queue` asks (3.10's deque has its own)
        n = deque.__len__(self)
        self.interleaving.after_op()
        return n > 0

    def pop(self) -> Any:
        try:
            return deque.pop(self)
        finally:
            self.interleaving.after_op()

    def popleft(self) -> Any:
        try:
            return deque.popleft(self)
        finally:
            self.interleaving.after_op()

    def append(self, item: Any) -> None:
        deque.append(self, item)
        self.interleaving.after_op()


def raw_len(d: deque[Any]) -> int:
    return deque.__len__(d)


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the interleaving did not come about"
        time.sleep(0.001)


@pytest.mark.parametrize("newcomer_mode", ["sync", "asyncio", "trio"])
def test_a_newcomer_never_overtakes_a_waiter_queued_during_its_admission(
    newcomer_mode: str, lock_free: None
) -> None:
    """Bulkhead(1), held by H. A newcomer N starts its admission and is held right after
    its first look at the bulkhead; meanwhile H starts to leave and finds nobody queued,
    W queues, and H gives its slot back, lock-free. N must not take that slot: W queued
    first and gets in first, then N (on a thread, an asyncio task or a trio task).

    The interleaving a lock-free admission that looks at the queue before it takes a slot
    loses: it saw no queue, then took the slot W was owed."""
    b = Bulkhead(1, max_wait=LONG)
    steps = Interleaving(b)
    order: list[str] = []
    h_gate, h_looked, h_go, h_gave = (threading.Event() for _ in range(4))

    def holder() -> None:
        with b:
            steps.plan(
                threading.get_ident(),
                lambda: (h_looked.set(), h_go.wait(WAIT)),  # looked: nobody queued
                lambda: (h_gave.set(), until(lambda: bool(order))),  # slot given back
            )
            assert h_gate.wait(WAIT)

    def waiter() -> None:
        b.call(order.append, "W")

    h = Worker(holder)
    until(lambda: b.metrics.in_use == 1)
    workers: list[Worker] = []

    def interfere() -> None:  # runs in N's thread, right after N's first look
        h_gate.set()
        assert h_looked.wait(WAIT)
        workers.append(Worker(waiter))
        until(lambda: raw_len(b._queue) == 1)
        h_go.set()
        assert h_gave.wait(WAIT)

    def newcomer_sync() -> None:
        steps.plan(threading.get_ident(), interfere)
        b.call(order.append, "N")

    async def newcomer_async() -> None:
        async def body() -> None:
            order.append("N")
            await anyio.lowlevel.checkpoint()

        steps.plan(threading.get_ident(), interfere)
        await b.call_async(body)

    if newcomer_mode == "sync":
        newcomer_sync()
    else:
        run_async(newcomer_mode, newcomer_async)
    h.outcome()
    for worker in workers:
        worker.outcome()
    assert order == ["W", "N"]
    assert b.metrics == BulkheadMetrics(1, 0, 0, 0)
