"""Second adversarial review of issue 14 (the code rewritten after the first): each test
here fails on main and shows one defect. Deterministic: ManualClock-based clocks whose
sleeps the test ends, no timing asserted, every loop bounded."""

from __future__ import annotations

import asyncio

import anyio
import pytest

import resilient
from resilient import Hedge, RateLimiter
from resilient.testing import ManualClock

pytestmark = pytest.mark.filterwarnings("ignore::resilient.ConfigWarning")


class GatedClock(ManualClock):
    """A ManualClock whose async sleeps last until the test moves the clock past their
    end (so several calls can wait at once, as they would on a real clock)."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep_async(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.monotonic() + max(0.0, seconds), future))
        await future

    async def move_to(self, when: float) -> None:
        """Move to ``when`` and let every sleep that ends by then return."""
        self.advance(when - self.monotonic())
        for end, future in list(self._sleepers):
            if end <= when and not future.done():
                future.set_result(None)
        for _ in range(20):  # bounded: let the woken tasks run to their next await
            await asyncio.sleep(0)


# -- RateLimiter: a reload to a faster rate while calls wait for their turns ---------------


def test_a_faster_reload_with_calls_waiting_admits_two_at_one_instant_with_burst_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_switch rescales the calls owed to the new interval, but a call already waiting
    sleeps until the time its turn had on the old schedule. Speed up from 1/s to 1.5/s
    with two calls waiting (turns at t=1 and t=2): tat becomes 3 * 2/3 = 2.0, so a new
    call is admitted at t=2, the very instant the second waiting call wakes and runs.
    Burst 1 before and after: two calls at one instant (the bound, at the faster rate,
    allows 1 + 1.5 * 0 = 1)."""
    variable = "RESILIENT_ATTACK_WAITERS_RATE_LIMITER_RATE"
    monkeypatch.setenv(variable, "1")
    clock = GatedClock()
    limiter = RateLimiter(1, burst=1, max_wait=10, name="attack-waiters", clock=clock)
    started: list[float] = []

    async def call() -> None:
        await limiter.acquire_async()
        started.append(clock.monotonic())

    async def main() -> None:
        await call()  # t=0: the burst
        waiting = [asyncio.ensure_future(call()) for _ in range(2)]  # turns at t=1, t=2
        for _ in range(20):
            await asyncio.sleep(0)
        assert limiter.metrics.waiting == 2
        monkeypatch.setenv(variable, "1.5")
        resilient.reload()  # faster, at t=0: the 3 calls owed now take 2 seconds
        await clock.move_to(1.0)
        await clock.move_to(2.0)
        if limiter.try_acquire():  # a new call at t=2
            started.append(clock.monotonic())
        await asyncio.wait_for(asyncio.gather(*waiting), 1)

    try:
        asyncio.run(main())
    finally:
        monkeypatch.delenv(variable)
        resilient.reload()
    at_two = [t for t in started if t == 2.0]
    assert len(at_two) <= 1, f"calls started at {started}"


def test_a_cancelled_call_that_does_not_hold_the_last_turn_gives_none_back_after_a_reload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_give_back frees a turn when ``tat == turn.end`` at the same origin: meant as
    'this call holds the last turn given'. A reload at the same instant rescales tat, and
    it can land on an earlier call's end: at 1/s with turns ending at 1, 2 and 3 (one
    call admitted, two waiting), a reload to 1.5/s makes tat 3 * 2/3 = 2.0, the FIRST
    waiting call's end. That call, cancelled, then 'gives back' a whole old interval
    (1 s = 1.5 turns at the new rate) though the second waiting call still holds the
    last turn: a new call is admitted at t=1, when two calls (the first and the second
    waiting one) are still owed until t=4/3."""
    variable = "RESILIENT_ATTACK_GIVEBACK_RATE_LIMITER_RATE"
    monkeypatch.setenv(variable, "1")
    clock = GatedClock()
    limiter = RateLimiter(1, burst=1, max_wait=10, name="attack-giveback", clock=clock)
    admitted_at_one: list[bool] = []

    async def main() -> None:
        await limiter.acquire_async()  # t=0: the burst
        first = asyncio.ensure_future(limiter.acquire_async())  # its turn at t=1
        for _ in range(20):
            await asyncio.sleep(0)
        second = asyncio.ensure_future(limiter.acquire_async())  # its turn at t=2
        for _ in range(20):
            await asyncio.sleep(0)
        assert limiter.metrics.waiting == 2
        monkeypatch.setenv(variable, "1.5")
        resilient.reload()  # still t=0
        first.cancel()  # it does not hold the last turn: nothing to give back
        for _ in range(20):
            await asyncio.sleep(0)
        await clock.move_to(1.0)
        admitted_at_one.append(limiter.try_acquire())
        await clock.move_to(2.0)
        await asyncio.wait_for(second, 1)

    try:
        asyncio.run(main())
    finally:
        monkeypatch.delenv(variable)
        resilient.reload()
    assert admitted_at_one == [False]


# -- Hedge: an interrupt in a hedge attempt while the caller is cancelled --------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("where", ["primary running", "waiting in join"])
def test_a_systemexit_from_a_hedge_attempt_is_not_lost_when_the_caller_is_cancelled(
    backend: str, where: str
) -> None:
    """A hedge attempt whose cleanup raises SystemExit as it is cancelled (the caller
    was): _Attempts.escalated records it as the call's end, but both ways out for a
    cancelled caller (_raced's ``outer`` path, and _Race.join's except) wait for the
    tasks and re-raise the caller's cancellation: the SystemExit is dropped, on asyncio
    and trio. Unhedged, the same cleanup in the caller's own task raises SystemExit."""
    hedge = Hedge(1.0, clock=ManualClock())  # paced on the clock: the hedge starts at once
    started: list[int] = []
    seen: list[str] = []

    async def attempt() -> None:
        n = len(started)
        started.append(n)
        if where == "waiting in join" and n == 0:
            raise ValueError("the first attempt fails: the caller waits in join()")
        try:
            await anyio.sleep_forever()
        finally:
            if n == 1:
                raise SystemExit(3)  # the hedge's cleanup, as it is cancelled

    async def caller() -> None:
        try:
            await hedge.call_async(attempt)
        except BaseException as error:  # (the test's record; the scope is cancelled anyway)
            seen.append(type(error).__name__)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(caller)
            for _ in range(50):
                if len(started) == 2:
                    break
                await anyio.lowlevel.checkpoint()
            assert len(started) == 2
            tasks.cancel_scope.cancel()

    anyio.run(main, backend=backend)
    assert seen == ["SystemExit"]


# -- pytest plugin: isolation that cannot reload loses the shell's variables ---------------

pytest_plugins = ["pytester"]

ISOLATED = "[pytest]\nresilient_isolate = true\n"
OTHERS = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")


def test_a_reload_that_fails_as_isolation_hides_the_shell_loses_its_variables_for_good(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment.__init__ pops the shell's variables, then reloads; a policy valid
    only with them (a Hedge whose window=10 is below the default min_calls=20, which the
    shell's RESILIENT_..._MIN_CALLS=5 makes valid) makes that reload raise ConfigError.
    The fixture fails in its setup, before the yield, so no restore() runs: the shell's
    variable is gone from os.environ for every later test of the session."""
    monkeypatch.setenv("RESILIENT_ATTACK_SHELL_HEDGE_MIN_CALLS", "5")  # as the shell's
    pytester.makepyfile(
        test_hidden="""
        import os

        import pytest

        from resilient import Hedge

        HEDGE = Hedge("p95", window=10, name="attack-shell")  # min_calls: the shell's 5


        @pytest.mark.resilient_isolate
        def test_isolated():
            pass


        @pytest.mark.resilient_isolate(False)
        def test_later_not_isolated():
            assert os.environ.get("RESILIENT_ATTACK_SHELL_HEDGE_MIN_CALLS") == "5"
        """
    )
    result = pytester.runpytest(*OTHERS, "-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-2000:]
