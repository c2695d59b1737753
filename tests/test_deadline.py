"""resilient.deadline(): a context-local deadline that nests, propagates and bounds retries."""

from __future__ import annotations

import contextvars
import math
import threading
from typing import Any

import anyio
import pytest

from resilient import ConfigError, Retry, deadline, remaining
from resilient.testing import ManualClock


def test_no_deadline_means_none() -> None:
    assert remaining() is None


def test_remaining_counts_down_on_the_deadlines_clock() -> None:
    clock = ManualClock(start=100.0)
    with deadline(5, clock=clock):
        assert remaining() == 5.0
        clock.advance(2)
        assert remaining() == 3.0
        clock.advance(10)
        assert remaining() == 0.0  # passed: zero, never negative
    assert remaining() is None


def test_nested_deadlines_only_shrink() -> None:
    clock = ManualClock()
    with deadline(5, clock=clock):
        with deadline(60, clock=clock):
            assert remaining() == 5.0  # the outer one ends first
        with deadline(2, clock=clock):
            assert remaining() == 2.0
        assert remaining() == 5.0


def test_one_deadline_object_can_be_entered_again() -> None:
    clock = ManualClock()
    budget = deadline(3, clock=clock)
    with budget:
        clock.advance(1)
        with budget:
            assert remaining() == 2.0  # the outer instance ends first
        assert remaining() == 2.0
    assert remaining() is None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_follows_tasks_and_stays_in_its_context(backend: str) -> None:
    clock = ManualClock()
    seen: dict[str, Any] = {}

    async def child(name: str) -> None:
        await anyio.sleep(0)
        seen[name] = remaining()

    async def main() -> None:
        async with deadline(7, clock=clock), anyio.create_task_group() as tg:
            tg.start_soon(child, "inside")
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, "outside")

    anyio.run(main, backend=backend)
    assert seen == {"inside": 7.0, "outside": None}


def test_follows_copy_context_into_threads() -> None:
    clock = ManualClock()
    seen: list[float | None] = []
    with deadline(4, clock=clock):
        context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(lambda: seen.append(remaining()),))
    thread.start()
    thread.join(timeout=10)
    assert seen == [4.0]


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "5 sec", None, True])
def test_bad_seconds_are_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="seconds") as info:
        deadline(bad)
    assert info.value.value is bad or (bad != bad and info.value.value != info.value.value)


def test_bad_clock_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="clock"):
        deadline(1, clock=object())  # type: ignore[arg-type]


def test_retry_stops_before_a_wait_that_cannot_fit_the_deadline() -> None:
    clock = ManualClock()
    calls: list[float] = []

    def down() -> None:
        calls.append(clock.monotonic())
        raise ConnectionError

    with deadline(2.5, clock=clock), pytest.raises(ConnectionError) as info:
        Retry(10, wait=1.0, clock=clock).call(down)
    assert calls == [0.0, 1.0, 2.0]  # a fourth attempt would start at the deadline
    assert info.value.__notes__ == ["Retry: gave up after 3 attempts: the deadline in force"]


def test_retry_starts_no_attempt_in_the_last_moment_before_the_deadline() -> None:
    """With less left than an inner Timeout would need to start (it ends a moment early,
    so that it reports rather than the enclosing one), no attempt is started."""
    clock = ManualClock()
    calls: list[float] = []

    def down() -> None:
        calls.append(clock.monotonic())
        clock.advance(0.9995)  # 0.5 ms left
        raise ConnectionError

    with deadline(1.0, clock=clock), pytest.raises(ConnectionError) as info:
        Retry(5, clock=clock).call(down)
    assert calls == [0.0]
    assert info.value.__notes__ == ["Retry: gave up after 1 attempt: the deadline in force"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_nearer_of_retrys_own_deadline_and_the_contexts_wins(backend: str) -> None:
    clock = ManualClock()

    async def run(own: float, context: float) -> list[float]:
        calls: list[float] = []

        async def down() -> None:
            calls.append(clock.monotonic())
            raise ConnectionError

        start = clock.monotonic()
        with pytest.raises(ConnectionError):
            async with deadline(context, clock=clock):
                await Retry(10, wait=1.0, deadline=own, clock=clock).call_async(down)
        return [t - start for t in calls]

    assert anyio.run(run, 1.5, 10.0, backend=backend) == [0.0, 1.0]  # Retry's own is nearer
    assert anyio.run(run, 10.0, 1.5, backend=backend) == [0.0, 1.0]  # the context's is
