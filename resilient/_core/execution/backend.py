"""Everything that knows asyncio from trio, in one place: which loop runs the calling
task, sleeping, a checkpoint, an event a thread can set, and cancelling a task's work
after a delay (told apart from any other cancellation).

Nothing here imports asyncio, trio or anyio at import time: a task of a loop exists only
once its library is imported, so the running loop is looked up through ``sys.modules``,
and a sync-only program never pays for an event loop library.

**Detection.** An asyncio task first, then trio (only if imported). Answering "no"
costs an exception either way (some 200 ns for asyncio's ``get_running_loop``, 400 ns
for trio's ``in_trio_task``, a ``hasattr`` on a thread-local), which a program with both
imported would pay on every call of a Timeout: so a Timeout whose last call ran in trio
asks trio first. A trio task in guest mode on an asyncio loop runs in no asyncio task,
so it falls through to trio.

**Cancellation.** A *scope* is opened in the current task and closed with
``scope.close(exc)``, which answers whether ``exc`` is the scope's own cancellation (the
caller turns it into TimeoutExpired) or something to pass on untouched: above all a
cancellation from outside, which must propagate as itself, never as a timeout (cpython
#86296 is what happens otherwise). The work's ``finally`` blocks have run by the time
``close`` is called. A scope also knows when it ends (``left()``), so it serves as the
deadline of the work inside it.

The calls of one :class:`Expiries` (one Timeout, so one length) end in the order they
start. They wait in a FIFO queue per event loop, watched by one timer armed for the
oldest: a call costs an append and a flag, not a timer of its own, and the timer wakes
about once per timeout length however many calls pass. (``asyncio.timeout`` and
``trio.fail_after`` each schedule, and unschedule, a timer per call.)

- asyncio, 3.11+: the loop timer cancels the task with ``Task.cancel()``, and the
  ``cancelling()``/``uncancel()`` bookkeeping that ``asyncio.timeout`` and anyio follow
  too tells our cancellation from others, so the three nest in any order.
- trio: each call runs in a ``trio.CancelScope``, cancelled by a system task that sleeps
  until the oldest call's end on trio's own clock (so ``MockClock`` tests work); trio
  keeps that scope's cancellation apart from outer ones.
- anything else (asyncio on 3.10, which has no ``uncancel``): an anyio CancelScope with
  a deadline. :func:`after` (a one-off length: an enclosing deadline's) also uses a
  timer or scope of its own.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol

__all__ = [
    "Alarm",
    "Alarms",
    "Expiries",
    "Scope",
    "after",
    "asyncio_loop",
    "checkpoint",
    "event",
    "redeliver",
    "sleep",
    "spawn",
    "trio_token",
    "wait_shielded",
]

_TASKS_COUNT_CANCELS = sys.version_info >= (3, 11)

_RUNNING, _FIRED, _CLOSED = 0, 1, 2


# -- which loop runs the calling task -------------------------------------------------------


def trio_token() -> Any:
    """The running trio run's token, or None outside a trio task."""
    trio = sys.modules.get("trio")
    if trio is None or not trio.lowlevel.in_trio_task():
        return None
    return trio.lowlevel.current_trio_token()


def asyncio_loop() -> Any:
    """The running asyncio loop, or None."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _asyncio_task() -> tuple[Any, Any] | None:
    """(loop, task) of the running asyncio task, where tasks count their cancellations."""
    if not _TASKS_COUNT_CANCELS:
        return None
    loop = asyncio_loop()
    if loop is None:
        return None
    task = sys.modules["asyncio"].current_task(loop)
    return None if task is None else (loop, task)


# -- waiting --------------------------------------------------------------------------------


async def sleep(seconds: float) -> None:
    """Suspend the calling task for ``seconds``, on trio's clock or asyncio's."""
    if trio_token() is not None:
        await sys.modules["trio"].sleep(seconds)
    else:
        import asyncio

        await asyncio.sleep(seconds)


async def checkpoint() -> None:
    """One scheduling point: where a pending cancellation is delivered."""
    import anyio

    await anyio.lowlevel.checkpoint()


#: After ``close`` said "not ours": one checkpoint, where an enclosing anyio scope
#: delivers the cancellation that was folded into ours.
redeliver = checkpoint


def event() -> tuple[Any, Callable[[], bool]]:
    """An event of the running loop, and ``set`` for it that works from any thread:
    False if its loop has closed (nobody is left to wake). RuntimeError outside a loop."""
    token = trio_token()
    if token is not None:
        flag = sys.modules["trio"].Event()
        call_soon: Callable[[Callable[[], object]], object] = token.run_sync_soon
    else:
        loop = asyncio_loop()
        if loop is None:
            raise RuntimeError("no asyncio or trio event loop is running in this thread")
        flag = sys.modules["asyncio"].Event()
        call_soon = loop.call_soon_threadsafe
    home = threading.get_ident()

    def wake() -> bool:
        try:
            if threading.get_ident() == home:
                flag.set()
            else:
                call_soon(flag.set)
        except RuntimeError:  # its loop is closed (trio: RunFinishedError)
            return False
        return True

    return flag, wake


# -- cancellation after a delay -------------------------------------------------------------


class Scope(Protocol):
    #: after ``close`` said "not ours": an enclosing anyio scope was cancelled too, but its
    #: cancellation was folded into ours; ``await redeliver()`` lets it raise its own.
    redeliver: bool

    def close(self, exc: BaseException | None) -> bool: ...
    def left(self) -> float: ...
    def fired(self) -> bool: ...


class Expiries:
    """The async calls of one Timeout: each is cancelled ``seconds`` after it opens."""

    __slots__ = ("_last", "_seconds", "_watches")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._watches: weakref.WeakKeyDictionary[Any, _Watch] = weakref.WeakKeyDictionary()
        self._last: tuple[object, Any] = (None, None)  # (loop, watch): one tuple, read whole

    def open(self) -> Scope:
        last, watch = self._last
        if watch.__class__ is _TrioWatch:  # its last call ran in trio: ask trio first
            scope = self._in_trio()
            if scope is not None:
                return scope
        # _asyncio_task(), inline: this runs on every call, where two frames cost 5 %.
        asyncio: Any = sys.modules.get("asyncio")
        try:
            loop = asyncio.get_running_loop() if asyncio and _TASKS_COUNT_CANCELS else None
        except RuntimeError:
            loop = None
        task = None if loop is None else asyncio.current_task(loop)
        if task is not None:
            if last is not loop:
                watch = self._watch(loop, _LoopWatch)
            return _TaskExpiry(watch, task)
        return self._in_trio() or _anyio_scope(self._seconds)

    def _in_trio(self) -> Scope | None:
        run = trio_token()
        if run is None:
            return None
        last, watch = self._last
        if last is not run:
            watch = self._watch(run, _TrioWatch)
        return _ScopeExpiry(watch, sys.modules["trio"].CancelScope())

    def _watch(self, loop: Any, kind: Callable[[Any, float, Any], _Watch]) -> _Watch:
        watch = self._watches.get(loop)
        if watch is None:
            watch = self._watches[loop] = kind(loop, self._seconds, self._ended)
        # The last loop is held strongly, so that the check above is one identity test:
        # one loop at most outlives its run because of it (watches hold theirs weakly).
        self._last = (loop, watch)
        return watch

    def _ended(self, loop: Any, watch: _Watch) -> None:
        """``watch`` ends (its loop's calls have been idle a while): forget it."""
        if self._watches.get(loop) is watch:
            del self._watches[loop]
        if self._last[1] is watch:
            self._last = (None, None)


def after(seconds: float, under: Any = None) -> Scope:
    """A scope that cancels the current task's work in ``seconds``, a one-off length.

    ``under``: the enclosing deadline this length was cut to (a Timeout limited by an
    outer one's end). If that deadline's own cancellation lands in the same loop
    iteration as ours (a loop that stalled past both), ours still reports: what sits
    between the two (a breaker) then sees a TimeoutExpired, and so does the outer one,
    which passes it on.
    """
    running = _asyncio_task()
    if running is not None:
        return _TaskTimer(*running, seconds, under)
    if trio_token() is not None:
        trio = sys.modules["trio"]
        scope = trio.CancelScope(deadline=trio.current_time() + seconds)
        return _CancelScope(scope, seconds, under)
    return _anyio_scope(seconds, under)


def _anyio_scope(seconds: float, under: Any = None) -> Scope:
    import anyio

    scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)
    return _CancelScope(scope, seconds, under)


def _fired(under: Any) -> bool:
    """Whether ``under`` (an enclosing deadline, or None) has asked for its cancellation."""
    return under is not None and under.fired()


# -- the FIFO watch: shared logic, then one subclass per event loop -------------------------


class _Expiry:
    """One call in a watch's queue; a subclass knows how to cancel it."""

    __slots__ = ("_state", "_watch", "at", "redeliver")

    def __init__(self, watch: _Watch) -> None:
        self._watch = watch
        self.redeliver = False
        self._state = _RUNNING
        self.at = watch.now() + watch.seconds
        watch.add(self)

    def left(self) -> float:
        return max(0.0, self.at - self._watch.now())

    def now(self) -> float:
        """The time on the clock its timer runs by (the loop's: a trio MockClock too)."""
        return self._watch.now()

    def fired(self) -> bool:
        return self._state == _FIRED

    def fire(self) -> None:
        raise NotImplementedError

    def close(self, exc: BaseException | None) -> bool:
        raise NotImplementedError


class _Watch:
    """One loop's running calls of one length, oldest (so soonest to end) first."""

    __slots__ = ("_live", "_queue", "now", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._queue: deque[_Expiry] = deque()
        self._live = 0  # entries not closed yet, fired ones included
        self.now: Callable[[], float] = monotonic

    def add(self, expiry: _Expiry) -> None:
        queue = self._queue
        queue.append(expiry)
        self._live += 1
        if len(queue) == 1:
            self.wake()
        elif len(queue) > 2 * self._live + 64:  # an old call holds up the front: compact
            self._queue = deque(e for e in queue if e._state == _RUNNING)

    def closed(self, expiry: _Expiry) -> None:
        self._live -= 1
        queue = self._queue
        if queue and queue[0] is expiry:  # the usual case: calls end in the order they began
            queue.popleft()
            while queue and queue[0]._state == _CLOSED:
                queue.popleft()

    def expire(self) -> float | None:
        """Cancel every call whose time is up; when the oldest of the rest ends, if any."""
        queue = self._queue
        now = self.now()
        while queue:
            expiry = queue[0]
            if expiry._state == _RUNNING:
                if expiry.at > now:
                    return expiry.at
                expiry._state = _FIRED
                expiry.fire()
            queue.popleft()
        return None

    def wake(self) -> None:
        """The queue went from empty to one call: make sure a timer is set for it."""
        raise NotImplementedError


class _LoopWatch(_Watch):
    __slots__ = ("_armed", "_loop")

    def __init__(self, loop: Any, seconds: float, ended: Any = None) -> None:
        super().__init__(seconds)
        # (asyncio timers cost nothing while idle: this watch never ends before its loop.)
        # Nothing here holds the loop (its timer handle neither): the watch is the value
        # of a weak key, so a loop that has ended takes its watch with it.
        self._loop = weakref.ref(loop)
        self._armed = False

    def wake(self) -> None:
        if not self._armed:
            self._arm(self._queue[0].at)

    def _arm(self, at: float) -> None:
        loop = self._loop()
        if loop is not None:
            loop.call_later(max(0.0, at - monotonic()), self._fire)
            self._armed = True

    def _fire(self) -> None:
        self._armed = False
        at = self.expire()
        if at is not None:
            self._arm(at)


class _TaskExpiry(_Expiry):
    __slots__ = ("_baseline", "_task")

    def __init__(self, watch: _Watch, task: Any) -> None:
        self._task = task
        self._baseline: int = task.cancelling()  # cancellations asked of it before us
        super().__init__(watch)

    def fire(self) -> None:
        self._task.cancel()

    def close(self, exc: BaseException | None) -> bool:
        fired = self._state == _FIRED
        self._state = _CLOSED
        self._watch.closed(self)
        if not fired:
            return False
        ours = _ours(self._task, self._baseline, exc)
        self.redeliver = ours is None
        return bool(ours)


#: How long a trio watch with no call to watch lives on before its task ends (a Timeout
#: made per request must not leave a task per request until the run ends).
TRIO_IDLE = 1.0


class _TrioWatch(_Watch):
    """Trio has no loop timers: a system task sleeps until the oldest call's end, and
    ends once no call has come for :data:`TRIO_IDLE` seconds (a new call starts another)."""

    __slots__ = ("_ended", "_parked", "_run")

    def __init__(self, run: Any, seconds: float, ended: Callable[[Any, _Watch], None]) -> None:
        import trio

        super().__init__(seconds)
        self.now = trio.lowlevel.current_clock().current_time  # trio's clock, MockClock too
        self._parked: Any = None
        self._run = run
        self._ended = ended
        trio.lowlevel.spawn_system_task(self._watch, name=f"resilient timeout {seconds}s")

    def wake(self) -> None:
        parked, self._parked = self._parked, None
        if parked is not None:
            import trio

            trio.lowlevel.reschedule(parked)

    async def _watch(self) -> None:
        import trio

        def abort(_: Any) -> Any:
            self._parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        while True:  # until the run ends and cancels its system tasks, or idleness
            at = self.expire()
            if at is not None:
                await trio.sleep_until(at)
                continue
            with trio.move_on_after(TRIO_IDLE):
                self._parked = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
            if not self._queue:  # idle all that time: end (nothing awaits between)
                self._ended(self._run, self)
                return


class _ScopeExpiry(_Expiry):
    __slots__ = ("_scope",)

    def __init__(self, watch: _Watch, scope: Any) -> None:
        scope.__enter__()
        self._scope = scope
        self._watch = watch  # _Expiry.__init__, inlined: a trio call's budget is tight
        self.redeliver = False
        self._state = _RUNNING
        self.at = watch.now() + watch.seconds
        watch.add(self)

    def fire(self) -> None:
        self._scope.cancel()

    def close(self, exc: BaseException | None) -> bool:
        self._state = _CLOSED
        self._watch.closed(self)
        return _leave(self._scope, exc)


# -- one-off lengths ------------------------------------------------------------------------


class _TaskTimer:
    """An asyncio call with a length of its own: a timer of its own."""

    __slots__ = ("_baseline", "_fired", "_handle", "_task", "_under", "at", "redeliver")

    def __init__(self, loop: Any, task: Any, seconds: float, under: Any = None) -> None:
        self._task = task
        self._under = under
        self.redeliver = False
        self._fired = False
        self._baseline = task.cancelling()
        self.at = monotonic() + seconds
        self._handle = loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def left(self) -> float:
        return max(0.0, self.at - monotonic())

    def fired(self) -> bool:
        return self._fired

    def close(self, exc: BaseException | None) -> bool:
        self._handle.cancel()
        if not self._fired:
            return False
        ours = _ours(self._task, self._baseline, exc, self._under)
        self.redeliver = ours is None
        return bool(ours)


def _ours(task: Any, baseline: int, exc: BaseException | None, under: Any = None) -> bool | None:
    """After our own ``task.cancel()``: is ``exc`` that cancellation, and only that one?

    Not if anyone else asked the task for a cancellation since we began (the count went
    up), unless the one other is the enclosing deadline ``under`` that ours was cut to
    (it is left pending: the enclosing Timeout takes it back as our error passes). None
    if an enclosing anyio cancel scope was cancelled meanwhile: anyio does not call
    ``cancel()`` on a task whose cancellation is already under way, and it swallows only
    a CancelledError it raised itself, so it must be let deliver its own.
    """
    others = task.uncancel() - baseline
    cancelled = isinstance(exc, sys.modules["asyncio"].CancelledError)
    if not cancelled or (others and not (others == 1 and _fired(under))):
        return False
    anyio = sys.modules.get("anyio")
    if anyio is None:
        return True
    try:
        outer_cancelled = anyio.current_effective_deadline() == -math.inf
    except Exception:  # not an event loop anyio knows: no anyio scope encloses us
        return True
    return None if outer_cancelled else True


class _CancelScope:
    """A trio or anyio CancelScope, entered now and left by ``close``."""

    __slots__ = ("_scope", "_under", "at")
    redeliver = False  # trio and anyio tell their scopes' cancellations apart themselves

    def __init__(self, scope: Any, seconds: float, under: Any = None) -> None:
        scope.__enter__()
        self._scope = scope
        self._under = under
        self.at = monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.at - monotonic())

    def fired(self) -> bool:
        return bool(self._scope.cancel_called)

    def close(self, exc: BaseException | None) -> bool:
        if _leave(self._scope, exc):
            return True
        # Ours and the enclosing deadline's (the one ours was cut to) both cancelled:
        # the cancellation goes on to the enclosing scope, but ours reports it.
        return (
            exc is not None
            and not isinstance(exc, Exception)
            and self._scope.cancel_called
            and _fired(self._under)
        )


def _leave(scope: Any, exc: BaseException | None) -> bool:
    """Exit a trio or anyio CancelScope: True if ``exc`` was its own cancellation."""
    if exc is None:
        scope.__exit__(None, None, None)
        return False
    return bool(scope.__exit__(type(exc), exc, exc.__traceback__))


# -- alarms: a hedge's delay ----------------------------------------------------------------
#
# A hedged call runs its first attempt in the caller's own task, as an unhedged one would;
# only when its delay passes without an answer does another attempt start, in a task of
# its own. So the happy path costs what a Timeout's does: an entry in one FIFO queue per
# loop and delay, watched by one timer (the Expiries' watches, above), whose firing calls
# the alarm's ``ring`` instead of cancelling. The alarm can also cancel the attempt in the
# caller's task on demand (another attempt won), told apart from any other cancellation
# as a Timeout's is.


class Alarm(Protocol):
    #: what the alarm's owner keeps on it: the call it belongs to, and the race once rung
    call: Any
    race: Any
    redeliver: bool

    def now(self) -> float: ...
    def cancel(self) -> None: ...
    def close(self, exc: BaseException | None) -> bool: ...


class Alarms(Expiries):
    """The async calls of one delay: each opens an :class:`Alarm` in its own task, which
    calls ``ring(alarm)`` from the event loop ``seconds`` later unless closed before.

    ``ring`` runs on the loop (asyncio: a loop callback; trio: the watch's system task):
    it must be quick, and may start tasks (:func:`spawn`) but not wait.
    """

    __slots__ = ("ring",)

    def __init__(self, seconds: float, ring: Callable[[Any], object]) -> None:
        super().__init__(seconds)
        self.ring = ring

    @property
    def seconds(self) -> float:
        return self._seconds

    def open(self, timed: bool = True) -> Alarm:  # type: ignore[override]
        """An alarm in the current task; ``timed=False``: one that never rings (its owner
        rings it itself, after a sleep on a clock of its own)."""
        last, watch = self._last
        if watch.__class__ is _TrioWatch:  # its last call ran in trio: ask trio first
            alarm = self._trio_alarm(timed)
            if alarm is not None:
                return alarm
        asyncio: Any = sys.modules.get("asyncio")
        try:
            loop = asyncio.get_running_loop() if asyncio else None
        except RuntimeError:
            loop = None
        if loop is not None:
            if not timed:
                watch = _UNWATCHED
            elif last is not loop:
                watch = self._watch(loop, _LoopWatch)
            task = asyncio.current_task(loop) if _TASKS_COUNT_CANCELS else None
            if task is not None:
                return _TaskAlarm(watch, self.ring, task)
            import anyio

            return _ScopeAlarm(watch, self.ring, anyio.CancelScope())
        alarm = self._trio_alarm(timed)
        if alarm is None:
            raise RuntimeError("no asyncio or trio event loop is running in this thread")
        return alarm

    def _trio_alarm(self, timed: bool) -> Alarm | None:
        run = trio_token()
        if run is None:
            return None
        watch: Any = _UNWATCHED
        if timed:
            last, watch = self._last
            if last is not run:
                watch = self._watch(run, _TrioWatch)
        return _ScopeAlarm(watch, self.ring, sys.modules["trio"].CancelScope())


class _Unwatched:
    """The watch of an alarm that never rings: nothing to queue, nothing to arm."""

    seconds = 0.0

    @staticmethod
    def now() -> float:
        return 0.0

    def add(self, expiry: _Expiry) -> None:
        pass

    def closed(self, expiry: _Expiry) -> None:
        pass


_UNWATCHED: Any = _Unwatched()


def _rung(alarm: Any) -> None:
    """The watch's timer reached ``alarm``: tell its owner, whose error never stops the
    watch (the other calls' alarms must still ring)."""
    try:
        alarm.ring(alarm)
    except Exception:
        from resilient._errors import logger

        logger().exception("a hedge's alarm failed to start its next attempt")


class _TaskAlarm(_Expiry):
    """An asyncio alarm: the caller's task, cancelled with ``Task.cancel()`` on demand."""

    __slots__ = ("_baseline", "_cancelled", "_task", "call", "race", "ring")

    def __init__(self, watch: _Watch, ring: Callable[[Any], object], task: Any) -> None:
        self._task = task
        self.ring = ring
        self.call: Any = None
        self.race: Any = None
        self._cancelled = False
        self._baseline: int = task.cancelling()  # cancellations asked of it before us
        self._watch = watch  # _Expiry.__init__, inlined: a frame is a tenth of the budget
        self.redeliver = False
        self._state = _RUNNING
        self.at = watch.now() + watch.seconds
        watch.add(self)

    def fire(self) -> None:
        _rung(self)

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._task.cancel()

    def close(self, exc: BaseException | None) -> bool:
        self._state = _CLOSED
        self._watch.closed(self)
        if not self._cancelled:
            return False
        ours = _ours(self._task, self._baseline, exc)
        self.redeliver = ours is None
        return bool(ours)


class _ScopeAlarm(_Expiry):
    """A trio alarm (or asyncio's on 3.10): a cancel scope around the caller's attempt."""

    __slots__ = ("_scope", "call", "race", "ring")

    def __init__(self, watch: _Watch, ring: Callable[[Any], object], scope: Any) -> None:
        scope.__enter__()
        self._scope = scope
        self.ring = ring
        self.call: Any = None
        self.race: Any = None
        super().__init__(watch)

    def fire(self) -> None:
        _rung(self)

    def cancel(self) -> None:
        self._scope.cancel()

    def close(self, exc: BaseException | None) -> bool:
        self._state = _CLOSED
        self._watch.closed(self)
        return _leave(self._scope, exc)


# -- tasks of our own -----------------------------------------------------------------------


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the running loop's cancellation (trio's Cancelled, asyncio's
    CancelledError), as opposed to KeyboardInterrupt, SystemExit and their like."""
    if trio_token() is not None:
        return isinstance(exc, sys.modules["trio"].Cancelled)
    return isinstance(exc, sys.modules["asyncio"].CancelledError)


def spawn(
    async_fn: Callable[[], Any], context: Any, done: Callable[[], object]
) -> Callable[[], object]:
    """Run ``async_fn()`` in a new task of the running loop, in ``context``; ``done()``
    is called once it is over, however it ended (cancelled before it began, too).
    Returns what cancels it. The task belongs to no nursery or task group: whoever spawns
    it must cancel it and wait for ``done`` before going on (a hedge's race does), so that
    nothing is left running. ``async_fn`` must not raise an Exception (it is nobody's to
    see): only its own cancellation."""
    if trio_token() is not None:
        trio = sys.modules["trio"]
        scope = trio.CancelScope()

        async def run() -> None:
            try:
                with scope:
                    await async_fn()
            finally:
                done()

        # A system task: trio lets no other task start one from a timer's callback.
        trio.lowlevel.spawn_system_task(run, context=context)
        return scope.cancel  # type: ignore[no-any-return]
    loop = asyncio_loop()
    if loop is None:
        raise RuntimeError("no asyncio or trio event loop is running in this thread")
    coroutine = async_fn()
    if _TASKS_COUNT_CANCELS:
        task = loop.create_task(coroutine, context=context)
    else:  # (3.10: a task runs in a copy of the context current when it is made)
        task = context.run(loop.create_task, coroutine)
    task.add_done_callback(lambda _: done())
    return task.cancel  # type: ignore[no-any-return]


async def wait_shielded(flag: Any) -> None:
    """Wait for ``flag`` (an :func:`event` of the running loop), deaf to cancellation:
    a cancelled caller first waits for the tasks it cancelled to end."""
    if trio_token() is not None:
        with sys.modules["trio"].CancelScope(shield=True):
            await flag.wait()
        return
    cancelled_error = sys.modules["asyncio"].CancelledError
    while not flag.is_set():
        try:
            await flag.wait()
        except cancelled_error:  # (the caller re-raises its own cancellation after)
            continue
