"""Timeout: a call that runs too long ends with TimeoutExpired, the caller's wait with it.

Async calls are cancelled for real (``_core/execution/backend.py``): the work's ``finally`` blocks
have run when TimeoutExpired surfaces, and a cancellation from outside stays a
cancellation. A sync call cannot be interrupted, so it runs on a daemon worker thread
(``_core/execution/workers.py``) while the caller waits at most ``seconds``; a call still running
then is abandoned, counted, and capped by ``max_abandoned``.

Every Timeout also honours an enclosing :func:`resilient.deadline`: the nearer of the
two limits applies, and the Timeout's own limit becomes the deadline of what runs
inside it, so an inner Retry never starts an attempt that cannot finish in time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import copy_context
from time import perf_counter
from typing import Any, NamedTuple, ParamSpec, TypeVar

from resilient._core.configuration import events
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution import backend, workers
from resilient._core.execution import deadline as dl
from resilient._core.execution.drivers import (
    CoroutineType,
    Decorates,
    Later,
    Propagates,
    outcome_of,
    returned_coroutine,
)
from resilient._core.state.primitives import counter
from resilient._errors import RejectedError, TimeoutExpired
from resilient.events import LEVELS, TimedOut

__all__ = ["OPTIONS", "Timeout", "TimeoutMetrics", "WorkersExhaustedError"]

P = ParamSpec("P")
R = TypeVar("R")


def _thread_locals(value: Any) -> tuple[threading.local, ...]:
    if isinstance(value, threading.local):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, threading.local) for v in value):
        return tuple(value)
    raise opt.Invalid


OPTIONS = (
    opt.Option(
        "seconds",
        opt.REQUIRED,
        opt.duration(allow_zero=False),
        "seconds > 0, a finite number",
        "How long a call may take. An enclosing `resilient.deadline` that ends sooner wins.",
    ),
    opt.Option(
        "max_abandoned",
        10,
        opt.positive_int,
        "a whole number from 1 to 1,000,000",
        "Sync calls only: once this many timed-out calls are still running on their"
        " worker threads (Python cannot stop a thread), new calls are refused at once with"
        " `WorkersExhaustedError` until some finish, so a hung downstream cannot pile up"
        " threads. Calls already in flight may still time out and add to the count.",
    ),
    opt.Option(
        "thread_locals",
        (),
        _thread_locals,
        "a `threading.local`, or a tuple of them",
        "Sync calls only: thread-locals whose values the call sees on its worker thread"
        " (copied in, cleared after). `contextvars` are always carried.",
    ),
)
_OPTION_NAMES = frozenset(option.name for option in OPTIONS)


class WorkersExhaustedError(RejectedError):
    """A sync Timeout refused the call: ``max_abandoned`` timed-out calls still run."""

    __slots__ = ()

    def _what(self, named: bool = True) -> str:
        return (
            f"{self._subject('timeout', named)} refused the call: too many of its timed-out"
            " calls are still running on their worker threads (max_abandoned)"
        )


class TimeoutMetrics(NamedTuple):
    """A Timeout's counts since it was made."""

    expired: int  #: calls that ran out of time (TimeoutExpired raised)
    abandoned: int  #: sync calls timed out and still running on a worker thread, now
    rejected: int  #: sync calls refused because ``abandoned`` was at ``max_abandoned``


class _Plan:
    """What a call reads, in one object so that a reload switches it whole."""

    __slots__ = ("enabled", "expiries", "max_abandoned", "meter", "seconds", "thread_locals")

    def __init__(
        self,
        seconds: float,
        expiries: backend.Expiries,  # the async calls of this length, per event loop
        thread_locals: tuple[threading.local, ...],
        max_abandoned: int,
        enabled: bool,
        meter: events.Meter | None,  # on: every call's outcome and duration is told to it
    ) -> None:
        self.seconds = seconds
        self.expiries = expiries
        self.thread_locals = thread_locals
        self.max_abandoned = max_abandoned
        self.enabled = enabled
        self.meter = meter


class Timeout(Configured, Propagates, Decorates):
    """At most ``seconds`` for each call, or TimeoutExpired (a :class:`TimeoutError`).

    As a decorator or through ``call``/``call_async``, on ``def`` and ``async def``.
    ``async with timeout:`` cancels the block at the limit. ``with timeout:`` cannot
    interrupt sync code: the block runs to its end, with a deadline that resilient-aware
    calls inside respect, and raises TimeoutExpired on exit if it overran.
    """

    KIND = "timeout"
    OPTIONS = OPTIONS
    _plan: _Plan

    def __init__(
        self,
        seconds: opt.Duration,
        *,
        name: str | None = None,
        max_abandoned: int = 10,
        thread_locals: threading.local | tuple[threading.local, ...] = (),
    ) -> None:
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        settings = self._configure(name, given)
        self._tally = workers.Tally()
        self._expired = counter()
        self._register(settings)

    def _compile(self, settings: Settings) -> _Plan:
        seconds: float = settings["seconds"]
        old = getattr(self, "_plan", None)
        same_length = old is not None and old.seconds == seconds
        return _Plan(
            seconds,
            old.expiries if old is not None and same_length else backend.Expiries(seconds),
            settings["thread_locals"],
            settings["max_abandoned"],
            settings.enabled,
            self._metered(),
        )

    def _switch(self, compiled: _Plan) -> None:
        self._plan = compiled

    @property
    def seconds(self) -> float:
        return self._plan.seconds

    def __repr__(self) -> str:
        name = "" if self.name is None else f", name={self.name!r}"
        return f"Timeout({self.seconds!r}{name})"

    @property
    def metrics(self) -> TimeoutMetrics:
        return TimeoutMetrics(self._expired.value, self._tally.abandoned, self._tally.rejected)

    def _health(self) -> dict[str, Any]:
        m = self.metrics
        return {"seconds": self.seconds, **m._asdict()}

    def reset(self) -> None:
        """Count expiries and refusals from zero again (abandoned calls still run)."""
        self._expired = counter()
        workers.reset(self._tally)

    # -- deciding the limit ---------------------------------------------------------

    def _limit(self, cfg: _Plan) -> tuple[float, bool]:
        """This call's limit and whether an enclosing deadline set it; raises if none is left.

        Under a deadline, end a moment (:data:`deadline.AHEAD`) before it: when the deadline is an
        enclosing Timeout's, this one then reports first, so that what sits between the
        two (a breaker, a retry) sees a TimeoutExpired rather than a cancellation that
        it must not count.
        """
        seconds, by_deadline = dl.limit(cfg.seconds)
        if by_deadline:
            seconds -= dl.AHEAD
        if seconds <= 0.0:
            raise self._expire(0.0, " (the enclosing deadline had passed: not started)", True)
        return seconds, by_deadline

    def _scope(self, plan: _Plan, seconds: float, by_deadline: bool) -> tuple[Any, Any]:
        """The cancel scope of an async call or block, and the deadline token it pushed:
        none when an enclosing deadline set the limit (``under`` it: when both fire in
        one loop iteration, this one still reports)."""
        if by_deadline:
            return backend.after(seconds, under=dl.current()), None
        scope = plan.expiries.open()  # the usual case; inner calls see its end as deadline
        return scope, dl.push(scope)

    def _expire(self, seconds: float, detail: str, by_deadline: bool) -> TimeoutExpired:
        self._expired.incr()
        if events.wanted(self, LEVELS[TimedOut]):
            events.emit(self, TimedOut(self, time.monotonic(), seconds, by_deadline))
        return TimeoutExpired(self.name, seconds, detail)

    def _exhausted(self) -> WorkersExhaustedError:
        events.refused(self, "workers_exhausted", time.monotonic)
        return WorkersExhaustedError(self.name)

    # -- wrappers ---------------------------------------------------------------------

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        timeout = self

        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            cfg = timeout._plan
            if not cfg.enabled:
                result = fn(*args, **kwargs)
                if result.__class__ is CoroutineType:
                    raise returned_coroutine(fn, result)
                return result
            meter = cfg.meter
            started = perf_counter() if meter is not None else 0.0
            seconds, by_deadline = timeout._limit(cfg)
            if by_deadline:
                context = copy_context()
            else:  # inner calls see this Timeout's limit as their deadline
                token = dl.scoped(seconds)
                context = copy_context()
                dl.unscoped(token)
            try:
                done, result = workers.run(
                    fn,
                    args,
                    kwargs,
                    seconds=seconds,
                    context=context,
                    thread_locals=cfg.thread_locals,
                    tally=timeout._tally,
                    cap=cfg.max_abandoned,
                )
                if not done:
                    raise timeout._expire(seconds, _why(by_deadline), by_deadline)
                if result.__class__ is CoroutineType:
                    raise returned_coroutine(fn, result)
            except workers.Abandoned:
                raise timeout._exhausted() from None  # a rejection: no call was made
            except BaseException as exc:
                if meter is not None:
                    meter.call(timeout, outcome_of(exc), perf_counter() - started, exc)
                raise
            if meter is not None:
                meter.call(timeout, "success", perf_counter() - started, None)
            return result

        return timed

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        timeout = self

        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            cfg = timeout._plan
            if not cfg.enabled:
                return await fn(*args, **kwargs)
            meter = cfg.meter
            started = perf_counter() if meter is not None else 0.0
            seconds, by_deadline = timeout._limit(cfg)
            if by_deadline:  # (Timeout._scope, inlined: a frame is a tenth of the budget)
                scope, token = backend.after(seconds, under=dl.current()), None
            else:
                scope = cfg.expiries.open()
                token = dl.push(scope)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if scope.close(exc):
                    expired = timeout._expire(seconds, _why(by_deadline), by_deadline)
                    if meter is not None:
                        meter.call(timeout, "failure", perf_counter() - started, expired)
                    try:
                        raise expired from exc
                    finally:  # no frame -> traceback -> exception -> frame cycle
                        del expired
                if meter is not None:
                    meter.call(timeout, outcome_of(exc), perf_counter() - started, exc)
                if scope.redeliver:
                    await backend.redeliver()
                raise
            finally:
                if token is not None:
                    dl.unscoped(token)
            scope.close(None)
            if meter is not None:
                meter.call(timeout, "success", perf_counter() - started, None)
            return result

        return timed

    # -- with blocks (BlockForms) -----------------------------------------------------
    #
    # An async block is cancelled at its limit, as a decorated call is. A sync block
    # cannot be interrupted: it runs to its end under a deadline that resilient-aware
    # calls inside respect, and raises TimeoutExpired on exit if it overran.

    def _enter_block(self, asynchronous: bool) -> object:
        plan = self._plan
        if not plan.enabled:
            return None
        meter = plan.meter
        metered = None if meter is None else (meter, perf_counter())
        seconds, by_deadline = self._limit(plan)
        if asynchronous:
            return (*self._scope(plan, seconds, by_deadline), seconds, by_deadline, metered)
        token = None if by_deadline else dl.scoped(seconds)
        return (time.monotonic(), token, seconds, by_deadline, metered)

    def _exit_block(self, block: Any, exc: BaseException | None, asynchronous: bool) -> object:
        if block is None:  # entered while switched off
            return False
        begun, token, seconds, by_deadline, metered = block
        if token is not None:
            dl.unscoped(token)
        try:
            if asynchronous:
                if begun.close(exc):
                    raise self._expire(seconds, _why(by_deadline), by_deadline) from exc
                return Later(backend.redeliver()) if begun.redeliver else False
            took = time.monotonic() - begun
            if exc is None and took > seconds:
                raise self._expire(
                    seconds,
                    f"{_why(by_deadline)}: the block took {took:.3g}s (a sync block cannot"
                    " be interrupted, so it ran to its end)",
                    by_deadline,
                )
            return False
        except TimeoutExpired as expired:
            exc = expired
            raise
        finally:
            if metered is not None:
                meter, started = metered
                outcome = outcome_of(exc)
                meter.call(self, outcome, perf_counter() - started, exc)
            exc = None  # (no frame -> traceback -> exception -> frame cycle)


def _why(by_deadline: bool) -> str:
    return " (the enclosing deadline)" if by_deadline else ""
