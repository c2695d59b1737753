"""Events from every policy, their listeners, their log lines, the meters' feed, a
breaker's history and replay, and resilient.health()."""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import resilient
import resilient._bulkhead
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Retry,
    RetryBudget,
    State,
    Timeout,
    TimeoutExpired,
    WorkersExhaustedError,
)
from resilient._breaker import HISTORY
from resilient._core.configuration import events as core
from resilient.events import (
    EVENTS,
    BudgetExhausted,
    FallbackUsed,
    Rejected,
    RetryGaveUp,
    RetryScheduled,
    StateChange,
    Tally,
    TimedOut,
)
from resilient.testing import ManualClock
from tests.conftest import Flavour

BOOM = ConnectionError("boom")


def fail() -> None:
    raise BOOM


@pytest.fixture(autouse=True)
def _boom_lets_go() -> Iterator[None]:
    """BOOM is raised again and again: its traceback must not keep a test's policies
    (and the registry's count of them) alive after it."""
    yield
    BOOM.__traceback__ = None
    BOOM.__context__ = BOOM.__cause__ = None


def tripped(clock: ManualClock, **options: Any) -> CircuitBreaker:
    b = CircuitBreaker(min_calls=2, window_size=4, open_for=10, clock=clock, **options)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            b.call(fail)
    assert b.state is State.OPEN
    return b


@pytest.fixture
def seen() -> Iterator[list[Any]]:
    """Every event of every policy, while the test runs."""
    found: list[Any] = []
    resilient.add_listener(found.append)
    yield found
    resilient.remove_listener(found.append)


# -- what each policy publishes ------------------------------------------------------------


def test_a_transition_tells_its_tally_reason_end_and_count(seen: list[Any]) -> None:
    clock = ManualClock(start=100.0)
    b = tripped(clock)
    (change,) = [e for e in seen if isinstance(e, StateChange)]
    assert (change.breaker, change.policy, change.old, change.new) == (
        b,
        b,
        State.CLOSED,
        State.OPEN,
    )
    assert change.at == 100.0
    assert change.tally == Tally(calls=2, failures=2, slow_calls=0)
    assert change.reason == "2 of the last 2 calls failed, at or over failure_rate=0.5"
    assert (change.until, change.times_opened) == (110.0, 1)
    clock.advance(10)
    b.call(lambda: "ok")  # a probe
    for _ in range(4):
        b.call(lambda: "ok")
    changes = [(e.old, e.new, e.reason) for e in seen if isinstance(e, StateChange)][1:]
    assert changes == [
        (State.OPEN, State.HALF_OPEN, "open_for has passed"),
        (State.HALF_OPEN, State.CLOSED, "5 of 5 probes succeeded"),
    ]
    b.force_open()
    b.reset()
    assert [e.reason for e in seen if isinstance(e, StateChange)][-2:] == [
        "force_open()",
        "reset()",
    ]


def test_a_rejection_tells_why_and_when_to_come_back(seen: list[Any]) -> None:
    clock = ManualClock()
    b = tripped(clock)
    clock.advance(4)
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "never")
    (rejected,) = [e for e in seen if isinstance(e, Rejected)]
    assert (rejected.policy, rejected.at, rejected.reason) == (b, 4.0, "open")
    assert rejected.retry_after == pytest.approx(6.0)
    b.force_open()
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "never")
    assert [e.reason for e in seen if isinstance(e, Rejected)][-1] == "forced_open"


def test_a_full_half_open_spell_rejects_with_its_own_reason(seen: list[Any]) -> None:
    clock = ManualClock()
    b = tripped(clock, half_open_calls=1)
    clock.advance(10)
    inside = threading.Event()
    release = threading.Event()

    def probe() -> str:
        inside.set()
        assert release.wait(10)
        return "ok"

    worker = threading.Thread(target=b.call, args=(probe,))
    worker.start()
    try:
        assert inside.wait(10)
        with pytest.raises(CircuitOpenError):
            b.call(lambda: "never")
    finally:
        release.set()
        worker.join(10)
    assert [e.reason for e in seen if isinstance(e, Rejected)] == ["half_open_full"]


def test_bulkhead_rejections_say_full(seen: list[Any]) -> None:
    bulkhead = Bulkhead(1, max_wait=0.01, max_waiting=1)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        assert release.wait(10)

    holder = threading.Thread(target=bulkhead.call, args=(hold,))
    holder.start()
    try:
        assert inside.wait(10)
        with pytest.raises(BulkheadFullError):
            bulkhead.call(lambda: None)  # waits 10 ms, then gives up
    finally:
        release.set()
        holder.join(10)
    nowait = Bulkhead(1)
    with nowait, pytest.raises(BulkheadFullError):
        nowait.call(lambda: None)
    reasons = [e.reason for e in seen if isinstance(e, Rejected)]
    assert reasons == ["full_after_wait", "full"]
    assert all("full" in reason for reason in reasons)


def test_a_full_bulkhead_queue_says_queue_full(seen: list[Any]) -> None:
    bulkhead = Bulkhead(1, max_wait=5, max_waiting=0)
    with bulkhead, pytest.raises(BulkheadFullError):
        bulkhead.call(lambda: None)
    assert [e.reason for e in seen if isinstance(e, Rejected)] == ["queue_full"]


def test_retries_scheduled_and_given_up(seen: list[Any]) -> None:
    clock = ManualClock()
    retry = Retry(3, wait=0.5, clock=clock, name="fetch")
    with pytest.raises(ConnectionError):
        retry.call(fail)
    scheduled = [e for e in seen if isinstance(e, RetryScheduled)]
    assert [(e.policy, e.attempt, e.wait, e.error) for e in scheduled] == [
        (retry, 1, 0.5, BOOM),
        (retry, 2, 0.5, BOOM),
    ]
    assert [e.at for e in scheduled] == [0.0, 0.5]
    (gave_up,) = [e for e in seen if isinstance(e, RetryGaveUp)]
    assert (gave_up.attempts, gave_up.reason, gave_up.error, gave_up.at) == (
        3,
        "attempts",
        BOOM,
        1.0,
    )


def test_a_retry_on_a_result_tells_the_result(seen: list[Any]) -> None:
    retry = Retry(2, on_result=lambda r: r == "busy", clock=ManualClock())
    assert retry.call(lambda: "busy") == "busy"
    (scheduled,) = [e for e in seen if isinstance(e, RetryScheduled)]
    (gave_up,) = [e for e in seen if isinstance(e, RetryGaveUp)]
    assert (scheduled.error, scheduled.result) == (None, "busy")
    assert (gave_up.error, gave_up.result, gave_up.reason) == (None, "busy", "attempts")


def test_a_spent_budget_is_told_twice_as_exhausted_and_as_the_reason(seen: list[Any]) -> None:
    budget = RetryBudget(ratio=0.01, min_per_second=0)
    retry = Retry(5, budget=budget, clock=ManualClock())
    with pytest.raises(ConnectionError):
        retry.call(fail)
    (exhausted,) = [e for e in seen if isinstance(e, BudgetExhausted)]
    assert (exhausted.policy, exhausted.attempt, exhausted.budget) == (retry, 1, budget)
    assert [e.reason for e in seen if isinstance(e, RetryGaveUp)] == ["budget"]


def test_a_timeout_tells_it_timed_out(seen: list[Any], mode: str) -> None:
    timeout = Timeout(0.05, name="slow")
    if mode == "sync":
        with pytest.raises(TimeoutExpired):
            timeout.call(threading.Event().wait, 5)
    else:

        async def main() -> None:
            with pytest.raises(TimeoutExpired):
                await timeout.call_async(anyio.sleep, 5)

        anyio.run(main, backend=mode)
    (timed_out,) = [e for e in seen if isinstance(e, TimedOut)]
    assert (timed_out.policy, timed_out.seconds, timed_out.by_deadline) == (timeout, 0.05, False)


def test_a_timeout_out_of_workers_tells_a_rejection(seen: list[Any]) -> None:
    timeout = Timeout(0.01, max_abandoned=1)
    release = threading.Event()
    try:
        with pytest.raises(TimeoutExpired):
            timeout.call(release.wait, 10)  # abandoned, still running
        with pytest.raises(WorkersExhaustedError):
            timeout.call(lambda: None)
    finally:
        release.set()
    assert [e.reason for e in seen if isinstance(e, Rejected)] == ["workers_exhausted"]


def test_a_fallback_tells_what_it_answered_for(seen: list[Any], flavour: Flavour) -> None:
    fallback = Fallback("cached")
    flavour.call(fallback, BOOM)
    (used,) = [e for e in seen if isinstance(e, FallbackUsed)]
    assert (used.policy, used.error) == (fallback, BOOM)


def test_a_successful_call_publishes_nothing(seen: list[Any], flavour: Flavour) -> None:
    clock = ManualClock()
    for policy in (
        CircuitBreaker(clock=clock),
        Retry(3, clock=clock),
        Bulkhead(2),
        Fallback(0),
        Timeout(5),
    ):
        if flavour.form == "with" and isinstance(policy, Retry):
            continue  # (a Retry has no with-block)
        assert flavour.call(policy, "ok") == "ok"
    assert seen == []


def test_events_are_frozen() -> None:
    clock = ManualClock()
    events: list[Any] = []
    b = CircuitBreaker(min_calls=1, clock=clock)
    b.add_listener(events.append)
    with pytest.raises(ConnectionError):
        b.call(fail)
    with pytest.raises(CircuitOpenError):
        b.call(fail)
    assert {type(e) for e in events} == {StateChange, Rejected}
    for event in events:
        with pytest.raises(AttributeError):
            event.at = 0.0
    assert all(isinstance(e, EVENTS) for e in events)


# -- subscribing -------------------------------------------------------------------------


def test_a_policy_listener_hears_its_policy_only_and_can_filter_and_leave() -> None:
    clock = ManualClock()
    mine: list[Any] = []
    changes: list[Any] = []
    b = CircuitBreaker(min_calls=1, clock=clock)
    other = CircuitBreaker(min_calls=1, clock=clock)
    b.add_listener(mine.append)
    b.add_listener(changes.append, StateChange)
    for breaker in (b, other):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        with pytest.raises(CircuitOpenError):
            breaker.call(fail)
    assert [type(e) for e in mine] == [StateChange, Rejected]
    assert [type(e) for e in changes] == [StateChange]
    b.remove_listener(mine.append)
    b.reset()
    assert len(mine) == 2
    assert len(changes) == 2
    with pytest.raises(ValueError, match="not in list"):
        b.remove_listener(mine.append)
    with pytest.raises(TypeError, match="event classes"):
        b.add_listener(mine.append, ValueError)


def test_a_global_listener_hears_every_policy_live_and_future_until_removed() -> None:
    found: list[Any] = []
    before = CircuitBreaker(min_calls=1, clock=ManualClock())

    @resilient.add_listener
    def listen(event: Any) -> None:
        found.append(event)

    try:
        after = Retry(2, clock=ManualClock())
        with pytest.raises(ConnectionError):
            before.call(fail)
        with pytest.raises(ConnectionError):
            after.call(fail)
        assert [type(e) for e in found] == [StateChange, RetryScheduled, RetryGaveUp]
    finally:
        resilient.remove_listener(listen)
    before.reset()
    assert len(found) == 3
    with pytest.raises(ValueError, match="not a listener"):
        resilient.remove_listener(listen)


def test_a_listener_must_be_a_plain_callable() -> None:
    async def coroutine_function(event: Any) -> None: ...

    with pytest.raises(TypeError, match="not async"):
        resilient.add_listener(coroutine_function)
    with pytest.raises(TypeError, match="not async"):
        Retry().add_listener("print")  # type: ignore[type-var]


# -- a listener never breaks the call ------------------------------------------------------


def test_a_raising_listener_is_logged_once_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    retry = Retry(3, clock=ManualClock())

    @retry.add_listener
    def broken(event: Any) -> None:
        raise RuntimeError("listener bug")

    for _ in range(5):
        with pytest.raises(ConnectionError) as info:
            retry.call(fail)
        assert info.value is BOOM  # the call's own error, every time
    told = [r for r in caplog.records if "listener bug" in r.getMessage()]
    assert len(told) == 1  # 10 scheduled retries and 5 give-ups: one line
    assert told[0].name == "resilient"


@pytest.mark.parametrize("leave", [SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_a_listener_raising_systemexit_never_replaces_the_outcome(leave: BaseException) -> None:
    retry = Retry(2, clock=ManualClock())
    retry.add_listener(lambda event: (_ for _ in ()).throw(leave))
    with pytest.raises(ConnectionError):
        retry.call(fail)
    fallback = Fallback("answer")
    fallback.add_listener(lambda event: (_ for _ in ()).throw(leave))
    assert fallback.call(fail) == "answer"


def test_a_slow_listener_holds_up_only_the_call_that_caused_its_event() -> None:
    """A listener runs on the thread whose call caused the event: while it sleeps there,
    other threads' calls through the same policy come and go."""
    clock = ManualClock()
    b = CircuitBreaker(min_calls=1, clock=clock)
    inside, release = threading.Event(), threading.Event()
    ran_on: list[int] = []

    @b.add_listener
    def slow(event: Any) -> None:
        if isinstance(event, StateChange) and event.new is State.OPEN:
            ran_on.append(threading.get_ident())
            inside.set()
            assert release.wait(10)

    opener_ident: list[int] = []

    def opener() -> None:
        opener_ident.append(threading.get_ident())
        with pytest.raises(ConnectionError):
            b.call(fail)

    worker = threading.Thread(target=opener)
    worker.start()
    try:
        assert inside.wait(10)
        for _ in range(100):  # the breaker is open: rejected at once, not held
            with pytest.raises(CircuitOpenError):
                b.call(lambda: "never")
        b.force_open()  # a transition on this thread, delivered on this thread
    finally:
        release.set()
        worker.join(10)
    assert not worker.is_alive()
    assert ran_on == opener_ident


def test_events_are_delivered_on_the_thread_that_caused_them() -> None:
    """Eight threads retrying at once: each hears exactly its own retries, on itself."""
    retry = Retry(4, clock=ManualClock())
    wrong: list[Any] = []
    heard = [0] * 8
    me = threading.local()

    @retry.add_listener
    def check(event: Any) -> None:
        if isinstance(event, RetryScheduled):
            assert event.error is not None
            if event.error.args[0] != me.index:
                wrong.append(event)
            heard[me.index] += 1  # (only this thread's slot)

    def caller(index: int) -> None:
        me.index = index

        def own() -> None:
            raise ConnectionError(index)

        for _ in range(50):
            with pytest.raises(ConnectionError):
                retry.call(own)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    assert wrong == []
    assert heard == [150] * 8  # 50 calls x 3 retries, each thread


def test_a_listener_that_changes_the_state_is_heard_after_its_event() -> None:
    clock = ManualClock()
    b = CircuitBreaker(min_calls=1, clock=clock)
    order: list[tuple[str, str]] = []

    @b.add_listener
    def close_again(event: Any) -> None:
        if isinstance(event, StateChange):
            order.append((event.old.value, event.new.value))
            if event.new is State.OPEN:
                b.reset()

    with pytest.raises(ConnectionError):
        b.call(fail)
    assert order == [("closed", "open"), ("open", "closed")]


# -- log lines -------------------------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def test_each_kind_logs_on_its_own_logger_with_structured_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilient")
    clock = ManualClock()
    b = CircuitBreaker("payments", min_calls=2, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            b.call(fail)
    (opened,) = records(caplog, "resilient.breaker")
    assert opened.levelno == logging.WARNING
    assert opened.getMessage() == (
        "breaker 'payments' closed -> open: 2 of the last 2 calls failed, at or over"
        " failure_rate=0.5"
    )
    assert (opened.policy, opened.kind, opened.state, opened.event) == (  # type: ignore[attr-defined]
        "payments",
        "breaker",
        "open",
        "StateChange",
    )
    retry = Retry(2, wait=0.25, clock=clock, name="payments")
    with pytest.raises(ConnectionError):
        retry.call(fail)
    scheduled, gave_up = records(caplog, "resilient.retry")
    assert scheduled.levelno == logging.INFO
    assert scheduled.getMessage() == (
        "retry 'payments' attempt 1 failed (ConnectionError); retrying in 0.25s"
    )
    assert (scheduled.attempt, scheduled.wait) == (1, 0.25)  # type: ignore[attr-defined]
    assert gave_up.levelno == logging.WARNING
    assert gave_up.reason == "attempts"  # type: ignore[attr-defined]
    assert gave_up.error_type == "ConnectionError"  # type: ignore[attr-defined]


@pytest.mark.parametrize("listening", [False, True], ids=["quiet", "listened"])
def test_rejections_log_at_debug_at_most_once_per_policy_per_few_seconds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    """Lines are gated on the policy's own clock (a bulkhead has the system's)."""
    caplog.set_level(logging.DEBUG, logger="resilient")
    now = [1000.0]

    class Time:
        @staticmethod
        def monotonic() -> float:
            return now[0]

    monkeypatch.setattr(resilient._bulkhead, "time", Time)
    clock = ManualClock()
    b = tripped(clock)
    other = tripped(ManualClock())
    heard: list[Any] = []
    if listening:
        b.add_listener(heard.append, Rejected)
    for _ in range(100):
        for breaker in (b, other):
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: "never")
    lines = [r for r in records(caplog, "resilient.breaker") if r.levelno == logging.DEBUG]
    assert len(lines) == 2  # one per breaker
    assert len(heard) == (100 if listening else 0)
    clock.advance(core.REJECTION_LOG_SECONDS)
    now[0] += core.REJECTION_LOG_SECONDS
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "never")
    last = [r for r in records(caplog, "resilient.breaker") if r.levelno == logging.DEBUG][-1]
    assert last.getMessage() == "breaker rejected a call (open) (99 more since the last line)"
    assert last.reason == "open"  # type: ignore[attr-defined]
    clock.advance(10)  # the spell ends: its transition tells how many it rejected
    b.call(lambda: "probe")
    assert records(caplog, "resilient.breaker")[-1].getMessage() == (
        "breaker open -> half_open: open_for has passed; 101 calls rejected while open"
    )
    assert b.metrics.rejected == 101

    pool = Bulkhead(1)
    with pool:
        for _ in range(50):
            with pytest.raises(BulkheadFullError):
                pool.call(lambda: None)
        now[0] += core.REJECTION_LOG_SECONDS
        with pytest.raises(BulkheadFullError):
            pool.call(lambda: None)
    told = [r.getMessage() for r in records(caplog, "resilient.bulkhead")]
    assert told == [
        "bulkhead rejected a call (full)",
        "bulkhead rejected a call (full) (49 more since the last line)",
    ]


def test_no_line_shows_a_calls_arguments_or_result(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilient")
    secret = "s3cr3t-token"

    def leaky(token: str) -> str:
        raise ConnectionError(f"refused for {token}")

    retry = Retry(3, clock=ManualClock())
    with pytest.raises(ConnectionError):
        retry.call(leaky, secret)
    result_retry = Retry(2, on_result=lambda r: True, clock=ManualClock())
    result_retry.call(lambda: secret)
    assert caplog.records
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(vars(record))


def test_no_line_for_a_successful_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilient")
    for policy in (CircuitBreaker(), Retry(), Bulkhead(1), Timeout(1), Fallback(1)):
        policy.call(lambda: "ok")
    assert caplog.records == []


# -- the meters' feed ----------------------------------------------------------------------


class Recorder(core.Meter):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.attempts: list[tuple[str, str]] = []
        self.events: list[Any] = []

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        assert seconds >= 0
        self.calls.append((policy.KIND, outcome, type(error).__name__))

    def attempt(
        self, policy: Any, outcome: str, seconds: float, error: BaseException | None
    ) -> None:
        self.attempts.append((policy.KIND, outcome))

    def event(self, event: Any) -> None:
        self.events.append(type(event).__name__)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    meter = Recorder()
    core.meters.add(meter)
    yield meter
    core.meters.remove(meter)


def test_a_meter_hears_every_policys_calls_in_every_form(flavour: Flavour) -> None:
    clock = ManualClock()
    policies = [
        CircuitBreaker(clock=clock),
        Bulkhead(2),
        Fallback(0),
        Timeout(5),
        Retry(2, clock=clock),
    ]
    meter = Recorder()
    core.meters.add(meter)  # after the policies were made: they are switched on live
    try:
        for policy in policies:
            if flavour.form == "with" and isinstance(policy, Retry):
                continue  # (no with-block for a Retry)
            assert flavour.call(policy, "ok") == "ok"
            outcome = flavour.call(policy, BOOM) if isinstance(policy, Fallback) else None
            if not isinstance(policy, Fallback):
                with pytest.raises(ConnectionError):
                    flavour.call(policy, BOOM)
            del outcome
    finally:
        core.meters.remove(meter)
    kinds = [k for k, _, _ in meter.calls]
    expected = ["breaker", "bulkhead", "fallback", "timeout", "retry"]
    if flavour.form == "with":
        expected = ["breaker", "bulkhead", "fallback", "timeout"]
    assert kinds == [k for k in expected for _ in range(2)]
    for kind, outcome, error in meter.calls:
        if outcome == "success":
            assert error == "NoneType"
        elif kind == "fallback":
            assert (outcome, error) == ("fallback", "ConnectionError")
        else:
            assert (outcome, error) == ("failure", "ConnectionError")
    if flavour.form != "with":
        assert meter.attempts == [("retry", "success"), ("retry", "failure"), ("retry", "failure")]
    for policy in policies:  # switched off live, too
        if not (flavour.form == "with" and isinstance(policy, Retry)):
            flavour.call(policy, "ok")
    assert len(meter.calls) == len(expected) * 2


def test_a_meter_hears_retries_answered_and_rejections(recorder: Recorder) -> None:
    clock = ManualClock()
    retry = Retry(3, clock=clock, on_result=lambda r: r == "busy")
    answers = iter(["busy", "busy", "fine"])
    assert retry.call(lambda: next(answers)) == "fine"
    assert recorder.calls == [("retry", "success", "NoneType")]
    assert recorder.attempts == [("retry", "failure"), ("retry", "failure"), ("retry", "success")]
    b = tripped(clock)
    with pytest.raises(CircuitOpenError):
        b.call(lambda: "never")
    assert recorder.events[-1] == "Rejected"
    assert "StateChange" in recorder.events
    assert "RetryScheduled" in recorder.events


def test_a_meter_that_raises_never_reaches_the_call(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(core.Meter):
        def call(self, *args: Any) -> None:
            raise RuntimeError("exporter down")

    meter = Broken()
    core.meters.add(meter)
    try:
        b = CircuitBreaker()
        for _ in range(3):
            assert b.call(lambda: "ok") == "ok"
    finally:
        core.meters.remove(meter)
    assert len([r for r in caplog.records if "meter" in r.getMessage()]) == 1


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_a_meter_on_async_calls(recorder: Recorder, mode: str) -> None:
    b = CircuitBreaker()
    retry = Retry(2, clock=ManualClock())

    async def ok() -> str:
        await anyio.lowlevel.checkpoint()
        return "ok"

    async def main() -> None:
        assert await b.call_async(ok) == "ok"
        assert await retry.call_async(ok) == "ok"

    anyio.run(main, backend=mode)
    assert recorder.calls == [("breaker", "success", "NoneType"), ("retry", "success", "NoneType")]


# -- history and replay --------------------------------------------------------------------


def test_the_history_keeps_transitions_only_and_is_bounded() -> None:
    clock = ManualClock()
    b = CircuitBreaker(min_calls=1, window_size=1, open_for=1, half_open_calls=1, clock=clock)
    for _ in range(10_000):
        b.call(lambda: "ok")  # successes never push a transition out
    assert b.history == []
    for _ in range(HISTORY):  # each round: open, half-open, closed
        with pytest.raises(ConnectionError):
            b.call(fail)
        clock.advance(1)
        b.call(lambda: "ok")
    history = b.history
    assert len(history) == HISTORY
    assert [c.new for c in history[-3:]] == [State.OPEN, State.HALF_OPEN, State.CLOSED]
    assert all(isinstance(c, StateChange) for c in history)
    assert [c.at for c in history] == sorted(c.at for c in history)


@pytest.mark.parametrize("seed", range(12))
def test_replaying_a_history_rebuilds_the_state(seed: int) -> None:
    """Random traffic and manual moves on one breaker; a fresh breaker fed its history
    then behaves the same: same state, same end of spell, same next open length."""
    rng = random.Random(seed)
    clock = ManualClock(start=50.0)

    def make() -> CircuitBreaker:
        return CircuitBreaker(
            min_calls=2,
            window_size=4,
            half_open_calls=2,
            open_for=lambda n: 2.0 * n,
            clock=clock,
        )

    b = make()
    for _ in range(rng.randrange(5, 60)):
        step = rng.random()
        try:
            if step < 0.45:
                b.call(fail)
            elif step < 0.85:
                b.call(lambda: "ok")
            elif step < 0.9:
                b.force_open()
            elif step < 0.93:
                b.reset()
            else:
                clock.advance(rng.choice([0.5, 1.0, 3.0]))
        except (ConnectionError, CircuitOpenError):
            pass
        if rng.random() < 0.3:
            clock.advance(rng.random() * 3)
    fresh = make()
    fresh.replay(b.history)
    assert fresh.state is b.state
    assert fresh.history == [c._replace(breaker=fresh) for c in b.history]
    assert fresh._state.until == b._state.until
    assert fresh._state.times_opened == b._state.times_opened
    if b.state is not State.OPEN:
        return
    # An open spell goes on alike: same refusal, same end, same length of the next one.
    if clock.monotonic() < b._state.until:
        assert _refusal(fresh) == _refusal(b)
        clock.advance(b._state.until - clock.monotonic())
    for breaker in (b, fresh):
        for _ in range(2):  # both probes fail: open again, for open_for(times_opened + 1)
            with pytest.raises(ConnectionError):
                breaker.call(fail)
    assert (
        (fresh.state, fresh._state.until)
        == (b.state, b._state.until)
        == (
            State.OPEN,
            clock.monotonic() + 2.0 * b._state.times_opened,
        )
    )


def _refusal(breaker: CircuitBreaker) -> float | None:
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(fail)
    return info.value.retry_after


def test_replay_takes_state_changes_only() -> None:
    with pytest.raises(TypeError, match="StateChange"):
        CircuitBreaker().replay([("closed", "open")])  # type: ignore[list-item]


# -- health ----------------------------------------------------------------------------------


def test_health_is_a_json_view_of_every_live_named_policy() -> None:
    clock = ManualClock(start=10.0)
    b = CircuitBreaker("health-pay", min_calls=2, open_for=30, clock=clock)
    pool = Bulkhead(2, name="health-pool", max_wait=10)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            b.call(fail)
    clock.advance(12)
    inside, release = threading.Event(), threading.Event()
    count = [0]
    lock = threading.Lock()

    def hold() -> None:
        with lock:
            count[0] += 1
            if count[0] == 2:
                inside.set()
        assert release.wait(10)

    holders = [threading.Thread(target=pool.call, args=(hold,)) for _ in range(3)]
    for t in holders:
        t.start()
    try:
        assert inside.wait(10)
        for _ in range(1000):  # the third one queues: seen through metrics
            if pool.metrics.waiting == 1:
                break
            threading.Event().wait(0.01)
        view = resilient.health()
    finally:
        release.set()
        for t in holders:
            t.join(10)
    assert json.loads(json.dumps(view)) == view
    assert view["status"] == "degraded"
    mine = {(p["kind"], p["name"]): p for p in view["policies"]}
    breaker = mine["breaker", "health-pay"]
    assert breaker["state"] == "open"
    assert breaker["open_for_seconds"] == pytest.approx(18.0)
    assert (breaker["calls"], breaker["failures"], breaker["failure_rate"]) == (2, 2, 1.0)
    assert breaker["history"] == [
        {
            "seconds_ago": 12.0,
            "from": "closed",
            "to": "open",
            "reason": "2 of the last 2 calls failed, at or over failure_rate=0.5",
            "tally": {"calls": 2, "failures": 2, "slow_calls": 0},
        }
    ]
    bulkhead = mine["bulkhead", "health-pool"]
    assert (bulkhead["in_use"], bulkhead["queued"], bulkhead["max_concurrent"]) == (2, 1, 2)
    b.reset()
    after = {(p["kind"], p["name"]): p for p in resilient.health()["policies"]}
    assert after["breaker", "health-pay"]["open_for_seconds"] is None


def test_a_pipeline_listener_hears_every_member() -> None:
    clock = ManualClock()
    heard: list[Any] = []
    pipeline = resilient.Pipeline(
        Retry(2, clock=clock), CircuitBreaker(min_calls=1, clock=clock), name="piped"
    )
    pipeline.add_listener(heard.append)
    with pytest.raises((ConnectionError, CircuitOpenError)):
        pipeline.call(fail)
    assert [(type(e).__name__, e.policy.KIND) for e in heard] == [
        ("StateChange", "breaker"),
        ("RetryScheduled", "retry"),
        ("Rejected", "breaker"),
        ("RetryGaveUp", "retry"),
    ]
    pipeline.remove_listener(heard.append)
    with pytest.raises(ValueError, match="not a listener"):
        pipeline.remove_listener(heard.append)


# -- found by review: a meter changes nothing but what is counted ------------------------


@pytest.mark.parametrize("form", ["call", "block"])
def test_a_meter_never_changes_a_retrys_decisions(recorder: Recorder, form: str) -> None:
    def attempts_made(metered: bool) -> int:
        clock = ManualClock(start=500.0)  # (not perf_counter's time)
        retry = Retry(100, wait=1, deadline=3.5, clock=clock)
        made = [0]

        def failing() -> None:
            made[0] += 1
            raise BOOM

        if not metered:
            core.meters.remove(recorder)
        try:
            if form == "call":
                with pytest.raises(ConnectionError):
                    retry.call(failing)
            else:
                with pytest.raises(ConnectionError):  # noqa: PT012 - the block form
                    for attempt in retry:
                        with attempt:
                            failing()
        finally:
            if not metered:
                core.meters.add(recorder)
        return made[0]

    assert attempts_made(metered=True) == attempts_made(metered=False) == 4


def test_block_form_attempts_and_calls_are_metered(recorder: Recorder) -> None:
    retry = Retry(3, clock=ManualClock())
    outcomes = iter([BOOM, None])
    for attempt in retry:
        with attempt:
            error = next(outcomes)
            if error is not None:
                raise error
    assert recorder.attempts == [("retry", "failure"), ("retry", "success")]
    assert recorder.calls == [("retry", "success", "NoneType")]


@pytest.mark.parametrize("mode", ["sync", "asyncio", "trio"])
def test_a_fallback_whose_handler_raises_is_a_failure(recorder: Recorder, mode: str) -> None:
    def broken(exc: BaseException) -> str:
        raise KeyError("no cache")

    async def broken_async(exc: BaseException) -> str:
        await anyio.lowlevel.checkpoint()
        raise KeyError("no cache")

    if mode == "sync":
        with pytest.raises(KeyError):
            Fallback(handler=broken).call(fail)
    else:

        async def failing() -> None:
            raise BOOM

        async def main() -> None:
            with pytest.raises(KeyError):
                await Fallback(handler=broken_async).call_async(failing)
            assert await Fallback("cached").call_async(failing) == "cached"

        anyio.run(main, backend=mode)
    expected = [("fallback", "failure", "KeyError")]
    if mode != "sync":
        expected.append(("fallback", "fallback", "ConnectionError"))
    assert recorder.calls == expected


def test_a_breakers_failing_result_is_a_failure_to_the_meter(recorder: Recorder) -> None:
    b = CircuitBreaker(failure_result=lambda r: r == 503)
    assert b.call(lambda: 503) == 503
    assert b.call(lambda: 200) == 200
    with b:
        pass
    assert recorder.calls == [
        ("breaker", "failure", "NoneType"),
        ("breaker", "success", "NoneType"),
        ("breaker", "success", "NoneType"),
    ]


def test_a_replayed_breaker_is_metered_as_any_other(recorder: Recorder) -> None:
    clock = ManualClock()
    old = CircuitBreaker(min_calls=1, clock=clock, open_for=5)
    with pytest.raises(ConnectionError):
        old.call(fail)
    clock.advance(5)
    for _ in range(5):
        old.call(lambda: "ok")
    assert old.state is State.CLOSED
    new = CircuitBreaker(min_calls=1, clock=clock)
    new.replay(old.history)
    recorder.calls.clear()
    assert new.call(lambda: "ok") == "ok"
    assert recorder.calls == [("breaker", "success", "NoneType")]


def test_replay_keeps_a_pin_made_in_code_but_not_one_the_environment_made() -> None:
    clock = ManualClock()
    source = CircuitBreaker("replayed-pins", min_calls=1, clock=clock)
    source.force_open()
    resilient.reload({"RESILIENT_ENABLED": "0"})
    try:
        assert source.state is State.DISABLED
        fresh = CircuitBreaker(clock=clock)
    finally:
        resilient.reload({})
    assert [c.reason for c in source.history] == [
        "force_open()",
        "RESILIENT_ENABLED=0",
        "the environment's pin was lifted",
    ]
    under_the_pin = source.history[:2]
    fresh.replay(under_the_pin)  # (made under the pin, replayed after it was lifted)
    assert fresh.state is State.FORCED_OPEN  # the code's pin, not the environment's
    fresh.reset()
    assert fresh.state is State.CLOSED
    other = CircuitBreaker(clock=clock)
    other.replay(under_the_pin[1:])  # only the environment's pin: not replayed
    assert other.state is State.CLOSED


def test_a_breaker_with_a_history_is_freed_without_the_cycle_collector() -> None:
    import gc
    import weakref

    clock = ManualClock()
    gc.disable()
    try:
        b = CircuitBreaker(min_calls=1, clock=clock)
        with pytest.raises(ZeroDivisionError):  # (a fresh error: BOOM's traceback would
            b.call(lambda: 1 / 0)  # hold this frame, and this frame the breaker)
        with pytest.raises(CircuitOpenError):
            b.call(lambda: 1 / 0)
        assert b.history
        ref = weakref.ref(b)
        del b
        assert ref() is None
    finally:
        gc.enable()


def test_no_log_line_shows_an_errors_text_or_a_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilient")
    secret = "token=s3cr3t"

    class Broken(core.Meter):
        def call(self, *args: Any) -> None:
            raise RuntimeError("exporter down")

    retry = Retry(2, on_result=lambda r: True, clock=ManualClock())
    retry.add_listener(lambda event: 1 / 0)
    fallback = Fallback("cached")
    fallback.add_listener(lambda event: 1 / 0)
    meter = Broken()
    core.meters.add(meter)
    try:
        retry.call(lambda: {"body": secret})
        assert fallback.call(lambda: (_ for _ in ()).throw(ConnectionError(secret))) == "cached"
    finally:
        core.meters.remove(meter)
    assert "ZeroDivisionError" in caplog.text  # the listeners' failures are told
    assert "exporter down" in caplog.text
    assert secret not in caplog.text


def test_a_spent_budget_is_logged_at_most_once_per_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = RetryBudget(ratio=0.01, min_per_second=0)
    retry = Retry(3, budget=budget, clock=ManualClock())
    for _ in range(50):
        with pytest.raises(ConnectionError):
            retry.call(fail)
    lines = [r.getMessage() for r in records(caplog, "resilient.retry")]
    assert len(lines) == 2  # one "exhausted", one "gave up"


def test_health_names_what_it_looks_at_and_what_is_degraded() -> None:
    clock = ManualClock()
    keep = [CircuitBreaker(f"probe-{n}", clock=clock) for n in ("a", "b", "c")]
    keep[1].force_open()
    view = resilient.health(names=["probe-a", "probe-b"])
    assert [p["name"] for p in view["policies"]] == ["probe-a", "probe-b"]
    assert (view["status"], view["degraded"]) == ("degraded", ["probe-b"])
    assert resilient.health(names=["probe-a", "probe-c"])["status"] == "ok"
    with pytest.raises(TypeError, match="not one string"):
        resilient.health(names="probe-a")


def test_a_named_fallback_tells_its_name_and_add_listener_refuses_an_event_class() -> None:
    heard: list[Any] = []
    fallback = Fallback("cached", name="prices")
    fallback.add_listener(heard.append)
    assert fallback.call(fail) == "cached"
    assert [(type(e).__name__, e.policy.name) for e in heard] == [("FallbackUsed", "prices")]
    with pytest.raises(TypeError, match=r"add_listener\(fn, Rejected\)"):
        fallback.add_listener(Rejected)
    with pytest.raises(TypeError, match="event class"):
        resilient.add_listener(StateChange)


def test_a_failing_http_result_is_told_by_its_status(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="resilient")

    class Response:
        status_code = 503

    retry = Retry(2, on_result=lambda r: r.status_code >= 500, clock=ManualClock(), name="h")
    retry.call(Response)
    scheduled, gave_up = records(caplog, "resilient.retry")[-2:]
    assert scheduled.getMessage() == "retry 'h' attempt 1 failed (HTTP 503); retrying in 0s"
    assert scheduled.error_type == "503"  # type: ignore[attr-defined]
    assert gave_up.getMessage() == "retry 'h' gave up after 2 attempts (attempts); last: HTTP 503"


def test_a_policy_that_cannot_compile_again_never_stops_a_meter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = [0]

    def open_for(times_opened: int) -> float:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("a stateful open_for")
        return 5.0

    stubborn = CircuitBreaker("stubborn", open_for=open_for)
    fine = CircuitBreaker("fine")
    meter = Recorder()
    core.meters.add(meter)
    try:
        fine.call(lambda: "ok")
        stubborn.call(lambda: "ok")
    finally:
        core.meters.remove(meter)
    assert meter.calls == [("breaker", "success", "NoneType")]  # stubborn kept its plan
    assert "CircuitBreaker('stubborn') (ConfigError)" in caplog.text
