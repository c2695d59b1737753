"""Events, their listeners, their log lines and the meters: what a policy tells, and to whom.

A policy publishes frozen events (``resilient.events``) after the fact, outside any
lock. Where a listener runs: on the thread that caused the event, right after it, in
the order that thread caused its events; never on another caller's thread (a listener
that is slow holds up only the call whose event it handles, and in async code that
call's event loop). A policy that decides under a lock ``queue()``s its event there and
``deliver()``s after letting go; a listener's own transitions are queued behind the
event it is handling, not nested inside it.

A listener's error is logged once per listener (with the first traceback), never per
call, and never reaches the call: SystemExit and KeyboardInterrupt raised by a listener
are logged and dropped too, so the call's own outcome stands.

Each event also becomes a log line on the logger of its policy's kind
(``resilient.breaker``, ``resilient.retry``...), with structured ``extra`` fields;
rejections and give-ups (one per call in an outage) at most once per policy per
``REJECTION_LOG_SECONDS`` each, with a count of the lines held back. The meters
(OpenTelemetry, Prometheus) see every event and, while any is on, every call's outcome
and duration (``Meter``).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from resilient._core.configuration.options import is_async_callable
from resilient._core.state import forking
from resilient.events import EVENTS, LEVELS, BudgetExhausted, Rejected, RetryGaveUp

if TYPE_CHECKING:
    import logging

__all__ = [
    "GLOBAL",
    "REJECTION_LOG_SECONDS",
    "Listeners",
    "Meter",
    "deliver",
    "emit",
    "meters",
    "queue",
    "refused",
    "wanted",
]

E = TypeVar("E")
L = TypeVar("L", bound=Callable[..., object])

#: At most one rejection line, and one give-up line, per policy this often (seconds).
REJECTION_LOG_SECONDS = 5.0
_GATED = (Rejected, RetryGaveUp, BudgetExhausted)


class _Entry:
    """A listener, the events it wants, and whether its failure has been logged (once
    per listener)."""

    __slots__ = ("failed", "fn", "kinds")

    def __init__(self, fn: Callable[[Any], object], kinds: tuple[type, ...]) -> None:
        self.fn = fn
        self.kinds = kinds
        self.failed = 0

    def __call__(self, event: object) -> None:
        if self.kinds and not isinstance(event, self.kinds):
            return
        try:
            self.fn(event)
        except BaseException:  # SystemExit, KeyboardInterrupt too: never the call's
            self.failed += 1
            if self.failed == 1:
                _told_once(
                    f"listener {_named(self.fn)} failed on a {type(event).__name__}; the"
                    " call goes on (its later failures are not logged)"
                )


class Listeners(Generic[E]):
    """The listeners of one policy, or the global ones."""

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._entries: tuple[_Entry, ...] = ()
        self._lock = threading.Lock()

    def add(self, fn: L, kinds: tuple[type, ...] = ()) -> L:
        """Add ``fn``, for the events of ``kinds`` (every event when empty)."""
        if fn in EVENTS:
            kind = getattr(fn, "__name__", "")
            raise TypeError(
                f"add_listener({kind}) is given an event class where the listener goes:"
                f" write add_listener(fn, {kind}), or decorate with plain @add_listener"
                " and test isinstance(event, ...) inside"
            )
        if not callable(fn) or is_async_callable(fn):
            raise TypeError(f"a listener must be a plain (not async) callable, not {fn!r}")
        for kind in kinds:
            if kind not in EVENTS:
                raise TypeError(
                    f"listen for event classes of resilient.events (StateChange, Rejected,"
                    f" RetryScheduled...), not {kind!r}"
                )
        with self._lock:  # copied on write: delivery iterates a snapshot, lock-free
            self._entries = (*self._entries, _Entry(fn, kinds))
        return fn

    def remove(self, fn: Callable[[E], object]) -> None:
        with self._lock:
            entries = list(self._entries)
            for i, entry in enumerate(entries):
                if entry.fn == fn:
                    del entries[i]
                    break
            else:
                raise ValueError(f"{fn!r} is not a listener here (list.remove(x): x not in list)")
            self._entries = tuple(entries)

    def __bool__(self) -> bool:
        return bool(self._entries)


#: Listeners to every policy (``resilient.add_listener``).
GLOBAL: Listeners[Any] = Listeners()


class Meter:
    """What an exporter sees: every event, and, while it is on, every call's outcome
    (``"success"`` or ``"failure"``), duration and error, and each attempt's of a retry.
    Its methods run on the caller's thread; they must be quick and must not raise."""

    def event(self, event: Any) -> None:
        """Any event: a rejection, a retry, a timeout, a transition..."""

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        """A call through ``policy`` ended."""

    def attempt(
        self, policy: Any, outcome: str, seconds: float, error: BaseException | None
    ) -> None:
        """One attempt of a call through a looping policy (a Retry) ended."""


class _Meters(Meter):
    """Every meter switched on, as one; ``current`` is None while none is."""

    def __init__(self) -> None:
        self._all: tuple[Meter, ...] = ()
        self._lock = threading.Lock()
        self.current: Meter | None = None
        #: called after a meter comes or goes, to recompile every live policy's plan
        self.changed: Callable[[], None] = lambda: None

    def add(self, meter: Meter) -> None:
        with self._lock:
            if meter in self._all:
                return
            self._all = (*self._all, meter)
            self.current = self
        self.changed()

    def remove(self, meter: Meter) -> None:
        with self._lock:
            if meter not in self._all:
                return
            self._all = tuple(m for m in self._all if m is not meter)
            self.current = self if self._all else None
        self.changed()

    def event(self, event: Any) -> None:
        for meter in self._all:
            _guarded(meter.event, event)

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        for meter in self._all:
            _guarded(meter.call, policy, outcome, seconds, error)

    def attempt(
        self, policy: Any, outcome: str, seconds: float, error: BaseException | None
    ) -> None:
        for meter in self._all:
            _guarded(meter.attempt, policy, outcome, seconds, error)


#: The exporter methods whose failure was logged, kept (not their ids: a freed one's id
#: is soon another's, which would then never be told): one per method that ever failed.
_failed_meters: set[object] = set()


def _guarded(fn: Callable[..., object], *args: Any) -> None:
    """An exporter's error is logged once per exporter method and never reaches the call."""
    try:
        fn(*args)
    except BaseException:
        key = getattr(fn, "__func__", fn)
        if key not in _failed_meters:
            _failed_meters.add(key)
            _told_once(f"meter {_named(fn)} failed; the call goes on (logged once)")


def _named(fn: Callable[..., object]) -> str:
    """A callable by name: its repr may show what it holds (a partial's arguments)."""
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _told_once(message: str) -> None:
    """Log the error being handled with its own traceback only: it was raised while the
    call's error was being handled, whose text the chained traceback would show."""
    import traceback

    error = sys.exc_info()[1]
    assert error is not None
    shown = "".join(
        traceback.format_exception(type(error), error, error.__traceback__, chain=False)
    )
    try:
        _root().error("%s\n%s", message, shown.rstrip())
    except BaseException:  # a handler's failure: logging reports its own, or we drop it
        pass


meters = _Meters()


# -- delivery: on the thread that caused the event ------------------------------------


class _Pending(threading.local):
    def __init__(self) -> None:
        self.events: list[tuple[Any, Any]] = []
        self.delivering = False


_pending = _Pending()


@forking.after_fork_in_child
def _after_fork() -> None:
    """A child forked mid-delivery starts with nothing queued and nobody delivering, and
    with fresh locks (another thread of the parent may have held one)."""
    global _pending
    _pending = _Pending()
    GLOBAL._lock = threading.Lock()
    meters._lock = threading.Lock()


def queue(policy: Any, event: Any) -> None:
    """Under a policy's lock: the event, for ``deliver()`` once the lock is let go."""
    _pending.events.append((policy, event))


def deliver() -> None:
    """Deliver what this thread queued, in order; a listener's own events queue behind."""
    pending = _pending
    if pending.delivering or not pending.events:
        return
    pending.delivering = True
    try:
        events = pending.events
        while events:
            policy, event = events.pop(0)
            _publish(policy, event)
    finally:
        pending.delivering = False


def emit(policy: Any, event: Any) -> None:
    """Publish an event decided outside any lock."""
    queue(policy, event)
    deliver()


def _publish(policy: Any, event: Any) -> None:
    _log(policy, event)
    for entry in policy._listeners._entries:
        entry(event)
    for entry in GLOBAL._entries:
        entry(event)
    meter = meters.current
    if meter is not None:
        meter.event(event)


def listened(policy: Any) -> bool:
    """Whether an event of ``policy`` would reach anyone but the log."""
    return bool(policy._listeners._entries or GLOBAL._entries or meters.current)


def wanted(policy: Any, level: int) -> bool:
    """Whether an event of ``policy`` at ``level`` would reach anyone: made only then."""
    return listened(policy) or _logger(policy.KIND).isEnabledFor(level)


def refused(
    policy: Any,
    reason: str,
    now: Callable[[], float],
    until: float | None = None,
    held: int | None = None,
    *,
    retry_after: float | None = None,
) -> None:
    """A rejection: the event is made only for a listener or a meter; the log line
    goes out when its gate is open, telling how many were held back since the last.
    ``until`` (on ``now``'s clock) or ``retry_after`` (seconds from the decision, for a
    policy that has it at hand: a rate limiter) says when to come back. ``held``: the
    policy keeps the gate itself (a breaker, on its own clock) and this many went
    untold since its last line."""
    heard = listened(policy)
    if not heard and not _logger(policy.KIND).isEnabledFor(LEVELS[Rejected]):
        return  # (nobody to tell: no event, no line, no gate)
    at = now()
    if until is not None:
        retry_after = max(0.0, until - at)
    event = Rejected(policy, at, reason, retry_after)
    if heard:
        emit(policy, event)  # (its line through the gate)
        return
    if held is None:
        text = _gate(policy, "Rejected", at)
    else:
        text = f" ({held} more since the last line)" if held > 0 else ""
    if text is not None:
        _log(policy, event, text)


# -- log lines ---------------------------------------------------------------------------

_loggers: dict[str, logging.Logger] = {}


def _root() -> logging.Logger:
    return _logger("")


def _logger(kind: str) -> logging.Logger:
    found = _loggers.get(kind)
    if found is None:
        import logging

        found = _loggers[kind] = logging.getLogger(f"resilient.{kind}" if kind else "resilient")
    return found


def _gate(policy: Any, kind: str, now: float) -> str | None:
    """None while a policy's lines of this kind (rejections, give-ups: one per call in
    an outage) are held back, each one counted; else what to add to the line that goes
    out: how many were held back before it. ``now``: the event's time, on the policy's
    clock (a ManualClock moves the gate as it moves the policy)."""
    gates = policy.__dict__.get("_log_gates")
    if gates is None:
        gates = policy.__dict__["_log_gates"] = {}
    gate = gates.get(kind)
    if gate is None:
        gate = gates[kind] = [-math.inf, 0]
    if now < gate[0]:
        gate[1] += 1
        return None
    held = f" ({gate[1]} more since the last line)" if gate[1] else ""
    gate[0], gate[1] = now + REJECTION_LOG_SECONDS, 0
    return held


def _log(policy: Any, event: Any, held: str | None = None) -> None:
    """The event's line on its kind's logger (``held``: a rejection's gate, passed)."""
    log = _logger(policy.KIND)
    level = LEVELS[event.__class__]
    if not log.isEnabledFor(level):
        return
    message, extra = event._log()
    if held is None:
        if event.__class__ in _GATED:
            held = _gate(policy, event.__class__.__name__, event.at)
            if held is None:
                return
        else:
            held = ""
    name = policy.name
    extra = {"policy": name, "kind": policy.KIND, "event": type(event).__name__, **extra}
    who = policy.KIND if name is None else f"{policy.KIND} {name!r}"
    try:
        log.log(level, "%s %s%s", who, message, held, extra=extra)
    except BaseException:  # a handler's failure: logging reports its own, or we drop it
        pass
