"""Timeout: a call that runs too long ends with TimeoutExpired, the caller's wait with it.

Async calls are cancelled for real (``_core/cancel.py``): the work's ``finally`` blocks
have run when TimeoutExpired surfaces, and a cancellation from outside stays a
cancellation. A sync call cannot be interrupted, so it runs on a daemon worker thread
(``_core/workers.py``) while the caller waits at most ``seconds``; a call still running
then is abandoned, counted, and capped by ``max_abandoned``.

Every Timeout also honours an enclosing :func:`resilient.deadline`: the nearer of the
two limits applies, and the Timeout's own limit becomes the deadline of what runs
inside it, so an inner Retry never starts an attempt that cannot finish in time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import copy_context
from types import TracebackType
from typing import Any, NamedTuple, ParamSpec, TypeVar

from resilient._core import cancel, workers
from resilient._core import deadline as dl
from resilient._core import options as opt
from resilient._core.decorate import Decorates, pop_block, push_block
from resilient._core.window import count_value
from resilient._errors import RejectedError, TimeoutExpired

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
        "an int >= 1",
        "Sync calls only: how many timed-out calls may still be running on their worker"
        " threads (Python cannot stop a thread). Beyond it, calls are refused at once with"
        " `WorkersExhaustedError` until some finish, so a hung downstream cannot pile up"
        " threads.",
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

    def _what(self) -> str:
        return (
            f"timeout {self._who()} refused the call: too many of its timed-out calls are"
            " still running on their worker threads (max_abandoned)"
        )


class TimeoutMetrics(NamedTuple):
    """A Timeout's counts since it was made."""

    expired: int  #: calls that ran out of time (TimeoutExpired raised)
    abandoned: int  #: sync calls timed out and still running on a worker thread, now
    rejected: int  #: sync calls refused because ``abandoned`` was at ``max_abandoned``


class Timeout(Decorates):
    """At most ``seconds`` for each call, or TimeoutExpired (a :class:`TimeoutError`).

    As a decorator or through ``call``/``call_async``, on ``def`` and ``async def``.
    ``async with timeout:`` cancels the block at the limit. ``with timeout:`` cannot
    interrupt sync code: the block runs to its end, with a deadline that resilient-aware
    calls inside respect, and raises TimeoutExpired on exit if it overran.
    """

    def __init__(
        self,
        seconds: float,
        *,
        name: str | None = None,
        max_abandoned: int = 10,
        thread_locals: threading.local | tuple[threading.local, ...] = (),
    ) -> None:
        self.name = opt.check_name(name, "Timeout")
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        cfg = opt.resolve(OPTIONS, given, owner=self._owner())
        self.seconds: float = cfg["seconds"]
        self._tally = workers.Tally(cfg["max_abandoned"])
        self._thread_locals: tuple[threading.local, ...] = cfg["thread_locals"]
        self._expired = itertools.count()
        self._expiries = cancel.Expiries(self.seconds)

    def _owner(self) -> str:
        return "Timeout" if self.name is None else f"Timeout({self.name!r})"

    def __repr__(self) -> str:
        name = "" if self.name is None else f", name={self.name!r}"
        return f"Timeout({self.seconds!r}{name})"

    @property
    def metrics(self) -> TimeoutMetrics:
        return TimeoutMetrics(
            count_value(self._expired), self._tally.abandoned, self._tally.rejected
        )

    # -- deciding the limit ---------------------------------------------------------

    def _limit(self) -> tuple[float, bool]:
        """This call's limit and whether an enclosing deadline set it; raises if none is left."""
        seconds, by_deadline = dl.limit(self.seconds)
        if seconds <= 0.0:
            raise self._expire(0.0, " (the enclosing deadline had passed: not started)")
        return seconds, by_deadline

    def _expire(self, seconds: float, detail: str) -> TimeoutExpired:
        next(self._expired)
        return TimeoutExpired(self.name, seconds, detail)

    # -- wrappers ---------------------------------------------------------------------

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        timeout = self

        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            seconds, by_deadline = timeout._limit()
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
                    thread_locals=timeout._thread_locals,
                    tally=timeout._tally,
                )
            except workers.Abandoned:
                raise WorkersExhaustedError(timeout.name) from None
            if not done:
                raise timeout._expire(seconds, _why(by_deadline))
            return result  # type: ignore[no-any-return]

        return timed

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        timeout = self

        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            seconds, by_deadline = timeout._limit()
            if by_deadline:
                scope, token = cancel.after(seconds), None
            else:  # the usual case; inner calls see this call's end as their deadline
                scope = timeout._expiries.open()
                token = dl.push(scope)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if scope.close(exc):
                    raise timeout._expire(seconds, _why(by_deadline)) from exc
                raise
            finally:
                if token is not None:
                    dl.unscoped(token)
            scope.close(None)
            return result

        return timed

    # -- context managers -------------------------------------------------------------

    def __enter__(self) -> None:
        seconds, by_deadline = self._limit()
        token = None if by_deadline else dl.scoped(seconds)
        push_block(self, (time.monotonic(), seconds, by_deadline, token))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        started, seconds, by_deadline, token = pop_block(self)
        if token is not None:
            dl.unscoped(token)
        took = time.monotonic() - started
        if exc is None and took > seconds:
            raise self._expire(
                seconds,
                f"{_why(by_deadline)}: the block took {took:.3g}s (a sync block cannot be"
                " interrupted, so it ran to its end)",
            )

    async def __aenter__(self) -> None:
        seconds, by_deadline = self._limit()
        if by_deadline:
            scope, token = cancel.after(seconds), None
        else:
            scope = self._expiries.open()
            token = dl.push(scope)
        push_block(self, (scope, seconds, by_deadline, token))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, seconds, by_deadline, token = pop_block(self)
        if token is not None:
            dl.unscoped(token)
        if scope.close(exc):
            raise self._expire(seconds, _why(by_deadline)) from exc


def _why(by_deadline: bool) -> str:
    return " (the enclosing deadline)" if by_deadline else ""
