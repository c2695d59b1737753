"""Concurrency hammers: the lock-free claims of the windows and the breaker, with exact counts.

Every test here runs with ``sys.setswitchinterval(1e-6)`` so threads are preempted as
often as the interpreter allows. Nothing synchronises by sleeping: threads meet at
``threading.Barrier``/``threading.Event``, tasks at ``anyio.Event``, and time comes from a
``ManualClock``. Every thread is joined with a timeout and every event loop runs in a
thread joined with a timeout (and under ``anyio.fail_after``), so a deadlock or a
serialising lock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest

from resilient import BreakerMetrics, CircuitBreaker, CircuitOpenError, State, StateChange
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
)
from resilient.testing import ManualClock

from .conftest import FORMS, Flavour

T = TypeVar("T")

#: How long any one barrier or event wait may take before the test fails (seconds).
WAIT = 20.0
#: How long a whole crowd of threads (or one event loop) may run before the test fails.
JOIN = 60.0

BOOM = ConnectionError("boom")
OPEN_FOR = 10.0


@pytest.fixture(autouse=True)
def _every_test_switches_often(switch_often: None) -> None:
    """Every test here runs with threads preempted as often as the interpreter allows."""


# -- drivers: a crowd of threads or tasks that start together and must all finish ----------


def run_threads(
    n: int, worker: Callable[[int], T], conduct: Callable[[], None] | None = None
) -> list[T]:
    """Run ``worker(0)`` .. ``worker(n - 1)`` in n threads released together by a Barrier.

    ``conduct`` runs in the calling thread meanwhile (to observe and release the crowd).
    Returns the workers' results in order; re-raises the first error of conduct or of a
    worker; fails if any thread is still running after JOIN seconds.
    """
    start = threading.Barrier(n, timeout=WAIT)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = worker(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    conduct_error: BaseException | None = None
    try:
        if conduct is not None:
            conduct()
    except BaseException as exc:
        conduct_error = exc
    deadline = time.monotonic() + JOIN
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    assert not stuck, f"{stuck} of {n} threads still running after {JOIN}s"
    if conduct_error is not None:
        raise conduct_error
    if errors:
        raise errors[0]
    return results


def run_async(mode: str, main: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(main)`` on the given backend, bounded: fails after JOIN seconds.

    The loop runs in its own thread so that even a loop blocked on a thread lock (which
    no fail_after can interrupt) fails the test instead of hanging it.
    """

    async def bounded() -> T:
        with anyio.fail_after(JOIN):
            return await main()

    return run_threads(1, lambda _: anyio.run(bounded, backend=mode))[0]


async def run_tasks(
    n: int,
    worker: Callable[[int], Awaitable[T]],
    conduct: Callable[[], Awaitable[None]] | None = None,
) -> list[T]:
    """The tasks' ``run_threads``: n tasks released together, ``conduct`` in the host task."""
    results: list[Any] = [None] * n
    go = anyio.Event()

    async def run(i: int) -> None:
        await go.wait()
        results[i] = await worker(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(run, i)
        go.set()
        if conduct is not None:
            await conduct()
    return results


class Countdown:
    """Done once ``arrive()`` has been called n times: the tasks' analogue of a Barrier."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = anyio.Event()

    def arrive(self) -> None:
        self.left -= 1
        assert self.left >= 0, "more arrivals than expected"
        if self.left == 0:
            self.done.set()

    async def wait(self) -> None:
        with anyio.fail_after(WAIT):
            await self.done.wait()


async def wait_for(event: anyio.Event) -> None:
    with anyio.fail_after(WAIT):
        await event.wait()


def call_sync(form: str, b: CircuitBreaker, body: Callable[[], T]) -> T:
    """One call through ``b`` in the given form (decorator, with, call)."""
    if form == "decorator":
        return b(body)()
    if form == "call":
        return b.call(body)
    with b:
        return body()


async def call_async(form: str, b: CircuitBreaker, body: Callable[[], Awaitable[T]]) -> T:
    """One call through ``b`` in the given async form (decorator, async with, call_async)."""
    if form == "decorator":
        return await b(body)()
    if form == "call":
        return await b.call_async(body)
    async with b:
        return await body()


def tripped(clock: ManualClock, **options: Any) -> CircuitBreaker:
    """A breaker that has just opened (4 failures of 4 calls) at the clock's time."""
    b = CircuitBreaker(
        "svc", window_size=10, min_calls=4, open_for=OPEN_FOR, clock=clock, **options
    )
    for _ in range(4):
        with pytest.raises(ConnectionError):
            b.call(raise_boom)
    assert b.state is State.OPEN
    return b


def raise_boom() -> str:
    raise BOOM


# -- 1. the windows: 8 threads x 100,000 records, exact totals ------------------------------

THREADS = 8
RECORDS = 100_000
CODES = (SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE)
FROZEN_NOW = 12.5  # one instant for every record and tally of a time window


def plans() -> list[list[int]]:
    """Per thread, a different known mix of the four outcome codes (seeded, so repeatable)."""
    return [
        random.Random(t).choices(CODES, weights=(1 + t, 8 - t, 1 + t % 3, 2), k=RECORDS)
        for t in range(THREADS)
    ]


def expected_tally(plans: list[list[int]]) -> Tally:
    seen = Counter(code for plan in plans for code in plan)
    return Tally(
        calls=sum(seen.values()),
        failures=seen[FAILURE] + seen[SLOW_FAILURE],
        slow=seen[SLOW_SUCCESS] + seen[SLOW_FAILURE],
        stamp=sum(seen.values()),  # every record counts towards the stamp
    )


def hammer(window: Any, work: list[list[int]]) -> list[Tally]:
    """One thread per plan records it into ``window``; one more reads tally() meanwhile.

    Returns what the reader saw (at most 500 reads; it stops once the writers are done).
    """
    writers_done = threading.Event()
    finished = itertools.count()  # next() on it is atomic: counts the finished writers
    reads: list[Tally] = []

    def worker(i: int) -> None:
        if i < len(work):
            record = window.record
            for code in work[i]:
                record(code, FROZEN_NOW)
            if next(finished) == len(work) - 1:
                writers_done.set()
            return
        for _ in range(500):
            if writers_done.is_set():
                return
            reads.append(window.tally(FROZEN_NOW))

    run_threads(len(work) + 1, worker)
    return reads


# Both variants of each window, whichever the interpreter would pick: the locked ones are
# what a free-threaded build runs (CI also runs this file with RESILIENT_PRIMITIVES=locked).
WINDOW_CLASSES = {
    "count": lambda: CountWindow(THREADS * RECORDS),
    "locked_count": lambda: LockedCountWindow(THREADS * RECORDS),
    "time": lambda: TimeWindow(60.0),
    "locked_time": lambda: LockedTimeWindow(60.0),
}


@pytest.mark.parametrize("make", list(WINDOW_CLASSES.values()), ids=list(WINDOW_CLASSES))
def test_window_loses_and_doubles_no_record_under_8_threads(make: Callable[[], Any]) -> None:
    """8 threads x 100,000 records into one window: tally() is exactly what was recorded.

    Three repetitions, each on a fresh window; a ninth thread reads tally() while the
    writers run, and must never fail nor see a count go down or overshoot the total.
    """
    work = plans()
    expected = expected_tally(work)
    assert expected.calls == THREADS * RECORDS
    for _ in range(3):
        window = make()
        reads = hammer(window, work)
        assert window.tally(FROZEN_NOW) == expected
        for before, after in itertools.pairwise(reads):
            assert before.calls <= after.calls
            assert before.failures <= after.failures
            assert before.slow <= after.slow
            assert before.stamp <= after.stamp
        assert all(r.calls <= expected.calls for r in reads)


@pytest.mark.parametrize("make", [CountWindow, LockedCountWindow])
def test_a_sliding_count_window_holds_exactly_the_last_n_after_8_threads(
    make: Callable[[int], Any],
) -> None:
    """A window of 1,000 under 8 threads x 100,000 records slides 800 times over: after
    them it holds exactly 1,000 calls, and once 1,000 known outcomes follow from one
    thread, exactly those (every record of the storm has slid out, none is stuck)."""
    window = make(1000)
    work = plans()
    hammer(window, work)
    after = window.tally(FROZEN_NOW)
    assert after.calls == 1000
    assert after.stamp == THREADS * RECORDS
    known = random.Random(99).choices(CODES, k=1000)
    for code in known:
        window.record(code, FROZEN_NOW)
    expected = expected_tally([known])
    assert window.tally(FROZEN_NOW) == expected._replace(stamp=THREADS * RECORDS + 1000)
    assert window.outcomes() == bytes(known)


def test_time_window_keeps_a_record_that_lands_after_a_concurrent_read() -> None:
    """A writer reads the clock, then records; a reader in between must not lose the record.

    The breaker reads ``now`` in ``_settle`` and records afterwards, with the user's
    ``failure_result`` predicate in between; here that predicate holds the writer thread
    while another thread moves the clock 2.5 s on and reads the metrics. Both calls
    happened at t=0, well inside the 20 s window, so both must be counted.
    """
    clock = ManualClock()
    judging = threading.Event()
    resume = threading.Event()

    def failure_result(result: object) -> bool:
        if result == "hold":
            judging.set()
            assert resume.wait(WAIT)
        return False

    b = CircuitBreaker(
        window_type="time",
        window_size=20,  # buckets of 1 s
        min_calls=1000,
        failure_result=failure_result,
        clock=clock,
    )
    assert b.call(lambda: "ok") == "ok"  # t=0: the first bucket

    def conduct() -> None:
        try:
            assert judging.wait(WAIT)
            clock.advance(2.5)
            assert b.metrics.calls == 1  # the held call has not been recorded yet
        finally:
            resume.set()

    run_threads(1, lambda _: b.call(lambda: "hold"), conduct)
    assert b.metrics.calls == 2


# -- 2. the same exactness through the breaker --------------------------------------------

BIG = 200_000
CALLS_PER_THREAD = 20_000
FAIL_EVERY = 100  # one call in 100 fails

WINDOWS = {
    # the C-level happy path: a success is one next() on the window's counter
    "count": {"window_type": "count", "window_size": BIG},
    # every outcome goes through TimeWindow.record
    "time": {"window_type": "time", "window_size": 60},
    # timed tokens: every call reads the clock and settles through _settle
    "timed": {"window_type": "count", "window_size": BIG, "slow_call_duration": 1.0},
}


def fails(thread: int, k: int) -> bool:
    return (k + 7 * thread) % FAIL_EVERY == 0


@pytest.mark.parametrize("window", list(WINDOWS))
def test_breaker_metrics_are_exact_under_8_threads(window: str) -> None:
    """8 threads x 20,000 calls, successes and ConnectionErrors, through all three forms.

    With min_calls out of reach the breaker never decides: metrics count every call and
    every failure exactly, and the state stays CLOSED.
    """
    b = CircuitBreaker(failure_rate=1.0, min_calls=BIG, clock=ManualClock(), **WINDOWS[window])

    def ok() -> str:
        return "ok"

    def worker(t: int) -> Counter[str]:
        form = FORMS[t % len(FORMS)]
        seen: Counter[str] = Counter()
        for k in range(CALLS_PER_THREAD):
            try:
                call_sync(form, b, raise_boom if fails(t, k) else ok)
                seen["ok"] += 1
            except ConnectionError:
                seen["failed"] += 1
        return seen

    seen = sum(run_threads(THREADS, worker), Counter())
    failures = sum(fails(t, k) for t in range(THREADS) for k in range(CALLS_PER_THREAD))
    calls = THREADS * CALLS_PER_THREAD
    assert seen == Counter(ok=calls - failures, failed=failures)
    assert b.metrics == BreakerMetrics(State.CLOSED, calls, failures, 0, None, None, 0)


# -- 3. HALF_OPEN admits exactly half_open_calls probes -----------------------------------

CROWD = 50
PROBES = 5
HALF_OPEN_ROUNDS = 10


def probes_race_threads(
    b: CircuitBreaker, form: str, probe: Callable[[], str]
) -> tuple[dict[str, Any], list[Any]]:
    decided = threading.Barrier(CROWD + 1, timeout=WAIT)  # every caller, and the conductor
    release = threading.Event()
    admitted: list[int] = []
    held: dict[str, Any] = {}

    def body() -> str:
        admitted.append(1)
        decided.wait()
        assert release.wait(WAIT), "never released"
        return probe()

    def caller(i: int) -> Any:
        try:
            return call_sync(form, b, body)
        except CircuitOpenError as exc:
            decided.wait()
            return exc
        except ConnectionError:
            return "failed"

    def conduct() -> None:
        try:
            decided.wait()
            held.update(admitted=len(admitted), metrics=b.metrics)
        finally:
            release.set()

    return held, run_threads(CROWD, caller, conduct)


def probes_race_tasks(
    b: CircuitBreaker, form: str, probe: Callable[[], str]
) -> Callable[[], Awaitable[tuple[dict[str, Any], list[Any]]]]:
    async def main() -> tuple[dict[str, Any], list[Any]]:
        decided = Countdown(CROWD)
        release = anyio.Event()
        admitted: list[int] = []
        held: dict[str, Any] = {}

        async def body() -> str:
            admitted.append(1)
            decided.arrive()
            await release.wait()
            return probe()

        async def caller(i: int) -> Any:
            try:
                return await call_async(form, b, body)
            except CircuitOpenError as exc:
                decided.arrive()
                return exc
            except ConnectionError:
                return "failed"

        async def conduct() -> None:
            try:
                await decided.wait()
                held.update(admitted=len(admitted), metrics=b.metrics)
            finally:
                release.set()

        return held, await run_tasks(CROWD, caller, conduct)

    return main


@pytest.mark.parametrize("probes", ["succeed", "fail"])
def test_half_open_admits_exactly_half_open_calls_of_50_racing_callers(
    flavour: Flavour, probes: str
) -> None:
    """50 callers race into a breaker whose open_for has just passed.

    The admitted bodies hold until every caller has been admitted or rejected: exactly
    half_open_calls bodies run, the other 45 get CircuitOpenError (no retry_after: probes
    are in flight), and the breaker turned HALF_OPEN exactly once. Released, the probes
    decide, once: all succeed -> CLOSED with a fresh window, all fail -> OPEN again for
    open_for. Threads race for 10 rounds (a fresh breaker each): a check-then-act race
    in admission or in the OPEN -> HALF_OPEN turn would not hide in every one.
    """
    for _ in range(HALF_OPEN_ROUNDS if flavour.mode == "sync" else 1):
        half_open_race(flavour, probes)


def half_open_race(flavour: Flavour, probes: str) -> None:
    """One round: trip, let open_for pass, race CROWD callers, check every count."""
    clock = ManualClock(start=1000.0)
    b = tripped(clock, half_open_calls=PROBES)
    clock.advance(OPEN_FOR)
    changes: list[StateChange] = []
    b.add_listener(changes.append, StateChange)

    def probe() -> str:
        if probes == "fail":
            raise BOOM
        return "ok"

    if flavour.mode == "sync":
        held, outcomes = probes_race_threads(b, flavour.form, probe)
    else:
        held, outcomes = run_async(flavour.mode, probes_race_tasks(b, flavour.form, probe))

    rejections = [o for o in outcomes if isinstance(o, CircuitOpenError)]
    assert held["admitted"] == PROBES
    assert held["metrics"] == BreakerMetrics(State.HALF_OPEN, 0, 0, 0, None, None, CROWD - PROBES)
    assert len(rejections) == CROWD - PROBES
    assert {(e.state, e.retry_after) for e in rejections} == {(State.HALF_OPEN, None)}
    ran = [o for o in outcomes if not isinstance(o, CircuitOpenError)]
    assert ran == ["ok" if probes == "succeed" else "failed"] * PROBES
    decided = State.CLOSED if probes == "succeed" else State.OPEN
    assert [(c.old, c.new) for c in changes] == [
        (State.OPEN, State.HALF_OPEN),  # one of the 50 racers turned it, once
        (State.HALF_OPEN, decided),  # the last probe to report decided, once
    ]
    if probes == "succeed":
        assert b.metrics == BreakerMetrics(State.CLOSED, 0, 0, 0, None, None, CROWD - PROBES)
    else:
        assert b.state is State.OPEN
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: "never")
        assert info.value.retry_after == OPEN_FOR


# -- 4. cancellation in the middle of a call ----------------------------------------------

ASYNC_MODES = ["asyncio", "trio"]


class Crowd:
    """Tasks whose bodies hold on a per-task gate, each in its own cancel scope."""

    def __init__(self, b: CircuitBreaker, form: str) -> None:
        self.b = b
        self.form = form
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.gates: dict[int, anyio.Event] = {}
        self.finished: dict[int, anyio.Event] = {}
        self.admitted: list[int] = []  # in the order the bodies started
        self.interrupted: list[int] = []  # bodies that a cancellation hit while held
        self.failing: set[int] = set()
        self.outcomes: dict[int, str] = {}

    async def caller(self, i: int, decided: Countdown) -> None:
        self.gates[i] = anyio.Event()
        self.finished[i] = anyio.Event()

        async def body() -> str:
            self.admitted.append(i)
            decided.arrive()
            try:
                await self.gates[i].wait()
            except BaseException:
                self.interrupted.append(i)
                raise
            if i in self.failing:
                raise BOOM
            return "ok"

        try:
            with anyio.CancelScope() as scope:
                self.scopes[i] = scope
                try:
                    self.outcomes[i] = await call_async(self.form, self.b, body)
                except CircuitOpenError:
                    self.outcomes[i] = "rejected"
                    decided.arrive()
                except ConnectionError:
                    self.outcomes[i] = "failed"
            if scope.cancelled_caught:
                self.outcomes[i] = "cancelled"
        finally:
            self.finished[i].set()

    async def cancel(self, victims: list[int]) -> None:
        for i in victims:
            self.scopes[i].cancel()
        for i in victims:
            await wait_for(self.finished[i])

    async def release(self, which: list[int]) -> None:
        for i in which:
            self.gates[i].set()
            await wait_for(self.finished[i])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_cancelled_probes_give_their_permit_back(mode: str, form: str) -> None:
    """Half-open, 50 tasks race; 3 of the 5 admitted probes are cancelled mid-call.

    The cancelled probes report nothing and return their permits: a second wave of 50
    gets exactly 3 probes in, no more. The 5 surviving probes then report one by one
    (one failure): metrics count exactly those, rejections count exactly 45 + 47, and the
    fifth report closes the breaker (1 failure of 5 < 0.5).
    """
    clock = ManualClock(start=1000.0)
    b = tripped(clock, half_open_calls=PROBES, failure_rate=0.5)
    clock.advance(OPEN_FOR)
    cancelled = 3

    async def main() -> Crowd:
        crowd = Crowd(b, form)
        async with anyio.create_task_group() as tg:
            wave = Countdown(CROWD)
            for i in range(CROWD):
                tg.start_soon(crowd.caller, i, wave)
            await wave.wait()
            first = list(crowd.admitted)
            assert len(first) == PROBES
            assert b.metrics == BreakerMetrics(
                State.HALF_OPEN, 0, 0, 0, None, None, CROWD - PROBES
            )

            victims = first[:cancelled]
            await crowd.cancel(victims)
            assert sorted(crowd.interrupted) == sorted(victims)
            assert b.metrics == BreakerMetrics(
                State.HALF_OPEN, 0, 0, 0, None, None, CROWD - PROBES
            )

            wave = Countdown(CROWD)
            for i in range(CROWD, 2 * CROWD):
                tg.start_soon(crowd.caller, i, wave)
            await wave.wait()
            second = crowd.admitted[PROBES:]
            assert len(second) == cancelled  # exactly the permits given back
            rejected = (CROWD - PROBES) + (CROWD - cancelled)

            survivors = first[cancelled:] + second
            crowd.failing.add(survivors[0])
            await crowd.release(survivors[:-1])
            assert b.metrics == BreakerMetrics(
                State.HALF_OPEN, PROBES - 1, 1, 0, None, None, rejected
            )
            await crowd.release(survivors[-1:])
            assert b.metrics == BreakerMetrics(State.CLOSED, 0, 0, 0, None, None, rejected)
        return crowd

    crowd = run_async(mode, main)
    assert Counter(crowd.outcomes.values()) == Counter(
        rejected=2 * CROWD - PROBES - cancelled, cancelled=cancelled, ok=PROBES - 1, failed=1
    )


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_calls_cancelled_mid_call_record_nothing(mode: str, form: str, window: str) -> None:
    """Closed, 60 tasks all inside the body at once; every third is cancelled there.

    Cancelled calls count as neither success nor failure: after the rest complete
    (every fourth of them failing), metrics count exactly the completed calls.
    """
    b = CircuitBreaker(failure_rate=1.0, min_calls=BIG, clock=ManualClock(), **WINDOWS[window])
    n = 60
    victims = [i for i in range(n) if i % 3 == 0]
    rest = [i for i in range(n) if i % 3 != 0]

    async def main() -> Crowd:
        crowd = Crowd(b, form)
        crowd.failing.update(i for i in rest if i % 4 == 1)
        async with anyio.create_task_group() as tg:
            inside = Countdown(n)
            for i in range(n):
                tg.start_soon(crowd.caller, i, inside)
            await inside.wait()
            assert b.metrics.calls == 0
            await crowd.cancel(victims)
            assert sorted(crowd.interrupted) == victims
            assert b.metrics.calls == 0
            await crowd.release(rest)
        return crowd

    crowd = run_async(mode, main)
    failed = len(crowd.failing)
    assert failed == sum(i % 4 == 1 for i in rest) > 0
    assert Counter(crowd.outcomes.values()) == Counter(
        cancelled=len(victims), failed=failed, ok=len(rest) - failed
    )
    assert b.metrics == BreakerMetrics(State.CLOSED, len(rest), failed, 0, None, None, 0)


# -- 5. no lock is held while user code runs ----------------------------------------------


@pytest.mark.parametrize("state", ["closed", "half_open"])
def test_user_code_of_concurrent_calls_runs_at_the_same_time(flavour: Flavour, state: str) -> None:
    """N callers through one breaker are all inside the guarded body at once.

    Threads (8) meet at a Barrier inside the body, tasks (50) wait inside it until all
    have arrived: a breaker that held a lock around user code (as pybreaker does) would
    let one in at a time and the barrier would time out. Also in HALF_OPEN, where
    admission takes the breaker's lock, with half_open_calls = N.
    """
    n = THREADS if flavour.mode == "sync" else CROWD
    clock = ManualClock(start=1000.0)
    if state == "closed":
        b = CircuitBreaker(min_calls=BIG, window_size=BIG, clock=clock)
    else:
        b = tripped(clock, half_open_calls=n)
        clock.advance(OPEN_FOR)

    if flavour.mode == "sync":
        inside = threading.Barrier(n, timeout=WAIT)

        def body() -> int:
            return inside.wait()  # a distinct arrival index per thread

        results = run_threads(n, lambda _: call_sync(flavour.form, b, body))
    else:

        async def main() -> list[int]:
            arrived = Countdown(n)
            order = itertools.count()

            async def body() -> int:
                index = next(order)
                arrived.arrive()
                await arrived.wait()
                return index

            return await run_tasks(n, lambda _: call_async(flavour.form, b, body))

        results = run_async(flavour.mode, main)

    assert sorted(results) == list(range(n))
    if state == "closed":
        assert b.metrics == BreakerMetrics(State.CLOSED, n, 0, 0, None, None, 0)
    else:
        assert b.metrics == BreakerMetrics(State.CLOSED, 0, 0, 0, None, None, 0)


# -- 6. concurrent transitions --------------------------------------------------------------


STORM_CALLS = 25


def test_failure_storm_opens_the_breaker_exactly_once(flavour: Flavour) -> None:
    """Many callers fail at once through a CLOSED breaker with min_calls=10.

    Exactly one CLOSED -> OPEN transition happens, however many failures judged the
    window over the threshold at the same moment: a state listener hears of one, and
    moves the clock 1 s on when it does, so that any later re-opening (by a failure
    admitted before the first opening) would restart open_for and show in retry_after.
    Only ConnectionError and CircuitOpenError escape; every body that ran is in the
    window (calls admitted before the opening still report into it); every rejection
    is counted.
    """
    n = 16 if flavour.mode == "sync" else CROWD
    clock = ManualClock(start=1000.0)
    b = CircuitBreaker(window_size=n * STORM_CALLS, min_calls=10, open_for=OPEN_FOR, clock=clock)
    changes: list[StateChange] = []

    def opened(change: StateChange) -> None:
        changes.append(change)  # list.append is atomic: no change can be lost
        clock.advance(1.0)

    b.add_listener(opened, StateChange)  # (not its rejections)

    if flavour.mode == "sync":

        def caller(i: int) -> list[Any]:
            seen: list[Any] = []
            for _ in range(STORM_CALLS):
                try:
                    call_sync(flavour.form, b, raise_boom)
                except (ConnectionError, CircuitOpenError) as exc:
                    seen.append(exc)
            return seen

        per_caller = run_threads(n, caller)
    else:

        async def fail_soon() -> str:
            await anyio.lowlevel.checkpoint()  # let the others in before anyone fails
            raise BOOM

        async def acaller(i: int) -> list[Any]:
            seen: list[Any] = []
            for _ in range(STORM_CALLS):
                try:
                    await call_async(flavour.form, b, fail_soon)
                except (ConnectionError, CircuitOpenError) as exc:
                    seen.append(exc)
            return seen

        per_caller = run_async(flavour.mode, lambda: run_tasks(n, acaller))

    seen = [exc for excs in per_caller for exc in excs]
    assert len(seen) == n * STORM_CALLS  # nothing else escaped, nothing went missing
    rejections = [e for e in seen if isinstance(e, CircuitOpenError)]
    failures = len(seen) - len(rejections)
    assert [(c.old, c.new, c.at) for c in changes] == [(State.CLOSED, State.OPEN, 1000.0)]
    assert b.metrics == BreakerMetrics(
        State.OPEN, failures, failures, 0, 1.0, 0.0, len(rejections)
    )
    assert failures >= 10
    # Rejected before the listener moved the clock: 10 s to go, after: 9 s.
    assert {e.state for e in rejections} == {State.OPEN}
    assert {e.retry_after for e in rejections} <= {OPEN_FOR, OPEN_FOR - 1}
    with pytest.raises(CircuitOpenError) as info:
        b.call(lambda: "never")
    assert info.value.retry_after == OPEN_FOR - 1  # open_for counts from the one opening
    assert b.metrics.rejected == len(rejections) + 1
