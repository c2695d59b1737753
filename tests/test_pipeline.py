"""Pipeline: several policies as one, the first given outermost.

Order is the point of a pipeline, so most scenarios here run one body through the same
policies in both orders and count what each saw: attempts made, outcomes a breaker
recorded, rejections. Breakers and retries run on ManualClocks; Timeouts use short real
times (a hung attempt is cancelled in async code, and on a worker thread released at the
end of the test in sync code). ``mode`` (conftest) is sync, asyncio or trio.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    ConfigWarning,
    Fallback,
    Pipeline,
    Policy,
    Retry,
    State,
    Timeout,
    TimeoutExpired,
)
from resilient.testing import ManualClock

from .conftest import ALL_FLAVOURS, Flavour, assert_config_error

HANG = 10.0  # a hung attempt: cancelled by a Timeout, or released when its test ends
SHORT = 0.05  # a Timeout that a hung attempt runs into


class Boom(ConnectionError):
    pass


def function(mode: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """``body`` as a def (sync) or as an async def that checkpoints first."""
    if mode == "sync":
        return body

    async def abody(*args: Any, **kwargs: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        return body(*args, **kwargs)

    return abody


def run(mode: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)``: directly (sync) or in a fresh event loop of ``mode``."""
    if mode == "sync":
        return fn(*args)
    return anyio.run(functools.partial(fn, *args), backend=mode)


def outcome_of(mode: str, fn: Callable[..., Any], *args: Any) -> Any:
    """What ``run`` gave, or the exception it raised."""
    try:
        return run(mode, fn, *args)
    except Exception as exc:
        return exc


def enter(mode: str, pipeline: Pipeline, body: Callable[[], Any] = lambda: None) -> Any:
    """``body()`` in ``with pipeline:`` (sync), or ``async with`` in a fresh loop of ``mode``."""
    if mode == "sync":
        with pipeline:
            return body()
        return None  # a policy swallowed the exception

    async def main() -> Any:
        async with pipeline:
            return body()

    return anyio.run(main, backend=mode)


class Downstream:
    """A body that fails its first ``failures`` calls (forever, by default) and counts calls."""

    def __init__(self, failures: float = float("inf")) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise Boom(self.calls)
        return "ok"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set when the test ends, so that hung sync attempts on worker threads finish."""
    event = threading.Event()
    yield event
    event.set()


def hangs_first(mode: str, release: threading.Event, attempts: list[float]) -> Callable[..., Any]:
    """A body whose first attempt hangs and whose later ones answer "ok" at once; each
    attempt notes when it started in ``attempts``."""
    if mode == "sync":

        def body() -> str:
            attempts.append(time.monotonic())
            if len(attempts) == 1:
                release.wait(HANG)
            return "ok"

        return body

    async def abody() -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            await anyio.sleep(HANG)
        return "ok"

    return abody


def breaker_outside_retry(*policies: Policy) -> Pipeline:
    """A Pipeline in the order that draws a warning, made on purpose (the warning is
    checked in test_pipeline_env.py)."""
    with pytest.warns(ConfigWarning, match="^a CircuitBreaker outside a Retry: "):
        return Pipeline(*policies)


def breaker(**options: Any) -> CircuitBreaker:
    """A breaker that opens on one failure (for 10 s) unless told otherwise."""
    options = {"min_calls": 1, "window_size": 1, "open_for": 10, **options}
    options.setdefault("clock", ManualClock())
    return CircuitBreaker(**options)


# -- order: outermost first --------------------------------------------------------------


class TestRetryAndBreaker:
    def test_retry_outside_a_breaker_retries_its_rejections(self, mode: str) -> None:
        retry_clock = ManualClock()
        b = breaker()
        downstream = Downstream()
        fn = Pipeline(Retry(3, clock=retry_clock), b)(function(mode, downstream))

        err = outcome_of(mode, fn)

        # Attempt 1 reached the downstream and opened the breaker; attempts 2 and 3 were
        # the breaker's rejections, retried, and the last one is what the caller gets.
        assert isinstance(err, CircuitOpenError)
        # The root cause travels with it: what opened the breaker, what each attempt met.
        assert isinstance(err.last_failure, Boom)
        assert "opened by Boom" in str(err)
        assert err.__notes__ == [
            "Retry: gave up after 3 attempts; the attempts raised Boom: 1,"
            " then CircuitOpenError (x2)"
        ]
        assert downstream.calls == 1
        m = b.metrics
        assert (m.state, m.calls, m.failures, m.rejected) == (State.OPEN, 1, 1, 2)
        # The retry waited what the rejection said (retry_after), not its own wait=0.
        assert retry_clock.monotonic() == pytest.approx(10.0)

    def test_retry_outside_a_breaker_on_its_clock_waits_and_probes(self, mode: str) -> None:
        clock = ManualClock()
        b = breaker(clock=clock, half_open_calls=1)
        downstream = Downstream()
        fn = Pipeline(Retry(3, clock=clock), b)(function(mode, downstream))

        err = outcome_of(mode, fn)

        # 1: fails, opens. 2: rejected, retry_after=10; the retry waits 10 s on the shared
        # clock, so 3 is the half-open probe: it reaches the downstream, fails, reopens.
        assert isinstance(err, Boom)
        assert err.args == (2,)
        assert downstream.calls == 2
        assert (b.state, b.metrics.rejected) == (State.OPEN, 1)
        assert clock.monotonic() == pytest.approx(10.0)

    def test_a_breaker_outside_retry_counts_one_outcome_per_retried_call(self, mode: str) -> None:
        b = breaker(min_calls=2, window_size=2)
        downstream = Downstream()
        fn = breaker_outside_retry(b, Retry(3, clock=ManualClock()))(function(mode, downstream))

        seen = []
        for _ in range(3):
            err = outcome_of(mode, fn)
            m = b.metrics
            seen.append((type(err), downstream.calls, m.state, m.calls, m.failures, m.rejected))

        assert seen == [
            (Boom, 3, State.CLOSED, 1, 1, 0),  # three attempts, one failure recorded
            (Boom, 6, State.OPEN, 2, 2, 0),  # min_calls=2 reached: open
            (CircuitOpenError, 6, State.OPEN, 2, 2, 1),  # rejected whole, no attempt made
        ]

    def test_a_breaker_outside_retry_sees_a_recovered_call_as_a_success(self, mode: str) -> None:
        b = breaker(min_calls=2, window_size=2)
        downstream = Downstream(failures=2)
        fn = breaker_outside_retry(b, Retry(3, clock=ManualClock()))(function(mode, downstream))

        assert run(mode, fn) == "ok"
        assert downstream.calls == 3
        m = b.metrics
        assert (m.state, m.calls, m.failures) == (State.CLOSED, 1, 0)

    def test_a_breaker_inside_retry_sees_every_attempt(self, mode: str) -> None:
        b = breaker(min_calls=10, window_size=10)
        downstream = Downstream(failures=2)
        fn = Pipeline(Retry(3, clock=ManualClock()), b)(function(mode, downstream))

        assert run(mode, fn) == "ok"
        m = b.metrics
        assert (m.state, m.calls, m.failures) == (State.CLOSED, 3, 2)


class TestTimeoutAndRetry:
    def test_a_timeout_inside_retry_bounds_each_attempt(
        self, mode: str, release: threading.Event
    ) -> None:
        attempts: list[float] = []
        timeout = Timeout(SHORT)
        fn = Pipeline(Retry(3), timeout)(hangs_first(mode, release, attempts))

        started = time.monotonic()
        assert run(mode, fn) == "ok"

        # The hung first attempt was cut off after SHORT; the second answered at once.
        assert len(attempts) == 2
        assert SHORT * 0.9 <= attempts[1] - started < HANG / 2
        assert timeout.metrics.expired == 1
        assert timeout.metrics.abandoned == (1 if mode == "sync" else 0)

    def test_a_timeout_outside_retry_bounds_the_whole_call(
        self, mode: str, release: threading.Event
    ) -> None:
        attempts: list[float] = []
        timeout = Timeout(SHORT)
        fn = Pipeline(timeout, Retry(3))(hangs_first(mode, release, attempts))

        started = time.monotonic()
        err = outcome_of(mode, fn)
        took = time.monotonic() - started

        # The first attempt used up the whole budget: no second one was made.
        assert isinstance(err, TimeoutExpired)
        assert err.seconds == SHORT
        assert len(attempts) == 1
        assert SHORT * 0.9 <= took < HANG / 2
        assert timeout.metrics.expired == 1

    def test_a_timeout_outside_retry_is_the_deadline_of_its_waits(self, mode: str) -> None:
        # Attempt 1 fails at once with 0.4 s left: the 0.25 s wait fits. Attempt 2 fails
        # with some 0.15 s left: another wait would cross the limit, so the retry gives
        # up with the failure itself rather than sleeping into a TimeoutExpired.
        downstream = Downstream()
        timeout = Timeout(0.4)
        fn = Pipeline(timeout, Retry(10, wait=0.25))(function(mode, downstream))

        err = outcome_of(mode, fn)

        assert isinstance(err, Boom)
        assert err.__notes__ == ["Retry: gave up after 2 attempts: the deadline in force"]
        assert downstream.calls == 2
        assert timeout.metrics.expired == 0

    @pytest.mark.parametrize("stall", [False, True], ids=["loop_on_time", "loop_stalled"])
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_an_inner_timeout_cut_short_by_an_outer_one_reports_to_the_breaker_between(
        self, backend: str, stall: bool
    ) -> None:
        """Both would expire at the same instant; the inner one ends a moment earlier, so
        the breaker between them counts a TimeoutExpired, not an uncounted cancellation.
        And when the loop stalls past both ends, so that both cancellations land in one
        iteration (a busy machine: this test once failed 1 run in 5 that way), the inner
        one still reports, and the outer passes its error on."""
        breaker = CircuitBreaker(min_calls=1000, window_size=1000)
        inner, outer = Timeout(5), Timeout(0.05)

        async def hang() -> None:
            if stall:
                time.sleep(0.2)  # blocks the loop itself past both ends
            await anyio.sleep(10)

        async def main() -> BaseException | None:
            try:
                await Pipeline(outer, breaker, inner).call_async(hang)
            except TimeoutExpired as err:
                return err
            return None

        err = anyio.run(main, backend=backend)
        assert isinstance(err, TimeoutExpired)
        assert "the enclosing deadline" in str(err)
        assert breaker.metrics.failures == 1
        assert (inner.metrics.expired, outer.metrics.expired) == (1, 0)


class TestFallback:
    def test_a_fallback_outermost_answers_for_an_open_breaker(self, mode: str) -> None:
        b = breaker()
        downstream = Downstream()
        fn = Pipeline(Fallback("cached", on=CircuitOpenError), b)(function(mode, downstream))

        first = outcome_of(mode, fn)  # not a rejection: the failure passes through
        assert isinstance(first, Boom)
        assert b.state is State.OPEN
        assert [run(mode, fn) for _ in range(3)] == ["cached"] * 3
        assert downstream.calls == 1
        assert b.metrics.rejected == 3

    def test_a_fallback_inside_a_breaker_hides_the_failures_from_it(self, mode: str) -> None:
        b = breaker()
        downstream = Downstream()
        fn = Pipeline(b, Fallback("cached"))(function(mode, downstream))

        assert [run(mode, fn) for _ in range(3)] == ["cached"] * 3
        assert downstream.calls == 3
        m = b.metrics
        assert (m.state, m.calls, m.failures, m.rejected) == (State.CLOSED, 1, 0, 0)


# -- forms ---------------------------------------------------------------------------------


@pytest.fixture(params=ALL_FLAVOURS, ids=str)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return request.param  # type: ignore[no-any-return]


class TestForms:
    def test_every_form_goes_through_every_policy(self, flavour: Flavour) -> None:
        b = CircuitBreaker(min_calls=10, window_size=10)
        bulkhead = Bulkhead(2)
        timeout = Timeout(5)
        pipeline = Pipeline(b, bulkhead, timeout)
        inside: list[int] = []

        def note() -> None:
            inside.append(bulkhead.metrics.in_use)

        assert flavour.call(pipeline, "ok", before=note) == "ok"  # type: ignore[arg-type]
        error = Boom("once")
        with pytest.raises(Boom) as info:
            flavour.call(pipeline, error, before=note)  # type: ignore[arg-type]

        assert info.value is error
        assert inside == [1, 1]  # each body ran holding a slot
        assert bulkhead.metrics.in_use == 0
        m = b.metrics
        assert (m.calls, m.failures) == (2, 1)
        assert timeout.metrics.expired == 0

    @pytest.mark.parametrize("form", ["decorator", "call"])
    def test_decorator_and_call_forms_with_every_kind_of_policy(
        self, mode: str, form: str
    ) -> None:
        b = CircuitBreaker(min_calls=10, window_size=10)
        bulkhead = Bulkhead(2)
        pipeline = Pipeline(
            Fallback("fallback"), Retry(3, clock=ManualClock()), b, bulkhead, Timeout(5)
        )

        def through(downstream: Downstream) -> Any:
            fn = function(mode, downstream)
            if form == "decorator":
                return run(mode, pipeline(fn))
            if mode == "sync":
                return pipeline.call(fn)
            return run(mode, pipeline.call_async, fn)

        recovers, never = Downstream(failures=2), Downstream()
        assert through(recovers) == "ok"
        assert through(never) == "fallback"
        assert (recovers.calls, never.calls) == (3, 3)
        m = b.metrics
        assert (m.calls, m.failures) == (6, 5)
        assert bulkhead.metrics.in_use == 0

    def test_call_async_takes_arguments_and_a_plain_function_returning_a_coroutine(
        self,
    ) -> None:
        pipeline = Pipeline(CircuitBreaker(), Bulkhead(1))

        async def add(a: int, b: int = 0) -> int:
            await anyio.lowlevel.checkpoint()
            return a + b

        for backend in ("asyncio", "trio"):
            call = functools.partial(pipeline.call_async, add, 1, b=2)
            assert anyio.run(call, backend=backend) == 3
            call = functools.partial(pipeline.call_async, lambda: add(4))
            assert anyio.run(call, backend=backend) == 4
        assert pipeline.call(lambda a, b: a * b, 6, b=7) == 42

    @pytest.mark.parametrize("mode", ["asyncio", "trio"])
    def test_async_with_cancels_the_block_at_the_timeout(self, mode: str) -> None:
        bulkhead = Bulkhead(1)
        timeout = Timeout(SHORT)
        pipeline = Pipeline(bulkhead, timeout)

        async def main() -> None:
            async with pipeline:
                await anyio.sleep(HANG)

        started = time.monotonic()
        with pytest.raises(TimeoutExpired):
            anyio.run(main, backend=mode)
        assert time.monotonic() - started < HANG / 2
        assert timeout.metrics.expired == 1
        assert bulkhead.metrics.in_use == 0

    def test_with_lets_a_fallback_swallow_what_the_inner_policies_saw(self, mode: str) -> None:
        b = breaker(min_calls=10, window_size=10)
        pipeline = Pipeline(Fallback(None), b)

        def block() -> str:
            with pipeline:
                raise Boom("in the block")
            return "after the block"

        async def ablock() -> str:
            async with pipeline:
                raise Boom("in the block")
            return "after the block"

        assert run(mode, block if mode == "sync" else ablock) == "after the block"
        assert (b.metrics.calls, b.metrics.failures) == (1, 1)

    @pytest.mark.parametrize("mode", ["asyncio", "trio"])
    def test_with_blocks_in_concurrent_tasks_keep_their_own_state(self, mode: str) -> None:
        bulkhead = Bulkhead(3)
        b = CircuitBreaker(min_calls=10, window_size=10)
        pipeline = Pipeline(b, bulkhead, Timeout(5))
        peak: list[int] = []
        failed: list[Boom] = []

        async def one(i: int) -> None:
            try:
                async with pipeline:
                    peak.append(bulkhead.metrics.in_use)
                    await anyio.sleep(0.01 * (3 - i))  # they leave in the reverse order
                    if i == 1:
                        raise Boom(i)
            except Boom as exc:
                failed.append(exc)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)

        anyio.run(main, backend=mode)
        assert max(peak) == 3
        assert [exc.args for exc in failed] == [(1,)]
        assert bulkhead.metrics.in_use == 0
        assert (b.metrics.calls, b.metrics.failures) == (3, 1)


class TestWithFormRefusals:
    @pytest.mark.parametrize("retry_first", [False, True], ids=["retry inner", "retry outer"])
    def test_a_retry_makes_with_a_type_error_and_nothing_stays_entered(
        self, mode: str, retry_first: bool
    ) -> None:
        bulkhead = Bulkhead(1)
        policies = (Retry(), bulkhead) if retry_first else (bulkhead, Retry())
        pipeline = Pipeline(*policies)
        ran: list[str] = []

        with pytest.raises(TypeError, match="cannot be retried"):
            enter(mode, pipeline, lambda: ran.append("body"))
        assert ran == []
        assert bulkhead.metrics.in_use == 0
        with bulkhead:  # the slot is really back: it can be taken again
            pass
        # ...and the pipeline holds no open block in this context.
        with pytest.raises(RuntimeError, match="without a matching __enter__"):
            pipeline.__exit__(None, None, None)

    def test_a_retry_refusing_with_is_no_failure_of_the_breaker_before_it(self, mode: str) -> None:
        # A usage mistake says nothing about the downstream (see UsageError): a breaker
        # must neither count it nor open on it.
        b = breaker()

        with pytest.raises(TypeError, match="cannot be retried"):
            enter(mode, breaker_outside_retry(b, Retry()))
        m = b.metrics
        assert (m.state, m.calls, m.failures) == (State.CLOSED, 0, 0)

    def test_a_rejection_while_entering_releases_what_was_entered(self, mode: str) -> None:
        outer, inner = Bulkhead(3), Bulkhead(1)
        timeout = Timeout(5)
        pipeline = Pipeline(outer, timeout, inner)
        ran: list[str] = []

        def block() -> None:
            with pipeline:
                ran.append("body")

        async def ablock() -> None:
            async with pipeline:
                ran.append("body")
            await anyio.sleep(SHORT * 2)  # the timeout left behind no cancellation either

        body = block if mode == "sync" else ablock
        with inner:  # full
            with pytest.raises(BulkheadFullError):
                run(mode, body)
            assert ran == []
            assert outer.metrics.in_use == 0
            assert inner.metrics.rejected == 1
        run(mode, body)  # with a free slot, the same pipeline enters fine
        assert ran == ["body"]
        assert (outer.metrics.in_use, inner.metrics.in_use) == (0, 0)
        assert timeout.metrics.expired == 0

    def test_an_open_breaker_while_entering_releases_the_bulkhead(self, mode: str) -> None:
        bulkhead = Bulkhead(1)
        b = breaker()
        b.force_open()
        pipeline = Pipeline(bulkhead, b)

        with pytest.raises(CircuitOpenError):
            enter(mode, pipeline)
        assert bulkhead.metrics.in_use == 0
        assert b.metrics.rejected == 1


# -- structure -----------------------------------------------------------------------------


class TestStructure:
    def test_nested_pipelines_are_flattened(self) -> None:
        a, b, c, d = Timeout(10), Retry(3), CircuitBreaker(), Timeout(2)
        pipeline = Pipeline(a, Pipeline(b, Pipeline(c)), d)
        assert pipeline.policies == (a, b, c, d)
        assert all(x is y for x, y in zip(pipeline.policies, (a, b, c, d), strict=True))
        # Flattening changes nothing about order: the nested one still runs where it sits.
        assert Pipeline(Pipeline(a, b), Pipeline(c, d)).policies == (a, b, c, d)

    def test_repr_lists_the_policies_outermost_first(self) -> None:
        retry, b, timeout = Retry(3), CircuitBreaker("db"), Timeout(2)
        pipeline = Pipeline(retry, Pipeline(b, timeout))
        assert repr(pipeline) == f"Pipeline({retry!r}, {b!r}, {timeout!r})"
        assert repr(pipeline) == (
            "Pipeline(<Retry attempts=3>, <CircuitBreaker('db') closed>, Timeout(2.0))"
        )

    def test_decorated_functions_keep_their_identity(self) -> None:
        pipeline = Pipeline(Retry(2), CircuitBreaker(), Bulkhead(2), Timeout(5))

        def get(url: str, *, retries: int = 0) -> str:
            """Get url."""
            return url

        async def aget(url: str, *, retries: int = 0) -> str:
            """Get url, async."""
            await anyio.lowlevel.checkpoint()
            return url

        for fn in (get, aget):
            guarded = pipeline(fn)
            assert guarded.__wrapped__ is fn  # type: ignore[attr-defined]
            assert guarded.__name__ == fn.__name__
            assert guarded.__doc__ == fn.__doc__
            assert inspect.signature(guarded) == inspect.signature(fn)
            assert inspect.iscoroutinefunction(guarded) is inspect.iscoroutinefunction(fn)
        assert pipeline(get)("u") == "u"
        assert anyio.run(pipeline(aget), "u") == "u"

    def test_methods_bind_through_a_pipeline(self) -> None:
        pipeline = Pipeline(Retry(2), CircuitBreaker())

        class Client:
            @pipeline
            def get(self, x: int) -> tuple[Client, int]:
                return self, x

            @pipeline
            async def aget(self, x: int) -> tuple[Client, int]:
                return self, x

            @pipeline
            @staticmethod
            def static(x: int) -> int:
                return x

        client = Client()
        assert client.get(1) == (client, 1)
        assert anyio.run(client.aget, 2) == (client, 2)
        assert Client.static(3) == 3
        assert inspect.iscoroutinefunction(Client.aget)

    def test_the_chain_is_built_once_when_decorating(
        self, mode: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        policies = [
            Fallback("fallback"),
            Retry(3, clock=ManualClock()),
            CircuitBreaker(),
            Bulkhead(1),
            Timeout(5),
        ]
        built: dict[str, int] = {}

        def counting(key: str, wrap: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def counted(fn: Any) -> Any:
                built[key] += 1
                return wrap(fn)

            return counted

        for policy in policies:
            for factory in ("_wrap_sync", "_wrap_async"):
                key = f"{type(policy).__name__}.{factory}"
                built[key] = 0

                monkeypatch.setattr(policy, factory, counting(key, getattr(policy, factory)))
        downstream = Downstream(failures=0)
        fn = Pipeline(*policies)(function(mode, downstream))
        kind = "_wrap_sync" if mode == "sync" else "_wrap_async"
        once = {key: int(key.endswith(kind)) for key in built}
        assert built == once

        async def many() -> list[Any]:
            return [await fn() for _ in range(100)]

        results = [fn() for _ in range(100)] if mode == "sync" else run(mode, many)

        assert results == ["ok"] * 100
        assert downstream.calls == 100
        assert built == once  # 100 calls, and not one more wrapper made


class TestThreads:
    def test_one_pipeline_keeps_the_calls_of_many_functions_and_threads_apart(self) -> None:
        threads, calls = 8, 200
        b = CircuitBreaker(min_calls=10_000, window_size=10_000)
        bulkhead = Bulkhead(4, max_wait=HANG)
        pipeline = Pipeline(Retry(3, clock=ManualClock()), b, bulkhead)
        inside, peak = 0, 0
        count = threading.Lock()
        failed: list[int] = []

        def make(k: int) -> Callable[[int], tuple[int, int]]:
            seen: set[int] = set()

            def work(i: int) -> tuple[int, int]:
                nonlocal inside, peak
                with count:
                    inside += 1
                    peak = max(peak, inside)
                try:
                    if i % 50 == 0 and i not in seen:  # every 50th call fails once
                        seen.add(i)
                        failed.append(i)
                        raise Boom(k, i)
                    time.sleep(0)
                    return k, i
                finally:
                    with count:
                        inside -= 1

            return pipeline(work)

        functions = [make(k) for k in range(threads)]
        barrier = threading.Barrier(threads)
        results: dict[int, list[tuple[int, int]]] = {}

        def worker(k: int) -> None:
            barrier.wait(timeout=HANG)
            results[k] = [functions[k](i) for i in range(calls)]

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=HANG)

        assert all(results[k] == [(k, i) for i in range(calls)] for k in range(threads))
        assert len(failed) == threads * calls // 50
        assert 1 < peak <= 4
        assert bulkhead.metrics == (4, 0, 0, 0)
        m = b.metrics  # the breaker sits inside the retry: it saw every attempt
        assert (m.calls, m.failures) == (threads * calls + len(failed), len(failed))

    def test_with_blocks_in_threads_keep_their_own_state(self) -> None:
        threads, blocks = 8, 100
        b = CircuitBreaker(min_calls=10_000, window_size=10_000)
        bulkhead = Bulkhead(threads)
        pipeline = Pipeline(b, bulkhead)
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            barrier.wait(timeout=HANG)
            for i in range(blocks):
                try:
                    with pipeline:
                        time.sleep(0)
                        if (k + i) % 10 == 0:
                            raise Boom(k, i)
                except Boom:
                    pass
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=HANG)

        assert errors == []
        assert bulkhead.metrics.in_use == 0
        m = b.metrics
        assert (m.calls, m.failures) == (threads * blocks, threads * blocks // 10)


# -- configuration -------------------------------------------------------------------------


def not_a_policy(fn: Any) -> Any:
    return fn


@pytest.mark.parametrize(
    ("given", "value", "expected"),
    [
        ((), (), "at least one policy"),
        ((3,), 3, "resilient policies"),
        ((not_a_policy,), not_a_policy, "resilient policies"),
        ((Retry(), None), None, "outermost first"),
        ((CircuitBreaker,), CircuitBreaker, "CircuitBreaker, Retry, Timeout, Bulkhead"),
    ],
    ids=["none", "int", "function", "None after a policy", "a class"],
)
def test_bad_policies_are_a_config_error(
    given: tuple[Any, ...], value: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline(*given)
    assert_config_error(info.value, "policies", value, expected)
    assert info.value.owner == "Pipeline"


def test_a_lambda_is_not_a_policy() -> None:
    decorator = [lambda f: f]  # a decorator, but not a policy: nothing to compose
    with pytest.raises(ConfigError) as info:
        Pipeline(*decorator)  # type: ignore[arg-type]
    assert_config_error(info.value, "policies", decorator[0], "resilient policies")
