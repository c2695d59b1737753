"""Adversarial review of issue 14's policies: each test here fails on main and shows
one defect (see the report on the i14-attack branch). Deterministic: ManualClock, trio's
MockClock, events; no timing asserted."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from resilient import ConfigError, Hedge, InjectFault, InjectResult, RateLimitedError, RateLimiter
from resilient.testing import ManualClock

pytestmark = pytest.mark.filterwarnings("ignore::resilient.ConfigWarning")


def _admitted_at_once(limiter: RateLimiter, most: int) -> int:
    """How many calls the limiter admits without the clock moving (bounded)."""
    admitted = 0
    for _ in range(most):
        try:
            limiter.call(lambda: None)
        except RateLimitedError:
            break
        admitted += 1
    return admitted


# -- RateLimiter: float precision of tat at large clock values -----------------------------


def test_rate_limiter_at_clock_1e9_admits_no_more_than_the_burst_at_one_instant() -> None:
    """At a clock value of 1e9 (a time.time()-based clock, or a ManualClock started
    there), ``tat + interval`` rounds: with interval 1e-6 each step moves tat by
    8 ulps (9.5e-7), so a frozen instant admits 1048 calls where burst is 1000."""
    limiter = RateLimiter(1_000_000, per=1.0, burst=1000, clock=ManualClock(1e9))
    assert _admitted_at_once(limiter, 5000) <= 1000


def test_rate_limiter_at_clock_1e9_with_a_tiny_interval_is_not_unlimited() -> None:
    """interval = 0.001 / 1e6 = 1e-9 is below half an ulp of 1e9 (1.2e-7): ``tat +
    interval == tat``, so every call is admitted: no limit at all."""
    limiter = RateLimiter(1_000_000, per=0.001, burst=1, clock=ManualClock(1e9))
    assert _admitted_at_once(limiter, 100) == 1


# -- RateLimiter: a tiny accepted rate makes the interval infinite --------------------------


def test_a_rate_the_options_accept_never_gives_nan() -> None:
    """rate=1e-310 passed the check (> 0) but per / rate is inf and (burst - 1) * inf is
    NaN: every call was refused with retry_after=nan. Slower than a call a year is now
    refused, naming the rate and the period."""
    with pytest.raises(ConfigError, match=r"rate=1e-310.*at least one call a year \(per=1.0\)"):
        RateLimiter(1e-310, clock=ManualClock())


# -- RateLimiter: the bound, exactly ---------------------------------------------------------


def test_in_a_span_just_short_of_an_interval_no_second_call_is_admitted() -> None:
    """docs/ratelimit.md: 'In any span of T seconds, at most burst + rate * T / per calls
    start'. ``early`` adds a millionth of an interval, so two calls 0.9999999 s apart at
    1/s with burst 1 are both admitted: 2 > 1 + 0.9999999."""
    clock = ManualClock()
    limiter = RateLimiter(1, per=1.0, burst=1, clock=clock)
    limiter.call(lambda: None)
    clock.advance(1.0 - 1e-7)
    span = clock.monotonic()
    admitted = 1 + _admitted_at_once(limiter, 5)
    assert admitted <= 1 + 1 * span / 1.0


# -- RateLimiter: a reload that changes the clock -------------------------------------------


class LaterClock(ManualClock):
    """A clock of another origin (as the system clock is to a ManualClock)."""


def test_a_reload_that_changes_the_clock_does_not_carry_tat_across_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The clock is an option an env variable sets (an import path); ``_switch``
    carries ``tat`` over only when the interval changes, so a tat from a clock at 1e5
    stays ahead of a new clock at 0 for some 28 hours: every call refused."""
    import resilient

    old, new = ManualClock(100_000.0), ManualClock(0.0)
    limiter = RateLimiter(10, burst=1, name="attack-clock", clock=None)
    monkeypatch.setattr(sys.modules[__name__], "OLD_CLOCK", old, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "NEW_CLOCK", new, raising=False)
    monkeypatch.setenv("RESILIENT_ATTACK_CLOCK_RATE_LIMITER_CLOCK", f"{__name__}:OLD_CLOCK")
    resilient.reload()
    limiter.call(lambda: None)  # tat = 100000.1 on the old clock
    monkeypatch.setenv("RESILIENT_ATTACK_CLOCK_RATE_LIMITER_CLOCK", f"{__name__}:NEW_CLOCK")
    resilient.reload()
    new.advance(1.0)  # ten intervals on the new clock
    try:
        limiter.call(lambda: None)
    except RateLimitedError as exc:
        pytest.fail(f"refused for {exc.retry_after:.0f} s after a clock change")
    finally:
        monkeypatch.delenv("RESILIENT_ATTACK_CLOCK_RATE_LIMITER_CLOCK")
        resilient.reload()


# -- Hedge on trio: a BaseException in a hedge attempt --------------------------------------


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt])
def test_trio_a_systemexit_in_a_hedge_attempt_reaches_the_caller_not_trio_internal(
    error: type[BaseException],
) -> None:
    """A hedge attempt runs in a trio *system* task, which must not raise: SystemExit
    or KeyboardInterrupt from the downstream (or pytest.fail's BaseException) crashes
    the run with TrioInternalError ('please file a bug') instead. On asyncio the same
    attempt's SystemExit propagates as SystemExit."""
    import trio
    import trio.testing

    hedge = Hedge(1.0, clock=ManualClock())  # paced on the clock: the hedge starts at once
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep(10)  # (virtual time: MockClock)
            return "primary"
        raise error("from the hedge")

    async def main() -> str:
        return await hedge.call_async(attempt)

    with pytest.raises(error):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- Hedge on trio with a MockClock: the later hedges are paced on time.monotonic -----------


def test_trio_mock_clock_every_hedge_follows_the_loop_clock() -> None:
    """docs/hedging.md: 'with max_hedges above 1, each further one delay after the one
    before'. The first hedge rings on trio's clock (a MockClock too), but the pacer
    computes its waits from time.monotonic: on virtual time the third attempt never
    starts (100 virtual seconds, starts at [0, 5] only)."""
    import trio
    import trio.testing

    hedge = Hedge(5.0, max_hedges=2)
    starts: list[float] = []

    async def attempt() -> None:
        starts.append(trio.current_time())
        await trio.sleep_forever()

    async def main() -> None:
        with trio.move_on_after(100):
            await hedge.call_async(attempt)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert starts == [0.0, 5.0, 10.0]


# -- Hedge: the caller's deadline is not visible in a hedge attempt -------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_hedge_attempt_sees_the_callers_deadline(backend: str) -> None:
    """The first attempt runs under the caller's cancel scopes; a hedge runs in a task
    of its own (trio: a system task) and sees no cancel-scope deadline. Decided: it sees
    resilient's own deadline (the context is carried), and docs/hedging.md says the
    scopes' is not seen and what to use instead."""
    from pathlib import Path

    import resilient

    hedge = Hedge(1.0, clock=ManualClock())
    seen: list[float | None] = []

    async def attempt() -> str:
        seen.append(resilient.remaining())
        if len(seen) == 1:
            await anyio.sleep_forever()
        return "hedge"

    async def main() -> str:
        with resilient.deadline(50):
            return await hedge.call_async(attempt)

    assert anyio.run(main, backend=backend) == "hedge"
    assert seen[0] is not None
    assert seen[1] is not None
    assert 0 < seen[1] <= seen[0]
    page = (Path(__file__).parent.parent / "docs" / "hedging.md").read_text()
    assert "`anyio.current_effective_deadline()` there does not see" in page


# -- Fault injection: an unseeded source is shared by forked workers ------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_an_unseeded_injector_draws_afresh_in_a_forked_child() -> None:
    """seed=None is 'seeded by the system', but a forked child (a pre-fork server's
    workers) goes on from the parent's random state: every worker injects into the
    same call numbers. (The random module reseeds its own instance at fork; a
    random.Random(None) is not.)"""
    fault = InjectFault(ValueError, rate=0.5, enabled=True)

    def pattern() -> str:
        out = []
        for _ in range(64):
            try:
                fault.call(lambda: None)
                out.append("0")
            except ValueError:
                out.append("1")
        return "".join(out)

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, pattern().encode())
        finally:
            os._exit(0)
    os.close(write)
    mine = pattern()
    theirs = b""
    while chunk := os.read(read, 1024):
        theirs += chunk
    os.close(read)
    os.waitpid(pid, 0)
    assert len(theirs) == 64
    assert theirs.decode() != mine


# -- Metering: how an injected call is counted ---------------------------------------------


class _Calls:
    """A meter that keeps each call's (kind, outcome)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def event(self, event: object) -> None:
        pass

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        self.calls.append((policy.KIND, outcome))

    def attempt(self, *_: Any) -> None:
        pass


@pytest.fixture
def meter() -> Iterator[_Calls]:
    from resilient._core.configuration import events as core

    calls = _Calls()
    core.meters.add(calls)  # type: ignore[arg-type]
    try:
        yield calls
    finally:
        core.meters.remove(calls)  # type: ignore[arg-type]


def test_an_injected_cancellation_is_metered_as_cancelled_like_every_other(
    meter: _Calls,
) -> None:
    """Every driver meters a BaseException that is not an Exception as "cancelled"
    (drivers.outcome_of); InjectFault writes "failure" for whatever it raises, so an
    injected CancelledError or KeyboardInterrupt counts as a failure."""
    import asyncio

    fault = InjectFault(asyncio.CancelledError, enabled=True)
    with pytest.raises(asyncio.CancelledError):
        fault.call(lambda: None)
    assert meter.calls == [("fault", "cancelled")]


def test_an_inject_result_whose_factory_fails_is_metered_as_a_failed_call(
    meter: _Calls,
) -> None:
    """docs: the factory's error 'is the call's'; the call is metered by the policies
    around it, but not by the InjectResult itself: its _wait raised before the drivers'
    metered try, so its calls total misses every failed one."""
    injector = InjectResult(factory=lambda: 1 / 0, enabled=True)
    with pytest.raises(ZeroDivisionError):
        injector.call(lambda: None)
    assert meter.calls == [("result", "failure")]


# -- RateLimiter: reset() and the docs ------------------------------------------------------


def test_reset_gives_a_full_burst_back_as_the_docs_say() -> None:
    """docs/ratelimit.md, State: 'reset(), which also gives a full burst back'. With a
    call waiting for its turn, reset() keeps tat (its docstring says so), so the burst is
    not given back: the page and the docstring disagreed; the page now says the turns
    given to waiting calls stand."""
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "ratelimit.md").read_text()
    assert "unless calls are waiting: the turns they were given stand" in page

    class Held(ManualClock):
        async def sleep_async(self, seconds: float) -> None:
            await anyio.sleep_forever()  # a wait that lasts until cancelled

    clock = Held()
    limiter = RateLimiter(1, burst=1, max_wait=10, clock=clock)
    available: list[int] = []

    async def main() -> None:
        limiter.call(lambda: None)  # the burst, spent
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(limiter.call_async, anyio.lowlevel.checkpoint)
            while limiter.metrics.waiting == 0:
                await anyio.lowlevel.checkpoint()
            limiter.reset()
            available.append(limiter.metrics.available)
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert available == [0]  # a turn was given to the waiting call: it stands


# -- RateLimiter: a call that read the plan before a reload is judged by the old plan ------


def test_a_reload_during_a_call_never_admits_more_than_the_burst_at_one_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drivers read ``_state`` (the plan) before ``_admit`` reads the clock and
    takes the lock; a reload in between (another thread's reload(); here, the clock
    read itself) rescales tat to the new interval, and the call is then judged by the
    old plan's tolerance against it: at a frozen instant, with burst 2 on both sides of
    the reload, three calls are admitted."""
    import resilient

    class Reloading(ManualClock):
        armed = False

        def monotonic(self) -> float:
            if self.armed:
                self.armed = False
                monkeypatch.setenv("RESILIENT_ATTACK_STALE_RATE_LIMITER_RATE", "1000")
                resilient.reload()  # as another thread's reload would, just now
            return super().monotonic()

    monkeypatch.setenv("RESILIENT_ATTACK_STALE_RATE_LIMITER_RATE", "1")
    clock = Reloading()
    limiter = RateLimiter(1, burst=2, name="attack-stale", clock=clock)
    try:
        assert _admitted_at_once(limiter, 5) == 2  # the burst, spent; time stands still
        clock.armed = True
        admitted = _admitted_at_once(limiter, 5)
        assert limiter.rate == 1000
        assert admitted == 0  # still the same instant: nothing more is due
    finally:
        monkeypatch.delenv("RESILIENT_ATTACK_STALE_RATE_LIMITER_RATE")
        resilient.reload()
