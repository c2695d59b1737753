"""The race driver: runs a hedging policy's decisions on asyncio and trio.

A hedged call runs its first attempt in the caller's own task, under an alarm
(``backend.Alarms``): an entry in a FIFO queue that one timer per loop and delay
watches. Most calls answer before the alarm rings; they cost that entry and two clock
reads, and spawn nothing. When it rings, a :class:`_Race` is made and the next attempt
starts in a task of its own (``backend.spawn``); further ones follow each ``delay``
after the last (a pacer task), or at once when an attempt fails. The first success
wins: the others are cancelled (the first attempt through its alarm, in the caller's
task) and the caller waits until every task it started has ended before it returns
or raises, so nothing is left running, even when the caller itself is cancelled.

What to do is the policy's (:class:`Plan`, :class:`Decisions`): whether an attempt may
start, what an ended attempt means, what the call answers. This module only runs it.
Everything here runs on the caller's event loop thread, so a race needs no lock.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import copy_context
from time import perf_counter
from typing import Any, ParamSpec, Protocol, TypeVar

from resilient._core.configuration.events import Meter
from resilient._core.execution import backend
from resilient._core.execution.drivers import outcome_of

__all__ = ["Decisions", "Plan", "hedging"]

P = ParamSpec("P")
R = TypeVar("R")


class Decisions(Protocol):
    """One call's attempts, as the policy sees them: no I/O, no tasks, no waiting."""

    #: attempts started so far (the first one included), and the most the call may start
    started: int
    total: int
    #: no attempt will start any more: a winner is known, or every attempt has ended
    settled: bool

    def start(self, reason: str) -> bool:
        """May the next attempt start (``reason``: "delay" or "failure")? If so it is
        counted as started."""
        ...

    def ended(self, n: int, exc: BaseException | None, result: object) -> bool:
        """Attempt ``n`` (0 is the first) ended; True if the next one should start at once."""
        ...

    def abandon(self) -> None:
        """The caller is gone (cancelled): settle, start nothing more."""
        ...

    def escalated(self, n: int, exc: BaseException) -> None:
        """Attempt ``n`` raised what is neither a failure nor its cancellation
        (KeyboardInterrupt, SystemExit): settle; the call ends with it, whatever else."""
        ...

    def answer(self) -> Any:
        """The winner's result, or raise the last failure (told about the others)."""
        ...


class Delays(Protocol):
    """When calls hedge: the policy's decision, read at the start of each call."""

    #: the alarms of the delay in force; None: no delay is known yet (calls go unhedged,
    #: timed for ``record``)
    alarms: backend.Alarms | None
    #: None for a fixed delay; else calls' latencies are recorded
    quantile: float | None

    def record(self, latency: float) -> None:
        """A call succeeded after ``latency`` seconds."""


class Plan(Protocol):
    """What the driver reads of a hedging policy's configuration."""

    #: when to hedge; None: hedging is switched off (calls pass straight through)
    delays: Delays | None
    #: whether the alarms ring on the loop's timers; False: the policy's own clock
    #: paces the attempts (``sleep_async``), through a task started with each call
    timed: bool
    budget: Any  # a RetryBudget: each call deposits, each hedge withdraws
    meter: Meter | None
    policy: Any
    #: the policy's clock, read for latencies and paced delays
    now: Callable[[], float]

    async def sleep_async(self, seconds: float) -> None: ...

    def race(self, delay: float) -> Decisions: ...


class _NeverRan(BaseException):
    """How an attempt cancelled before its task began ends: a cancellation."""


_NEVER_RAN = _NeverRan()


class _Race:
    """A hedged call once its first attempt alone would not do: the tasks it started."""

    __slots__ = (
        "alarm",
        "alive",
        "args",
        "cancels",
        "context",
        "decisions",
        "delay",
        "escalation",
        "flag",
        "fn",
        "kwargs",
        "last_start",
        "now",
        "plan",
        "primary",
    )

    def __init__(self, alarm: backend.Alarm, started: float) -> None:
        plan, fn, args, kwargs, context, alarms = alarm.call
        self.alarm = alarm
        self.plan: Plan = plan
        self.fn, self.args, self.kwargs, self.context = fn, args, kwargs, context
        self.delay: float = alarms.seconds
        # The hedges after the first are paced on the clock the first one rang by: the
        # loop's when timed (a trio MockClock too), else the policy's own.
        self.now: Callable[[], float] = alarm.now if plan.timed else plan.now
        self.decisions = plan.race(self.delay)
        self.flag, _ = backend.event()
        self.cancels: dict[int, Callable[[], object]] = {}  # by attempt; -1: the pacer
        self.alive = 0  # tasks started and not over
        self.primary = True  # the first attempt still runs, in the caller's task
        #: a KeyboardInterrupt or SystemExit an attempt raised: the call's end, even
        #: when the caller is cancelled meanwhile
        self.escalation: BaseException | None = None
        self.last_start = started

    # -- starting -------------------------------------------------------------------

    def start(self, reason: str) -> None:
        """The next attempt, in a task of its own, if the policy agrees."""
        decisions = self.decisions
        if not decisions.start(reason):
            self._check()
            return
        n = decisions.started - 1
        self.last_start = self.now()
        self._spawn(n, functools.partial(self._attempt, n))

    def pace(self) -> None:
        """Start the attempts that wait for ``delay`` after the last, in a pacer task."""
        decisions = self.decisions
        if not decisions.settled and decisions.started < decisions.total:
            self._spawn(-1, self._pace)

    def _spawn(self, n: int, async_fn: Callable[[], Awaitable[None]]) -> None:
        self.alive += 1
        left = functools.partial(self._left, n)
        self.cancels[n] = backend.spawn(async_fn, self.context.copy(), left)

    async def _pace(self) -> None:
        plan, decisions = self.plan, self.decisions
        while not decisions.settled and decisions.started < decisions.total:
            wait = self.last_start + self.delay - self.now()
            if wait > 0:
                await plan.sleep_async(wait)
            else:
                self.start("delay")

    async def _attempt(self, n: int) -> None:
        try:
            result = await self.fn(*self.args, **self.kwargs)
        except Exception as exc:  # (nobody's to see: the race answers with it, or not)
            self._ended(n, exc, None)
        except BaseException as exc:
            if not backend.is_cancellation(exc):  # KeyboardInterrupt, SystemExit: the
                self.escalation = exc  # caller's to raise (a trio system task must
                self.decisions.escalated(n, exc)  # raise nothing)
                self._check()
                return
            self._ended(n, exc, None)  # its cancellation: counted, then let through
            raise
        else:
            self._ended(n, None, result)

    # -- ending ---------------------------------------------------------------------

    def _ended(self, n: int, exc: BaseException | None, result: object) -> None:
        if self.decisions.ended(n, exc, result):
            self.start("failure")
        else:
            self._check()

    def _left(self, n: int) -> None:
        """Task ``n``'s work is over (its ``finally`` blocks have run)."""
        self.alive -= 1
        self.cancels.pop(n, None)
        if n >= 0:  # an attempt cancelled before it began never said it ended
            self.decisions.ended(n, _NEVER_RAN, None)
        self._check()

    def primary_ended(self, exc: BaseException | None, result: object) -> None:
        self.primary = False
        self._ended(0, exc, result)

    def abandon(self) -> None:
        self.decisions.abandon()
        self._check()

    def _check(self) -> None:
        """Once settled: cancel whatever still runs; once nothing does, wake the caller."""
        if not self.decisions.settled:
            return
        cancels, self.cancels = self.cancels, {}
        for cancel in cancels.values():
            cancel()
        if self.primary:
            self.alarm.cancel()
        elif self.alive == 0:
            self.flag.set()

    async def join(self) -> None:
        """Wait until the race is settled and every task it started is over; cancelled
        meanwhile, cancel them all, wait for them all the same, then raise."""
        try:
            await self.flag.wait()
        except BaseException as exc:
            self.abandon()
            await backend.wait_shielded(self.flag)
            self.escalate(exc)
            raise

    def escalate(self, exc: BaseException) -> None:
        """The caller, cancelled, waited for every attempt: an interrupt one of them
        raised meanwhile goes on in place of the cancellation (never lost)."""
        escalation = self.escalation
        if escalation is not None and escalation is not exc:
            raise escalation from exc


def _rung(alarm: Any) -> None:
    """An alarm rang: the first attempt has gone ``delay`` without an answer."""
    race = alarm.race
    if race is None:
        plan = alarm.call[0]
        race = alarm.race = _Race(alarm, alarm.now() if plan.timed else plan.now())
    race.start("delay")
    race.pace()


def hedging(policy: Any, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` hedged by ``policy``, whose ``_plan`` is read at each call."""

    async def hedged(*args: P.args, **kwargs: P.kwargs) -> R:
        plan: Any = policy._plan
        delays = plan.delays
        alarms = None if delays is None else delays.alarms
        if alarms is None:
            return await _unhedged(plan, fn, args, kwargs)  # type: ignore[no-any-return]
        meter = plan.meter
        clocked = perf_counter() if meter is not None else 0.0
        learns = delays.quantile is not None
        began = plan.now() if learns or not plan.timed else 0.0
        if plan.budget is not None:
            plan.budget._deposit()
        alarm = alarms.open(plan.timed)
        alarm.call = (plan, fn, args, kwargs, copy_context(), alarms)
        if not plan.timed:  # paced on the policy's own clock: a race from the start
            alarm.race = _Race(alarm, began)
            alarm.race.pace()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            ours = alarm.close(exc)
            try:
                return await _raced(alarm, exc, ours, None, began, clocked)  # type: ignore[no-any-return]
            finally:  # no frame -> traceback -> exception -> frame cycle for the GC
                exc = None  # type: ignore[assignment]
        alarm.close(None)
        if alarm.race is None:  # answered before the alarm rang: the usual case
            if learns:
                delays.record(plan.now() - began)
            if meter is not None:
                meter.call(policy, "success", perf_counter() - clocked, None)
            return result
        return await _raced(alarm, None, False, result, began, clocked)  # type: ignore[no-any-return]

    return hedged


async def _unhedged(plan: Any, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
    """A call while no delay is known (or hedging is off): itself, timed for the percentile."""
    delays = plan.delays
    if delays is None:  # switched off
        return await fn(*args, **kwargs)
    meter = plan.meter
    clocked = perf_counter() if meter is not None else 0.0
    began = plan.now()
    if plan.budget is not None:
        plan.budget._deposit()
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        if meter is not None:
            meter.call(plan.policy, outcome_of(exc), perf_counter() - clocked, exc)
        raise
    delays.record(plan.now() - began)
    if meter is not None:
        meter.call(plan.policy, "success", perf_counter() - clocked, None)
    return result


async def _raced(
    alarm: backend.Alarm,
    exc: BaseException | None,
    ours: bool,
    result: object,
    began: float,
    clocked: float,
) -> Any:
    """The rest of a call whose first attempt ended with ``exc`` (``ours``: cancelled
    because another attempt won) or ``result`` while a race runs, or failed before one."""
    plan: Any = alarm.call[0]
    meter: Meter | None = plan.meter
    race: _Race | None = alarm.race
    # The caller's own cancellation (or an interpreter exit), not the race's doing.
    outer = exc is not None and not isinstance(exc, Exception) and not ours
    try:
        fresh = race is None
        if race is None:  # the first attempt failed before the alarm rang
            assert exc is not None
            if outer:
                raise exc
            race = alarm.race = _Race(alarm, began)
        race.primary_ended(exc, result)  # (a failure starts the next attempt at once)
        if fresh:
            race.pace()
        if outer:
            race.abandon()
            await backend.wait_shielded(race.flag)
            race.escalate(exc)  # type: ignore[arg-type]
            if alarm.redeliver:
                await backend.redeliver()
            raise exc  # type: ignore[misc]
        await race.join()
        answer = race.decisions.answer()
    except BaseException as error:
        if meter is not None:
            meter.call(plan.policy, outcome_of(error), perf_counter() - clocked, error)
        raise
    finally:
        exc = None
    delays = plan.delays
    if delays is not None and delays.quantile is not None:
        delays.record(plan.now() - began)
    if meter is not None:
        meter.call(plan.policy, "success", perf_counter() - clocked, None)
    return answer
