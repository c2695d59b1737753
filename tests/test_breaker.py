"""The breaker's state machine, driven by a ManualClock; each scenario in every flavour."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading
import traceback
from typing import Any

import anyio
import pytest
import trio

from resilient import (
    BreakerMetrics,
    CircuitBreaker,
    CircuitOpenError,
    ConfigWarning,
    State,
    StateChange,
)
from resilient.testing import ManualClock

from .conftest import Flavour

BOOM = ConnectionError("boom")


def breaker(clock: ManualClock, **options: Any) -> CircuitBreaker:
    options.setdefault("window_size", 10)
    options.setdefault("min_calls", 4)
    options.setdefault("open_for", 10.0)
    options.setdefault("half_open_calls", 2)
    return CircuitBreaker("svc", clock=clock, **options)


def fail(flavour: Flavour, b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            flavour.call(b, BOOM)


def succeed(flavour: Flavour, b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert flavour.call(b, "ok") == "ok"


def trip(flavour: Flavour, b: CircuitBreaker) -> None:
    fail(flavour, b, 4)
    assert b.state is State.OPEN


@pytest.fixture
def clock(manual_clock: ManualClock) -> ManualClock:
    """The plugin's ``manual_clock``, by the short name these tests use."""
    return manual_clock


class TestClosed:
    def test_opens_when_failure_rate_reaches_threshold_after_min_calls(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, failure_rate=0.5)
        succeed(flavour, b, 2)
        fail(flavour, b, 1)
        assert b.state is State.CLOSED  # 3 calls: below min_calls
        fail(flavour, b, 1)  # 2 of 4 = 0.5 >= 0.5
        assert b.state is State.OPEN

    def test_stays_closed_below_threshold(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock, failure_rate=0.5)
        for _ in range(5):
            succeed(flavour, b, 2)
            fail(flavour, b, 1)
        assert b.state is State.CLOSED
        assert b.metrics.failures == 4  # window of 10: S S F S S F S S F S... last 10

    def test_no_decision_below_min_calls(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock, min_calls=6)
        fail(flavour, b, 5)
        assert b.state is State.CLOSED
        assert b.metrics.failure_rate is None
        fail(flavour, b, 1)
        assert b.state is State.OPEN

    def test_a_success_that_reaches_min_calls_can_open(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, min_calls=4, failure_rate=0.5)
        fail(flavour, b, 2)
        succeed(flavour, b, 1)
        assert b.state is State.CLOSED
        succeed(flavour, b, 1)  # 4 calls, 2 failures: 0.5
        assert b.state is State.OPEN

    def test_min_calls_given_above_a_count_window_is_capped_with_a_warning(
        self, clock: ManualClock
    ) -> None:
        with pytest.warns(ConfigWarning) as caught:
            b = CircuitBreaker(window_size=5, min_calls=50, clock=clock)
        assert [str(w.message) for w in caught] == [
            "CircuitBreaker: min_calls=50 is above window_size=5: a count window never"
            " holds more than 5 calls, so min_calls=5 is used; set min_calls to at most"
            " window_size"
        ]
        assert caught[0].filename == __file__  # the line that made the breaker
        assert (b.settings["min_calls"], b._plan.min_calls) == (50, 5)
        fail(Flavour("sync", "call"), b, 5)
        assert b.state is State.OPEN

    def test_the_default_min_calls_fits_a_smaller_count_window_silently(
        self, clock: ManualClock
    ) -> None:
        b = CircuitBreaker(window_size=5, clock=clock)  # min_calls: 20 by default
        assert b._plan.min_calls == 5
        assert (
            CircuitBreaker(window_type="time", window_size=5, min_calls=50)._plan.min_calls == 50
        )

    def test_window_slides_over_the_last_n_calls(self, clock: ManualClock) -> None:
        b = breaker(clock, window_size=4, min_calls=4, failure_rate=0.75)
        sync = Flavour("sync", "call")
        fail(sync, b, 2)
        succeed(sync, b, 4)  # the two failures slide out
        assert b.metrics.failures == 0
        fail(sync, b, 2)
        assert b.state is State.CLOSED
        fail(sync, b, 1)
        assert b.state is State.OPEN

    def test_time_window_forgets_old_failures(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock, window_type="time", window_size=10, min_calls=4)
        fail(flavour, b, 3)
        clock.advance(11)
        assert b.metrics.calls == 0
        fail(flavour, b, 1)
        succeed(flavour, b, 2)
        assert b.state is State.CLOSED
        fail(flavour, b, 1)  # 2 of 4 in the last 10 s
        assert b.state is State.OPEN

    def test_time_window_takes_fractional_seconds(self, clock: ManualClock) -> None:
        b = breaker(clock, window_type="time", window_size=0.5, min_calls=2)
        sync = Flavour("sync", "call")
        fail(sync, b, 1)
        clock.advance(0.6)
        fail(sync, b, 1)
        assert (b.state, b.metrics.calls) == (State.CLOSED, 1)
        fail(sync, b, 1)
        assert b.state is State.OPEN

    def test_time_window_min_calls_is_not_capped(self, clock: ManualClock) -> None:
        b = breaker(clock, window_type="time", window_size=2, min_calls=5)
        fail(Flavour("sync", "call"), b, 4)
        assert b.state is State.CLOSED


class TestOpen:
    def test_rejects_with_fresh_error_carrying_name_and_retry_after(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock)
        trip(flavour, b)
        clock.advance(4)
        errors = []
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as info:
                flavour.call(b, "never")
            errors.append(info.value)
        assert len({id(e) for e in errors}) == 3
        assert all(e.name == "svc" and e.retry_after == pytest.approx(6.0) for e in errors)
        assert errors[0].state is State.OPEN
        assert b.metrics.rejected == 3

    def test_retry_after_says_how_long_is_left_when_read_and_pickles_as_a_number(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        """An OPEN breaker's error knows when the spell ends: read later, it says less;
        past the end, 0.0. Pickled, it keeps the value read then (a monotonic time means
        nothing in another process). Its str and repr say the same."""
        b = breaker(clock)
        trip(flavour, b)
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b, "never")
        error = info.value
        assert error.retry_after == pytest.approx(10.0)
        assert "retry after 10.000s" in str(error)
        clock.advance(4)
        assert error.retry_after == pytest.approx(6.0)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is CircuitOpenError
        assert (copy.name, copy.retry_after, copy.state) == ("svc", pytest.approx(6.0), State.OPEN)
        clock.advance(7)
        assert error.retry_after == 0.0
        assert copy.retry_after == pytest.approx(6.0)
        assert repr(error) == (
            "CircuitOpenError(name='svc', retry_after=0.0, state=<State.OPEN: 'open'>,"
            f" last_failure={error.last_failure!r})"
        )

    def test_errors_made_by_hand_take_keywords_and_keep_their_values(self) -> None:
        error = CircuitOpenError(name="x", retry_after=1.5, state=State.OPEN)
        assert (error.name, error.retry_after, error.state) == ("x", 1.5, State.OPEN)
        assert CircuitOpenError().retry_after is None
        assert pickle.loads(pickle.dumps(error)).retry_after == 1.5

    def test_rejection_traceback_does_not_grow(self, clock: ManualClock) -> None:
        b = breaker(clock)
        sync = Flavour("sync", "decorator")
        trip(sync, b)
        depths = []
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as info:
                b.call(lambda: None)
            depths.append(len(traceback.extract_tb(info.value.__traceback__)))
        # (the spell's first rejection is told, through the breaker: a frame more)
        assert len(set(depths[1:])) == 1
        assert depths[0] == depths[1] + 1

    def test_the_guarded_function_is_not_called(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock)
        trip(flavour, b)
        calls = []
        with pytest.raises(CircuitOpenError):
            flavour.call(b, "x", before=lambda: calls.append(1))
        assert calls == []

    def test_turns_half_open_lazily_on_the_first_call_after_open_for(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, half_open_calls=2)
        trip(flavour, b)
        clock.advance(10)
        assert b.state is State.OPEN  # no background thread moved it
        succeed(flavour, b, 1)
        assert b.state is State.HALF_OPEN

    def test_open_for_callable_gets_consecutive_open_count(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        seen = []

        def backoff(times_opened: int) -> float:
            seen.append(times_opened)
            return 10.0 * 2 ** (times_opened - 1)

        b = breaker(clock, open_for=backoff, half_open_calls=1)
        seen.clear()  # construction checks the callable once
        trip(flavour, b)
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b)
        assert info.value.retry_after == pytest.approx(10.0)
        clock.advance(10)
        fail(flavour, b)  # the probe fails: open again, for twice as long
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b)
        assert info.value.retry_after == pytest.approx(20.0)
        clock.advance(20)
        succeed(flavour, b)
        assert b.state is State.CLOSED
        trip(flavour, b)  # closing reset the count
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b)
        assert info.value.retry_after == pytest.approx(10.0)
        assert seen[0] == 1
        assert 2 in seen


class TestHalfOpen:
    def test_admits_exactly_half_open_calls_probes(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=3)
        sync = Flavour("sync", "with")
        trip(sync, b)
        clock.advance(10)
        # Enter three probes without finishing them: a fourth is rejected.
        for _ in range(3):
            b.__enter__()
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: None)
        assert info.value.state is State.HALF_OPEN
        assert info.value.retry_after is None
        for _ in range(3):
            b.__exit__(None, None, None)
        assert b.state is State.CLOSED

    def test_closes_when_probes_succeed_with_a_fresh_window(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, half_open_calls=2)
        trip(flavour, b)
        clock.advance(10)
        succeed(flavour, b, 1)
        assert b.state is State.HALF_OPEN
        assert b.metrics.calls == 1
        succeed(flavour, b, 1)
        assert b.state is State.CLOSED
        m = b.metrics
        assert (m.calls, m.failures, m.failure_rate) == (0, 0, None)

    def test_reopens_when_probe_failure_rate_reaches_threshold(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, half_open_calls=2, failure_rate=0.5)
        trip(flavour, b)
        clock.advance(10)
        succeed(flavour, b, 1)
        fail(flavour, b, 1)
        assert b.state is State.OPEN
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b)
        assert info.value.retry_after == pytest.approx(10.0)

    def test_decides_only_when_all_probes_have_reported(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=3, failure_rate=0.5)
        sync = Flavour("sync", "call")
        trip(sync, b)
        clock.advance(10)
        fail(sync, b, 1)
        fail(sync, b, 1)
        assert b.state is State.HALF_OPEN  # 2 of 3 failed, but one is still to report
        succeed(sync, b, 1)
        assert b.state is State.OPEN

    def test_ignored_and_cancelled_probes_release_their_permit(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=1, ignore=KeyError)
        sync = Flavour("sync", "call")
        trip(sync, b)
        clock.advance(10)
        with pytest.raises(KeyError):
            sync.call(b, KeyError("ignored"))
        with pytest.raises(KeyboardInterrupt):
            sync.call(b, KeyboardInterrupt())
        assert b.state is State.HALF_OPEN
        succeed(sync, b, 1)  # the permit is still there for a real probe
        assert b.state is State.CLOSED

    def test_max_wait_reopens_when_probes_never_report(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=1, half_open_max_wait=5.0)
        sync = Flavour("sync", "call")
        trip(sync, b)
        clock.advance(10)
        b.__enter__()  # a probe that hangs
        clock.advance(5)
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: None)
        assert b.state is State.OPEN
        assert info.value.retry_after == pytest.approx(10.0)
        b.__exit__(None, None, None)  # the late probe reports: stale, changes nothing
        assert b.state is State.OPEN


class TestStaleOutcomes:
    def test_stale_success_cannot_close_an_open_breaker(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=1)
        b.__enter__()  # admitted while CLOSED
        trip(Flavour("sync", "call"), b)
        b.__exit__(None, None, None)
        assert b.state is State.OPEN

    def test_stale_failure_cannot_extend_open_time(self, clock: ManualClock) -> None:
        b = breaker(clock)
        b.__enter__()
        trip(Flavour("sync", "call"), b)
        clock.advance(9)
        b.__exit__(ConnectionError, BOOM, None)
        clock.advance(1)
        succeed(Flavour("sync", "call"), b, 1)  # open_for counted from the first trip
        assert b.state is State.HALF_OPEN

    def test_probe_from_an_earlier_half_open_spell_is_ignored(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=2, half_open_max_wait=1.0)
        sync = Flavour("sync", "call")
        trip(sync, b)
        clock.advance(10)
        b.__enter__()  # probe of spell 1
        clock.advance(1)
        with pytest.raises(CircuitOpenError):
            sync.call(b)  # spell 1 timed out: OPEN again
        clock.advance(10)
        succeed(sync, b, 1)  # spell 2, first probe
        b.__exit__(None, None, None)  # spell 1's probe: must not count as spell 2's second
        assert b.state is State.HALF_OPEN
        assert b.metrics.calls == 1


class TestClassification:
    def test_record_limits_what_counts_as_failure(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, record=ConnectionError)
        for _ in range(4):
            with pytest.raises(ValueError, match="bad input"):
                flavour.call(b, ValueError("bad input"))
        m = b.metrics
        assert (b.state, m.calls, m.failures) == (State.CLOSED, 4, 0)

    def test_record_predicate(self, clock: ManualClock) -> None:
        b = breaker(clock, record=lambda exc: "retryable" in str(exc))
        sync = Flavour("sync", "call")
        with pytest.raises(RuntimeError):
            sync.call(b, RuntimeError("fatal"))
        with pytest.raises(RuntimeError):
            sync.call(b, RuntimeError("retryable"))
        assert b.metrics.failures == 1

    def test_ignore_wins_over_record(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock, record=Exception, ignore=(KeyError, IndexError))
        for exc in (KeyError("k"), IndexError("i")):
            with pytest.raises(type(exc)):
                flavour.call(b, exc)
        assert b.metrics.calls == 0

    def test_failure_result_counts_returned_values(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, failure_result=lambda r: r == 503)
        for _ in range(4):
            assert flavour.call(b, 503) == 503
        # A with-block has no return value for the breaker to see: it counts as a success.
        assert b.state is (State.CLOSED if flavour.form == "with" else State.OPEN)

    @pytest.mark.parametrize(
        "exc",
        [KeyboardInterrupt(), SystemExit(3), GeneratorExit(), asyncio.CancelledError()],
        ids=type,
    )
    def test_base_exceptions_are_neither_failure_nor_success(
        self, exc: BaseException, clock: ManualClock
    ) -> None:
        b = breaker(clock)
        for _ in range(5):
            with pytest.raises(type(exc)) as info:
                Flavour("sync", "call").call(b, exc)
            assert info.value is exc
        assert b.metrics.calls == 0

    def test_a_raising_record_predicate_never_replaces_the_calls_error(
        self, clock: ManualClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The call failed whatever the predicate thinks: its own error goes on, counted
        as a failure; the predicate's error is logged once, and the probe is released."""

        def record(exc: BaseException) -> bool:
            raise LookupError("predicate bug")

        b = breaker(clock, record=record, min_calls=2, window_size=2, half_open_calls=1)
        sync = Flavour("sync", "call")
        for _ in range(2):
            with pytest.raises(ValueError, match="downstream"):
                sync.call(b, ValueError("downstream"))
        assert b.state is State.OPEN
        clock.advance(60)
        with pytest.raises(ValueError, match="downstream"):
            sync.call(b, ValueError("downstream"))  # the probe: it failed, so open again
        assert b.state is State.OPEN
        logged = [r for r in caplog.records if "its record callable failed" in r.getMessage()]
        assert len(logged) == 1
        assert "(LookupError)" in logged[0].getMessage()

    def test_a_raising_failure_result_counts_neither_and_returns_the_value(
        self, clock: ManualClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        def failure_result(result: object) -> bool:
            raise LookupError("predicate bug")

        b = breaker(clock, failure_result=failure_result, half_open_calls=1)
        b.force_open()
        b.reset()
        for flavour in (Flavour("sync", "call"), Flavour("asyncio", "decorator")):
            assert flavour.call(b, "value") == "value"
        assert b.metrics.calls == 0
        assert (
            sum("its failure_result callable failed" in r.getMessage() for r in caplog.records)
            == 1
        )


class TestCancellation:
    @pytest.mark.parametrize("mode", ["asyncio", "trio"])
    def test_cancelled_calls_are_not_counted(self, mode: str, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=1)

        @b
        async def hang() -> None:
            await anyio.sleep_forever()

        async def main() -> None:
            for _ in range(5):
                with anyio.move_on_after(0.001):
                    await hang()

        anyio.run(main, backend=mode)
        assert b.metrics.calls == 0
        trip(Flavour(mode, "decorator"), b)
        clock.advance(10)
        anyio.run(main, backend=mode)  # cancelled probes give their permit back
        assert b.state is State.HALF_OPEN
        succeed(Flavour(mode, "call"), b)
        assert b.state is State.CLOSED

    def test_trio_cancelled_propagates_untouched(self, clock: ManualClock) -> None:
        b = breaker(clock)
        caught: list[BaseException] = []

        @b
        async def hang() -> None:
            try:
                await trio.sleep_forever()
            except BaseException as exc:
                caught.append(exc)
                raise

        async def main() -> None:
            with trio.move_on_after(0.001):
                await hang()

        trio.run(main)
        assert isinstance(caught[0], trio.Cancelled)
        assert b.metrics.calls == 0


class TestSlowCalls:
    def test_opens_on_slow_call_rate(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock, slow_call_duration=1.0, slow_call_rate=0.5)

        def slow() -> None:
            clock.advance(1.0)

        succeed(flavour, b, 2)
        flavour.call(b, "late", before=slow)
        assert b.state is State.CLOSED
        flavour.call(b, "late", before=slow)
        m = b.metrics
        assert (b.state, m.slow_calls, m.failures) == (State.OPEN, 2, 0)

    def test_slow_failures_count_as_both(self, clock: ManualClock) -> None:
        b = breaker(clock, slow_call_duration=0.5, min_calls=10)
        sync = Flavour("sync", "call")
        with pytest.raises(ConnectionError):
            sync.call(b, BOOM, before=lambda: clock.advance(2))
        m = b.metrics
        assert (m.calls, m.failures, m.slow_calls) == (1, 1, 1)

    def test_half_open_probes_judged_on_slowness_too(self, clock: ManualClock) -> None:
        b = breaker(clock, slow_call_duration=1.0, half_open_calls=1)
        sync = Flavour("sync", "call")
        trip(sync, b)
        clock.advance(10)
        sync.call(b, "ok", before=lambda: clock.advance(3))
        assert b.state is State.OPEN


class TestManualControl:
    def test_force_open_rejects_without_retry_after(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock)
        b.force_open()
        clock.advance(1000)
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b)
        assert (info.value.state, info.value.retry_after) == (State.FORCED_OPEN, None)
        assert b.state is State.FORCED_OPEN

    def test_disable_lets_everything_through_and_records_nothing(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock)
        trip(flavour, b)
        b.disable()
        fail(flavour, b, 10)
        succeed(flavour, b, 1)
        assert b.state is State.DISABLED

    def test_reset_closes_with_an_empty_window(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock)
        trip(flavour, b)
        with pytest.raises(CircuitOpenError):
            flavour.call(b)
        b.reset()
        assert b.state is State.CLOSED
        assert b.metrics == BreakerMetrics(State.CLOSED, 0, 0, 0, None, None, 0)
        succeed(flavour, b, 1)


class TestMetrics:
    def test_snapshot_is_frozen_and_exact(self, clock: ManualClock) -> None:
        b = breaker(clock, min_calls=4, window_size=100, failure_rate=1.0)
        sync = Flavour("sync", "call")
        succeed(sync, b, 3)
        fail(sync, b, 1)
        m = b.metrics
        assert m == BreakerMetrics(State.CLOSED, 4, 1, 0, 0.25, 0.0, 0)
        with pytest.raises(AttributeError):
            m.calls = 5  # type: ignore[misc]

    def test_state_is_a_str_enum(self) -> None:
        assert State.HALF_OPEN == "half_open"
        assert str(State.FORCED_OPEN) == "forced_open"
        assert {s.value for s in State} == {
            "closed",
            "open",
            "half_open",
            "forced_open",
            "disabled",
        }


class TestListeners:
    def test_state_changes_are_published_in_order(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, half_open_calls=1)
        seen: list[StateChange] = []
        b.add_listener(seen.append)
        trip(flavour, b)
        clock.advance(10)
        succeed(flavour, b, 1)
        b.force_open()
        b.disable()
        b.reset()
        b.reset()  # CLOSED to CLOSED is no change
        assert [(e.old, e.new) for e in seen] == [
            (State.CLOSED, State.OPEN),
            (State.OPEN, State.HALF_OPEN),
            (State.HALF_OPEN, State.CLOSED),
            (State.CLOSED, State.FORCED_OPEN),
            (State.FORCED_OPEN, State.DISABLED),
            (State.DISABLED, State.CLOSED),
        ]
        assert [e.at for e in seen[:3]] == [0.0, 10.0, 10.0]
        assert all(e.breaker is b for e in seen)

    def test_a_failing_listener_is_logged_and_the_call_goes_on(
        self, clock: ManualClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        b = breaker(clock)
        seen: list[State] = []

        @b.add_listener
        def broken(event: StateChange) -> None:
            raise RuntimeError("listener bug")

        b.add_listener(lambda event: seen.append(event.new), StateChange)
        trip(Flavour("sync", "call"), b)  # the 4th failure still raises ConnectionError
        assert seen == [State.OPEN]
        assert "listener bug" in caplog.text
        failed = [r for r in caplog.records if "listener" in r.getMessage()]
        assert [r.name for r in failed] == ["resilient"]

    def test_listeners_run_outside_the_lock(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=2)
        snapshots: list[BreakerMetrics] = []
        b.add_listener(lambda event: snapshots.append(b.metrics))  # would deadlock under it

        def scenario() -> None:
            sync = Flavour("sync", "call")
            trip(sync, b)
            clock.advance(10)
            succeed(sync, b, 2)

        worker = threading.Thread(target=scenario, daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert [m.state for m in snapshots] == [State.OPEN, State.HALF_OPEN, State.CLOSED]

    def test_remove_listener_and_bad_listeners(self, clock: ManualClock) -> None:
        b = breaker(clock)
        seen: list[StateChange] = []
        b.add_listener(seen.append)
        b.remove_listener(seen.append)
        b.force_open()
        assert seen == []
        with pytest.raises(ValueError, match="not in list"):
            b.remove_listener(seen.append)

        async def async_listener(event: StateChange) -> None: ...

        with pytest.raises(TypeError, match="not async"):
            b.add_listener(async_listener)


def test_a_success_that_opens_measures_open_for_from_now() -> None:
    clock = ManualClock(start=1000.0)
    b = breaker(clock, min_calls=4, failure_rate=0.5, open_for=30)
    sync = Flavour("sync", "call")
    fail(sync, b, 2)
    succeed(sync, b, 2)  # the success that reaches min_calls opens the breaker
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        sync.call(b)
    assert info.value.retry_after == pytest.approx(30.0)


class TestReviewFindings:
    """Behaviours pinned down after an independent review."""

    def test_failure_result_never_judges_a_with_block(self, clock: ManualClock) -> None:
        def is_server_error(response: Any) -> bool:
            return bool(response.status >= 500)  # would fail on None

        b = breaker(clock, failure_result=is_server_error)
        for _ in range(5):
            with b:
                pass
        assert (b.state, b.metrics.calls, b.metrics.failures) == (State.CLOSED, 5, 0)

    def test_time_window_judges_when_old_successes_slide_out(self, clock: ManualClock) -> None:
        b = breaker(clock, window_type="time", window_size=10, min_calls=4, failure_rate=0.5)
        sync = Flavour("sync", "call")
        succeed(sync, b, 10)
        clock.advance(9)
        fail(sync, b, 3)  # 3 of 13: closed
        assert b.state is State.CLOSED
        clock.advance(1.5)  # the 10 successes slide out
        succeed(sync, b, 1)  # 3 of 4 failed: this success must open it
        assert b.state is State.OPEN

    def test_listener_that_changes_state_sees_events_in_order(self, clock: ManualClock) -> None:
        b = breaker(clock)
        seen: list[tuple[State, State, float]] = []

        @b.add_listener
        def on_change(event: StateChange) -> None:
            seen.append((event.old, event.new, event.at))
            if event.new is State.OPEN:
                clock.advance(5)
                b.reset()  # a transition from inside a listener: queued, not nested

        fail(Flavour("sync", "call"), b, 4)  # opens; the listener closes it again
        assert seen == [(State.CLOSED, State.OPEN, 0.0), (State.OPEN, State.CLOSED, 5.0)]
        assert b.state is State.CLOSED

    def test_a_clock_with_only_monotonic_is_enough(self) -> None:
        class Ticks:
            def __init__(self) -> None:
                self.now = 100.0

            def monotonic(self) -> float:
                return self.now

        ticks = Ticks()
        b = CircuitBreaker(min_calls=1, window_size=1, open_for=5, clock=ticks)
        fail(Flavour("sync", "call"), b)
        ticks.now += 2
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: None)
        assert info.value.retry_after == pytest.approx(3.0)

    def test_full_half_open_with_max_wait_tells_when_it_ends(self, clock: ManualClock) -> None:
        b = breaker(clock, half_open_calls=1, half_open_max_wait=4.0)
        trip(Flavour("sync", "call"), b)
        clock.advance(10)
        b.__enter__()
        clock.advance(1)
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: None)
        assert (info.value.state, info.value.retry_after) == (State.HALF_OPEN, 3.0)
        b.__exit__(None, None, None)

    def test_signature_defaults_are_the_declared_defaults(self) -> None:
        from resilient._breaker import OPTIONS

        params = inspect.signature(CircuitBreaker).parameters
        assert {o.name: o.default for o in OPTIONS} == {
            name: p.default for name, p in params.items() if name != "name"
        }


def test_successes_stop_judging_once_the_rate_is_back_under(clock: ManualClock) -> None:
    """A failure first in warm-up flags the window; successes that follow clear the flag.

    Otherwise every later success would take a tally, which a plain success never needs
    (a slowdown that the concurrency hammer once ran into, when a tally was O(window)).
    """
    b = breaker(clock, window_size=1000, min_calls=1000, failure_rate=1.0)
    sync = Flavour("sync", "call")
    fail(sync, b, 1)
    assert b._state.pending  # 1 of 1 failed: over, but short of min_calls
    succeed(sync, b, 1)
    assert not b._state.pending


class TestRootCause:
    """A rejection carries the failure that opened the breaker (``last_failure``)."""

    def test_the_rejections_of_an_open_spell_carry_the_failure_that_opened_it(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock)
        fail(flavour, b, 3)
        last = ConnectionError("refused by 10.0.0.7")
        with pytest.raises(ConnectionError):
            flavour.call(b, last)
        assert b.state is State.OPEN
        for _ in range(2):
            with pytest.raises(CircuitOpenError) as info:
                flavour.call(b, "never")
            cause = info.value.last_failure
            assert type(cause) is ConnectionError
            assert cause.args == last.args
            # A copy without the traceback: the open spell keeps no frame of the call.
            assert cause is not last
            assert cause.__traceback__ is None
            assert last.__traceback__ is not None  # the caller's own is untouched
        assert str(info.value).endswith("; opened by ConnectionError: refused by 10.0.0.7")
        copy = pickle.loads(pickle.dumps(info.value))  # (an exception may not pickle)
        assert (copy.name, copy.state, copy.last_failure) == ("svc", State.OPEN, None)

    def test_an_open_breaker_keeps_nothing_of_the_failed_call_alive(
        self, clock: ManualClock
    ) -> None:
        import gc
        import weakref

        class Payload:
            pass

        class Locked(Exception):
            def __init__(self, *, code: int) -> None:  # keyword-only: no plain copy
                super().__init__(code)
                self.code = code
                self.lock = threading.Lock()  # no pickling either

        b = breaker(clock, min_calls=1)
        alive: list[weakref.ref[Payload]] = []

        def failing() -> None:
            payload = Payload()  # a local of the failed call's frame
            alive.append(weakref.ref(payload))
            raise Locked(code=503)

        with pytest.raises(Locked):
            b.call(failing)
        gc.collect()
        assert b.state is State.OPEN
        assert alive[0]() is None
        with pytest.raises(CircuitOpenError) as info:
            b.call(failing)
        cause = info.value.last_failure
        assert isinstance(cause, Locked)
        assert cause.code == 503
        assert pickle.loads(pickle.dumps(info.value)).last_failure is None

    def test_a_failed_probe_reopens_with_its_own_failure(
        self, flavour: Flavour, clock: ManualClock
    ) -> None:
        b = breaker(clock, half_open_calls=1)
        trip(flavour, b)
        clock.advance(10)
        probe = TimeoutError("probe too slow")
        with pytest.raises(TimeoutError):
            flavour.call(b, probe)
        assert b.state is State.OPEN
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b, "never")
        assert repr(info.value.last_failure) == repr(probe)

    def test_nothing_failed_nothing_to_carry(self, flavour: Flavour, clock: ManualClock) -> None:
        b = breaker(clock)
        b.force_open()
        with pytest.raises(CircuitOpenError) as info:
            flavour.call(b, "never")
        assert info.value.last_failure is None
        assert "opened by" not in str(info.value)
        assert CircuitOpenError("x").last_failure is None
