"""Deadline propagation: how long the work in this context may still take.

``with deadline(5):`` (or ``async with``) sets a context-local deadline in a
:class:`~contextvars.ContextVar`, so it follows asyncio tasks, trio tasks and threads
started with ``contextvars.copy_context()``. Nested deadlines only ever shrink: an inner
``deadline(60)`` inside an outer ``deadline(5)`` still ends when the outer one does.
Policies read :func:`remaining` (a retry does not wait past it), and so can user code,
to hand a client its own timeout.

A deadline is kept as (clock, instant) so that it is measured on the clock that set it;
everyone else only ever asks "how many seconds are left", which needs no shared clock.
"""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Protocol

from resilient._core.configuration import options as opt
from resilient._core.execution.drivers import pop_block, push_block
from resilient._core.state.clock import SYSTEM_CLOCK, MonotonicClock
from resilient._errors import ConfigError

__all__ = [
    "AHEAD",
    "Ends",
    "current",
    "deadline",
    "limit",
    "push",
    "remaining",
    "scoped",
    "unscoped",
]

#: How long before an enclosing deadline a Timeout limited by it ends (so that it, not
#: the enclosing one, reports); a Retry starts no attempt with less than this left.
AHEAD = 0.001


class Ends(Protocol):
    """What the context holds: something that knows how many seconds are left, and
    whether it has cancelled the work (an async Timeout's end; a plain deadline never)."""

    def left(self) -> float: ...

    def fired(self) -> bool: ...


class _Deadline:
    __slots__ = ("at", "clock")

    def __init__(self, clock: MonotonicClock, at: float) -> None:
        self.clock = clock
        self.at = at  # on ``clock``'s monotonic time

    def left(self) -> float:
        return max(0.0, self.at - self.clock.monotonic())

    def fired(self) -> bool:
        return False  # it interrupts nothing: policies only read it


_CURRENT: ContextVar[Ends | None] = ContextVar("resilient_deadline", default=None)


def remaining() -> float | None:
    """Seconds left before the innermost active deadline (0.0 once passed), or None."""
    current = _CURRENT.get()
    return None if current is None else current.left()


def current() -> Ends | None:
    """The innermost active deadline, or None."""
    return _CURRENT.get()


def limit(seconds: float) -> tuple[float, bool]:
    """The nearer of ``seconds`` and the time left before the deadline, and whether the
    deadline is the nearer one (for a policy that has its own limit: a Timeout)."""
    current = _CURRENT.get()
    if current is not None:
        left = current.left()
        if left < seconds:
            return left, True
    return seconds, False


def scoped(seconds: float) -> Token[Ends | None]:
    """Set a deadline ``seconds`` from now (the caller knows it is the nearer one);
    :func:`unscoped` undoes it. A Timeout's way of telling the calls inside it."""
    return _CURRENT.set(_Deadline(SYSTEM_CLOCK, SYSTEM_CLOCK.monotonic() + seconds))


#: Set an object that already knows when it ends (an async Timeout's expiry) as the deadline.
push = _CURRENT.set


def unscoped(token: Token[Ends | None]) -> None:
    """Undo :func:`scoped`, or an entered deadline; nothing to undo when the block ends
    in another context than it began in (a generator resumed elsewhere): the deadline
    was set there, and this context never saw it."""
    try:
        _CURRENT.reset(token)
    except ValueError:  # "created in a different Context"
        pass


class deadline:
    """Within this block, the work may take at most ``seconds`` more (or less, if an
    enclosing deadline ends sooner). Usable as ``with`` and ``async with``.

    It does not interrupt anything by itself: resilient's policies respect it, and
    :func:`remaining` tells code that passes timeouts on how much is left.
    """

    __slots__ = ("_clock", "_open_entries", "_seconds")

    def __init__(self, seconds: opt.Duration, *, clock: MonotonicClock | None = None) -> None:
        try:
            self._seconds: float = opt.duration(allow_zero=True)(seconds)
            self._clock: MonotonicClock = opt.clock("monotonic")(clock) or SYSTEM_CLOCK
        except opt.Invalid:
            bad, value, expected = (
                ("seconds", seconds, f"seconds >= 0; {opt.DURATION_FORMS}")
                if not _valid_seconds(seconds)
                else ("clock", clock, "None or an object with a monotonic() method")
            )
            raise ConfigError(bad, value, expected, owner="deadline") from None
        self._open_entries: deque[list[Any]] = deque()  # (decorate.push_block's)

    def __enter__(self) -> deadline:
        outer = _CURRENT.get()
        mine: Ends = _Deadline(self._clock, self._clock.monotonic() + self._seconds)
        if outer is not None and outer.left() <= self._seconds:
            mine = outer  # only shrink: the enclosing deadline ends first
        # The token is kept per context, as a policy's with-block keeps its own, so one
        # deadline object may be entered by many threads and tasks at once, in any order.
        push_block(self, _CURRENT.set(mine))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        unscoped(pop_block(self))

    async def __aenter__(self) -> deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"deadline({self._seconds})"


def _valid_seconds(value: object) -> bool:
    try:
        opt.duration(allow_zero=True)(value)
    except opt.Invalid:
        return False
    return True
