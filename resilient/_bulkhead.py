"""Bulkhead: at most so many calls inside at once, so one slow downstream cannot take every
thread, connection or task the process has.

A call takes a slot or, when all are taken, waits in a FIFO queue up to ``max_wait``
seconds (never past an enclosing :func:`resilient.deadline`), then gets BulkheadFullError.
A freed slot goes straight to the oldest waiter, so a newcomer never overtakes the queue.
A call that finds nobody waiting takes and returns its slot without a lock (where the
GIL makes that exact: :mod:`resilient._core.state.primitives`); a small lock guards the queue,
and is never held while a call runs or waits. Threads wait on a lock
of their own; tasks on an event of their own loop, woken from other threads through
that loop's thread-safe entry, so one bulkhead can guard threads and several event loops
(asyncio and trio) at once.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections import deque
from typing import Any, NamedTuple, TypeVar

from resilient._core.configuration import events
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution import backend
from resilient._core.execution import deadline as dl
from resilient._core.execution.drivers import MUST_WAIT, GuardForms, Refusal
from resilient._core.state import forking
from resilient._core.state.primitives import LOCK_FREE
from resilient._errors import BulkheadFullError

__all__ = ["OPTIONS", "Bulkhead", "BulkheadMetrics"]

#: More calls inside at once than this is a typo, not a limit (each free slot is an item).
MAX_CONCURRENT = 1_000_000

OPTIONS = (
    opt.Option(
        "max_concurrent",
        opt.REQUIRED,
        opt.bounded_int(MAX_CONCURRENT),
        "an int >= 1, at most 1,000,000",
        "How many calls may be inside at once.",
    ),
    opt.Option(
        "max_wait",
        0.0,
        opt.duration(allow_zero=True),
        "seconds >= 0, a finite number",
        "How long a call may wait for a slot when all are taken; 0 rejects it at once."
        " An enclosing `resilient.deadline` that ends sooner wins.",
    ),
    opt.Option(
        "max_waiting",
        None,
        opt.optional(opt.non_negative_int),
        "None, or a whole number from 0 to 1,000,000",
        "How many calls may wait at once; beyond it they are rejected at once. None: as"
        " many as arrive (each still waits at most `max_wait`).",
    ),
)
_OPTION_NAMES = frozenset(option.name for option in OPTIONS)

W = TypeVar("W", bound="_Waiter")


class BulkheadMetrics(NamedTuple):
    """A bulkhead's state at one instant."""

    max_concurrent: int
    in_use: int  #: calls inside now
    waiting: int  #: calls queued for a slot now
    rejected: int  #: calls refused since the bulkhead was made


class _Plan:
    """What a call reads, switched whole by a reload. A bulkhead keeps no state a call
    must read besides its plan (the slots are its own), so the plan is also the gate the
    drivers read (``_state``)."""

    __slots__ = ("fast", "max_concurrent", "max_wait", "max_waiting", "meter")

    refusal: Refusal | None = None  # a bulkhead never refuses every call until a known time

    @staticmethod
    def passed(result: object) -> None:
        """Switched off (fast): a call that returned held no slot, so gives none back."""

    def __init__(
        self,
        max_concurrent: int,
        max_wait: float,
        max_waiting: int | None,
        enabled: bool,
        meter: events.Meter | None,
    ) -> None:
        self.fast = not enabled  # switched off: every call goes straight in, holding no slot
        self.meter = meter
        self.max_concurrent = max_concurrent
        self.max_wait = max_wait
        self.max_waiting = max_waiting


class Bulkhead(Configured, GuardForms):
    """At most ``max_concurrent`` calls inside at once; others wait up to ``max_wait``.

    A decorator for ``def`` and ``async def``, ``with``/``async with``, and
    ``call``/``call_async``. A slot is given back however the call ends: return,
    exception, or cancellation while inside or while still waiting.
    """

    KIND = "bulkhead"
    OPTIONS = OPTIONS
    _plan: _Plan
    _state: _Plan  # the same object: what the drivers read

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_wait: opt.Duration = 0.0,
        max_waiting: int | None = None,
        name: str | None = None,
    ) -> None:
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        settings = self._configure(name, given)
        self._lock = threading.Lock()  # for the queue; the fast path never takes it
        # Free slots, one item each: pop() and append() are single C calls, atomic under
        # the GIL and locked per object on a free-threaded build, so a call that finds
        # nobody waiting takes and gives back its slot without the lock.
        self._permits: deque[None] = deque()
        self._queue: deque[_Waiter] = deque()
        self._slots = 0  # slots there are (max_concurrent as last applied)
        self._debt = 0  # slots to retire as they come back, after max_concurrent shrank
        self._rejected = 0
        self._register(settings)

    def _compile(self, settings: Settings) -> _Plan:
        return _Plan(
            settings["max_concurrent"],
            settings["max_wait"],
            settings["max_waiting"],
            settings.enabled,
            self._metered(),
        )

    def _switch(self, compiled: _Plan) -> None:
        """Resize to the new ``max_concurrent`` without losing a call inside or waiting."""
        with self._lock:
            grow = compiled.max_concurrent - self._slots
            if grow > 0:
                repaid = min(grow, self._debt)
                self._permits.extend([None] * (grow - repaid))
                self._debt -= repaid
                self._serve()
            self._slots = compiled.max_concurrent
            while grow < 0:  # retire free slots now, busy ones as they come back
                try:
                    self._permits.pop()
                except IndexError:
                    self._debt -= grow
                    break
                grow += 1
            if compiled.fast:  # switched off: the waiting go in too, holding no slot
                while self._queue:
                    waiter = self._queue.popleft()
                    waiter.token = compiled
                    waiter.grant()
            self._plan = self._state = compiled

    @property
    def max_concurrent(self) -> int:
        return self._plan.max_concurrent

    @property
    def max_wait(self) -> float:
        return self._plan.max_wait

    @property
    def max_waiting(self) -> int | None:
        return self._plan.max_waiting

    def __repr__(self) -> str:
        name = "" if self.name is None else f", name={self.name!r}"
        return f"Bulkhead({self.max_concurrent}, max_wait={self.max_wait!r}{name})"

    @property
    def metrics(self) -> BulkheadMetrics:
        with self._lock:
            return BulkheadMetrics(
                self._slots,
                self._slots + self._debt - len(self._permits),
                len(self._queue),
                self._rejected,
            )

    def _health(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "max_concurrent": m.max_concurrent,
            "in_use": m.in_use,
            "queued": m.waiting,
            "rejected": m.rejected,
        }

    def _after_fork(self) -> None:
        """In a forked child: every slot is free and nobody waits (the calls inside and
        waiting were the parent's other threads and tasks). A call of the forking thread
        that was inside goes on; its slot, of the parent's accounting, is not given back
        twice (its token says which generation it was taken in)."""
        self._lock = threading.Lock()
        self._queue = deque()
        self._permits = deque([None] * self._slots)
        self._debt = 0

    def reset(self) -> None:
        """Count rejections from zero again (calls inside keep their slots)."""
        with self._lock:
            self._rejected = 0

    # -- the guard protocol -----------------------------------------------------------

    def _admit(self, state: _Plan) -> object:
        if self._take_free_slot():
            return forking.generation  # a slot of this process's accounting
        if state.max_wait:
            return MUST_WAIT
        raise self._full("full")

    def _full(self, reason: str) -> BulkheadFullError:
        """A rejection, counted and told (outside the lock: a listener may read metrics)."""
        with self._lock:
            self._rejected += 1
        events.refused(self, reason, time.monotonic)
        return BulkheadFullError(self.name)

    def _take_free_slot(self) -> bool:
        """Take a free slot, unless a call is queued for one: a newcomer never overtakes.

        Lock-free, the slot is taken first and the queue looked at second: a waiter
        queued before that look sees the slot handed on to it; one queued after it came
        after this call, which was admitted at the look. (Looking first, a waiter could
        queue and a slot come back between the look and the take.) Locked variant: both
        under the lock, since without a GIL two stores to two deques need not be seen
        in the order they were made.
        """
        if not LOCK_FREE:
            with self._lock:
                if self._queue or not self._permits:
                    return False
                self._permits.pop()
                return True
        try:
            self._permits.pop()
        except IndexError:
            return False
        if not self._queue:
            return True
        self._exit(forking.generation, None, None)  # someone queued first: the slot is theirs
        return False

    def _exit(self, token: object, exc: BaseException | None, result: object) -> None:
        if token != forking.generation:
            return  # admitted while switched off (no slot), or a slot of before a fork
        if not LOCK_FREE:
            with self._lock:
                if self._debt:
                    self._debt -= 1
                elif not self._hand_on():
                    self._permits.append(None)
            return
        if self._queue or self._debt:
            with self._lock:
                if self._debt:  # max_concurrent shrank: this slot goes
                    self._debt -= 1
                    return
                if self._hand_on():  # the slot passes straight to the oldest waiter
                    return
        self._permits.append(None)
        if self._queue or self._debt:  # someone queued, or the bulkhead shrank, meanwhile
            with self._lock:
                if self._debt:
                    try:
                        self._permits.pop()  # retire a slot: this one, or an equal one
                        self._debt -= 1
                    except IndexError:  # taken already: the next one back is retired
                        pass
                self._serve()

    def _hand_on(self) -> bool:
        """Under the lock: give a slot to the oldest waiter that can still be woken (a
        task whose event loop was closed under it cannot: it is dropped, the slot goes
        to the next). False if none could take it."""
        while self._queue:
            if self._queue.popleft().grant():
                return True
        return False

    def _serve(self) -> None:
        """Under the lock: hand free slots to the oldest waiters."""
        queue, permits = self._queue, self._permits
        while queue and permits:
            try:
                permits.pop()
            except IndexError:  # a caller on the lock-free path took it first
                return
            if not self._hand_on():
                permits.append(None)  # every waiter left was gone: the slot stays free

    def _wait(self, state: _Plan) -> object:
        seconds = dl.limit(state.max_wait)[0]  # first: once queued, nothing else may raise
        waiter = self._enqueue(_ThreadWaiter(), state)
        if waiter.granted:
            return waiter.token
        try:
            woken = (
                waiter.lock.acquire(timeout=min(seconds, threading.TIMEOUT_MAX))
                if seconds > 0
                else False
            )
        except BaseException:  # interrupted while waiting: leave, and pass on a late slot
            self._leave(waiter)
            raise
        if not woken:
            self._give_up(waiter)
        return waiter.token

    async def _wait_async(self, state: _Plan) -> object:
        seconds = dl.limit(state.max_wait)[0]
        waiter = self._enqueue(_TaskWaiter(), state)
        if waiter.granted:
            return waiter.token
        scope = None
        try:
            scope = backend.after(seconds)
            await waiter.event.wait()
        except GeneratorExit:  # closed (by the collector), not cancelled: its loop may be
            self._leave(waiter)  # gone, so only the queue is left, and a late slot passed on
            raise
        except BaseException as exc:
            if scope is None or not scope.close(exc):  # not our time limit: leave the
                self._leave(waiter)  # queue, passing on a slot handed over meanwhile
                if scope is not None and scope.redeliver:
                    await backend.redeliver()
                raise
            self._give_up(waiter)
            return waiter.token
        scope.close(None)
        return waiter.token

    # -- waiting ----------------------------------------------------------------------

    def _enqueue(self, waiter: W, state: _Plan) -> W:
        """Queue ``waiter``, or grant it at once if a slot came free since ``_admit``
        looked; BulkheadFullError if ``max_waiting`` are waiting already."""
        with self._lock:
            self._serve()
            if not self._queue:
                try:
                    self._permits.pop()
                except IndexError:
                    pass
                else:
                    waiter.granted = True  # never queued, so never woken: it just goes in
                    return waiter
            full = state.max_waiting is not None and len(self._queue) >= state.max_waiting
            if not full:
                self._queue.append(waiter)
                # A call leaving gives its slot back without the lock, then looks for
                # waiters: if it looked before we were queued, its slot is in the deque.
                self._serve()
        if full:
            raise self._full("queue_full")
        return waiter

    def _give_up(self, waiter: _Waiter) -> None:
        """The wait ran out: leave the queue, unless a slot arrived at the last moment."""
        with self._lock:
            if waiter.granted:
                return
            self._unqueue(waiter)
        raise self._full("full_after_wait")

    def _unqueue(self, waiter: _Waiter) -> None:
        """Under the lock: take a waiter that was not granted out of the queue (unless a
        grant that could not wake it dropped it already)."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            pass

    def _leave(self, waiter: _Waiter) -> None:
        """The waiter gives up for another reason (cancellation): no slot may be lost."""
        with self._lock:
            if not waiter.granted:
                self._unqueue(waiter)
                return
        self._exit(waiter.token, None, None)  # it had been handed a slot: hand it on


class _Waiter:
    """A queued call: ``grant`` (under the bulkhead's lock) hands it a slot and wakes it.

    ``token`` is what it then holds: None for a slot, or the config of a bulkhead that
    was switched off while it waited (it goes in holding nothing)."""

    __slots__ = ("granted", "token")

    def __init__(self) -> None:
        self.granted = False
        self.token: object = forking.generation

    def grant(self) -> bool:
        """Hand it its slot and wake it; False if it can no longer be woken."""
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("lock",)

    def __init__(self) -> None:
        super().__init__()
        self.lock = _thread.allocate_lock()
        self.lock.acquire()

    def grant(self) -> bool:
        self.granted = True
        self.lock.release()
        return True


class _TaskWaiter(_Waiter):
    """Waits on an event of its own loop, which a grant from any thread can set."""

    __slots__ = ("_wake", "event")

    def __init__(self) -> None:
        super().__init__()
        self.event, self._wake = backend.event()

    def grant(self) -> bool:
        self.granted = True  # before the wake: the task may run before _wake returns
        if not self._wake():
            self.granted = False
        return self.granted
