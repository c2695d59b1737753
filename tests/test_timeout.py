"""Timeout: async calls cancelled for real, sync calls on daemon workers that can be abandoned.

Real time throughout, kept short. A "hanging" async body sleeps far past its limit and
is cancelled; a hanging sync body waits on a ``threading.Event`` (the ``gate`` fixture)
that the test sets when it is done, so abandoned workers finish instead of lingering.
Trio's ``MockClock`` shows long limits (60 s) without waiting. The tests that race an
outer cancellation against the timeout block the event loop on purpose for a few
milliseconds, so that both are due in the same loop iteration.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import math
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient
from resilient import (
    ConfigError,
    RejectedError,
    ResilienceError,
    Retry,
    Timeout,
    TimeoutExpired,
    TimeoutMetrics,
    UsageError,
    WorkersExhaustedError,
    remaining,
)
from resilient._core.execution import workers

from .conftest import Flavour, assert_config_error, cancellations_asked, fresh

BACKENDS = ("asyncio", "trio")
ROOT = Path(__file__).resolve().parent.parent

#: How long a hanging body would hang at most: far past any limit a test sets.
HANG = 5.0
#: How long a thread join, event wait or condition poll may take before the test fails.
JOIN = 10.0


class Abort(BaseException):
    """A BaseException of the test's own, not an Exception (as KeyboardInterrupt is not)."""


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """What hanging sync bodies wait on in place of a long sleep; set when the test ends."""
    event = threading.Event()
    yield event
    event.set()


def cancelled_class(backend: str) -> type[BaseException]:
    return asyncio.CancelledError if backend == "asyncio" else trio.Cancelled


def wait_until(condition: Callable[[], bool], within: float = JOIN) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    end = time.monotonic() + within
    while not condition():
        assert time.monotonic() < end, "the condition never held"
        time.sleep(0.001)


def guarded_call(
    mode: str,
    timeout: Timeout,
    *,
    form: str = "call",
    hang: bool = False,
    probe: Callable[[], Any] | None = None,
    deadline: float | None = None,
    gate: threading.Event | None = None,
) -> Any:
    """One call through ``timeout`` in ``mode`` ("sync", "asyncio", "trio") and ``form``
    ("decorator", "call", "with"); returns what the body returns.

    The body first calls ``probe`` (inside the guard) and returns its value. With ``hang``
    it then waits far past any limit: an async body sleeps (to be cancelled), a sync body
    waits on ``gate``. ``deadline`` wraps the call in ``resilient.deadline`` (``async with``
    in the async modes).
    """
    if mode == "sync":
        assert not (hang and form == "with"), "a sync block cannot be interrupted"

        def body() -> Any:
            value = None if probe is None else probe()
            if hang:
                assert gate is not None
                gate.wait(HANG)
            return value

        def run() -> Any:
            if form == "decorator":
                return timeout(body)()
            if form == "call":
                return timeout.call(body)
            with timeout:
                return body()
            return None  # pragma: no cover - a Timeout never swallows an exception

        if deadline is None:
            return run()
        with resilient.deadline(deadline):
            return run()

    async def abody() -> Any:
        value = None if probe is None else probe()
        if hang:
            await anyio.sleep(HANG)
        else:
            await anyio.lowlevel.checkpoint()
        return value

    async def arun() -> Any:
        if form == "decorator":
            return await timeout(abody)()
        if form == "call":
            return await timeout.call_async(abody)
        async with timeout:
            return await abody()
        return None  # pragma: no cover

    async def main() -> Any:
        if deadline is None:
            return await arun()
        async with resilient.deadline(deadline):
            return await arun()

    return anyio.run(main, backend=mode)


async def echo_after(seconds: float, value: Any) -> Any:
    await anyio.sleep(seconds)
    return value


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(what ``fn()`` returned or raised, seconds it took)."""
    start = time.monotonic()
    try:
        outcome = fn()
    except BaseException as exc:
        outcome = exc
    return outcome, time.monotonic() - start


# -- the errors and the metrics -----------------------------------------------------------


class TestErrors:
    def test_timeout_expired_is_a_resilience_error_and_a_builtin_timeout_error(self) -> None:
        err = TimeoutExpired("db", 0.5)
        assert isinstance(err, ResilienceError)
        assert isinstance(err, TimeoutError)
        assert not isinstance(err, RejectedError)
        assert (err.name, err.seconds) == ("db", 0.5)
        assert str(err) == "timeout 'db' expired after 0.5s"
        assert str(TimeoutExpired()) == "timeout expired"
        with pytest.raises(TimeoutError):  # ``except TimeoutError`` catches it
            raise err

    @settings(max_examples=60, deadline=None)
    @given(
        name=st.none() | st.text(min_size=1),
        seconds=st.none() | st.floats(min_value=0, max_value=1e9),
        detail=st.text(),
    )
    def test_timeout_expired_pickles(
        self, name: str | None, seconds: float | None, detail: str
    ) -> None:
        err = TimeoutExpired(name, seconds, detail)
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is TimeoutExpired
        assert (copy.name, copy.seconds, copy.detail) == (name, seconds, detail)
        assert str(copy) == str(err)

    def test_a_raised_timeout_expired_pickles(self, mode: str, gate: threading.Event) -> None:
        name = fresh("db")
        with pytest.raises(TimeoutExpired) as info:
            guarded_call(mode, Timeout(0.02, name=name), hang=True, gate=gate)
        err = info.value
        assert str(err) == f"timeout {name!r} expired after 0.02s"
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is TimeoutExpired
        assert (copy.name, copy.seconds, str(copy)) == (name, 0.02, str(err))

    def test_workers_exhausted_error_is_a_rejection(self) -> None:
        err = WorkersExhaustedError("db")
        assert isinstance(err, RejectedError)
        assert isinstance(err, ResilienceError)
        assert not isinstance(err, TimeoutError)
        assert err.name == "db"
        assert err.retry_after is None
        assert "'db'" in str(err)
        assert "max_abandoned" in str(err)
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is WorkersExhaustedError
        assert (copy.name, str(copy)) == ("db", str(err))
        assert "(unnamed)" in str(WorkersExhaustedError())

    def test_metrics_is_a_named_tuple(self) -> None:
        metrics = Timeout(1).metrics
        assert metrics == TimeoutMetrics(expired=0, abandoned=0, rejected=0)
        assert isinstance(metrics, tuple)
        assert TimeoutMetrics._fields == ("expired", "abandoned", "rejected")
        assert pickle.loads(pickle.dumps(TimeoutMetrics(1, 2, 3))) == (1, 2, 3)

    def test_the_public_names(self) -> None:
        for name in ("Timeout", "TimeoutExpired", "TimeoutMetrics", "WorkersExhaustedError"):
            assert name in resilient.__all__
            assert getattr(resilient, name).__module__ == "resilient"


# -- configuration ------------------------------------------------------------------------

SECONDS = "seconds > 0, a finite number"
CAP = "a whole number from 1 to 1,000,000"
LOCALS = "a `threading.local`, or a tuple of them"

BAD = [
    ("seconds", 0, SECONDS),
    ("seconds", 0.0, SECONDS),
    ("seconds", -1, SECONDS),
    ("seconds", math.nan, SECONDS),
    ("seconds", math.inf, SECONDS),
    ("seconds", -math.inf, SECONDS),
    ("seconds", "one", SECONDS),
    ("seconds", True, SECONDS),
    ("seconds", None, SECONDS),
    ("max_abandoned", 0, CAP),
    ("max_abandoned", -1, CAP),
    ("max_abandoned", 1.5, CAP),
    ("max_abandoned", True, CAP),
    ("max_abandoned", None, CAP),
    ("thread_locals", "x", LOCALS),
    ("thread_locals", [object()], LOCALS),
    ("thread_locals", (threading.local(), 1), LOCALS),
    ("thread_locals", None, LOCALS),
    ("name", "", "None or a string with at least one ASCII letter or digit"),
    ("name", 3, "None or a string with at least one ASCII letter or digit"),
    ("name", b"db", "None or a string with at least one ASCII letter or digit"),
]


def _id(value: Any) -> str:
    simple = isinstance(value, (int, float, str, bytes, type(None)))
    return repr(value)[:20] if simple else type(value).__name__


class TestConfig:
    @pytest.mark.parametrize(
        ("option", "value", "expected"), BAD, ids=[f"{o}={_id(v)}" for o, v, _ in BAD]
    )
    def test_a_bad_option_raises_config_error(
        self, option: str, value: Any, expected: str
    ) -> None:
        options = {"seconds": 1.0, option: value}
        with pytest.raises(ConfigError) as info:
            Timeout(**options)
        assert_config_error(info.value, option, value, expected)
        assert str(info.value).startswith("Timeout: ")

    def test_a_bad_option_names_a_named_timeout(self) -> None:
        name = fresh("db")
        with pytest.raises(ConfigError) as info:
            Timeout(0, name=name)
        assert str(info.value).startswith(f"Timeout({name!r}): seconds=0 is invalid")
        with pytest.raises(ConfigError) as info:
            Timeout(1, name=name, max_abandoned=0)
        assert str(info.value).startswith(f"Timeout({name!r}): max_abandoned=0 is invalid")

    def test_a_number_too_big_for_a_float_is_a_config_error(self) -> None:
        huge = 10**400  # a finite int that no float (and no clock) can hold
        with pytest.raises(ConfigError) as info:
            Timeout(huge)
        assert_config_error(info.value, "seconds", huge, SECONDS)

    @settings(max_examples=200, deadline=None)
    @given(st.floats() | st.integers(min_value=-(10**9), max_value=10**9))
    def test_seconds_takes_exactly_the_finite_positive_numbers(self, value: float) -> None:
        if math.isfinite(value) and value > 0:
            timeout = Timeout(value)
            assert timeout.seconds == float(value)
            assert type(timeout.seconds) is float
        else:
            with pytest.raises(ConfigError) as info:
                Timeout(value)
            assert_config_error(info.value, "seconds", value, SECONDS)

    def test_seconds_is_required_and_the_options_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            Timeout()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            Timeout(1, "db")  # type: ignore[misc]

    def test_good_options(self) -> None:
        a, b = threading.local(), threading.local()
        name = fresh("db")
        timeout = Timeout(2, name=name, max_abandoned=1, thread_locals=(a, b))
        assert timeout.seconds == 2.0
        assert timeout.name == name
        assert Timeout(1e-3).seconds == 1e-3
        assert Timeout(1).name is None
        Timeout(1, thread_locals=a)
        Timeout(1, thread_locals=[a, b])  # type: ignore[arg-type]
        Timeout(1, thread_locals=())
        Timeout(1, max_abandoned=10**6)

    def test_repr(self) -> None:
        assert repr(Timeout(0.5)) == "Timeout(0.5)"
        name = fresh("db")
        assert repr(Timeout(2, name=name)) == f"Timeout(2.0, name={name!r})"


# -- what passes through: every flavour (conftest) ------------------------------------------


class TestOutcomes:
    def test_a_return_value_passes_through(self, flavour: Flavour) -> None:
        timeout = Timeout(5)
        sentinel = object()
        assert flavour.call(timeout, sentinel) is sentinel
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    def test_an_exception_propagates_as_the_same_object(self, flavour: Flavour) -> None:
        timeout = Timeout(5)
        error = ValueError("boom")
        with pytest.raises(ValueError, match="boom") as info:
            flavour.call(timeout, error)
        assert info.value is error
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    def test_a_base_exception_propagates_as_the_same_object(self, flavour: Flavour) -> None:
        timeout = Timeout(5)
        error = Abort("stop")
        with pytest.raises(Abort) as info:
            flavour.call(timeout, error)
        assert info.value is error
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    @pytest.mark.parametrize("form", ["decorator", "call", "with"])
    def test_a_very_long_limit_that_was_accepted_works(self, mode: str, form: str) -> None:
        # 1e10 s (~317 years) is finite and > 0, so Timeout accepts it ("practically no
        # limit"); a call must then run, never fail later on an OverflowError.
        timeout = Timeout(1e10)
        assert guarded_call(mode, timeout, form=form, probe=lambda: "ok") == "ok"
        # The same limit reached through an enclosing deadline.
        longer = Timeout(1e11)
        assert guarded_call(mode, longer, form=form, probe=lambda: "ok", deadline=1e10) == "ok"

    def test_one_timeout_guards_calls_one_after_another(self, flavour: Flavour) -> None:
        timeout = Timeout(5)
        assert [flavour.call(timeout, i) for i in range(5)] == list(range(5))
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)


# -- the forms --------------------------------------------------------------------------------


class TestForms:
    def test_decorated_functions_keep_their_identity(self) -> None:
        def fetch(key: str, retries: int = 3, *, verbose: bool = False) -> str:
            """Fetch a key."""
            return key

        async def afetch(key: str, *, verbose: bool = False) -> str:
            """Fetch a key, async."""
            return key

        guarded, aguarded = Timeout(1)(fetch), Timeout(1)(afetch)
        assert guarded.__wrapped__ is fetch  # type: ignore[attr-defined]
        assert aguarded.__wrapped__ is afetch  # type: ignore[attr-defined]
        assert inspect.signature(guarded) == inspect.signature(fetch)
        assert inspect.signature(aguarded) == inspect.signature(afetch)
        assert (guarded.__name__, guarded.__doc__) == ("fetch", "Fetch a key.")
        assert (aguarded.__name__, aguarded.__doc__) == ("afetch", "Fetch a key, async.")
        assert not inspect.iscoroutinefunction(guarded)
        assert inspect.iscoroutinefunction(aguarded)
        assert guarded("k", verbose=True) == "k"
        assert anyio.run(aguarded, "k") == "k"

    def test_call_and_call_async_pass_arguments(self, mode: str) -> None:
        timeout = Timeout(5)

        def join(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
            return args, kwargs

        async def ajoin(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
            await anyio.lowlevel.checkpoint()
            return args, kwargs

        if mode == "sync":
            assert timeout.call(join, 1, 2, k=3) == ((1, 2), {"k": 3})
        else:
            result = anyio.run(lambda: timeout.call_async(ajoin, 1, 2, k=3), backend=mode)
            assert result == ((1, 2), {"k": 3})
            # A plain function that returns an awaitable is awaited too.
            result = anyio.run(lambda: timeout.call_async(lambda x: ajoin(x), "a"), backend=mode)
            assert result == (("a",), {})

    def test_call_refuses_an_async_function(self) -> None:
        async def afetch() -> None:
            pass

        with pytest.raises(TypeError, match="call_async"):
            Timeout(1).call(afetch)

    def test_call_async_refuses_a_function_that_returns_no_awaitable(self) -> None:
        timeout = Timeout(1)
        with pytest.raises(UsageError, match="cannot be awaited"):
            anyio.run(lambda: timeout.call_async(lambda: 5))
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    def test_generators_cannot_be_guarded(self) -> None:
        def gen() -> Iterator[int]:
            yield 1

        with pytest.raises(TypeError, match="generator"):
            Timeout(1)(gen)

    def test_methods_classmethods_and_staticmethods(self) -> None:
        timeout = Timeout(5)

        class Client:
            def __init__(self, base: int) -> None:
                self.base = base

            @timeout
            def get(self, n: int) -> int:
                return self.base + n

            @timeout
            @classmethod
            def kind(cls) -> str:
                return cls.__name__

            @timeout
            @staticmethod
            def double(n: int) -> int:
                return 2 * n

        assert (Client(10).get(1), Client(20).get(1)) == (11, 21)
        assert Client.kind() == "Client"
        assert Client.double(4) == 8

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_async_with_cancels_the_block(self, backend: str) -> None:
        timeout = Timeout(0.03)
        steps: list[str] = []

        async def block() -> None:
            async with timeout:
                steps.append("start")
                try:
                    await anyio.sleep(HANG)
                    steps.append("woke")  # never: the block is cancelled
                finally:
                    steps.append("finally")
            steps.append("after the block")  # never: the block raised

        async def main() -> None:
            with pytest.raises(TimeoutExpired):
                await block()

        _, took = timed(lambda: anyio.run(main, backend=backend))
        assert steps == ["start", "finally"]
        assert took < 1.0
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    def test_sync_with_runs_the_block_to_its_end_then_raises(self) -> None:
        timeout = Timeout(0.03, name=fresh("db"))
        ran_on: list[int] = []

        def block() -> None:
            with timeout:
                ran_on.append(threading.get_ident())
                time.sleep(0.06)
                ran_on.append(threading.get_ident())

        error, took = timed(block)
        assert isinstance(error, TimeoutExpired)
        assert ran_on == [threading.get_ident()] * 2  # on the caller's thread, to its end
        assert took >= 0.06
        assert error.name == timeout.name
        assert error.seconds == 0.03
        assert "cannot be interrupted" in str(error)
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    def test_sync_with_in_time_does_not_raise(self) -> None:
        timeout = Timeout(0.5)
        with timeout:
            time.sleep(0.01)
            value = 42
        assert value == 42
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    def test_sync_with_an_overrunning_block_raises_its_own_exception(self) -> None:
        timeout = Timeout(0.02)
        error = KeyError("mine")

        def block() -> None:
            with timeout:
                time.sleep(0.04)
                raise error

        with pytest.raises(KeyError) as info:
            block()
        assert info.value is error
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    def test_with_blocks_of_one_timeout_nest(self) -> None:
        timeout = Timeout(0.5)
        with timeout:
            outer = remaining()
            with timeout:
                inner = remaining()
            assert remaining() == pytest.approx(outer, abs=0.05)
        assert remaining() is None
        assert outer is not None
        assert inner is not None
        assert inner <= outer <= 0.5


# -- async: real cancellation -------------------------------------------------------------


# Telling a cancellation from outside apart from our own when they meet in one loop
# iteration, or after the body swallowed the outside one, takes Task.cancelling(), which
# asyncio has from 3.11 (docs/timeout.md says so); on 3.10 the difference is unknowable.
NEEDS_CANCEL_COUNTS = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio counts cancellation requests from 3.11"
)

NATIVE = [
    *([("asyncio", "asyncio.timeout")] if sys.version_info >= (3, 11) else []),
    ("asyncio", "anyio.fail_after"),
    ("asyncio", "anyio.move_on_after"),
    ("trio", "anyio.fail_after"),
    ("trio", "trio.fail_after"),
    ("trio", "trio.move_on_after"),
]


async def under_native(kind: str, seconds: float, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Await ``fn()`` under a timeout of the event loop's own (or anyio's)."""
    if kind == "asyncio.timeout":
        async with asyncio.timeout(seconds):
            return await fn()
    if kind == "anyio.fail_after":
        with anyio.fail_after(seconds):
            return await fn()
    if kind == "trio.fail_after":
        with trio.fail_after(seconds):
            return await fn()
    move_on = anyio.move_on_after if kind == "anyio.move_on_after" else trio.move_on_after
    with move_on(seconds) as scope:
        return await fn()
    assert scope.cancelled_caught
    return "moved on"


class TestAsyncCancellation:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("form", ["decorator", "call", "with"])
    def test_the_body_is_cancelled_and_its_finally_has_run(self, backend: str, form: str) -> None:
        timeout = Timeout(0.03, name=fresh("db"))
        steps: list[str] = []

        async def body() -> None:
            steps.append("start")
            try:
                await anyio.sleep(HANG)
                steps.append("woke")
            finally:
                steps.append("finally")

        async def main() -> tuple[TimeoutExpired, list[str]]:
            try:
                if form == "decorator":
                    await timeout(body)()
                elif form == "call":
                    await timeout.call_async(body)
                else:
                    async with timeout:
                        await body()
            except TimeoutExpired as exc:
                return exc, list(steps)  # what had run when the error surfaced
            raise AssertionError("no timeout")

        (error, seen), took = timed(lambda: anyio.run(main, backend=backend))
        assert seen == ["start", "finally"]
        assert 0.027 <= took < 1.0
        assert isinstance(error.__cause__, cancelled_class(backend))
        assert error.__suppress_context__
        assert (error.name, error.seconds) == (timeout.name, 0.03)
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("limit", ["own", "deadline"])
    def test_the_task_is_usable_after_a_timeout(self, backend: str, limit: str) -> None:
        async def expire() -> None:
            if limit == "own":
                await Timeout(0.02).call_async(anyio.sleep, HANG)
            else:
                async with resilient.deadline(0.02):
                    await Timeout(HANG).call_async(anyio.sleep, HANG)

        async def main() -> float:
            with pytest.raises(TimeoutExpired):
                await expire()
            if backend == "asyncio":
                assert cancellations_asked() == 0
            else:
                assert trio.current_effective_deadline() == math.inf
            assert remaining() is None
            start = time.monotonic()
            await anyio.sleep(0.02)  # sleeps for real: no cancellation left over
            slept = time.monotonic() - start
            await anyio.lowlevel.checkpoint()
            assert await Timeout(1).call_async(anyio.sleep, 0) is None
            return slept

        assert anyio.run(main, backend=backend) >= 0.018

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_cancellation_the_body_swallows_lets_its_value_through(self, backend: str) -> None:
        timeout = Timeout(0.02)

        async def stubborn() -> str:
            try:
                await anyio.sleep(HANG)
            except anyio.get_cancelled_exc_class():
                return "finished anyway"
            return "woke"

        async def main() -> str:
            result = await timeout.call_async(stubborn)
            if backend == "asyncio":
                assert cancellations_asked() == 0
            await anyio.sleep(0.001)  # the task is usable
            return result

        assert anyio.run(main, backend=backend) == "finished anyway"

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_an_error_the_body_raises_on_cancellation_is_its_own(self, backend: str) -> None:
        timeout = Timeout(0.02)

        async def cleanup_fails() -> None:
            try:
                await anyio.sleep(HANG)
            except anyio.get_cancelled_exc_class():
                raise RuntimeError("cleanup failed") from None

        async def main() -> BaseException:
            with pytest.raises(RuntimeError, match="cleanup failed") as info:
                await timeout.call_async(cleanup_fails)
            if backend == "asyncio":
                assert cancellations_asked() == 0
            await anyio.sleep(0.001)
            return info.value

        error = anyio.run(main, backend=backend)
        assert isinstance(error, RuntimeError)
        assert timeout.metrics.expired == 0

    # -- a cancellation from outside stays itself ---------------------------------------

    def test_asyncio_task_cancel_from_outside_propagates_as_itself(self) -> None:
        timeout = Timeout(0.3)
        steps: list[str] = []

        async def body() -> None:
            try:
                await asyncio.sleep(HANG)
            finally:
                steps.append("finally")

        async def main() -> asyncio.Task[None]:
            task = asyncio.create_task(timeout.call_async(body))
            await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.wait([task], timeout=JOIN)
            return task

        task, took = timed(lambda: asyncio.run(main()))
        assert task.cancelled()
        assert steps == ["finally"]
        assert took < 0.25  # never waited for the timeout
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    @NEEDS_CANCEL_COUNTS
    @pytest.mark.parametrize("offset", [-0.005, 0.0, 0.005])
    @pytest.mark.parametrize("form", ["call", "with"])
    def test_asyncio_a_task_cancel_in_the_same_iteration_as_the_timeout_wins(
        self, offset: float, form: str
    ) -> None:
        timeout = Timeout(0.02)
        seen: list[BaseException] = []

        async def body(task: asyncio.Task[Any]) -> None:
            asyncio.get_running_loop().call_later(0.02 + offset, task.cancel)
            time.sleep(0.05)  # block the loop: the cancel and the timeout both come due
            await asyncio.sleep(HANG)

        async def caller() -> None:
            task = asyncio.current_task()
            assert task is not None
            try:
                if form == "call":
                    await timeout.call_async(body, task)
                else:
                    async with timeout:
                        await body(task)
            except BaseException as exc:
                seen.append(exc)
                raise

        async def main() -> asyncio.Task[None]:
            task = asyncio.create_task(caller())
            await asyncio.wait([task], timeout=JOIN)
            return task

        task = asyncio.run(main())
        assert [type(exc) for exc in seen] == [asyncio.CancelledError]
        assert task.cancelled()
        assert timeout.metrics.expired == 0

    @NEEDS_CANCEL_COUNTS
    def test_asyncio_an_outer_cancel_the_body_swallowed_is_still_not_a_timeout(self) -> None:
        timeout = Timeout(0.05)
        steps: list[str] = []

        async def swallows(started: asyncio.Event) -> None:
            try:
                started.set()
                await asyncio.sleep(HANG)
            except asyncio.CancelledError:
                steps.append("swallowed")  # ... and carries on, until the timeout fires
            await asyncio.sleep(HANG)

        async def main() -> asyncio.Task[None]:
            started = asyncio.Event()
            task = asyncio.create_task(timeout.call_async(swallows, started))
            await started.wait()  # inside the Timeout; its 50 ms may be up already
            task.cancel()
            await asyncio.wait([task], timeout=JOIN)
            return task

        task = asyncio.run(main())
        assert steps == ["swallowed"]
        assert task.cancelled()  # the caller asked for it: a cancellation, not a timeout
        assert timeout.metrics.expired == 0

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("form", ["call", "with"])
    def test_an_outer_cancel_scope_propagates_as_itself(self, backend: str, form: str) -> None:
        timeout = Timeout(0.3)
        seen: list[BaseException] = []
        steps: list[str] = []

        async def body() -> None:
            try:
                await anyio.sleep(HANG)
            finally:
                steps.append("finally")

        async def main() -> bool:
            with anyio.CancelScope() as outer:
                async with anyio.create_task_group() as tg:

                    async def cancel_soon() -> None:
                        await anyio.sleep(0.02)
                        outer.cancel()

                    tg.start_soon(cancel_soon)
                    try:
                        if form == "call":
                            await timeout.call_async(body)
                        else:
                            async with timeout:
                                await body()
                    except BaseException as exc:
                        seen.append(exc)
                        raise
            return outer.cancelled_caught

        caught, took = timed(lambda: anyio.run(main, backend=backend))
        assert caught is True
        assert [type(exc) for exc in seen] == [cancelled_class(backend)]
        assert steps == ["finally"]
        assert took < 0.25
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("offset", [-0.005, 0.0, 0.005])
    def test_an_outer_cancel_scope_in_the_same_iteration_as_the_timeout_wins(
        self, backend: str, offset: float
    ) -> None:
        timeout = Timeout(0.02)
        seen: list[BaseException] = []

        async def body() -> None:
            time.sleep(0.05)  # block the loop: the outer deadline and the timeout both come due
            await anyio.sleep(HANG)

        async def main() -> bool:
            with anyio.CancelScope(deadline=anyio.current_time() + 0.02 + offset) as outer:
                try:
                    await timeout.call_async(body)
                except BaseException as exc:
                    seen.append(exc)
                    raise
            return outer.cancelled_caught

        outcome, _ = timed(lambda: anyio.run(main, backend=backend))
        assert [type(exc) for exc in seen] == [cancelled_class(backend)]
        assert outcome is True
        assert timeout.metrics.expired == 0

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_an_outer_cancel_the_body_swallows_is_still_not_a_timeout(self, backend: str) -> None:
        timeout = Timeout(0.05)
        swallowed: list[BaseException] = []

        async def swallows() -> None:
            try:
                await anyio.sleep(HANG)
            except anyio.get_cancelled_exc_class() as exc:
                swallowed.append(exc)
            await anyio.sleep(HANG)  # the outer scope is still cancelled: this is too

        async def main() -> bool:
            with anyio.CancelScope() as outer:
                async with anyio.create_task_group() as tg:

                    async def cancel_soon() -> None:
                        await anyio.sleep(0.01)
                        outer.cancel()

                    tg.start_soon(cancel_soon)
                    await timeout.call_async(swallows)
            return outer.cancelled_caught

        outcome, took = timed(lambda: anyio.run(main, backend=backend))
        assert outcome is True  # not TimeoutExpired
        assert len(swallowed) == 1
        assert took < 1.0
        assert timeout.metrics.expired == 0

    # -- nesting with the event loops' own timeouts ------------------------------------------

    @pytest.mark.parametrize(("backend", "native"), NATIVE, ids=[f"{b}-{n}" for b, n in NATIVE])
    @pytest.mark.parametrize("outside", ["native-outside", "native-inside"])
    @pytest.mark.parametrize("first", ["ours-first", "native-first"])
    @pytest.mark.parametrize("form", ["call", "with"])
    def test_nested_with_native_timeouts_the_first_to_expire_reports(
        self, backend: str, native: str, outside: str, first: str, form: str
    ) -> None:
        short, long = 0.03, HANG
        timeout = Timeout(short if first == "ours-first" else long)
        native_seconds = long if first == "ours-first" else short

        async def hang() -> str:
            await anyio.sleep(2 * HANG)
            return "woke"

        async def guarded(fn: Callable[[], Awaitable[Any]]) -> Any:
            if form == "call":
                return await timeout.call_async(fn)
            async with timeout:
                return await fn()

        async def main() -> Any:
            try:
                if outside == "native-outside":
                    return await under_native(native, native_seconds, lambda: guarded(hang))
                return await guarded(lambda: under_native(native, native_seconds, hang))
            except BaseException as exc:
                return exc

        outcome, took = timed(lambda: anyio.run(main, backend=backend))
        assert took < 1.0
        if first == "ours-first":
            assert type(outcome) is TimeoutExpired
            assert isinstance(outcome.__cause__, cancelled_class(backend))
            assert timeout.metrics.expired == 1
            return
        if native.endswith("move_on_after"):
            assert outcome == "moved on"
        else:
            expected = trio.TooSlowError if native == "trio.fail_after" else TimeoutError
            assert type(outcome) is expected
        assert timeout.metrics.expired == 0

    # -- many tasks, one Timeout -------------------------------------------------------------

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("form", ["call", "with"])
    def test_many_tasks_share_one_timeout_and_exactly_the_slow_ones_expire(
        self, backend: str, form: str
    ) -> None:
        timeout = Timeout(0.1)
        n = 200
        slow = {i for i in range(n) if i % 3 == 0}
        outcomes: dict[int, Any] = {}
        finals: set[int] = set()

        async def work(i: int) -> int:
            try:
                await anyio.sleep(HANG if i in slow else 0.002 * (i % 5))
            finally:
                finals.add(i)
            return i

        async def one(i: int) -> None:
            if i % 2:  # a second wave: the queue holds calls of both
                await anyio.sleep(0.03)
            try:
                if form == "call":
                    outcomes[i] = await timeout.call_async(work, i)
                else:
                    async with timeout:
                        outcomes[i] = await work(i)
            except TimeoutExpired as exc:
                outcomes[i] = exc
            if backend == "asyncio":
                assert cancellations_asked() == 0

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)

        _, took = timed(lambda: anyio.run(main, backend=backend))
        expired = {i for i, outcome in outcomes.items() if isinstance(outcome, TimeoutExpired)}
        assert len(outcomes) == n
        assert expired == slow
        assert all(outcomes[i] == i for i in range(n) if i not in slow)
        assert finals == set(range(n))
        assert timeout.metrics == TimeoutMetrics(len(slow), 0, 0)
        assert took < 2.0

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_task_group_in_the_body_is_cancelled_whole(self, backend: str) -> None:
        timeout = Timeout(0.03)
        finals: list[int] = []

        async def child(i: int) -> None:
            try:
                await anyio.sleep(HANG)
            finally:
                finals.append(i)

        async def body() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(child, i)

        async def main() -> list[int]:
            with pytest.raises(TimeoutExpired):
                await timeout.call_async(body)
            return sorted(finals)  # every child's finally had run

        outcome, took = timed(lambda: anyio.run(main, backend=backend))
        assert outcome == [0, 1, 2]
        assert took < 1.0
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    def test_one_timeout_shared_by_event_loops_in_several_threads(
        self, switch_often: None
    ) -> None:
        timeout = Timeout(0.2)
        backends = ["asyncio", "trio", "asyncio", "trio"]
        per = 40
        slow = {i for i in range(per) if i % 4 == 0}
        barrier = threading.Barrier(len(backends), timeout=JOIN)
        results: dict[int, dict[int, Any]] = {}
        errors: list[BaseException] = []

        def loop_thread(k: int, backend: str) -> None:
            outcomes: dict[int, Any] = {}

            async def one(i: int) -> None:
                try:
                    outcomes[i] = await timeout.call_async(echo_after, HANG if i in slow else 0, i)
                except TimeoutExpired as exc:
                    outcomes[i] = exc

            async def main() -> None:
                with anyio.fail_after(JOIN):
                    async with anyio.create_task_group() as tg:
                        for i in range(per):
                            tg.start_soon(one, i)

            try:
                barrier.wait()
                anyio.run(main, backend=backend)
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)
            results[k] = outcomes

        threads = [
            threading.Thread(target=loop_thread, args=(k, backend))
            for k, backend in enumerate(backends)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        for k in range(len(backends)):
            outcomes = results[k]
            expired = {i for i, o in outcomes.items() if isinstance(o, TimeoutExpired)}
            assert len(outcomes) == per
            assert expired == slow, backends[k]
            assert all(outcomes[i] == i for i in range(per) if i not in slow)
        assert timeout.metrics == TimeoutMetrics(len(backends) * len(slow), 0, 0)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_async_calls_are_never_abandoned_nor_refused(self, backend: str) -> None:
        timeout = Timeout(0.01, max_abandoned=1)

        async def main() -> int:
            expired = 0
            for _ in range(3):
                try:
                    await timeout.call_async(anyio.sleep, HANG)
                except TimeoutExpired:
                    expired += 1
            return expired

        assert anyio.run(main, backend=backend) == 3
        assert timeout.metrics == TimeoutMetrics(3, 0, 0)

    # -- trio's MockClock: long limits, no waiting, exact times --------------------------------

    def test_trio_a_60s_timeout_expires_on_a_mock_clock_without_waiting(self) -> None:
        timeout = Timeout(60)
        seen: list[float | None] = []

        async def body() -> None:
            seen.append(remaining())
            await trio.sleep(3600)

        async def main() -> tuple[float, TimeoutExpired]:
            start = trio.current_time()
            with pytest.raises(TimeoutExpired) as info:
                await timeout.call_async(body)
            return trio.current_time() - start, info.value

        (took, error), real = timed(
            lambda: trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        )
        assert took == pytest.approx(60)
        assert seen == [pytest.approx(60)]
        assert error.seconds == 60
        assert isinstance(error.__cause__, trio.Cancelled)
        assert real < 2.0
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    def test_trio_each_call_ends_its_own_seconds_after_it_began(self) -> None:
        timeout = Timeout(60)
        ends: dict[int, tuple[str, float]] = {}

        async def one(i: int) -> None:
            await trio.sleep(i * 7.5)  # calls start while earlier ones still run
            start = trio.current_time()
            try:
                await timeout.call_async(trio.sleep, 1000 if i % 2 == 0 else 30 + i)
            except TimeoutExpired:
                ends[i] = ("expired", trio.current_time() - start)
            else:
                ends[i] = ("done", trio.current_time() - start)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        for i in range(20):
            kind, took = ends[i]
            if i % 2 == 0:
                assert (kind, took) == ("expired", pytest.approx(60)), i
            else:
                assert (kind, took) == ("done", pytest.approx(30 + i)), i
        assert timeout.metrics == TimeoutMetrics(10, 0, 0)

    @pytest.mark.parametrize(
        ("seconds", "outer", "expected"),
        [(30, 60, "expired"), (60, 30, "moved on"), (60, 60, "moved on")],
        ids=["timeout-first", "outer-first", "same-instant"],
    )
    def test_trio_against_an_outer_deadline_on_a_mock_clock(
        self, seconds: float, outer: float, expected: str
    ) -> None:
        timeout = Timeout(seconds)

        async def main() -> tuple[str, float]:
            with trio.move_on_after(outer) as scope:
                try:
                    await timeout.call_async(trio.sleep, 3600)
                except TimeoutExpired:
                    return "expired", trio.current_time()
            return ("moved on" if scope.cancelled_caught else "neither"), trio.current_time()

        outcome, at = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert outcome == expected
        assert at == pytest.approx(min(seconds, outer))
        assert timeout.metrics.expired == (1 if expected == "expired" else 0)


# -- sync: worker threads ------------------------------------------------------------------

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_timeout_var", default="unset")


def run_on(ident: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` through a fresh Timeout until a call lands on worker thread ``ident``."""
    for _ in range(50):
        where, value = Timeout(1).call(lambda: (threading.get_ident(), fn()))
        if where == ident:
            return value
        time.sleep(0.002)
    raise AssertionError("worker not reused: could not get back onto it")


class TestSync:
    def test_the_caller_gets_timeout_expired_at_about_the_limit(
        self, gate: threading.Event
    ) -> None:
        timeout = Timeout(0.1)
        finished = threading.Event()

        def body() -> str:
            gate.wait(2.0)  # a 2 s call, cut short by the test when it is done
            finished.set()
            return "late"

        error, took = timed(lambda: timeout.call(body))
        assert isinstance(error, TimeoutExpired)
        assert 0.095 <= took < 1.0
        assert error.seconds == 0.1
        assert not finished.is_set()  # the caller did not wait for the call
        assert timeout.metrics == TimeoutMetrics(1, 1, 0)
        gate.set()
        assert finished.wait(JOIN)  # the call runs to its end on its worker
        wait_until(lambda: timeout.metrics.abandoned == 0)
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    def test_the_call_runs_on_a_daemon_worker_thread(self) -> None:
        def where() -> tuple[int | None, bool, str]:
            thread = threading.current_thread()
            return thread.ident, thread.daemon, thread.name

        ident, daemon, name = Timeout(1).call(where)
        assert ident != threading.get_ident()
        assert daemon
        assert "resilient" in name

    def test_it_works_from_a_thread_other_than_the_main_one(self, gate: threading.Event) -> None:
        results: dict[str, Any] = {}

        def caller() -> None:
            timeout = Timeout(0.03)
            results["value"] = timeout.call(lambda: 7)
            try:
                timeout.call(gate.wait, HANG)
            except TimeoutExpired as exc:
                results["error"] = exc
            results["metrics"] = timeout.metrics

        thread = threading.Thread(target=caller)
        thread.start()
        thread.join(JOIN)
        assert not thread.is_alive()
        assert results["value"] == 7
        assert isinstance(results["error"], TimeoutExpired)
        assert results["metrics"] == TimeoutMetrics(1, 1, 0)

    def test_an_exception_propagates_as_the_same_object_with_the_bodys_frames(self) -> None:
        error = ConnectionError("down")

        def failing_body() -> None:
            raise error

        with pytest.raises(ConnectionError) as info:
            Timeout(1).call(failing_body)
        assert info.value is error
        assert any(entry.name == "failing_body" for entry in info.traceback)

    @pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, Abort])
    def test_base_exceptions_raised_in_the_body_reach_the_caller(
        self, error_type: type[BaseException]
    ) -> None:
        timeout = Timeout(1)
        error = error_type()

        def body() -> None:
            raise error

        with pytest.raises(error_type) as info:
            timeout.call(body)
        assert info.value is error
        assert timeout.call(lambda: "still works") == "still works"
        assert timeout.metrics == TimeoutMetrics(0, 0, 0)

    def test_a_caller_interrupted_while_waiting_abandons_the_call(
        self, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A KeyboardInterrupt in the caller while it waits for the worker: the call is
        abandoned (counted), the interrupt goes on up. The interrupt is raised by the
        caller's wait itself, once the call has started: a real SIGINT sent from another
        thread was, under load, sometimes acted on only after the wait had ended."""
        timeout = Timeout(HANG)
        started = threading.Event()

        class Interrupted:
            """A job's done-lock whose timed wait is interrupted once the call runs."""

            def __init__(self, lock: Any) -> None:
                self._lock = lock

            def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
                if timeout == -1:
                    return bool(self._lock.acquire(blocking))
                assert started.wait(JOIN)
                raise KeyboardInterrupt

            def release(self) -> None:
                self._lock.release()

        made = workers._Job.__init__

        def job_with_an_interrupted_wait(job: Any, *args: Any, **kwargs: Any) -> None:
            made(job, *args, **kwargs)
            job.done = Interrupted(job.done)

        monkeypatch.setattr(workers._Job, "__init__", job_with_an_interrupted_wait)

        def body() -> None:
            started.set()
            gate.wait(HANG)

        error, took = timed(lambda: timeout.call(body))
        monkeypatch.undo()
        assert isinstance(error, KeyboardInterrupt)  # (not TimeoutExpired: no HANG wait)
        assert took < HANG
        assert timeout.metrics == TimeoutMetrics(0, 1, 0)
        gate.set()
        wait_until(lambda: timeout.metrics.abandoned == 0)

    def test_return_values_pass_through(self) -> None:
        value = object()
        assert Timeout(1).call(lambda: value) is value
        assert Timeout(1)(lambda x, *, y: (x, y))(1, y=2) == (1, 2)

    def test_contextvars_are_carried_and_changes_stay_with_the_call(self) -> None:
        def body() -> str:
            seen = VAR.get()
            VAR.set("set by the body")
            return seen

        token = VAR.set("the caller's")
        try:
            assert Timeout(1).call(body) == "the caller's"
            assert VAR.get() == "the caller's"
        finally:
            VAR.reset(token)

    def test_thread_locals_are_copied_in_and_cleared_after(self) -> None:
        user, tenant = threading.local(), threading.local()
        timeout = Timeout(1, thread_locals=(user, tenant))
        user.name = "alice"
        tenant.id = 7

        def body() -> tuple[Any, Any, int]:
            seen = (getattr(user, "name", None), getattr(tenant, "id", None))
            user.name = "changed on the worker"
            user.extra = True
            return seen[0], seen[1], threading.get_ident()

        name, tenant_id, worker = timeout.call(body)
        assert (name, tenant_id) == ("alice", 7)
        assert worker != threading.get_ident()
        # The caller's values are its own: neither changed nor cleared.
        assert vars(user) == {"name": "alice"}
        assert vars(tenant) == {"id": 7}
        # A caller without values sees none: nothing stale is left on the worker.
        seen: dict[str, Any] = {}

        def other_caller() -> None:
            seen["values"] = timeout.call(lambda: (dict(vars(user)), dict(vars(tenant))))

        thread = threading.Thread(target=other_caller)
        thread.start()
        thread.join(JOIN)
        assert seen["values"] == ({}, {})
        # And the very worker that ran the call holds nothing for it either.
        assert run_on(worker, lambda: (dict(vars(user)), dict(vars(tenant)))) == ({}, {})

    def test_thread_locals_of_an_abandoned_call_are_cleared_when_it_ends(
        self, gate: threading.Event
    ) -> None:
        user = threading.local()
        timeout = Timeout(0.02, thread_locals=user)
        user.name = "alice"
        where: list[int] = []

        def body() -> None:
            where.append(threading.get_ident())
            gate.wait(HANG)

        with pytest.raises(TimeoutExpired):
            timeout.call(body)
        gate.set()
        wait_until(lambda: timeout.metrics.abandoned == 0)
        assert user.name == "alice"
        assert run_on(where[0], lambda: dict(vars(user))) == {}

    def test_without_thread_locals_the_worker_does_not_see_them(self) -> None:
        # Documented: a thread-local cannot be found unless it is named, so a Timeout that
        # names none runs the call with the worker's own (empty) values.
        user = threading.local()
        user.name = "alice"
        assert Timeout(1).call(lambda: getattr(user, "name", None)) is None
        assert user.name == "alice"

    def test_idle_workers_are_reused(self) -> None:
        timeout = Timeout(1)
        timeout.call(lambda: None)  # at least one idle worker
        before = threading.active_count()
        idents = {timeout.call(threading.get_ident) for _ in range(50)}
        after = threading.active_count()
        assert after <= before + 2
        assert len(idents) <= 3
        assert threading.get_ident() not in idents

    def test_workers_never_hold_up_the_interpreters_exit(self) -> None:
        code = textwrap.dedent(
            """
            import time
            import resilient

            timeout = resilient.Timeout(0.1)
            try:
                timeout.call(time.sleep, 60)
            except resilient.TimeoutExpired:
                print("expired", timeout.metrics.abandoned)
            """
        )
        proc, took = timed(
            lambda: subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        )
        assert isinstance(proc, subprocess.CompletedProcess), proc
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["expired", "1"]
        assert "Traceback" not in proc.stderr
        assert took < 5.0

    # -- abandoned workers and the cap -------------------------------------------------------

    def test_abandoned_counts_timed_out_calls_still_running(self) -> None:
        timeout = Timeout(0.02)
        releases = [threading.Event() for _ in range(3)]
        finished: list[int] = []

        def body(i: int) -> None:
            releases[i].wait(JOIN)
            finished.append(i)

        try:
            for i in range(3):
                with pytest.raises(TimeoutExpired):
                    timeout.call(body, i)
                assert timeout.metrics == TimeoutMetrics(i + 1, i + 1, 0)
            releases[1].set()
            wait_until(lambda: timeout.metrics.abandoned == 2)
            assert finished == [1]
            for release in releases:
                release.set()
            wait_until(lambda: timeout.metrics.abandoned == 0)
            assert sorted(finished) == [0, 1, 2]
            assert timeout.metrics == TimeoutMetrics(3, 0, 0)
        finally:
            for release in releases:
                release.set()

    def test_beyond_max_abandoned_calls_are_refused_fast_until_one_ends(self) -> None:
        timeout = Timeout(0.05, name=fresh("db"), max_abandoned=2)
        releases = [threading.Event() for _ in range(2)]
        ran: list[int] = []

        def hang(i: int) -> None:
            ran.append(i)
            releases[i].wait(JOIN)

        try:
            for i in range(2):
                with pytest.raises(TimeoutExpired):
                    timeout.call(hang, i)
            wait_until(lambda: len(ran) == 2)
            error, took = timed(lambda: timeout.call(hang, 99))
            assert isinstance(error, WorkersExhaustedError)
            assert took < 0.02  # at once: no wait for the 0.05 s limit
            assert isinstance(error, RejectedError)
            assert error.name == timeout.name
            assert "max_abandoned" in str(error)
            assert error.__cause__ is None
            assert error.__suppress_context__
            assert ran == [0, 1]  # the refused call never started
            assert timeout.metrics == TimeoutMetrics(2, 2, 1)
            with pytest.raises(WorkersExhaustedError):
                timeout(lambda: None)()
            assert timeout.metrics == TimeoutMetrics(2, 2, 2)
            # The cap is on worker threads: a with block and async calls need none.
            with timeout:
                pass
            assert anyio.run(lambda: timeout.call_async(anyio.sleep, 0)) is None
            # Once an abandoned call ends, calls are admitted again.
            releases[0].set()
            wait_until(lambda: timeout.metrics.abandoned == 1)
            assert timeout.call(lambda: "admitted") == "admitted"
            assert timeout.metrics == TimeoutMetrics(2, 1, 2)
        finally:
            for release in releases:
                release.set()
        wait_until(lambda: timeout.metrics.abandoned == 0)

    # -- threads racing ------------------------------------------------------------------------

    def test_racing_threads_time_out_exactly_the_slow_calls(
        self, switch_often: None, gate: threading.Event
    ) -> None:
        timeout = Timeout(0.3, max_abandoned=64)
        n = 16
        slow = set(range(0, n, 4))
        barrier = threading.Barrier(n, timeout=JOIN)
        outcomes: dict[int, Any] = {}

        def body(i: int) -> int:
            if i in slow:
                gate.wait(JOIN)
            return i

        def caller(i: int) -> None:
            barrier.wait()
            try:
                outcomes[i] = timeout.call(body, i)
            except TimeoutExpired as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN)
        assert not any(thread.is_alive() for thread in threads)
        expired = {i for i, outcome in outcomes.items() if isinstance(outcome, TimeoutExpired)}
        assert len(outcomes) == n
        assert expired == slow
        assert all(outcomes[i] == i for i in range(n) if i not in slow)
        assert timeout.metrics == TimeoutMetrics(len(slow), len(slow), 0)
        gate.set()
        wait_until(lambda: timeout.metrics.abandoned == 0)
        assert timeout.metrics == TimeoutMetrics(len(slow), 0, 0)

    def test_calls_ending_right_at_the_limit_are_counted_once_either_way(
        self, switch_often: None
    ) -> None:
        timeout = Timeout(0.004, max_abandoned=10_000)
        n, per = 6, 15
        barrier = threading.Barrier(n, timeout=JOIN)
        results: list[str] = []

        def body() -> str:
            time.sleep(0.004)
            return "done"

        def caller() -> None:
            barrier.wait()
            for _ in range(per):
                try:
                    results.append(timeout.call(body))
                except TimeoutExpired:
                    results.append("expired")

        threads = [threading.Thread(target=caller) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN)
        assert not any(thread.is_alive() for thread in threads)
        expired = results.count("expired")
        assert len(results) == n * per
        assert results.count("done") + expired == n * per
        assert timeout.metrics.expired == expired
        wait_until(lambda: timeout.metrics.abandoned == 0)
        assert timeout.metrics == TimeoutMetrics(expired, 0, 0)

    def test_racing_callers_at_the_cap_are_either_timed_out_or_refused(
        self, switch_often: None, gate: threading.Event
    ) -> None:
        timeout = Timeout(0.05, max_abandoned=3)
        n = 12
        barrier = threading.Barrier(n, timeout=JOIN)
        ran: list[int] = []
        outcomes: dict[int, BaseException] = {}

        def body(i: int) -> None:
            ran.append(i)
            gate.wait(JOIN)

        def caller(i: int) -> None:
            barrier.wait()
            if i % 2:
                time.sleep(0.1)  # a second wave, after the first has been abandoned
            try:
                timeout.call(body, i)
            except (TimeoutExpired, WorkersExhaustedError) as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN)
        assert not any(thread.is_alive() for thread in threads)
        expired = {i for i, exc in outcomes.items() if isinstance(exc, TimeoutExpired)}
        refused = {i for i, exc in outcomes.items() if isinstance(exc, WorkersExhaustedError)}
        assert len(outcomes) == n
        assert expired | refused == set(range(n))
        assert len(expired) >= 3
        assert refused  # the second wave met a full cap
        wait_until(lambda: len(ran) == len(expired))
        assert set(ran) == expired  # a refused call never ran
        assert timeout.metrics == TimeoutMetrics(len(expired), len(expired), len(refused))
        gate.set()
        wait_until(lambda: timeout.metrics.abandoned == 0)
        assert timeout.call(lambda: "admitted") == "admitted"


# -- deadlines ------------------------------------------------------------------------------


class TestDeadlines:
    def test_the_nearer_enclosing_deadline_wins_and_is_named(
        self, mode: str, gate: threading.Event
    ) -> None:
        timeout = Timeout(HANG, name=fresh("db"))
        error, took = timed(
            lambda: guarded_call(mode, timeout, hang=True, gate=gate, deadline=0.05)
        )
        assert isinstance(error, TimeoutExpired)
        assert 0.045 <= took < 1.0
        assert error.seconds is not None
        assert 0.03 < error.seconds <= 0.05
        assert error.name == timeout.name
        assert "deadline" in str(error)
        if mode != "sync":  # cancelled for real, by the deadline's own timer or scope
            assert isinstance(error.__cause__, cancelled_class(mode))
        assert timeout.metrics.expired == 1

    def test_a_nearer_own_limit_is_reported_as_its_own(
        self, mode: str, gate: threading.Event
    ) -> None:
        timeout = Timeout(0.03)
        error, took = timed(lambda: guarded_call(mode, timeout, hang=True, gate=gate, deadline=5))
        assert isinstance(error, TimeoutExpired)
        assert took < 1.0
        assert error.seconds == 0.03
        assert "deadline" not in str(error)

    @pytest.mark.parametrize("form", ["decorator", "call", "with"])
    def test_a_passed_deadline_raises_at_once_without_running_the_body(
        self, mode: str, form: str
    ) -> None:
        timeout = Timeout(1, name=fresh("db"))
        called: list[bool] = []
        error, took = timed(
            lambda: guarded_call(
                mode, timeout, form=form, probe=lambda: called.append(True), deadline=0
            )
        )
        assert isinstance(error, TimeoutExpired)
        assert called == []
        assert took < 0.5
        assert error.seconds == 0
        assert "deadline" in str(error)
        assert timeout.metrics == TimeoutMetrics(1, 0, 0)

    def test_a_deadline_that_passed_while_waiting_raises_at_once(self) -> None:
        called: list[bool] = []
        with resilient.deadline(0.01):
            time.sleep(0.02)
            with pytest.raises(TimeoutExpired, match="deadline"):
                Timeout(1).call(lambda: called.append(True))
        assert called == []

    @pytest.mark.parametrize("form", ["decorator", "call", "with"])
    @pytest.mark.parametrize(
        ("outer", "seconds", "expected"),
        [(None, 0.5, 0.5), (5.0, 0.5, 0.5), (0.3, 5.0, 0.3)],
        ids=["no-deadline", "timeout-nearer", "deadline-nearer"],
    )
    def test_remaining_inside_the_body_is_the_nearer_limit(
        self, mode: str, form: str, outer: float | None, seconds: float, expected: float
    ) -> None:
        seen: dict[str, Any] = {}

        def probe() -> float | None:
            seen["thread"] = threading.get_ident()
            return remaining()

        left = guarded_call(mode, Timeout(seconds), form=form, probe=probe, deadline=outer)
        assert left is not None
        assert expected - 0.1 < left <= expected
        if mode == "sync" and form != "with":
            assert seen["thread"] != threading.get_ident()  # measured on the worker
        assert remaining() is None  # and nothing leaked out to the caller

    def test_an_inner_retry_stops_rather_than_wait_past_the_limit(self, mode: str) -> None:
        timeout = Timeout(0.2)
        retry = Retry(5, wait=1.0, on=ConnectionError)
        lefts: list[float | None] = []

        def fail() -> None:
            lefts.append(remaining())
            raise ConnectionError("down")

        async def afail() -> None:
            await anyio.lowlevel.checkpoint()
            fail()

        def run() -> Any:
            if mode == "sync":
                return timeout.call(retry.call, fail)
            return anyio.run(lambda: timeout.call_async(retry.call_async, afail), backend=mode)

        error, took = timed(run)
        assert isinstance(error, ConnectionError)  # gave up: not a TimeoutExpired later
        assert took < 0.15
        assert len(lefts) == 1
        assert lefts[0] is not None
        assert 0.1 < lefts[0] <= 0.2
        assert any("deadline" in note for note in getattr(error, "__notes__", []))
        assert timeout.metrics.expired == 0

    def test_an_inner_retry_still_makes_the_waits_that_fit(self, mode: str) -> None:
        timeout = Timeout(1.0)
        retry = Retry(5, wait=0.01, on=ConnectionError)
        calls: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError("down")
            return "ok"

        async def aflaky() -> str:
            await anyio.lowlevel.checkpoint()
            return flaky()

        if mode == "sync":
            assert timeout.call(retry.call, flaky) == "ok"
        else:
            run = lambda: timeout.call_async(retry.call_async, aflaky)  # noqa: E731
            assert anyio.run(run, backend=mode) == "ok"
        assert len(calls) == 3

    def test_the_sync_with_block_under_a_nearer_deadline(self) -> None:
        timeout = Timeout(HANG)
        lefts: list[float | None] = []

        def block() -> None:
            with resilient.deadline(0.02), timeout:
                lefts.append(remaining())
                time.sleep(0.04)

        with pytest.raises(TimeoutExpired) as info:
            block()
        [left] = lefts
        assert left is not None
        assert left <= 0.02
        assert "deadline" in str(info.value)
        assert "took" in str(info.value)

    def test_an_inner_longer_timeout_is_bounded_by_the_outer_shorter_one(
        self, mode: str, gate: threading.Event
    ) -> None:
        outer, inner = Timeout(0.05, name=fresh("outer")), Timeout(HANG, name=fresh("inner"))
        lefts: list[float | None] = []

        def body() -> None:
            lefts.append(remaining())
            gate.wait(HANG)

        async def abody() -> None:
            lefts.append(remaining())
            await anyio.sleep(HANG)

        def run() -> Any:
            if mode == "sync":
                return outer.call(inner.call, body)
            return anyio.run(lambda: outer.call_async(inner.call_async, abody), backend=mode)

        error, took = timed(run)
        assert isinstance(error, TimeoutExpired)
        assert error.name in (outer.name, inner.name)
        assert 0.045 <= took < 1.0
        assert len(lefts) == 1
        assert lefts[0] is not None
        assert 0 < lefts[0] <= 0.05
        assert outer.metrics.expired + inner.metrics.expired >= 1

    def test_an_inner_shorter_timeout_reports_itself_through_the_outer(
        self, mode: str, gate: threading.Event
    ) -> None:
        outer, inner = Timeout(HANG, name=fresh("outer")), Timeout(0.03, name=fresh("inner"))

        def body() -> None:
            gate.wait(HANG)

        async def abody() -> None:
            await anyio.sleep(HANG)

        def run() -> Any:
            if mode == "sync":
                return outer.call(inner.call, body)
            return anyio.run(lambda: outer.call_async(inner.call_async, abody), backend=mode)

        error, took = timed(run)
        assert isinstance(error, TimeoutExpired)
        assert error.name == inner.name
        assert error.seconds == 0.03
        assert took < 1.0
        assert outer.metrics == TimeoutMetrics(0, 0, 0)
        assert inner.metrics.expired == 1


def test_ended_event_loops_are_not_kept_alive_by_a_timeout() -> None:
    """A long-lived Timeout used from many asyncio.run() calls holds at most the last loop."""
    timeout = Timeout(5)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one() -> int:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await timeout.call_async(asyncio.sleep, 0, 1)

    for _ in range(20):
        assert asyncio.run(one()) == 1
    gc.collect()
    assert sum(ref() is not None for ref in loops) <= 1
