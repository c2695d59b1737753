"""Regression tests for the defects an adversarial review found (reloads, forks, hostile
inputs, misuse), each in the forms it affects. Time comes from a ManualClock; calls in
flight wait on events, never on sleeps.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import resilient
from resilient import CircuitBreaker, CircuitOpenError, State, UsageError
from resilient._core.configuration import config
from resilient.testing import ManualClock

from .conftest import MODES, fresh
from .test_concurrency import run_async

WAIT = 20.0


class Boom(ConnectionError):
    """What every call in flight ends with."""


def in_flight(mode: str, b: CircuitBreaker, n: int, during: Callable[[], None]) -> list[str]:
    """Start ``n`` calls through ``b`` (threads for sync, tasks for asyncio and trio), each
    held inside until ``during()`` has run, then each raising Boom. Returns how each
    ended: "failed", or "rejected" for a call the breaker refused at the door."""
    if mode == "sync":
        inside = threading.Semaphore(0)
        release = threading.Event()
        outcomes: list[str] = []

        def body() -> None:
            inside.release()
            assert release.wait(WAIT)
            raise Boom

        def call() -> None:
            try:
                b.call(body)
            except Boom:
                outcomes.append("failed")
            except CircuitOpenError:
                outcomes.append("rejected")
                inside.release()

        threads = [threading.Thread(target=call, daemon=True) for _ in range(n)]
        for thread in threads:
            thread.start()
        for _ in range(n):
            assert inside.acquire(timeout=WAIT)
        try:
            during()
        finally:
            release.set()
        for thread in threads:
            thread.join(WAIT)
        return outcomes

    async def main() -> list[str]:
        release = anyio.Event()
        entered = 0
        outcomes: list[str] = []
        all_in = anyio.Event()

        def arrived() -> None:
            nonlocal entered
            entered += 1
            if entered == n:
                all_in.set()

        async def body() -> None:
            arrived()
            await release.wait()
            raise Boom

        async def call() -> None:
            try:
                await b.call_async(body)
            except Boom:
                outcomes.append("failed")
            except CircuitOpenError:
                outcomes.append("rejected")
                arrived()

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(call)
            with anyio.fail_after(WAIT):
                await all_in.wait()
            try:
                during()
            finally:
                release.set()
        return outcomes

    return run_async(mode, main)


# -- 1. a reload must not blind a breaker ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_calls_admitted_before_a_reload_still_open_the_breaker(
    mode: str, env: pytest.MonkeyPatch
) -> None:
    """Four calls are inside when reloads run: one that changes nothing leaves the phase
    as it is; one that resizes the window replaces it, and the four failures still
    count, in the new window: the breaker opens."""
    name = fresh("blind")
    b = CircuitBreaker(name, window_size=10, min_calls=4, clock=ManualClock())
    phase = b._state

    def reloads() -> None:
        resilient.reload()
        assert b._state is phase  # nothing about the breaker changed: its phase stays
        env.setenv(config.variable("breaker", "window_size", name), "20")
        resilient.reload()
        assert b._state is not phase

    assert in_flight(mode, b, 4, reloads) == ["failed"] * 4
    assert b.state is State.OPEN
    assert b.settings["window_size"] == 20


def test_reloads_never_let_more_than_half_open_calls_probes_in(
    env: pytest.MonkeyPatch,
) -> None:
    """HALF_OPEN with half_open_calls=2 and two probes inside: reloads that change nothing
    admit no third; one that raises it to 3 admits exactly one more; the probes' outcomes
    then decide as usual."""
    name = fresh("probes")
    clock = ManualClock()
    b = CircuitBreaker(name, min_calls=1, half_open_calls=2, open_for=10, clock=clock)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    clock.advance(10)
    probes: list[Any] = []
    for _ in range(2):
        b.__enter__()
        probes.append(b._state)
    assert b.state is State.HALF_OPEN
    for _ in range(5):
        resilient.reload()
        with pytest.raises(CircuitOpenError):
            b.call(lambda: "third")
    env.setenv(config.variable("breaker", "half_open_calls", name), "3")
    resilient.reload()
    b.__enter__()  # the third probe
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "fourth")
    for _ in range(3):
        b.__exit__(None, None, None)
    assert b.state is State.CLOSED


def test_a_reload_lowering_half_open_calls_below_those_reported_decides_at_once(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("fewer")
    clock = ManualClock()
    b = CircuitBreaker(name, min_calls=1, half_open_calls=5, open_for=10, clock=clock)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    clock.advance(10)
    for _ in range(3):
        b.call(lambda: "fine")
    assert b.state is State.HALF_OPEN
    env.setenv(config.variable("breaker", "half_open_calls", name), "2")
    resilient.reload()
    assert b.state is State.CLOSED


# -- 13. a plain def that returns a coroutine ------------------------------------------------


async def _coroutine_body() -> str:
    return "never awaited"


def _returns_a_coroutine() -> Any:
    return _coroutine_body()


POLICIES: dict[str, Callable[[], Any]] = {
    "breaker": lambda: CircuitBreaker(),
    "retry": lambda: resilient.Retry(3, wait=0),
    "timeout": lambda: resilient.Timeout(5),
    "fallback": lambda: resilient.Fallback(handler=lambda exc: "fallback"),
    "bulkhead": lambda: resilient.Bulkhead(2),
    "pipeline": lambda: resilient.Pipeline(
        resilient.Fallback(handler=lambda exc: "fallback"),
        resilient.Retry(3, wait=0),
        CircuitBreaker(),
        resilient.Timeout(5),
    ),
}


@pytest.mark.parametrize("form", ["decorator", "call"])
@pytest.mark.parametrize("kind", list(POLICIES))
def test_a_plain_def_returning_a_coroutine_is_a_usage_error(kind: str, form: str) -> None:
    """The coroutine would go back unawaited and count as a success: instead it is closed
    (no "never awaited" warning), nothing is retried, counted or fallen back from, and
    the error says what to do."""
    policy = POLICIES[kind]()
    guarded = policy(_returns_a_coroutine) if form == "decorator" else None
    with pytest.raises(UsageError, match="returned a coroutine") as info:
        guarded() if guarded is not None else policy.call(_returns_a_coroutine)
    assert "call_async" in str(info.value)
    if kind == "breaker":
        assert policy.metrics.calls == 0
    if kind == "bulkhead":
        assert policy.metrics.in_use == 0


# -- 14, 15. bounds that make every value safe ----------------------------------------------


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: CircuitBreaker(window_type="time", window_size=5e-324), "window_size"),
        (lambda: CircuitBreaker(window_type="time", window_size=1e308), "window_size"),
        (lambda: resilient.RetryBudget(window=5e-324), "window"),
        (lambda: resilient.RetryBudget(min_per_second=1e308, window=1e308), "min_per_second"),
        (lambda: CircuitBreaker(min_calls=10**40), "min_calls"),
        (lambda: resilient.Retry(10**40), "attempts"),
        (lambda: resilient.Timeout(1, max_abandoned=10**40), "max_abandoned"),
        (lambda: resilient.Bulkhead(1, max_waiting=10**40), "max_waiting"),
    ],
)
def test_values_no_window_or_counter_can_take_are_config_errors(
    make: Callable[[], Any], option: str
) -> None:
    """Subnormal and enormous windows used to crash at the first call (OverflowError,
    ZeroDivisionError); integer options took 10**40 while others stopped at a million.
    One rule now: every whole number is at most 1,000,000; a time window spans 1 ms to
    a year; a rate a second is at most 1,000,000."""
    with pytest.raises(resilient.ConfigError) as info:
        make()
    assert info.value.option == option


def test_the_smallest_and_largest_time_windows_work() -> None:
    clock = ManualClock(1e6)
    for seconds in (0.001, 365 * 24 * 3600.0):
        b = CircuitBreaker(window_type="time", window_size=seconds, min_calls=2, clock=clock)
        b.call(lambda: "ok")
        assert b.metrics.calls == 1
        budget = resilient.RetryBudget(min_per_second=1_000_000, window=seconds, clock=clock)
        assert budget.available >= 1


# -- 5. a waiter whose event loop was closed -------------------------------------------------


def test_a_slot_freed_for_a_task_whose_loop_was_closed_goes_to_the_next_waiter() -> None:
    """An asyncio task waits for the one slot; its loop is closed without cancelling it.
    The thread that frees the slot must not get "Event loop is closed" from its own
    successful call, and the slot must not be lost: a thread waiting behind gets it."""
    import asyncio
    import gc

    b = resilient.Bulkhead(1, max_wait=60)
    b.__enter__()  # the holder: this thread
    loop = asyncio.new_event_loop()

    async def wait_for_a_slot() -> None:
        async with b:
            raise AssertionError("a task whose loop is closed cannot run")

    task = loop.create_task(wait_for_a_slot())
    loop.run_until_complete(asyncio.sleep(0))  # the task starts and queues
    assert b.metrics.waiting == 1
    loop.close()  # without cancelling the task
    behind = threading.Thread(target=lambda: b.call(lambda: None), daemon=True)
    behind.start()
    for _ in range(2000):
        if b.metrics.waiting == 2:
            break
        threading.Event().wait(0.005)
    assert b.metrics.waiting == 2
    b.__exit__(None, None, None)  # no RuntimeError here
    behind.join(WAIT)
    assert not behind.is_alive()
    assert b.metrics == resilient.BulkheadMetrics(1, 0, 0, 0)
    # What the collector would do to the orphaned task, done here and now: its coroutine
    # closed (leaving the queue it already left), nothing left to a later collection.
    task.get_coro().close()
    assert b.metrics == resilient.BulkheadMetrics(1, 0, 0, 0)
    task._log_destroy_pending = False  # (a task of a closed loop: nobody to tell)
    del task
    gc.collect()


# -- 6. hostile retry hints and waits --------------------------------------------------------


class Throttled(ConnectionError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after}")
        self.retry_after = retry_after


def run_retry(mode: str, retry: resilient.Retry, fn: Callable[[], Any]) -> Any:
    if mode == "sync":
        return retry.call(fn)

    async def body() -> Any:
        return fn()

    async def main() -> Any:
        return await retry.call_async(body)

    return anyio.run(main, backend=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hint", [1e10, 86400.0, 61.0])
def test_a_server_hint_beyond_max_wait_ends_the_retry_with_its_own_error(
    mode: str, hint: float
) -> None:
    """No caller is parked for a day (or overflows a sleep): the downstream's own error
    comes out at once, with a note that says why, and nothing was slept."""
    clock = ManualClock()
    calls = []

    def throttled() -> None:
        calls.append(clock.monotonic())
        raise Throttled(hint)

    with pytest.raises(Throttled) as info:
        run_retry(mode, resilient.Retry(5, clock=clock), throttled)
    assert calls == [0.0]
    assert clock.monotonic() == 0.0
    (note,) = info.value.__notes__
    assert f"it asked to wait {hint:.6g}s, more than max_wait (60s)" in note


@pytest.mark.parametrize("mode", MODES)
def test_a_hint_within_max_wait_is_waited_and_max_wait_can_be_raised(mode: str) -> None:
    clock = ManualClock()
    calls = []

    def throttled() -> None:
        calls.append(clock.monotonic())
        raise Throttled(86400.0)

    with pytest.raises(Throttled):
        run_retry(mode, resilient.Retry(2, max_wait=86400, clock=clock), throttled)
    assert calls == [0.0, 86400.0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "wait",
    [1e10, resilient.backoff.exponential(base=1e6, cap=1e300, jitter=None)],
    ids=["1e10", "backoff"],
)
def test_a_wait_longer_than_max_wait_is_cut_to_it(mode: str, wait: Any) -> None:
    clock = ManualClock()
    calls = []

    def failing() -> None:
        calls.append(clock.monotonic())
        raise ConnectionError

    with pytest.raises(ConnectionError):
        run_retry(mode, resilient.Retry(3, wait=wait, clock=clock), failing)
    assert calls == [0.0, 60.0, 120.0]


def test_max_wait_comes_from_the_environment(env: pytest.MonkeyPatch) -> None:
    name = fresh("capped")
    env.setenv(config.variable("retry", "max_wait", name), "5s")
    retry = resilient.Retry(3, wait=30, name=name, clock=ManualClock())
    assert retry.settings["max_wait"] == 5.0


# -- 12. a user's callable failing while calls run ------------------------------------------


def test_an_open_for_callable_failing_later_never_wedges_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """open_for works for the first opening, then raises: the breaker opens for the last
    good duration instead (logged once), the failing call keeps its own error, and the
    breaker goes on probing and closing as ever."""

    def open_for(times_opened: int) -> float:
        return [10.0][times_opened - 1]  # IndexError from the second opening on

    clock = ManualClock()
    b = CircuitBreaker(min_calls=1, half_open_calls=1, open_for=open_for, clock=clock)
    for _ in range(3):  # open, probe and fail (reopen), probe and fail again
        with pytest.raises(ZeroDivisionError):
            b.call(lambda: 1 / 0)
        assert b.state is State.OPEN
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: "no")
        assert info.value.retry_after == 10.0
        clock.advance(10)
    assert b.call(lambda: "probe") == "probe"
    assert b.state is State.CLOSED
    logged = [r for r in caplog.records if "open_for callable failed" in r.getMessage()]
    assert len(logged) == 1


# -- 11. one deadline object, shared --------------------------------------------------------


def test_one_deadline_object_shared_by_threads_that_leave_in_any_order() -> None:
    """Entered by two threads at once and left in the opposite order: each thread sees
    its own deadline and gets its own back (it raised ValueError: a Token created in a
    different Context)."""
    shared = resilient.deadline(5)
    inside = threading.Barrier(2, timeout=WAIT)
    first_out = threading.Event()
    seen: dict[int, Any] = {}

    def worker(i: int) -> None:
        with shared:
            inside.wait()
            seen[i] = resilient.remaining()
            if i == 1:
                assert first_out.wait(WAIT)  # thread 0 leaves first
        if i == 0:
            first_out.set()
        seen[i + 10] = resilient.remaining()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert 0 < seen[0] <= 5
    assert 0 < seen[1] <= 5
    assert (seen[10], seen[11]) == (None, None)


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_one_deadline_object_shared_by_tasks_that_leave_out_of_order(mode: str) -> None:
    async def main() -> list[Any]:
        shared = resilient.deadline(5)
        gates = [anyio.Event() for _ in range(3)]
        after: list[Any] = []

        async def task(i: int) -> None:
            async with shared:
                await gates[i].wait()
            after.append((i, resilient.remaining()))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(task, i)
            await anyio.wait_all_tasks_blocked()
            for i in (2, 0, 1):
                gates[i].set()
                await anyio.wait_all_tasks_blocked()
        return after

    assert run_async(mode, main) == [(2, None), (0, None), (1, None)]


# -- 4. the operator's switches win over code ------------------------------------------------


def test_reset_and_force_open_never_undo_resilient_enabled_0(env: pytest.MonkeyPatch) -> None:
    """RESILIENT_ENABLED=0 lets every call through whatever code does; what code did
    meanwhile applies once the environment lifts the switch."""
    name = fresh("switch")
    b = CircuitBreaker(name, min_calls=1)
    env.setenv("RESILIENT_ENABLED", "0")
    resilient.reload()
    assert b.state is State.DISABLED
    b.reset()
    resilient.registry.reset()
    b.force_open()
    assert b.state is State.DISABLED
    assert b.call(lambda: "through") == "through"
    env.delenv("RESILIENT_ENABLED")
    resilient.reload()
    assert b.state is State.FORCED_OPEN  # the code's pin, made meanwhile
    b.reset()
    assert b.state is State.CLOSED


def test_an_environment_pin_holds_until_the_environment_changes(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("pinned")
    b = CircuitBreaker(name, min_calls=1)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    assert b.state is State.OPEN
    env.setenv(config.variable("breaker", "state", name), "forced_open")
    resilient.reload()
    b.reset()
    resilient.registry.reset(name)
    b.disable()
    assert b.state is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "no")
    b.reset()  # the last word of code before the lift: closed, with a fresh window
    env.delenv(config.variable("breaker", "state", name))
    resilient.reload()
    assert b.state is State.CLOSED
    assert b.metrics.calls == 0


def test_code_and_reloads_racing_leave_one_consistent_state(
    env: pytest.MonkeyPatch, switch_often: None
) -> None:
    """4 threads pin and reset in code while 4 reload with the environment's pin set and
    lifted: nothing raises, and once the environment is clear and code resets last,
    the breaker is CLOSED with an empty window."""
    name = fresh("race")
    b = CircuitBreaker(name)
    variable = config.variable("breaker", "state", name)
    import os

    def code(i: int) -> None:
        for k in range(300):
            (b.force_open, b.disable, b.reset)[(i + k) % 3]()

    def operator(i: int) -> None:
        for k in range(30):
            if (i + k) % 2:
                os.environ[variable] = "forced_open"
            else:  # (os.environ.pop is a look then a delete: another thread may delete)
                with contextlib.suppress(KeyError):
                    del os.environ[variable]
            resilient.reload()

    from .test_concurrency import run_threads

    env.delenv(variable, raising=False)
    run_threads(8, lambda i: code(i) if i < 4 else operator(i))
    os.environ.pop(variable, None)
    resilient.reload()
    b.reset()
    assert b.state is State.CLOSED
    assert b.metrics.calls == 0


# -- 15. the rough edges -----------------------------------------------------------------


@pytest.mark.parametrize("exit_", [SystemExit(3), KeyboardInterrupt()])
def test_a_listener_raising_systemexit_never_replaces_the_calls_error(
    exit_: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    b = CircuitBreaker(min_calls=1)

    @b.add_listener
    def leave(change: Any) -> None:
        raise exit_

    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)  # opens: the listener runs and raises
    assert b.state is State.OPEN
    assert any("listener" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("record", [KeyboardInterrupt, (ConnectionError, SystemExit)])
def test_a_breaker_refuses_record_types_it_could_never_count(record: Any) -> None:
    with pytest.raises(resilient.ConfigError) as info:
        CircuitBreaker(record=record)
    assert info.value.option == "record"


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        (Unprintable(), "<Unprintable object (its repr failed)>"),
        ("x" * 500, "'" + "x" * 76 + "..."),
    ],
)
def test_a_config_error_quotes_any_bad_value_briefly_and_safely(value: Any, quoted: str) -> None:
    with pytest.raises(resilient.ConfigError) as info:
        CircuitBreaker(failure_rate=value)
    message = str(info.value)
    assert f"failure_rate={quoted}" in message
    assert len(message) < 400


@pytest.mark.parametrize("name", ["платежи", "支付", "---", " "])
def test_a_name_with_no_ascii_letter_or_digit_is_refused(name: str) -> None:
    """Variables spell names in A-Z, 0-9 and _: every such name would read the same
    RESILIENT___BREAKER_* variables."""
    with pytest.raises(resilient.ConfigError, match="ASCII letter or digit"):
        CircuitBreaker(name)


def test_a_variable_never_imports_a_module(env: pytest.MonkeyPatch) -> None:
    """`RESILIENT_..._RECORD=this.s` printed the Zen of Python: a variable now names
    things in modules already imported, and only exception types or callables."""
    import sys

    name = fresh("noimport")
    sys.modules.pop("this", None)
    env.setenv(config.variable("breaker", "record", name), "this.s")
    with pytest.raises(resilient.ConfigError):
        CircuitBreaker(name)
    assert "this" not in sys.modules
    env.setenv(config.variable("breaker", "record", name), "os.sep")  # imported, a str
    with pytest.raises(resilient.ConfigError):
        CircuitBreaker(name)
    env.setenv(config.variable("breaker", "record", name), "ConnectionError,TimeoutError")
    assert CircuitBreaker(name).settings["record"](TimeoutError())


def test_resilient_config_shows_exception_types_as_written(tmp_path: Any) -> None:
    import subprocess
    import sys

    (tmp_path / "app.py").write_text(
        "from resilient import CircuitBreaker\n"
        "b = CircuitBreaker('pay', record=(ConnectionError, TimeoutError))\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "resilient", "config", "app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "(ConnectionError, TimeoutError)" in out
    assert "<lambda>" not in out


# -- 2. fork -------------------------------------------------------------------------------

needs_fork = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork")


def in_child(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a child forked from this (multi-threaded) process; its answer."""
    import os
    import warnings

    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "this process is multi-threaded" - we know
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, whatever happens
        try:
            answer = fn()
        except BaseException as exc:
            answer = f"raised {exc!r}"
        os.write(write, answer.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


class Held:
    """A call parked inside a policy on a thread of its own until ``release()``."""

    def __init__(self, enter: Callable[[Callable[[], Any]], Any]) -> None:
        self.inside = threading.Event()
        self._go = threading.Event()

        def body() -> str:
            self.inside.set()
            self._go.wait(WAIT)
            return "done"

        self.thread = threading.Thread(target=lambda: enter(body), daemon=True)
        self.thread.start()
        assert self.inside.wait(WAIT)

    def release(self) -> None:
        self._go.set()
        self.thread.join(WAIT)


@needs_fork
def test_a_forked_child_starts_with_fresh_timeout_workers_and_counts() -> None:
    """The parent's worker threads, idle and abandoned, do not exist in the child: its
    first calls run on workers of its own (they waited the whole timeout, were counted
    abandoned, and at max_abandoned were refused for good)."""
    timeout = resilient.Timeout(0.05, max_abandoned=1)
    assert timeout.call(lambda: "warm") == "warm"  # leaves an idle worker
    hang = threading.Event()
    with pytest.raises(resilient.TimeoutExpired):
        timeout.call(hang.wait, WAIT)  # abandoned: the cap is reached
    try:
        answer = in_child(lambda: ",".join(timeout.call(str, k) for k in range(5)))
    finally:
        hang.set()
    assert answer == "0,1,2,3,4"


def _slots_in_a_forked_pool_worker() -> str:
    b = _POOLED
    with b, b:
        return f"{b.metrics.in_use} of {b.metrics.max_concurrent}"


_POOLED = resilient.Bulkhead(2)


@needs_fork
def test_bulkhead_slots_held_by_parent_threads_are_free_in_a_fork_pool() -> None:
    import multiprocessing
    import warnings

    holders = [Held(lambda body: _POOLED.call(body)) for _ in range(2)]
    assert _POOLED.metrics.in_use == 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with multiprocessing.get_context("fork").Pool(2) as pool:
                answers = [pool.apply(_slots_in_a_forked_pool_worker) for _ in range(2)]
    finally:
        for holder in holders:
            holder.release()
    assert answers == ["2 of 2", "2 of 2"]
    assert _POOLED.metrics.in_use == 0


@needs_fork
def test_a_slot_held_by_the_forking_thread_is_not_given_back_twice_in_the_child() -> None:
    b = resilient.Bulkhead(2)
    other = Held(lambda body: b.call(body))
    b.__enter__()  # this thread, which forks, holds the other slot

    def child() -> str:
        free_at_fork = 2 - b.metrics.in_use
        b.__exit__(None, None, None)  # the parent's slot: not counted again
        with b, b:
            inside = b.metrics.in_use
        return f"{free_at_fork} {inside} {b.metrics.in_use}"

    try:
        assert in_child(child) == "2 2 0"
    finally:
        b.__exit__(None, None, None)
        other.release()
    assert b.metrics.in_use == 0


@needs_fork
def test_half_open_permits_held_by_parent_threads_are_free_in_the_child() -> None:
    clock = ManualClock()
    b = CircuitBreaker(min_calls=1, half_open_calls=1, open_for=1, clock=clock)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    clock.advance(1)
    probe = Held(lambda body: b.call(body))  # the one probe, on another thread
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "second probe")

    def child() -> str:
        answer = b.call(lambda: "probe")
        return f"{answer} {b.state.value}"

    try:
        assert in_child(child) == "probe closed"
    finally:
        probe.release()
    assert b.state is State.CLOSED


# -- 8. one cap on worker threads for the process -------------------------------------------

_CAP_SCRIPT = """
import threading, resilient
hang = threading.Event()
timeouts = [resilient.Timeout(0.02, max_abandoned=10) for _ in range(5)]
outcomes = []
for t in timeouts:
    try:
        t.call(hang.wait, 30)
    except resilient.TimeoutExpired:
        outcomes.append("expired")
    except resilient.RejectedError as exc:
        outcomes.append(type(exc).__name__)
hang.set()
print(",".join(outcomes))
"""


def test_a_process_wide_cap_on_worker_threads_refuses_calls_beyond_it() -> None:
    """Five Timeouts against a hung downstream, RESILIENT_MAX_WORKERS=3: three calls
    are abandoned on workers, the next are refused at once (each Timeout's own
    max_abandoned was far off); a bad value is a ConfigError naming the variable."""
    import os
    import subprocess
    import sys

    def run(value: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
        return subprocess.run(
            [sys.executable, "-c", _CAP_SCRIPT],
            env={**clean, "RESILIENT_MAX_WORKERS": value},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    capped = run("3")
    assert capped.stdout.split() == [
        "expired,expired,expired,WorkersExhaustedError,WorkersExhaustedError"
    ], capped.stderr
    bad = run("lots")
    assert "RESILIENT_MAX_WORKERS='lots' is invalid" in bad.stdout + bad.stderr


# -- 7. trio: idle watchers end --------------------------------------------------------------


def test_trio_timeouts_made_per_request_leave_no_task_behind() -> None:
    """5000 per-request Timeouts left 5000 system tasks until the run ended: a watch
    that has had no call for a second ends (on trio's clock: a MockClock jumps there),
    and a Timeout called again starts a new one and still expires."""
    import trio
    import trio.testing

    async def main() -> tuple[int, int, int]:
        baseline = trio.lowlevel.current_statistics().tasks_living

        async def quick() -> str:
            return "ok"

        for _ in range(300):
            assert await resilient.Timeout(5).call_async(quick) == "ok"
        busy = trio.lowlevel.current_statistics().tasks_living - baseline
        await trio.sleep(2)  # idle: every watch ends
        idle = trio.lowlevel.current_statistics().tasks_living - baseline
        again = resilient.Timeout(0.5)
        with pytest.raises(resilient.TimeoutExpired):
            await again.call_async(trio.sleep, 10)
        await trio.sleep(2)
        after = trio.lowlevel.current_statistics().tasks_living - baseline
        return busy, idle, after

    busy, idle, after = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert busy == 300
    assert (idle, after) == (0, 0)


# -- 9. no reference cycles left by a failing call ------------------------------------------


def _cyclic_garbage_of(fn: Callable[[], None]) -> list[str]:
    """What the cyclic collector finds after one call of ``fn`` (warmed up first)."""
    import gc

    fn()
    fn()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        fn()
        gc.collect()
        return sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


CYCLE_POLICIES: dict[str, Callable[[], Any]] = {
    "breaker": lambda: CircuitBreaker(min_calls=1000, window_size=1000),
    "retry": lambda: resilient.Retry(3, wait=0),
    "timeout": lambda: resilient.Timeout(5),
    "bulkhead": lambda: resilient.Bulkhead(2),
    "fallback": lambda: resilient.Fallback(handler=lambda exc: "never", on=KeyError),
    "pipeline": lambda: resilient.Pipeline(
        resilient.Retry(2, wait=0),
        CircuitBreaker(min_calls=1000, window_size=1000),
        resilient.Timeout(5),
    ),
}


@pytest.mark.parametrize("kind", list(CYCLE_POLICIES))
def test_a_failing_call_leaves_nothing_for_the_cyclic_collector(kind: str) -> None:
    """Retry, sync Timeout and Pipeline left cycles holding the caller's frames (12, 40
    and 24 objects a call) until the collector ran: a failing call now leaves none, sync
    or on one asyncio loop."""
    import asyncio

    policy = CYCLE_POLICIES[kind]()

    def boom() -> None:
        raise ConnectionError("down")

    async def aboom() -> None:
        raise ConnectionError("down")

    def sync_call() -> None:
        with contextlib.suppress(ConnectionError):
            policy.call(boom)

    loop = asyncio.new_event_loop()

    def async_call() -> None:
        async def main() -> None:
            with contextlib.suppress(ConnectionError):
                await policy.call_async(aboom)

        loop.run_until_complete(main())

    try:
        assert _cyclic_garbage_of(sync_call) == []
        assert _cyclic_garbage_of(async_call) == []
    finally:
        loop.close()


def test_an_exception_raised_again_and_again_gets_one_gave_up_note() -> None:
    same = ConnectionError("the same instance, every time")

    def boom() -> None:
        raise same

    retry = resilient.Retry(2, wait=0)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            retry.call(boom)
    assert [n for n in same.__notes__ if "gave up" in n] == ["Retry: gave up after 2 attempts"]


# -- 3. with-blocks whose exit runs in another context ---------------------------------------


def _stream(policy: Any, chunks: int) -> Any:
    with policy:
        yield from range(chunks)


def _resumed_on_threads(gen: Any) -> list[Any]:
    """What Starlette's StreamingResponse does to a sync generator: each next() through
    anyio.to_thread, so in a fresh copy of the context, on a worker thread."""

    async def main() -> list[Any]:
        out: list[Any] = []
        sentinel = object()
        while (item := await anyio.to_thread.run_sync(next, gen, sentinel)) is not sentinel:
            out.append(item)
        return out

    return anyio.run(main)


@pytest.mark.parametrize("kind", ["bulkhead", "breaker", "timeout", "pipeline"])
def test_a_with_block_around_yields_resumed_in_other_contexts_gives_back_what_it_took(
    kind: str,
) -> None:
    """Every stream ended with RuntimeError('__exit__ without a matching __enter__'), and
    each kept a bulkhead slot for good; now the exit finds its entry."""
    bulkhead = resilient.Bulkhead(1)
    breaker = CircuitBreaker(min_calls=1000, window_size=1000)
    policy = {
        "bulkhead": bulkhead,
        "breaker": breaker,
        "timeout": resilient.Timeout(30),
        "pipeline": resilient.Pipeline(resilient.Timeout(30), breaker, bulkhead),
    }[kind]
    for _ in range(3):  # one slot: a lost one would refuse the second stream
        assert _resumed_on_threads(_stream(policy, 4)) == [0, 1, 2, 3]
    assert bulkhead.metrics.in_use == 0
    assert breaker.metrics.calls == (3 if kind in ("breaker", "pipeline") else 0)


def test_a_half_open_probe_in_a_stream_resumed_elsewhere_returns_its_permit() -> None:
    clock = ManualClock()
    b = CircuitBreaker(min_calls=1, half_open_calls=1, open_for=1, clock=clock)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    clock.advance(1)
    assert _resumed_on_threads(_stream(b, 2)) == [0, 1]
    assert b.state is State.CLOSED


def test_an_async_generator_abandoned_and_closed_in_another_task_loses_no_slot() -> None:
    import asyncio
    import gc

    bulkhead = resilient.Bulkhead(1)

    async def agen() -> Any:
        async with bulkhead:
            for k in range(10):
                yield k
                await asyncio.sleep(0)

    async def main() -> int:
        for _ in range(3):
            async for item in agen():  # the consumer stops early and drops it
                if item == 1:
                    break
            gc.collect()  # the loop's hook closes it in a task of its own
            for _ in range(5):
                await asyncio.sleep(0)
        return bulkhead.metrics.in_use

    assert asyncio.run(main()) == 0


def test_abandoned_generators_leave_no_stale_entries_in_the_consumers_context() -> None:
    import asyncio
    import gc

    from resilient._core.execution import drivers as decorate

    bulkhead = resilient.Bulkhead(1)

    async def agen() -> Any:
        async with bulkhead:
            yield 1
            yield 2

    async def main() -> int:
        for _ in range(50):
            async for _item in agen():
                break
            gc.collect()
            for _ in range(3):
                await asyncio.sleep(0)
        async with bulkhead:  # the next block here sweeps what was taken elsewhere
            return sum(owner is bulkhead for owner, _ in decorate._OPEN_BLOCKS.get())

    assert asyncio.run(main()) == 1
    assert bulkhead.metrics.in_use == 0
