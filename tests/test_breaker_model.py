"""Model-based test of CircuitBreaker: a hypothesis state machine against a reference model.

``BreakerMachine`` builds a count-window breaker on a ManualClock with randomly drawn
options (window_size, min_calls, failure_rate, half_open_calls, open_for as seconds or a
callable, half_open_max_wait, slow_call_duration and slow_call_rate; record=ConnectionError,
ignore=KeyError), then runs random steps on it: calls that succeed, fail (ConnectionError),
are ignored (KeyError), raise an unrecorded error (ValueError: a success) or are cancelled
(a BaseException), optionally slow; calls begun with ``__enter__`` and finished later
(LIFO, as the context manager's token stack requires), so that outcomes arrive stale;
clock advances; ``force_open()``, ``disable()`` and ``reset()``.

``Model`` below is a plain restatement of the breaker's spec, one spell (state) object at
a time. After every step the breaker's state, its metrics (every field) and the clock
must equal the model's; every rejection must carry the model's state and retry_after; and
the guarded body must have run exactly when the model admitted the call.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from resilient import BreakerMetrics, CircuitBreaker, CircuitOpenError, ConfigWarning, State
from resilient.testing import ManualClock


class Cancelled(BaseException):
    """Stands in for a cancellation: a BaseException that is not an Exception."""


# What a call's body does, and what the breaker must make of it.
RAISES: dict[str, type[BaseException] | None] = {
    "success": None,
    "failure": ConnectionError,  # in record: a failure
    "ignored": KeyError,  # in ignore: neither (and gives a probe permit back)
    "unrecorded": ValueError,  # not in record: a success
    "cancelled": Cancelled,  # not an Exception: neither
    "bad_result": None,  # returns "bad": a failure where failure_result judges it
}


def is_bad(result: object) -> bool:
    return result == "bad"


OUTCOMES = st.sampled_from(list(RAISES))


class Backoff:
    """open_for as a callable: ``step * times_opened`` seconds (with a readable repr)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, times_opened: int) -> float:
        return float(self.step * times_opened)

    def __repr__(self) -> str:
        return f"Backoff({self.step})"


# -- the reference model ----------------------------------------------------------------


@dataclass(eq=False)
class Window:
    """The last ``size`` recorded outcomes, as (failed, slow) pairs."""

    size: int
    outcomes: list[tuple[bool, bool]] = field(default_factory=list)

    def record(self, failed: bool, slow: bool) -> None:
        self.outcomes.append((failed, slow))
        if len(self.outcomes) > self.size:
            self.outcomes.pop(0)

    def counts(self) -> tuple[int, int, int]:
        calls = len(self.outcomes)
        failures = sum(1 for failed, _ in self.outcomes if failed)
        slow = sum(1 for _, is_slow in self.outcomes if is_slow)
        return calls, failures, slow


@dataclass(eq=False)
class Spell:
    """One state of the model breaker; a new object on every transition."""

    kind: State
    window: Window
    since: float = 0.0
    until: float = 0.0
    times_opened: int = 0
    # HALF_OPEN only:
    admitted: int = 0
    reported: int = 0
    failures: int = 0
    slow: int = 0


@dataclass(frozen=True)
class Admitted:
    spell: Spell
    started: float


@dataclass(frozen=True)
class Rejected:
    state: State
    retry_after: float | None


class Model:
    def __init__(self, options: dict[str, Any], now: float) -> None:
        self.window_size: int = options["window_size"]
        self.min_calls: int = min(options["min_calls"], self.window_size)
        self.failure_rate: float = options["failure_rate"]
        self.half_open_calls: int = options["half_open_calls"]
        self.open_for = options["open_for"]
        self.max_wait: float | None = options["half_open_max_wait"]
        self.slow_after: float | None = options["slow_call_duration"]
        self.slow_rate: float = options["slow_call_rate"]
        self.now = now
        self.judges_results = options.get("failure_result") is not None
        self.rejected = 0
        self.spell = Spell(State.CLOSED, Window(self.window_size))

    # helpers

    def open_seconds(self, times_opened: int) -> float:
        if callable(self.open_for):
            return float(self.open_for(times_opened))
        return float(self.open_for)

    def over(self, calls: int, failures: int, slow: int) -> bool:
        if failures / calls >= self.failure_rate:
            return True
        return self.slow_after is not None and slow / calls >= self.slow_rate

    def open(self, times_opened: int, window: Window) -> None:
        until = self.now + self.open_seconds(times_opened)
        self.spell = Spell(
            State.OPEN, window, since=self.now, until=until, times_opened=times_opened
        )

    def reject(self, state: State, retry_after: float | None) -> Rejected:
        self.rejected += 1
        return Rejected(state, retry_after)

    # the call path

    def admit(self) -> Admitted | Rejected:
        spell = self.spell
        if spell.kind in (State.CLOSED, State.DISABLED):
            return Admitted(spell, self.now)
        if spell.kind is State.FORCED_OPEN:
            return self.reject(State.FORCED_OPEN, None)
        if spell.kind is State.OPEN:
            if self.now < spell.until:
                return self.reject(State.OPEN, spell.until - self.now)
            spell = Spell(
                State.HALF_OPEN, spell.window, since=self.now, times_opened=spell.times_opened
            )
            self.spell = spell
        assert spell.kind is State.HALF_OPEN
        if self.max_wait is not None and self.now - spell.since >= self.max_wait:
            self.open(spell.times_opened + 1, spell.window)
            return self.reject(State.OPEN, self.spell.until - self.now)
        if spell.admitted < self.half_open_calls:
            spell.admitted += 1
            return Admitted(spell, self.now)
        # Full. With half_open_max_wait the spell ends by then at the latest.
        hint = None if self.max_wait is None else spell.since + self.max_wait - self.now
        return self.reject(State.HALF_OPEN, hint)

    def finish(self, token: Admitted, outcome: str, returned: bool = True) -> None:
        """``returned``: the breaker saw the value (a call, not a with-block)."""
        spell = token.spell
        if spell.kind is State.DISABLED:
            return
        if outcome in ("ignored", "cancelled"):
            counted = None
        else:
            failed = outcome == "failure" or (
                outcome == "bad_result" and returned and self.judges_results
            )
            slow = self.slow_after is not None and self.now - token.started >= self.slow_after
            counted = (failed, slow)
        if spell.kind is State.CLOSED:
            if counted is None:
                return
            spell.window.record(*counted)  # into the spell's own window, stale or not
            if spell is self.spell:
                calls, failures, slow = spell.window.counts()
                if calls >= self.min_calls and self.over(calls, failures, slow):
                    self.open(1, spell.window)
            return
        assert spell.kind is State.HALF_OPEN
        if spell is not self.spell:
            return  # a probe of a half-open spell that has ended
        if counted is None:
            spell.admitted -= 1
            return
        spell.reported += 1
        spell.failures += counted[0]
        spell.slow += counted[1]
        if spell.reported == self.half_open_calls:
            if self.over(spell.reported, spell.failures, spell.slow):
                self.open(spell.times_opened + 1, spell.window)
            else:
                self.spell = Spell(State.CLOSED, Window(self.window_size))

    # manual control and inspection

    def force_open(self) -> None:
        self.spell = Spell(State.FORCED_OPEN, self.spell.window, since=self.now)

    def disable(self) -> None:
        self.spell = Spell(State.DISABLED, self.spell.window, since=self.now)

    def reset(self) -> None:
        self.rejected = 0
        self.spell = Spell(State.CLOSED, Window(self.window_size))

    def metrics(self) -> BreakerMetrics:
        spell = self.spell
        if spell.kind is State.HALF_OPEN:
            calls, failures, slow = spell.reported, spell.failures, spell.slow
            need = self.half_open_calls
        else:
            calls, failures, slow = spell.window.counts()
            need = self.min_calls
        enough = calls > 0 and calls >= need
        return BreakerMetrics(
            state=spell.kind,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if enough else None,
            slow_call_rate=slow / calls if enough else None,
            rejected=self.rejected,
        )


# -- the state machine ------------------------------------------------------------------

# Every duration is a multiple of 0.5, so clock arithmetic is exact in floats.
OPEN_FOR = st.one_of(st.integers(1, 20).map(float), st.integers(1, 6).map(Backoff))
MAX_WAIT = st.one_of(st.none(), st.integers(1, 10).map(float))
SLOW_AFTER = st.sampled_from([None, 2.0, None, 0.5])  # untimed breakers take another path
RATES = st.sampled_from([0.25, 0.5, 0.75, 1.0])
CALL_TIME = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 3.0])
ADVANCE = st.one_of(st.integers(0, 25).map(float), st.sampled_from([0.5, 1.5, 2.5, 30.0]))


def make_exception(outcome: str) -> BaseException | None:
    kind = RAISES[outcome]
    return None if kind is None else kind(outcome)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.in_flight: list[Admitted] = []  # LIFO, like the context manager's tokens

    @initialize(
        window_size=st.integers(1, 10),
        min_calls=st.integers(1, 12),
        failure_rate=RATES,
        half_open_calls=st.integers(1, 4),
        open_for=OPEN_FOR,
        half_open_max_wait=MAX_WAIT,
        slow_call_duration=SLOW_AFTER,
        slow_call_rate=RATES,
        start=st.sampled_from([1000.0, 0.0]),
        failure_result=st.sampled_from([None, is_bad]),
    )
    def build(self, start: float, **options: Any) -> None:
        # A real monotonic clock is never at 0, so half the runs start elsewhere: that
        # exposes a time confused with zero (such a bug opened the breaker in the past).
        self.clock = ManualClock(start)
        with warnings.catch_warnings():  # min_calls above window_size: capped on purpose
            warnings.simplefilter("ignore", ConfigWarning)
            self.breaker = CircuitBreaker(
                "model", clock=self.clock, record=ConnectionError, ignore=KeyError, **options
            )
        self.model = Model(options, start)

    def check_rejection(self, expected: Admitted | Rejected, error: BaseException) -> None:
        assert isinstance(expected, Rejected), f"model admitted, breaker rejected: {error!r}"
        assert isinstance(error, CircuitOpenError)
        assert error.state is expected.state
        if expected.retry_after is None:
            assert error.retry_after is None
        else:
            assert error.retry_after == pytest.approx(expected.retry_after)

    def check_raised(self, outcome: str, raised: BaseException | None) -> None:
        kind = RAISES[outcome]
        if kind is None:
            assert raised is None
        else:
            assert type(raised) is kind
            assert raised.args == (outcome,)

    @rule(outcome=OUTCOMES, duration=CALL_TIME)
    def call(self, outcome: str, duration: float) -> None:
        """One whole call through ``breaker.call``; the body may take ``duration`` s."""
        expected = self.model.admit()
        ran: list[bool] = []

        def body() -> str:
            ran.append(True)
            self.clock.advance(duration)
            exc = make_exception(outcome)
            if exc is not None:
                raise exc
            return "bad" if outcome == "bad_result" else "ok"

        raised: BaseException | None = None
        try:
            assert self.breaker.call(body) == ("bad" if outcome == "bad_result" else "ok")
        except (CircuitOpenError, ConnectionError, KeyError, ValueError, Cancelled) as exc:
            raised = exc
        if isinstance(raised, CircuitOpenError):
            self.check_rejection(expected, raised)
            assert ran == [], "the body ran although the call was rejected"
            return
        assert isinstance(expected, Admitted), f"model rejected {expected}, breaker admitted"
        assert ran == [True]
        self.check_raised(outcome, raised)
        self.model.now += duration
        self.model.finish(expected, outcome)

    # Extra weight on the outcomes that move the breaker: failures trip it and fail probes,
    # successes pass probes (hypothesis picks among the enabled rules evenly).
    @rule(duration=CALL_TIME)
    def call_that_fails(self, duration: float) -> None:
        self.call("failure", duration)

    @rule(duration=CALL_TIME)
    def call_that_succeeds(self, duration: float) -> None:
        self.call("success", duration)

    @rule()
    def begin(self) -> None:
        """Enter the breaker and leave the call in flight."""
        expected = self.model.admit()
        try:
            self.breaker.__enter__()
        except CircuitOpenError as error:
            self.check_rejection(expected, error)
            return
        assert isinstance(expected, Admitted), f"model rejected {expected}, breaker admitted"
        self.in_flight.append(expected)

    @precondition(lambda self: self.in_flight)
    @rule(outcome=OUTCOMES)
    def finish(self, outcome: str) -> None:
        """Finish the most recently begun in-flight call."""
        token = self.in_flight.pop()
        exc = make_exception(outcome)
        if exc is None:
            self.breaker.__exit__(None, None, None)
        else:
            self.breaker.__exit__(type(exc), exc, None)
        self.model.finish(token, outcome, returned=False)  # a block has no value to judge

    @rule(seconds=ADVANCE)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    # Time steps aimed at the model's deadlines (exactly, or just short), so that the
    # boundaries now == until and now - since == half_open_max_wait are hit often. The
    # breaker is not told anything: it only sees the clock move.
    @precondition(lambda self: self.model.spell.kind is State.OPEN)
    @rule(short=st.sampled_from([0.0, 0.5]))
    def advance_to_open_end(self, short: float) -> None:
        self.advance(max(0.0, self.model.spell.until - self.model.now - short))

    @precondition(
        lambda self: self.model.spell.kind is State.HALF_OPEN and self.model.max_wait is not None
    )
    @rule(short=st.sampled_from([0.0, 0.5]))
    def advance_to_max_wait(self, short: float) -> None:
        spell, max_wait = self.model.spell, self.model.max_wait
        assert max_wait is not None
        self.advance(max(0.0, spell.since + max_wait - self.model.now - short))

    # One rule for all three, so that FORCED_OPEN and DISABLED (which only reset() ends)
    # do not swallow most of each run.
    @rule(action=st.sampled_from(["reset", "force_open", "reset", "disable", "reset"]))
    def manual_control(self, action: str) -> None:
        getattr(self.breaker, action)()
        getattr(self.model, action)()

    @precondition(lambda self: self.model.spell.kind in (State.FORCED_OPEN, State.DISABLED))
    @rule()
    def reset_pinned(self) -> None:
        self.manual_control("reset")

    @invariant()
    def agrees_with_model(self) -> None:
        assert self.clock.monotonic() == self.model.now
        assert self.breaker.state is self.model.spell.kind
        assert self.breaker.metrics == self.model.metrics()
        # Reading state and metrics must not have moved anything.
        assert self.breaker.state is self.model.spell.kind


BreakerMachine.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None
)
TestBreakerModel = BreakerMachine.TestCase
