"""RateLimiter: GCRA on an injected clock, exact under threads and tasks.

Every exactness claim is checked against a sequential model of the algorithm (``Model``)
run over the same times: with time frozen in phases, the calls admitted in each phase
are exactly what the model admits, however the threads or tasks interleave.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import anyio
import pytest

from resilient import (
    CircuitBreaker,
    ConfigError,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    RejectedError,
    Retry,
    State,
    deadline,
    reload,
)
from resilient.events import Rejected
from resilient.testing import ManualClock, set_testing

from .conftest import Flavour, fresh

pytestmark = pytest.mark.filterwarnings("ignore::resilient.ConfigWarning")


class Model:
    """GCRA as written in the papers, one call at a time: the reference."""

    def __init__(self, rate: float, per: float, burst: int) -> None:
        self.interval = per / rate
        self.tolerance = (burst - 1) * self.interval
        self.tat = -math.inf

    def admit(self, now: float) -> bool:
        tat = max(self.tat, now)
        if tat - now <= self.tolerance + self.interval * 1e-9:
            self.tat = tat + self.interval
            return True
        return False


def refused(limiter: RateLimiter, fn: Any = lambda: None) -> RateLimitedError:
    with pytest.raises(RateLimitedError) as info:
        limiter.call(fn)
    return info.value


class TestGCRA:
    def test_a_full_burst_then_one_call_per_interval(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(10, burst=3, clock=clock)
        assert [limiter.call(int, i) for i in range(3)] == [0, 1, 2]
        error = refused(limiter)
        assert error.retry_after == pytest.approx(0.1)
        clock.advance(0.1)
        limiter.call(lambda: None)
        assert refused(limiter).retry_after == pytest.approx(0.1)
        clock.advance(0.05)
        assert refused(limiter).retry_after == pytest.approx(0.05)
        assert limiter.metrics.rejected == 3

    def test_retry_after_is_exactly_when_the_next_call_is_admitted(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(7, per=3, burst=2, clock=clock)
        for _ in range(200):
            if _admitted(limiter):
                continue
            wait = refused(limiter).retry_after
            assert wait is not None
            assert wait > 0
            clock.advance(wait * 0.999)  # a hair early: still refused
            refused(limiter)
            clock.advance(wait * 0.001)
            limiter.call(lambda: None)  # exactly on time: admitted

    def test_the_default_burst_is_the_rate_and_at_least_one(self) -> None:
        assert RateLimiter(100).burst == 100
        assert RateLimiter(2.5).burst == 2
        assert RateLimiter(0.5, per=60).burst == 1
        assert RateLimiter(100, burst=7).burst == 7

    def test_no_window_edges_let_two_bursts_through(self) -> None:
        """A window that resets on the second lets a burst in at 0.99 and another at
        1.0 (resilience4j#2064); GCRA admits at 1.0 only what a tenth of a second
        earned."""
        clock = ManualClock(0.99)
        limiter = RateLimiter(10, burst=10, clock=clock)
        admitted = sum(1 for _ in range(20) if _admitted(limiter))
        assert admitted == 10
        clock.advance(0.01)
        assert sum(1 for _ in range(20) if _admitted(limiter)) == 0
        clock.advance(0.1)
        assert sum(1 for _ in range(20) if _admitted(limiter)) == 1

    @pytest.mark.parametrize("seed", range(6))
    def test_it_admits_exactly_what_the_model_admits(self, seed: int) -> None:
        import random

        rng = random.Random(seed)
        rate, per = rng.choice([(10, 1.0), (3, 2.0), (1000, 1.0), (0.5, 1.0)])
        burst = rng.randint(1, 12)
        clock = ManualClock(rng.random() * 100)
        limiter = RateLimiter(rate, per=per, burst=burst, clock=clock)
        model = Model(rate, per, burst)
        for _ in range(2000):
            clock.advance(rng.expovariate(rate / per * rng.choice([0.5, 1, 4])))
            assert _admitted(limiter) is model.admit(clock.monotonic())

    def test_in_any_span_at_most_burst_plus_rate_times_span(self) -> None:
        import random

        rng = random.Random(7)
        clock = ManualClock()
        rate, per, burst = 20, 1.0, 5
        limiter = RateLimiter(rate, per=per, burst=burst, clock=clock)
        times = []
        for _ in range(3000):
            clock.advance(rng.expovariate(60))
            if _admitted(limiter):
                times.append(clock.monotonic())
        _assert_bounded(times, rate, per, burst)
        assert len(times) > 0.9 * rate * clock.monotonic() / per  # and it does admit


def _admitted(limiter: RateLimiter) -> bool:
    try:
        limiter.call(lambda: None)
    except RateLimitedError:
        return False
    return True


def _assert_bounded(times: list[float], rate: float, per: float, burst: int) -> None:
    """In every span [times[i], times[j]], at most burst + rate * span / per admitted."""
    for i in range(len(times)):
        for j in range(i, min(len(times), i + 4 * burst + 8)):
            span = times[j] - times[i]
            assert j - i + 1 <= burst + rate * span / per + 1e-6, (i, j, span)


class TestWaiting:
    def test_a_call_over_the_rate_waits_its_turn_through_the_clock(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(10, burst=1, max_wait=1, clock=clock)
        starts = [limiter.call(clock.monotonic) for _ in range(5)]
        assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
        assert limiter.metrics.waiting == 0

    def test_a_turn_further_off_than_max_wait_is_refused_without_waiting(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(1, burst=1, max_wait=0.5, clock=clock)
        limiter.call(lambda: None)
        error = refused(limiter)
        assert error.retry_after == pytest.approx(1.0)
        assert clock.monotonic() == 0.0  # no time spent waiting for nothing
        clock.advance(0.5)
        assert limiter.call(clock.monotonic) == pytest.approx(1.0)

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_async_calls_wait_through_the_clocks_async_sleep(self, backend: str) -> None:
        clock = ManualClock()
        limiter = RateLimiter(4, burst=2, max_wait=10, clock=clock)

        async def now() -> float:
            return clock.monotonic()

        async def main() -> list[float]:
            return [await limiter.call_async(now) for _ in range(6)]

        assert anyio.run(main, backend=backend) == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0])

    def test_turns_are_handed_out_first_come_first_served_under_threads(
        self, switch_often: None
    ) -> None:
        """16 threads, 40 calls each, time frozen: every call is given a distinct turn,
        and the turns are exactly the first 640 of the schedule."""
        clock = _FrozenClock()
        limiter = RateLimiter(100, burst=4, max_wait=60, clock=clock)
        threads = [
            threading.Thread(target=lambda: [limiter.call(int) for _ in range(40)])
            for _ in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        waits = sorted(clock.waits)
        assert len(waits) == 16 * 40 - 4  # the burst went straight in
        assert waits == pytest.approx([0.01 * k for k in range(1, 16 * 40 - 4 + 1)])
        assert limiter.metrics.waiting == 0

    def test_a_refusal_says_why_a_call_allowed_to_wait_did_not(self) -> None:
        import pickle

        clock = ManualClock()
        limiter = RateLimiter(1, burst=1, max_wait=0.5, name="quota", clock=clock)
        limiter.call(int)
        error = refused(limiter)
        expected = "rate limiter 'quota' is over its rate, its turn beyond max_wait=0.5s"
        assert str(error) == expected + "; retry after 1.000s"
        assert str(pickle.loads(pickle.dumps(error))) == str(error)
        with deadline(0.25):
            assert "beyond the enclosing deadline" in str(refused(limiter))

    def test_max_wait_never_waits_past_an_enclosing_deadline(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(1, burst=1, max_wait=30, clock=clock)
        limiter.call(lambda: None)
        with deadline(0.5), pytest.raises(RateLimitedError):
            limiter.call(lambda: None)
        assert clock.monotonic() == 0.0
        assert limiter.call(clock.monotonic) == pytest.approx(1.0)  # the turn was not taken

    def test_test_mode_skips_the_wait_but_keeps_the_turns(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(1, burst=1, max_wait=5, clock=clock)
        with set_testing():
            assert [limiter.call(clock.monotonic) for _ in range(6)] == [0.0] * 6
            error = refused(limiter)  # turns up to 5 s out were taken; 6 s is too far
        assert error.retry_after == pytest.approx(6.0)
        assert clock.monotonic() == 0.0

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_a_cancelled_wait_gives_its_turn_back(self, backend: str) -> None:
        clock = _BlockingClock()
        limiter = RateLimiter(1, burst=1, max_wait=60, clock=clock)
        limiter.call(lambda: None)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(limiter.call_async, _noop)
                while limiter.metrics.waiting == 0:
                    await anyio.sleep(0)
                tg.cancel_scope.cancel()
            assert limiter.metrics.waiting == 0
            clock.release = anyio.Event()
            clock.release.set()
            await limiter.call_async(_noop)  # given the cancelled call's turn, 1 s out

        anyio.run(main, backend=backend)
        assert clock.slept == [1.0, 1.0]
        assert limiter.metrics.waiting == 0

    def test_a_cancelled_wait_before_a_later_one_lapses_and_the_later_keeps_its_turn(
        self,
    ) -> None:
        clock = _BlockingClock()
        limiter = RateLimiter(1, burst=1, max_wait=60, clock=clock)
        limiter.call(lambda: None)
        turns: list[float] = []

        async def later() -> None:
            await limiter.call_async(_noop)
            turns.append(clock.slept[-1])

        async def main() -> None:
            async with anyio.create_task_group() as outer:
                with anyio.CancelScope() as first:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(limiter.call_async, _noop)
                        while limiter.metrics.waiting < 1:
                            await anyio.sleep(0)
                        outer.start_soon(later)
                        while limiter.metrics.waiting < 2:
                            await anyio.sleep(0)
                        first.cancel()
                assert limiter.metrics.waiting == 1
                assert clock.release is not None
                clock.release.set()

        anyio.run(main)
        assert turns == [2.0]  # its own turn, two intervals out: the first one lapsed
        assert limiter.metrics.waiting == 0


async def _noop() -> None:
    pass


class _FrozenClock:
    """Time stands still; a sleep returns at once and records how long it was asked."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return 100.0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)


class _BlockingClock:
    """Time stands still, and an async sleep waits until ``release`` is set."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.release: anyio.Event | None = None  # made inside the event loop

    def monotonic(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        raise AssertionError("no sync call waits here")

    async def sleep_async(self, seconds: float) -> None:
        if self.release is None:
            self.release = anyio.Event()
        self.slept.append(seconds)
        await self.release.wait()


class TestHammer:
    def test_sixteen_threads_are_admitted_exactly_as_the_model_says(
        self, switch_often: None
    ) -> None:
        """Time moves in steps; between steps, 16 threads try 12 calls each with time
        frozen: each phase admits exactly what the sequential model admits then."""
        clock = ManualClock()
        rate, burst = 50, 7
        limiter = RateLimiter(rate, burst=burst, clock=clock)
        model = Model(rate, 1.0, burst)
        phases = 40
        admitted = [0] * phases
        counts_lock = threading.Lock()
        start = threading.Barrier(17, timeout=30)
        done = threading.Barrier(17, timeout=30)

        def worker() -> None:
            for phase in range(phases):
                start.wait()
                mine = sum(1 for _ in range(12) if _admitted(limiter))
                with counts_lock:
                    admitted[phase] += mine
                done.wait()

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        expected = []
        steps = [0.013, 0.2, 0.02, 0.0, 0.5, 0.07]
        for phase in range(phases):
            now = clock.monotonic()
            expected.append(sum(1 for _ in range(16 * 12) if model.admit(now)))
            start.wait()
            done.wait()
            clock.advance(steps[phase % len(steps)])
        for t in threads:
            t.join(30)
        assert admitted == expected
        assert sum(admitted) > phases  # it was not just refusing
        assert limiter.metrics.rejected == phases * 16 * 12 - sum(admitted)

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_a_thousand_tasks_are_admitted_exactly_as_the_model_says(self, backend: str) -> None:
        clock = ManualClock()
        rate, burst = 300, 40
        limiter = RateLimiter(rate, burst=burst, clock=clock)
        model = Model(rate, 1.0, burst)

        async def one(counts: list[int]) -> None:
            await anyio.sleep(0)
            try:
                await limiter.call_async(_noop)
            except RateLimitedError:
                return
            counts[0] += 1

        async def main() -> tuple[list[int], list[int]]:
            got, expected = [], []
            for step in [0.0, 0.05, 0.5, 0.001, 0.2, 1.0, 0.03]:
                clock.advance(step)
                now = clock.monotonic()
                expected.append(sum(1 for _ in range(1000) if model.admit(now)))
                counts = [0]
                async with anyio.create_task_group() as tg:
                    for _ in range(1000):
                        tg.start_soon(one, counts)
                got.append(counts[0])
            return got, expected

        got, expected = anyio.run(main, backend=backend)
        assert got == expected


class TestForms:
    def test_every_form_is_admitted_then_refused(self, flavour: Flavour) -> None:
        clock = ManualClock()
        limiter = RateLimiter(1, burst=2, clock=clock)
        assert flavour.call(limiter, "a") == "a"
        assert flavour.call(limiter, "b") == "b"
        with pytest.raises(RateLimitedError) as info:
            flavour.call(limiter, "c")
        assert info.value.retry_after == pytest.approx(1.0)

    def test_a_started_call_is_spent_whatever_it_raised(self, flavour: Flavour) -> None:
        clock = ManualClock()
        limiter = RateLimiter(1, burst=1, clock=clock)
        with pytest.raises(ConnectionError):
            flavour.call(limiter, ConnectionError())
        with pytest.raises(RateLimitedError):
            flavour.call(limiter, "x")

    def test_rate_limited_error_is_a_rejection_that_pickles(self) -> None:
        import pickle

        error = RateLimitedError("api", 0.25)
        assert isinstance(error, RejectedError)
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.name, again.retry_after) == (RateLimitedError, "api", 0.25)
        assert str(error) == "rate limiter 'api' is over its rate; retry after 0.250s"

    def test_repr_and_metrics(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(5, per=2, burst=3, max_wait=0.5, name=fresh("rl"), clock=clock)
        assert repr(limiter).startswith("RateLimiter(5, per=2, burst=3, max_wait=0.5, name=")
        assert limiter.metrics.available == 3
        limiter.call(lambda: None)
        assert limiter.metrics.available == 2
        limiter.call(lambda: None)
        limiter.call(lambda: None)
        assert limiter.metrics.available == 0
        clock.advance(0.4)
        assert limiter.metrics.available == 1
        limiter.reset()
        assert limiter.metrics.available == 3


class TestAcquire:
    def test_try_acquire_takes_a_due_turn_and_never_waits(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(10, burst=2, max_wait=5, clock=clock)
        heard: list[Any] = []
        limiter.add_listener(heard.append)
        assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
        assert clock.monotonic() == 0.0  # max_wait or not, it never waits
        assert limiter.metrics.rejected == 1
        assert [(e.reason, e.retry_after) for e in heard] == [("rate_limited", pytest.approx(0.1))]
        clock.advance(0.1)
        assert limiter.try_acquire()

    def test_acquire_waits_for_its_turn_or_raises(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(2, burst=1, max_wait=1, clock=clock)
        limiter.acquire()
        limiter.acquire()  # waited half a second for it
        assert clock.monotonic() == pytest.approx(0.5)
        limiter.acquire()
        limiter.acquire()
        assert clock.monotonic() == pytest.approx(1.5)
        RateLimiter(1, burst=1, clock=clock).acquire()
        spent = RateLimiter(1, burst=1, clock=clock)
        spent.acquire()
        with pytest.raises(RateLimitedError):
            spent.acquire()

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_acquire_async_waits_through_the_clock(self, backend: str) -> None:
        clock = ManualClock()
        limiter = RateLimiter(4, burst=1, max_wait=1, clock=clock)

        async def main() -> float:
            for _ in range(3):
                await limiter.acquire_async()
            return clock.monotonic()

        assert anyio.run(main, backend=backend) == pytest.approx(0.5)

    def test_switched_off_every_turn_is_taken(self, env: pytest.MonkeyPatch) -> None:
        limiter = RateLimiter(1, burst=1, name=fresh("rl-acq"), clock=ManualClock())
        env.setenv("RESILIENT_ENABLED", "0")
        reload()
        assert all(limiter.try_acquire() for _ in range(5))
        limiter.acquire()


class TestComposition:
    def test_a_retry_waits_out_the_limiters_retry_after(self) -> None:
        clock = ManualClock()
        limiter = RateLimiter(2, burst=1, clock=clock)
        pipeline = Pipeline(Retry(3, wait=0.01, clock=clock), limiter)
        starts = [pipeline.call(clock.monotonic) for _ in range(3)]
        assert starts == pytest.approx([0.0, 0.5, 1.0])  # each waited exactly its hint

    def test_a_breaker_does_not_count_the_limiters_refusals(self) -> None:
        clock = ManualClock()
        breaker = CircuitBreaker(min_calls=2, window_size=4, failure_rate=0.5, clock=clock)
        pipeline = Pipeline(breaker, RateLimiter(1, burst=1, clock=clock))
        pipeline.call(lambda: None)
        for _ in range(20):
            with pytest.raises(RateLimitedError):
                pipeline.call(lambda: None)
        assert breaker.state is State.CLOSED
        assert breaker.metrics.failures == 0


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "option"),
        [
            ({"rate": 0}, "rate"),
            ({"rate": -1}, "rate"),
            ({"rate": True}, "rate"),
            ({"rate": "10"}, "rate"),
            ({"rate": math.inf}, "rate"),
            ({"rate": 1, "per": 0}, "per"),
            ({"rate": 1, "burst": 0}, "burst"),
            ({"rate": 1, "burst": 1.5}, "burst"),
            ({"rate": 1, "max_wait": -1}, "max_wait"),
            ({"rate": 1, "clock": object()}, "clock"),
        ],
    )
    def test_bad_options_are_refused_naming_them(
        self, kwargs: dict[str, Any], option: str
    ) -> None:
        with pytest.raises(ConfigError) as info:
            RateLimiter(**kwargs)
        assert info.value.option == option
        assert f"{option}=" in str(info.value)

    def test_the_environment_sets_every_option(self, env: pytest.MonkeyPatch) -> None:
        name = fresh("rl-env")
        var = f"RESILIENT_{name.upper().replace('-', '_')}_RATE_LIMITER_"
        env.setenv(var + "RATE", "20")
        env.setenv(var + "PER", "2s")
        env.setenv(var + "BURST", "4")
        env.setenv(var + "MAX_WAIT", "250ms")
        limiter = RateLimiter(1, name=name)
        assert (limiter.rate, limiter.per, limiter.burst, limiter.max_wait) == (20, 2, 4, 0.25)
        assert limiter.settings.sources["rate"] == var + "RATE"

    def test_a_bad_variable_is_named_with_its_text(self, env: pytest.MonkeyPatch) -> None:
        name = fresh("rl-bad")
        var = f"RESILIENT_{name.upper().replace('-', '_')}_RATE_LIMITER_RATE"
        env.setenv(var, "fast")
        with pytest.raises(ConfigError) as info:
            RateLimiter(1, name=name)
        assert var in str(info.value)
        assert "fast" in str(info.value)

    def test_a_reload_that_changes_the_rate_keeps_the_debt(self, env: pytest.MonkeyPatch) -> None:
        """resilience4j cannot change its period live (#1645); a reload here keeps the
        calls owed: an emptied limiter stays empty, at the new pace."""
        clock = ManualClock()
        name = fresh("rl-reload")
        var = f"RESILIENT_{name.upper().replace('-', '_')}_RATE_LIMITER_"
        limiter = RateLimiter(10, burst=10, name=name, clock=clock)
        for _ in range(10):
            limiter.call(lambda: None)  # 10 owed: a second's worth at 10/s
        env.setenv(var + "RATE", "1")
        reload()
        assert limiter.rate == 1
        assert limiter.burst == 10  # given in code
        # 10 calls owed at 1/s: tat is 10 s out; with a tolerance of 9 s the next turn
        # comes in 1 s, not at once (a fresh burst) nor in 0.1 s (the old pace).
        assert refused(limiter).retry_after == pytest.approx(1.0)
        env.setenv(var + "RATE", "100")
        reload()  # faster: the debt shrinks with the interval (10 calls at 100/s)
        clock.advance(0.0)
        assert limiter.metrics.available == 0
        clock.advance(0.01)
        assert limiter.metrics.available == 1
        env.setenv(var + "MAX_WAIT", "2")
        reload()
        assert limiter.max_wait == 2

    def test_a_reload_of_per_and_burst_applies_at_once(self, env: pytest.MonkeyPatch) -> None:
        clock = ManualClock()
        name = fresh("rl-per")
        var = f"RESILIENT_{name.upper().replace('-', '_')}_RATE_LIMITER_"
        limiter = RateLimiter(2, name=name, clock=clock)
        limiter.call(int)  # one owed: half a second at 2/s
        env.setenv(var + "PER", "10s")  # 2 per 10 s: the one owed is now 5 s
        env.setenv(var + "BURST", "1")
        reload()
        assert (limiter.per, limiter.burst) == (10, 1)
        assert refused(limiter).retry_after == pytest.approx(5.0)
        clock.advance(5)
        limiter.call(int)
        assert refused(limiter).retry_after == pytest.approx(5.0)
        env.delenv(var + "BURST")
        reload()  # the default burst again: the rate, 2
        assert limiter.burst == 2
        limiter.call(int)  # one turn early is allowed again
        assert refused(limiter).retry_after == pytest.approx(5.0)

    def test_switched_off_every_call_goes_in(self, env: pytest.MonkeyPatch) -> None:
        clock = ManualClock()
        limiter = RateLimiter(1, burst=1, name=fresh("rl-off"), clock=clock)
        env.setenv("RESILIENT_ENABLED", "0")
        reload()
        assert all(_admitted(limiter) for _ in range(50))
        env.delenv("RESILIENT_ENABLED")
        reload()
        assert _admitted(limiter)
        assert not _admitted(limiter)


class TestEvents:
    def test_a_refusal_is_told_with_its_reason_and_retry_after(self) -> None:
        clock = ManualClock(5.0)
        limiter = RateLimiter(2, burst=1, name=fresh("rl-ev"), clock=clock)
        heard: list[Any] = []
        limiter.add_listener(heard.append)
        limiter.call(lambda: None)
        refused(limiter)
        assert heard == [Rejected(limiter, 5.0, "rate_limited", 0.5)]

    def test_health_shows_the_limiter(self) -> None:
        import resilient

        name = fresh("rl-health")
        limiter = RateLimiter(3, burst=2, name=name, clock=ManualClock())
        limiter.call(lambda: None)
        [view] = resilient.health(names=[name])["policies"]
        assert view == {
            "kind": "rate_limiter",
            "name": name,
            "rate": 3.0,
            "per": 1.0,
            "burst": 2,
            "available": 1,
            "waiting": 0,
            "rejected": 0,
        }


def test_switch_interval_is_restored() -> None:
    assert sys.getswitchinterval() > 1e-5
