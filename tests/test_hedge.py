"""Hedge: a slow call gets another attempt alongside it; the first success wins, and the
call returns only once every other attempt has been cancelled and has ended.

Every async scenario runs on asyncio and trio. Time is a ManualClock wherever a delay's
length matters (its ``sleep_async`` paces the hedges, moving the clock instead of
waiting); the system clock's alarms are exercised with tiny delays and events, never
with an assertion on how long something took.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import resilient
from resilient import (
    CircuitBreaker,
    ConfigError,
    Hedge,
    Pipeline,
    Retry,
    RetryBudget,
    Timeout,
    UsageError,
)
from resilient._core.configuration import events as core
from resilient.events import BudgetExhausted, HedgeStarted
from resilient.testing import ManualClock

from .conftest import fresh

BACKENDS = ("asyncio", "trio")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def run(backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(main, backend=backend)


class Attempts:
    """A downstream whose n-th attempt (0 is the first) does what ``plan[n]`` says:
    "hang" (until cancelled; beyond the plan too), "fail" (at once, before any other
    task runs), a value to return, or an awaitable factory. Each
    attempt's finally block records that it ended, and how."""

    def __init__(self, *plan: Any) -> None:
        self.plan = plan
        self.started: list[int] = []
        self.ended: dict[int, str] = {}
        self.running: dict[int, anyio.Event] = {}

    async def __call__(self) -> Any:
        n = len(self.started)
        self.started.append(n)
        self.running[n] = event = anyio.Event()
        event.set()
        how = "cancelled"
        try:
            step = self.plan[n] if n < len(self.plan) else "hang"
            if step == "hang":
                await anyio.sleep_forever()
            if step == "fail":  # at once, before any other task runs
                how = "failed"
                raise ConnectionError(f"attempt {n} failed")
            await anyio.lowlevel.checkpoint()
            if callable(step):
                step = await step()
            how = "returned"
            return step
        finally:
            self.ended[n] = how

    def all_ended(self) -> bool:
        return sorted(self.ended) == self.started


# -- the race ------------------------------------------------------------------------------


def test_the_first_success_wins_and_the_slow_first_attempt_is_cancelled(backend: str) -> None:
    """On the loop's own timers (the system clock): a tiny delay, no timing asserted."""
    downstream = Attempts("hang", "second")
    hedge = Hedge(0.001)

    async def main() -> Any:
        result = await hedge.call_async(downstream)
        assert downstream.all_ended()  # nothing left running when the call returns
        return result

    assert run(backend, main) == "second"
    assert downstream.ended == {0: "cancelled", 1: "returned"}
    assert hedge.metrics[:3] == (1, 1, 0)


def test_a_call_answered_before_the_delay_starts_nothing(backend: str) -> None:
    clock = ManualClock()
    hedge = Hedge(5.0, clock=clock)
    downstream = Attempts("first")

    assert run(backend, lambda: hedge.call_async(downstream)) == "first"
    assert downstream.started == [0]  # (the pacer's sleep may have moved the clock)
    assert hedge.metrics.hedges == 0


def test_the_first_attempt_wins_and_the_hedge_is_cancelled_and_awaited(backend: str) -> None:
    clock = ManualClock()
    hedge = Hedge(2.0, max_hedges=2, clock=clock)
    downstream = Attempts(None, "hang", "hang")

    async def first() -> str:
        await downstream.running_when(1)
        return "first"

    downstream.plan = (first, "hang", "hang")

    async def main() -> Any:
        result = await hedge.call_async(downstream)
        assert downstream.all_ended()
        return result

    assert run(backend, main) == "first"
    assert downstream.ended[0] == "returned"
    assert all(downstream.ended[n] == "cancelled" for n in downstream.started[1:])
    assert clock.monotonic() >= 2.0  # the hedge started after the delay, on the clock


async def _running_when(self: Attempts, n: int) -> None:
    while n not in self.running:  # bounded: each pass lets the pacer run
        await anyio.lowlevel.checkpoint()


Attempts.running_when = _running_when  # type: ignore[attr-defined]


def test_a_failure_starts_the_next_attempt_at_once(backend: str) -> None:
    clock = ManualClock()
    hedge = Hedge(5.0, max_hedges=1, clock=clock)
    started: list[HedgeStarted] = []
    hedge.add_listener(started.append, HedgeStarted)
    downstream = Attempts("fail", "second")

    assert run(backend, lambda: hedge.call_async(downstream)) == "second"
    # started at 0.0: no delay waited out
    assert [(e.attempt, e.reason, e.delay, e.at) for e in started] == [(2, "failure", 5.0, 0.0)]
    assert downstream.all_ended()


def test_a_failure_on_does_not_match_is_final_and_starts_nothing(backend: str) -> None:
    """A not-found is an answer: asking again only adds load (gRPC's fatal codes)."""
    clock = ManualClock()
    hedge = Hedge(5.0, max_hedges=2, on=ConnectionError, clock=clock)

    async def lookup() -> str:
        await anyio.lowlevel.checkpoint()
        raise KeyError("no such order")

    with pytest.raises(KeyError):
        run(backend, lambda: hedge.call_async(lookup))
    assert hedge.metrics.hedges == 0


def test_a_final_failure_of_a_hedge_cancels_the_others_and_ends_the_call(backend: str) -> None:
    clock = ManualClock()
    hedge = Hedge(2.0, max_hedges=2, on=ConnectionError, clock=clock)

    async def step() -> str:
        raise PermissionError("forbidden")

    downstream = Attempts("hang", step, "hang")

    async def main() -> None:
        with pytest.raises(PermissionError):
            await hedge.call_async(downstream)
        assert downstream.all_ended()  # the others were cancelled, and awaited

    run(backend, main)
    # (a third may have started: the manual clock's pacer moves time at once)
    del downstream.ended[1]  # the final one (the helper calls any raise "cancelled")
    assert set(downstream.ended.values()) == {"cancelled"}
    assert 0 in downstream.ended


def test_an_on_predicate_that_raises_hedges_as_the_default_does(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in the predicate")

    hedge = Hedge(5.0, on=broken, clock=ManualClock(), name=fresh("onbug"))
    downstream = Attempts("fail", "second")
    with caplog.at_level(logging.WARNING, logger="resilient"):
        assert run(backend, lambda: hedge.call_async(downstream)) == "second"
    assert "its on callable failed on ConnectionError (RuntimeError)" in caplog.text


def test_on_is_read_from_the_environment(env: pytest.MonkeyPatch) -> None:
    name = fresh("hedge-on")
    env.setenv(f"RESILIENT_{name.upper().replace('-', '_')}_HEDGE_ON", "builtins:TimeoutError")
    hedge = Hedge(1.0, name=name)

    async def slow() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):  # not TimeoutError: final, no hedge
        anyio.run(lambda: hedge.call_async(slow))
    assert hedge.metrics.hedges == 0


def test_when_every_attempt_fails_the_last_error_names_the_others(backend: str) -> None:
    hedge = Hedge(0.0, max_hedges=2, name=fresh("notes"))
    downstream = Attempts("fail", "fail", "fail")

    with pytest.raises(ConnectionError) as caught:
        run(backend, lambda: hedge.call_async(downstream))
    error = caught.value
    n = int(str(error).split()[1])
    others = sorted({0, 1, 2} - {n})
    who = f"hedge {hedge.name!r}"
    # add_note() keeps notes in __notes__ (3.11+); on 3.10, written there all the same
    assert error.__notes__ == [
        f"{who}: all 3 attempts failed; this is attempt {n + 1}'s error",
        *(
            f"{who}: attempt {i + 1} failed with ConnectionError: attempt {i} failed"
            for i in others
        ),
    ]
    assert downstream.all_ended()


def test_a_lone_failure_with_no_hedge_left_is_raised_as_it_is(backend: str) -> None:
    hedge = Hedge(5.0, max_hedges=1, clock=ManualClock())
    downstream = Attempts("fail", "fail")
    with pytest.raises(ConnectionError) as caught:
        run(backend, lambda: hedge.call_async(downstream))
    assert len(caught.value.__notes__) == 2  # the header and the other attempt


def test_a_cancelled_caller_cancels_and_awaits_every_attempt(backend: str) -> None:
    clock = ManualClock()
    hedge = Hedge(1.0, max_hedges=2, clock=clock)
    downstream = Attempts("hang", "hang", "hang")

    async def main() -> None:
        with anyio.CancelScope() as scope:

            async def cancel_when_all_run() -> None:
                await downstream.running_when(2)  # type: ignore[attr-defined]
                scope.cancel()

            async with anyio.create_task_group() as group:
                group.start_soon(cancel_when_all_run)
                await hedge.call_async(downstream)
        assert scope.cancelled_caught
        assert downstream.all_ended()  # every attempt's finally ran before we got here

    run(backend, main)
    assert downstream.ended == {0: "cancelled", 1: "cancelled", 2: "cancelled"}


def test_a_cancelled_caller_on_the_loop_timers_leaves_nothing_running(backend: str) -> None:
    hedge = Hedge(0.001)
    downstream = Attempts("hang", "hang")

    async def main() -> None:
        with anyio.move_on_after(0.05):  # whatever started by then is cancelled
            await hedge.call_async(downstream)
        assert downstream.all_ended()

    run(backend, main)
    assert set(downstream.ended.values()) == {"cancelled"}


def test_an_outer_timeout_wins_over_the_hedge(backend: str) -> None:
    hedge = Hedge(0.001)
    downstream = Attempts("hang", "hang")
    timed = Pipeline(Timeout(0.05), hedge)

    async def main() -> None:
        with pytest.raises(resilient.TimeoutExpired):
            await timed.call_async(downstream)
        assert downstream.all_ended()

    run(backend, main)


# -- the budget ----------------------------------------------------------------------------


def test_hedges_withdraw_from_the_budget_and_are_refused_when_it_is_spent(backend: str) -> None:
    clock = ManualClock()
    budget = RetryBudget(0.5, min_per_second=0.0, window=10.0, clock=clock)
    hedge = Hedge(1.0, budget=budget, clock=clock)
    refused: list[BudgetExhausted] = []
    hedge.add_listener(refused.append, BudgetExhausted)
    calls = [Attempts("fail", "hedged") for _ in range(3)]

    async def main() -> list[Any]:
        results = []
        for downstream in calls:  # each first attempt deposits; a hedge takes half of one
            try:
                results.append(await hedge.call_async(downstream))
            except ConnectionError:
                results.append("refused")
        return results

    assert run(backend, main) == ["refused", "hedged", "refused"]
    assert [c.started for c in calls] == [[0], [0, 1], [0]]  # a refused hedge never starts
    assert hedge.metrics[:3] == (1, 1, 2)
    assert [e.attempt for e in refused] == [1, 1]


# -- the delay -----------------------------------------------------------------------------


def test_a_percentile_delay_is_learnt_with_a_floor_and_an_initial_delay() -> None:
    clock = ManualClock()
    hedge = Hedge("p50", min_calls=4, window=10, initial_delay=3.0, min_delay=0.15, clock=clock)
    assert hedge.delay == 3.0  # nothing known yet: the initial delay

    def taking(seconds: float) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            clock.advance(seconds)
            return "ok"

        return call

    async def main() -> None:
        for seconds in (0.1, 0.4, 0.2, 0.3):
            await hedge.call_async(taking(seconds))

    anyio.run(main)
    assert hedge.delay == pytest.approx(0.2)  # the median of 0.1, 0.2, 0.3, 0.4
    assert hedge.metrics.latencies == 4

    floor = Hedge("p50", min_calls=1, window=10, min_delay=0.5, clock=clock)
    assert floor.delay is None  # no initial delay: no hedging until a latency is known
    anyio.run(floor.call_async, taking(0.1))
    assert floor.delay == 0.5


def test_the_percentile_is_refreshed_every_quarter_of_a_window_not_per_call() -> None:
    clock = ManualClock()
    hedge = Hedge("p99", min_calls=10, window=100, clock=clock)
    taken = iter([1.0] * 10 + [9.0] * 25)

    async def call() -> None:
        clock.advance(next(taken))

    async def main() -> None:
        for _ in range(34):
            await hedge.call_async(call)

    anyio.run(main)
    assert hedge.delay == 1.0  # 24 slower calls since the refresh at the 10th: not yet
    anyio.run(hedge.call_async, call)  # the 35th (10 + 100 // 4): refreshed
    assert hedge.delay == 9.0


def test_the_delay_is_paced_on_the_injected_clock_for_each_hedge(backend: str) -> None:
    clock = ManualClock()
    hedge = Hedge(0.25, max_hedges=3, clock=clock)
    seen: list[tuple[int, float]] = []
    hedge.add_listener(lambda e: seen.append((e.attempt, clock.monotonic())), HedgeStarted)
    downstream = Attempts("hang", "hang", "hang", "last")

    assert run(backend, lambda: hedge.call_async(downstream)) == "last"
    assert seen == [(2, 0.25), (3, 0.5), (4, 0.75)]


# -- forms, errors -------------------------------------------------------------------------


def test_sync_code_is_refused_with_the_reason() -> None:
    hedge = Hedge(0.1)
    with pytest.raises(UsageError, match="Hedge is for async code"):
        hedge(lambda: 1)
    with pytest.raises(UsageError, match="a thread cannot be cancelled"):
        hedge.call(lambda: 1)
    with pytest.raises(UsageError, match="Hedge is for async code"):
        Pipeline(Retry(2), hedge)(lambda: 1)


def test_a_with_block_is_refused(backend: str) -> None:
    hedge = Hedge(0.1)
    with pytest.raises(UsageError, match="cannot guard a with block"), hedge:
        pass

    async def main() -> None:
        async with hedge:
            pass

    with pytest.raises(UsageError, match="cannot guard a with block"):
        run(backend, main)


def test_the_decorator_keeps_an_async_function_async(backend: str) -> None:
    import inspect

    @Hedge(5.0, clock=ManualClock())
    async def add(a: int, b: int) -> int:
        return a + b

    assert inspect.iscoroutinefunction(add)
    assert add.__name__ == "add"
    assert run(backend, lambda: add(1, 2)) == 3


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("delay", "p100", "a percentile is written p50"),
        ("delay", "soon", "seconds >= 0"),
        ("delay", -1.0, "seconds >= 0"),
        ("max_hedges", 11, "from 0 to 10"),
        ("window", 0, "from 1 to 100,000"),
    ],
)
def test_bad_options_are_refused_by_name(option: str, value: Any, expected: str) -> None:
    given = {"delay": 0.1, option: value}
    with pytest.raises(ConfigError, match=option) as caught:
        Hedge(**given)
    assert expected in str(caught.value)


def test_min_calls_cannot_exceed_the_window() -> None:
    with pytest.raises(ConfigError, match=r"min_calls=50.*at most window=10"):
        Hedge("p95", min_calls=50, window=10)


def test_delays_are_written_as_durations_or_percentiles() -> None:
    assert Hedge("200ms").delay == 0.2
    assert Hedge(" P99.9 ").settings["delay"] == "p99.9"
    assert repr(Hedge("p95", name="x")) == "Hedge('p95', max_hedges=1, name='x')"


# -- composition, events, meters -------------------------------------------------------


def test_a_pipeline_with_retry_timeout_and_breaker(backend: str) -> None:
    """The Retry goes round a hedged call whose attempts all failed; the breaker inside
    the Hedge counts each attempt."""
    breaker = CircuitBreaker(min_calls=100)
    downstream = Attempts("fail", "fail", "third")
    pipeline = Pipeline(Timeout(5), Retry(2, wait=0), Hedge(0.001), breaker)

    async def main() -> Any:
        result = await pipeline.call_async(downstream)
        assert downstream.all_ended()
        return result

    assert run(backend, main) == "third"
    assert breaker.metrics[1:3] == (3, 2)


def test_a_pipeline_hedges_a_slow_attempt_through_its_inner_timeout(backend: str) -> None:
    downstream = Attempts("hang", "second")
    pipeline = Pipeline(Retry(2, wait=0), Hedge(0.001), Timeout(5))

    assert run(backend, lambda: pipeline.call_async(downstream)) == "second"
    assert downstream.ended == {0: "cancelled", 1: "returned"}


def test_events_and_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    hedge = Hedge(1.0, name=fresh("logged"), clock=ManualClock())
    with caplog.at_level(logging.DEBUG, logger="resilient.hedge"):
        anyio.run(hedge.call_async, Attempts("fail", "ok"))
    (line,) = [r for r in caplog.records if r.name == "resilient.hedge"]
    assert line.levelname == "DEBUG"
    assert line.getMessage() == f"hedge {hedge.name!r} started attempt 2 (a failure)"
    assert (line.attempt, line.reason) == (2, "failure")  # type: ignore[attr-defined]


def test_calls_are_metered(backend: str) -> None:
    told: list[tuple[str, str]] = []

    class Recorder(core.Meter):
        def call(self, policy: Any, outcome: str, seconds: float, error: Any) -> None:
            if isinstance(policy, Hedge):
                told.append((outcome, type(error).__name__))

    meter = Recorder()
    core.meters.add(meter)
    try:
        hedge = Hedge(1.0, clock=ManualClock())

        async def main() -> None:
            await hedge.call_async(Attempts("ok"))
            await hedge.call_async(Attempts("fail", "ok"))
            with pytest.raises(ConnectionError):
                await hedge.call_async(Attempts("fail", "fail"))

        run(backend, main)
    finally:
        core.meters.remove(meter)
    assert told == [
        ("success", "NoneType"),
        ("success", "NoneType"),
        ("failure", "ConnectionError"),
    ]


# -- the environment -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "raw", "value"),
    [
        ("delay", "0.2", 0.2),
        ("delay", "200ms", 0.2),
        ("delay", "p95", "p95"),
        ("max_hedges", "3", 3),
        ("max_hedges", "0", 0),
        ("min_delay", "10ms", 0.01),
        ("initial_delay", "1s", 1.0),
        ("initial_delay", "none", None),
        ("min_calls", "5", 5),
        ("window", "50", 50),
        ("budget", "tests._envtargets:budget", "budget"),
        ("clock", "tests._envtargets:clock", "clock"),
    ],
)
def test_every_option_reads_its_variable_and_follows_reload(
    env: pytest.MonkeyPatch, option: str, raw: str, value: Any
) -> None:
    from . import _envtargets

    name = fresh("hedge.env")
    hedge = Hedge(0.5, name=name)
    variable = (
        f"RESILIENT_{name.upper().replace('.', '_').replace('-', '_')}_HEDGE_{option.upper()}"
    )
    env.setenv(variable, raw)
    resilient.reload()
    expected = getattr(_envtargets, value) if option in ("budget", "clock") else value
    assert hedge.settings[option] == expected
    assert hedge.settings.sources[option] == variable
    made = Hedge(0.5, name=name)  # and a Hedge made now reads it too
    assert made.settings[option] == expected


def test_max_hedges_zero_from_the_environment_switches_hedging_off(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("hedge.off")
    hedge = Hedge(0.0, name=name)
    env.setenv(
        f"RESILIENT_{name.upper().replace('.', '_').replace('-', '_')}_HEDGE_MAX_HEDGES", "0"
    )
    resilient.reload()
    downstream = Attempts("fail", "never")
    with pytest.raises(ConnectionError):
        anyio.run(hedge.call_async, downstream)
    assert downstream.started == [0]
    assert hedge.delay is None


def test_a_bad_variable_names_itself(env: pytest.MonkeyPatch) -> None:
    name = fresh("hedge.bad")
    env.setenv(f"RESILIENT_{name.upper().replace('.', '_').replace('-', '_')}_HEDGE_DELAY", "p0")
    with pytest.raises(ConfigError, match="HEDGE_DELAY"):
        Hedge(0.5, name=name)


# -- the hammer ----------------------------------------------------------------------------


def test_a_hammer_of_tasks_accounts_for_every_attempt(backend: str) -> None:
    """500 concurrent calls through one Hedge on the loop's timers: a quarter answer
    after a checkpoint, a quarter fail first (the hedge starts at once), a quarter hang
    first (the hedge starts after the delay and wins), a quarter fail every attempt.
    Every attempt
    started ends exactly once, as returned, cancelled or failed, before its call returns."""
    hedge = Hedge(0.001, max_hedges=1)
    plans = [("ok",), ("fail", "ok"), ("hang", "ok"), ("fail", "fail")]
    calls = [Attempts(*plans[i % 4]) for i in range(500)]
    outcomes: Counter[str] = Counter()

    async def one(downstream: Attempts) -> None:
        try:
            await hedge.call_async(downstream)
            outcomes["ok"] += 1
        except ConnectionError:
            outcomes["failed"] += 1
        assert downstream.all_ended()

    async def main() -> None:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for downstream in calls:
                    group.start_soon(one, downstream)

    run(backend, main)
    assert outcomes == {"ok": 375, "failed": 125}
    ended = Counter(how for c in calls for how in c.ended.values())
    started = sum(len(c.started) for c in calls)
    assert started == 500 + hedge.metrics.hedges
    assert sum(ended.values()) == started
    # A loaded loop may ring an alarm before a quick first attempt answers: that call's
    # hedge (which hangs) is cancelled, so counts by kind, not the number of hedges.
    assert ended["returned"] == 375
    assert ended["failed"] == 375
    assert ended["cancelled"] == started - 750 >= 125
    assert hedge.metrics.won == 250


def test_samples_keep_the_last_n_and_give_a_nearest_rank_quantile() -> None:
    from resilient._core.state.ring import Samples

    samples = Samples(4)
    assert samples.quantile(0.5) is None
    assert [samples.record(v) for v in (5.0, 1.0, 3.0)] == [1, 2, 3]
    assert (len(samples), samples.quantile(0.5), samples.quantile(0.99)) == (3, 3.0, 5.0)
    for value in (2.0, 4.0, 6.0):  # 5.0 and 1.0 fall out
        samples.record(value)
    assert len(samples) == 4
    assert (samples.quantile(0.01), samples.quantile(0.5), samples.quantile(1.0)) == (
        2.0,
        3.0,
        6.0,
    )


def test_a_delay_within_one_percent_of_the_one_in_force_is_kept() -> None:
    clock = ManualClock()
    hedge = Hedge("p50", min_calls=1, window=10, clock=clock)

    async def taking(seconds: float) -> None:
        clock.advance(seconds)

    # (refreshed at the 1st call, then every 10 // 4 = 2)
    anyio.run(hedge.call_async, taking, 1.0)
    alarms = hedge._plan.delays.alarms  # type: ignore[union-attr]
    anyio.run(hedge.call_async, taking, 1.005)
    anyio.run(hedge.call_async, taking, 1.008)  # p50 of three: 1.005, within 1%: kept
    assert hedge._plan.delays.alarms is alarms  # type: ignore[union-attr]
    anyio.run(hedge.call_async, taking, 2.0)
    anyio.run(hedge.call_async, taking, 2.0)  # p50 of five: 1.008, still within 1%
    assert hedge._plan.delays.alarms is alarms  # type: ignore[union-attr]
    anyio.run(hedge.call_async, taking, 2.0)
    anyio.run(hedge.call_async, taking, 2.0)  # p50 of seven: 2.0: a new delay
    assert hedge.delay == 2.0
