"""The state core on its own: the primitives, both variants of each window, the warm-up.

Every window class is tested directly, the lock-free and the locked variant alike, whatever
the interpreter would pick; CI runs the suite once more with ``RESILIENT_PRIMITIVES=locked``
so that the breaker and the bulkhead run on the locked variants too. The hammers run with
threads preempted every microsecond; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient
from resilient import CircuitBreaker, State
from resilient._core.configuration import config
from resilient._core.state import primitives
from resilient._core.state.window import (
    FAILURE,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    CountWindow,
    LockedCountWindow,
    LockedTimeWindow,
    Tally,
    TimeWindow,
    count_window,
    time_window,
)
from resilient.testing import ManualClock

from .conftest import Flavour, fresh
from .test_concurrency import run_threads

CODES = (SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE)


def reference(outcomes: list[int], size: int) -> Tally:
    """What a window of the last ``size`` outcomes holds: the spec, restated plainly."""
    held = outcomes[-size:]
    failures = sum(o in (FAILURE, SLOW_FAILURE) for o in held)
    slow = sum(o in (SLOW_SUCCESS, SLOW_FAILURE) for o in held)
    return Tally(len(held), failures, slow, len(outcomes))


def record_all(window: Any, outcomes: list[int], now: float = 0.0) -> None:
    for outcome in outcomes:
        if outcome == SUCCESS and window.kind == "count":
            window.success()  # the breaker's plain path
        else:
            window.record(outcome, now)


# -- primitives -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [primitives.Counter, primitives.LockedCounter])
def test_a_counter_hands_out_each_number_once_and_reads_exactly(
    make: Callable[[], Any], switch_often: None
) -> None:
    counter = make()
    assert counter.value == 0
    taken = run_threads(8, lambda _: [counter.incr() for _ in range(20_000)])
    numbers = [n for batch in taken for n in batch]
    assert sorted(numbers) == list(range(160_000))
    assert counter.value == 160_000


def test_read_ticks_reads_counters_at_one_instant(switch_often: None) -> None:
    """Writers take a number from ``a`` and then one from ``b``, so at every instant
    ``a >= b``; a reader that read them one by one, b first, would see ``b > a``."""
    a, b = primitives.ticks(), primitives.ticks()
    done = threading.Event()
    torn = 0

    def worker(i: int) -> int:
        nonlocal torn
        if i == 0:
            for _ in range(100_000):
                if done.is_set():
                    break
                seen_a, seen_b = primitives.read_ticks([a, b])
                torn += seen_b > seen_a
            return 0
        for _ in range(50_000):
            next(a)
            next(b)
        done.set()
        return 0

    run_threads(2, worker)
    assert torn == 0
    assert primitives.read_ticks([a, b]) == [50_000, 50_000]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_switch_makes_every_primitive_locked() -> None:
    code = (
        "from resilient._core.state import primitives\n"
        "from resilient import Bulkhead, CircuitBreaker\n"
        "b = CircuitBreaker(window_size=5)\n"
        "t = CircuitBreaker(window_type='time', window_size=5)\n"
        "print(primitives.LOCK_FREE, type(primitives.counter()).__name__,"
        " type(b._state.window).__name__, type(t._state.window).__name__)\n"
    )
    locked = run_python(code, RESILIENT_PRIMITIVES="locked")
    assert locked.stdout.split() == [
        "False",
        "LockedCounter",
        "LockedCountWindow",
        "LockedTimeWindow",
    ], locked.stderr
    auto = run_python(code, RESILIENT_PRIMITIVES="auto")
    assert auto.stdout.split() == ["True", "Counter", "CountWindow", "TimeWindow"], auto.stderr


def test_a_bad_switch_value_is_a_config_error_naming_the_variable() -> None:
    out = run_python("import resilient", RESILIENT_PRIMITIVES="lockless")
    assert out.returncode == 1
    assert "ConfigError" in out.stderr
    assert "RESILIENT_PRIMITIVES='lockless'" in out.stderr
    assert "'auto' or 'locked'" in out.stderr


# -- windows against the reference ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 40),
    outcomes=st.lists(st.sampled_from(CODES), max_size=200),
    locked=st.booleans(),
)
def test_a_count_window_holds_what_the_reference_holds(
    size: int, outcomes: list[int], locked: bool
) -> None:
    """After every record, the tally is the reference's, and outcomes() the last N."""
    window = (LockedCountWindow if locked else CountWindow)(size)
    seen: list[int] = []
    assert window.tally() == Tally(0, 0, 0, 0)
    for outcome in outcomes:
        record_all(window, [outcome])
        seen.append(outcome)
        assert window.tally() == reference(seen, size)
    assert window.outcomes() == bytes(seen[-size:])


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(CODES), st.floats(0, 3, allow_nan=False)), max_size=100
    ),
    locked=st.booleans(),
)
def test_a_time_window_holds_what_the_reference_holds(
    steps: list[tuple[int, float]], locked: bool
) -> None:
    """20 buckets of 0.5 s: the tally counts exactly the outcomes of the buckets that are
    less than 20 buckets older than now's."""
    window = (LockedTimeWindow if locked else TimeWindow)(10.0)
    now, seen = 0.0, []
    for outcome, later in steps:
        now += later
        window.record(outcome, now)
        seen.append((outcome, int(now // 0.5)))
        current = int(now // 0.5)
        held = [o for o, bucket in seen if bucket > current - 20]
        expected = reference(held, len(held) or 1)
        assert window.tally(now) == expected._replace(stamp=len(seen))


def test_a_record_counts_from_the_moment_it_takes_its_number() -> None:
    """A thread paused between taking its number and writing its ring slot: the outcome
    is held from the take, and is let go once the window has moved N on and it has
    written. (The locked window records in one step under its lock: no such pause.)"""
    window = CountWindow(3)
    marks = window._marks[FAILURE]
    number, j = marks.take()  # the paused thread's take: number 0, failure 0
    assert window.tally() == Tally(1, 1, 0, 1)
    window.success()
    window.success()
    window.record(FAILURE)
    assert window.tally() == Tally(3, 2, 0, 4)
    window.success()  # number 0 has slid out, but its slot is not written yet: still held
    assert window.tally() == Tally(3, 2, 0, 5)
    marks.ring[j % 3] = number << 24 | j  # the paused thread resumes and writes
    assert window.tally() == Tally(3, 1, 0, 5)


def test_a_paused_record_does_not_hold_back_the_ones_after_it() -> None:
    """A thread pauses between taking a failure's numbers and writing its slot while the
    window moves far on. Failures recorded after it that fall out are not counted: they
    prove the paused one fallen too (numbers grow with kind-numbers), so the tally is
    exact even before it resumes. (Scanning that stopped at the paused slot counted every
    later failure as held, and opened a breaker that was failing half its calls.)"""
    window = CountWindow(10)
    paused = window._marks[FAILURE]
    number, j = paused.take()
    for _ in range(30):  # 30 failures, then 10 successes: every failure slides out
        window.record(FAILURE)
    for _ in range(10):
        window.success()
    assert window.tally() == Tally(10, 0, 0, 41)
    for _ in range(5):
        window.record(FAILURE)
    assert window.tally() == Tally(10, 5, 0, 46)
    paused.ring[j % 10] = number << 24 | j  # it resumes: nothing changes
    assert window.tally() == Tally(10, 5, 0, 46)


def test_a_million_slot_window_tallies_in_steps_that_do_not_grow_with_it() -> None:
    """Every failure is stepped over once as it falls out, never the whole window: after
    3 million records into a window of a million, a tally is a handful of steps. (The
    locked window keeps running counts under its lock: no steps at all.)"""
    window = CountWindow(1_000_000)
    for k in range(3_000_000 // 1000):
        window.record(FAILURE)
        for _ in range(999):
            window.success()
        if k % 500 == 0:
            window.tally()
    marks = window._marks[FAILURE]
    before = marks.hint
    assert window.tally() == Tally(1_000_000, 1000, 0, 3_000_000)
    assert marks.hint - before <= 500  # only the failures that fell out since the last look


# -- the torn tally: 16 threads, 200k tallies -----------------------------------------------

WRITERS = 16
#: Pairs of records each writer makes at most: 16 writers fill a count window of 16
#: million without sliding it (once it slides, a window of alternating outcomes may
#: rightly hold more failures than successes).
PAIRS = 500_000


@pytest.mark.parametrize(
    ("make", "tallies"),
    [
        (lambda: CountWindow(2 * WRITERS * PAIRS), 200_000),
        (lambda: TimeWindow(60.0), 200_000),
        # Locked, a tally and a record exclude each other: fewer reads show it.
        (lambda: LockedCountWindow(2 * WRITERS * PAIRS), 20_000),
        (lambda: LockedTimeWindow(60.0), 20_000),
    ],
    ids=["count", "time", "locked_count", "locked_time"],
)
def test_a_tally_under_16_writers_never_shows_a_mix_no_instant_had(
    make: Callable[[], Any], tallies: int, switch_often: None
) -> None:
    """Each writer records a success before each failure, so at every instant successes
    are at least failures. Tallies taken while 16 writers record must all say so, and
    their stamps never go back. (The writers stop once the reader is done, or after
    PAIRS pairs each.)"""
    window = make()
    reading = threading.Event()
    stop = threading.Event()
    torn: list[Tally] = []
    taken = 0

    def worker(i: int) -> None:
        nonlocal taken
        if i == WRITERS:
            last = -1
            reading.set()
            try:
                for taken in range(1, tallies + 1):  # noqa: B007 - read after the loop
                    seen = window.tally(5.0)
                    if seen.failures * 2 > seen.calls or seen.stamp < last:
                        torn.append(seen)
                    last = seen.stamp
            finally:
                stop.set()
            return
        assert reading.wait(20)
        for _ in range(PAIRS):
            if stop.is_set():
                return
            window.record(SUCCESS, 5.0)
            window.record(FAILURE, 5.0)

    run_threads(WRITERS + 1, worker)
    assert torn == []
    assert taken == tallies


# -- the warm-up flag -----------------------------------------------------------------------


def test_a_second_warm_up_in_a_time_window_opens_like_a_fresh_breaker(flavour: Flavour) -> None:
    """A time-window breaker warms up (20 calls), then its window empties as time passes.
    19 failures and a success (95 %, min_calls reached) must then open it, exactly as the
    same 20 calls open a breaker that never warmed up."""

    def breaker(clock: ManualClock) -> CircuitBreaker:
        return CircuitBreaker(window_type="time", window_size=10, min_calls=20, clock=clock)

    def nineteen_failures_and_a_success(b: CircuitBreaker) -> None:
        for _ in range(19):
            with pytest.raises(ConnectionError):
                flavour.call(b, ConnectionError("down"))
        assert b.state is State.CLOSED  # 19 calls: short of min_calls
        flavour.call(b)

    fresh_clock = ManualClock()
    fresh = breaker(fresh_clock)
    nineteen_failures_and_a_success(fresh)
    assert fresh.state is State.OPEN

    clock = ManualClock()
    warmed = breaker(clock)
    for _ in range(20):
        flavour.call(warmed)  # warm: 20 calls, none failed
    clock.advance(11)  # every one of them has slid out
    assert warmed.metrics.calls == 0
    nineteen_failures_and_a_success(warmed)
    assert warmed.state is State.OPEN


@pytest.mark.parametrize("window_type", ["count", "time"])
def test_racing_warm_up_judges_leave_the_flag_of_the_latest_tally(
    window_type: str, switch_often: None
) -> None:
    """8 threads fail while the window warms up; whichever judge runs last, the flag is
    that of the latest tally, so the success completing min_calls opens the breaker."""
    clock = ManualClock()
    for _ in range(20):
        b = CircuitBreaker(window_type=window_type, window_size=100, min_calls=41, clock=clock)

        def fail(_: int, b: CircuitBreaker = b) -> None:
            for _ in range(5):
                with pytest.raises(ConnectionError):
                    b.call(_raise)

        run_threads(8, fail)
        assert b.state is State.CLOSED
        assert b._state.pending
        b.call(lambda: None)
        assert b.state is State.OPEN


def _raise() -> None:
    raise ConnectionError("down")


def test_the_factories_pick_the_variant_in_force() -> None:
    expected = (
        (CountWindow, TimeWindow)
        if primitives.LOCK_FREE
        else (
            LockedCountWindow,
            LockedTimeWindow,
        )
    )
    assert type(count_window(5)) is expected[0]
    assert type(time_window(5.0)) is expected[1]


@pytest.mark.parametrize("make", [CountWindow, LockedCountWindow])
def test_outcomes_read_while_8_threads_record_never_fail(
    make: Callable[[int], Any], switch_often: None
) -> None:
    """What a resizing reload reads, while the window is recorded to: always a run of
    valid codes no longer than the window (on a build without a GIL, iterating a deque
    that other threads append to raised RuntimeError half-way through a reload)."""
    window = make(500)
    stop = threading.Event()
    reads: list[bytes] = []

    def worker(i: int) -> None:
        if i == 8:
            try:
                for _ in range(2000):
                    reads.append(window.outcomes())
            finally:
                stop.set()
            return
        for k in range(200_000):
            if stop.is_set():
                return
            window.record(CODES[(i + k) % 4], 0.0)

    run_threads(9, worker)
    assert len(reads) == 2000
    assert all(len(r) <= 500 and set(r) <= set(CODES) for r in reads)


@pytest.mark.parametrize("locked", [False, True])
def test_a_resizing_reload_while_8_threads_call_keeps_every_count_exact(
    locked: bool, env: pytest.MonkeyPatch, switch_often: None
) -> None:
    """8 threads call a breaker (half of the calls fail, under its failure_rate of 1.0)
    while reloads resize its window again and again: nothing else raises, and afterwards
    the window holds exactly the calls made since, up to its size."""
    from resilient._core.state import window as window_module

    env.setattr(window_module, "LOCK_FREE", not locked)
    name = fresh("resized")
    b = CircuitBreaker(name, window_size=1000, min_calls=1000, failure_rate=1.0)
    stop = threading.Event()

    def worker(i: int) -> None:
        if i == 8:
            try:
                for size in [600, 1000, 2000, 900] * 5:
                    env.setenv(config.variable("breaker", "window_size", name), str(size))
                    env.setenv(config.variable("breaker", "min_calls", name), str(size))
                    resilient.reload()
            finally:
                stop.set()
            return
        for _ in range(100_000):
            if stop.is_set():
                return
            with pytest.raises(ConnectionError):
                b.call(_raise)
            b.call(lambda: None)  # half fail: under failure_rate=1.0 whatever the size

    run_threads(9, worker)
    assert type(b._state.window).__name__ == ("LockedCountWindow" if locked else "CountWindow")
    assert b.state is State.CLOSED
    assert b.metrics.calls <= 900
    for _ in range(900):
        b.call(lambda: None)
    assert (b.metrics.calls, b.metrics.failures) == (900, 0)
