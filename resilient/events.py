"""What policies tell: typed, frozen events, one class per thing that happened.

Every event is a named tuple whose first two fields say who and when: the policy (a
``StateChange`` calls it ``breaker``; every event also answers ``.policy``) and ``at``,
the policy clock's monotonic time. Listen to one policy with ``policy.add_listener(fn)``,
to every policy with :func:`resilient.add_listener`. A successful call publishes nothing.

Events carry the error or the failing result they are about, for listeners to inspect;
the log lines made from them never show a result or a call's arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from resilient._breaker import CircuitBreaker, State

__all__ = [
    "EVENTS",
    "LEVELS",
    "BudgetExhausted",
    "Event",
    "FallbackUsed",
    "FaultInjected",
    "FleetRestored",
    "FleetUnavailable",
    "HedgeStarted",
    "Rejected",
    "RetryGaveUp",
    "RetryScheduled",
    "StateChange",
    "Tally",
    "TimedOut",
]


def _error_type(error: BaseException | None, result: Any = None) -> str | None:
    """``error.type`` as OpenTelemetry spells it: the class, module-qualified unless
    builtin; of a failing result, its HTTP status code if it has one (as OpenTelemetry's
    HTTP conventions say), else None."""
    if error is None:
        status = getattr(result, "status_code", None)
        return str(status) if isinstance(status, int) else None
    cls = type(error)
    return (
        cls.__qualname__
        if cls.__module__ == "builtins"
        else f"{cls.__module__}.{cls.__qualname__}"
    )


class Tally(NamedTuple):
    """A breaker window's counts at one instant (in HALF_OPEN: its probes')."""

    calls: int
    failures: int
    slow_calls: int

    def __str__(self) -> str:
        slow = f", {self.slow_calls} slow" if self.slow_calls else ""
        return f"{self.failures} of {self.calls} calls failed{slow}"


class StateChange(NamedTuple):
    """A breaker moved from ``old`` to ``new``, for ``reason``, with its window at ``tally``.

    ``tally`` is what decided the change (None for a manual one, or an elapsed
    ``open_for``); ``until`` is when an OPEN spell ends (clock time), ``times_opened``
    how many spells in a row it has opened for. Its history holds these, and replaying
    them rebuilds its state (:meth:`CircuitBreaker.replay`).
    """

    breaker: CircuitBreaker
    old: State
    new: State
    at: float
    tally: Tally | None = None
    reason: str = ""
    until: float | None = None
    times_opened: int = 0

    @property
    def policy(self) -> CircuitBreaker:
        return self.breaker

    def _log(self) -> tuple[str, dict[str, Any]]:
        why = f": {self.reason}" if self.reason else ""
        fields = {"state": self.new.value, "old_state": self.old.value, "reason": self.reason}
        return f"{self.old.value} -> {self.new.value}{why}", fields


class Rejected(NamedTuple):
    """A policy refused a call. ``reason`` is short and stable: ``"open"``,
    ``"forced_open"``, ``"half_open_full"`` (a breaker); ``"full"`` (a bulkhead with
    no free slot and no wait allowed), ``"queue_full"`` (its ``max_waiting`` reached),
    ``"full_after_wait"`` (its ``max_wait`` ran out); ``"workers_exhausted"`` (a sync
    Timeout's ``max_abandoned``); ``"rate_limited"`` (a rate limiter: no turn within its
    ``max_wait``). ``retry_after``: seconds until the policy expects to
    admit calls again, when it knows."""

    policy: Any
    at: float
    reason: str
    retry_after: float | None = None

    def _log(self) -> tuple[str, dict[str, Any]]:
        fields = {"reason": self.reason, "retry_after": self.retry_after}
        return f"rejected a call ({self.reason})", fields


class RetryScheduled(NamedTuple):
    """Attempt ``attempt`` failed, with ``error`` or the failing ``result``; the next
    one starts after ``wait`` seconds."""

    policy: Any
    at: float
    attempt: int
    wait: float
    error: BaseException | None = None
    result: Any = None

    def _log(self) -> tuple[str, dict[str, Any]]:
        what = _failure(self.error, self.result)
        return (
            f"attempt {self.attempt} failed ({what}); retrying in {self.wait:.3g}s",
            {
                "attempt": self.attempt,
                "wait": self.wait,
                "error_type": _error_type(self.error, self.result),
            },
        )


class RetryGaveUp(NamedTuple):
    """A retry stopped after ``attempts`` attempts, for ``reason``: ``"attempts"`` (that
    was its last), ``"deadline"`` (its own, or the one in force), ``"budget"`` (its
    RetryBudget is spent), ``"stop"`` (its stop strategy) or ``"retry_after"`` (a hinted
    wait longer than ``max_wait``); the last ``error`` (or ``result``) is what the
    caller gets."""

    policy: Any
    at: float
    attempts: int
    reason: str
    error: BaseException | None = None
    result: Any = None

    def _log(self) -> tuple[str, dict[str, Any]]:
        what = _failure(self.error, self.result)
        attempts = "1 attempt" if self.attempts == 1 else f"{self.attempts} attempts"
        return (
            f"gave up after {attempts} ({self.reason}); last: {what}",
            {
                "attempt": self.attempts,
                "reason": self.reason,
                "error_type": _error_type(self.error, self.result),
            },
        )


class TimedOut(NamedTuple):
    """A call ran out of time after ``seconds``: its Timeout's own, or an enclosing
    deadline's (``by_deadline``)."""

    policy: Any
    at: float
    seconds: float
    by_deadline: bool = False

    def _log(self) -> tuple[str, dict[str, Any]]:
        by = " (the enclosing deadline)" if self.by_deadline else ""
        return f"timed out after {self.seconds:.3g}s{by}", {"seconds": self.seconds}


class FallbackUsed(NamedTuple):
    """A fallback answered in place of ``error`` (or a failing ``result``)."""

    policy: Any
    at: float
    error: BaseException | None = None
    result: Any = None

    def _log(self) -> tuple[str, dict[str, Any]]:
        return (
            f"answered instead of {_failure(self.error, self.result)}",
            {"error_type": _error_type(self.error, self.result)},
        )


class BudgetExhausted(NamedTuple):
    """A retry's ``budget`` had nothing left for the retry after attempt ``attempt``."""

    policy: Any
    at: float
    attempt: int
    budget: Any = None

    def _log(self) -> tuple[str, dict[str, Any]]:
        return (
            f"retry budget exhausted after attempt {self.attempt}",
            {"attempt": self.attempt},
        )


class FaultInjected(NamedTuple):
    """A fault injection policy injected into a call: ``kind`` is ``"fault"`` (it
    raised ``error`` in place of the call), ``"latency"`` (the call waits ``seconds``
    first) or ``"result"`` (it returned a substitute result in place of the call). The
    error a caller then sees is the one the policy was given: this event, its log line
    and a note on the error say it was injected."""

    policy: Any
    at: float
    kind: str
    error: BaseException | None = None
    seconds: float | None = None

    def _log(self) -> tuple[str, dict[str, Any]]:
        if self.kind == "fault":
            what = f"a fault ({_failure(self.error)})"
        elif self.kind == "latency":
            what = f"{self.seconds:.3g}s of latency"
        else:
            what = "a substitute result"
        fields = {
            "injected": self.kind,
            "seconds": self.seconds,
            "error_type": _error_type(self.error),
        }
        return f"injected {what}", fields


class HedgeStarted(NamedTuple):
    """A hedge started attempt ``attempt`` (2 for the first hedge) of a call, for
    ``reason``: ``"delay"`` (no answer after ``delay`` seconds) or ``"failure"`` (the
    attempt before it failed, so the next one starts at once)."""

    policy: Any
    at: float
    attempt: int
    reason: str
    delay: float

    def _log(self) -> tuple[str, dict[str, Any]]:
        why = f"no answer after {self.delay:.3g}s" if self.reason == "delay" else "a failure"
        return (
            f"started attempt {self.attempt} ({why})",
            {"attempt": self.attempt, "reason": self.reason, "delay": self.delay},
        )


class FleetUnavailable(NamedTuple):
    """The policy's Redis backend (``backend``: its repr) stopped answering: the policy
    runs on its local state (a breaker of its own, a limiter at its local share) until it
    answers again. One per policy per outage, never one per call; ``error`` says what
    failed (its type and text)."""

    policy: Any
    at: float
    backend: str
    error: str

    def _log(self) -> tuple[str, dict[str, Any]]:
        return f"uses its local state: {self.backend} is away", {"backend": self.backend}


class FleetRestored(NamedTuple):
    """The policy's Redis backend answers again: the policy shares the fleet's state."""

    policy: Any
    at: float
    backend: str

    def _log(self) -> tuple[str, dict[str, Any]]:
        return f"shares the fleet's state again: {self.backend} answers", {"backend": self.backend}


def _failure(error: BaseException | None, result: Any = None) -> str:
    """An error as a log line may show it: its type, not its text (which can hold a URL
    with a token, a query, a user's data); a failing result is never shown, but for its
    HTTP status, if it has one."""
    if error is not None:
        return type(error).__name__
    status = _error_type(None, result)
    return "a failing result" if status is None else f"HTTP {status}"


Event = (
    StateChange
    | Rejected
    | RetryScheduled
    | RetryGaveUp
    | TimedOut
    | FallbackUsed
    | BudgetExhausted
    | FaultInjected
    | HedgeStarted
    | FleetUnavailable
    | FleetRestored
)

#: Every class of event, for ``isinstance`` and for listeners' filters.
EVENTS = (
    StateChange,
    Rejected,
    RetryScheduled,
    RetryGaveUp,
    TimedOut,
    FallbackUsed,
    BudgetExhausted,
    FaultInjected,
    HedgeStarted,
    FleetUnavailable,
    FleetRestored,
)

#: Each event's log level (logging's numbers: this module imports no logging).
LEVELS: dict[type, int] = {
    StateChange: 30,
    Rejected: 10,
    RetryScheduled: 20,
    RetryGaveUp: 30,
    TimedOut: 20,
    FallbackUsed: 20,
    BudgetExhausted: 30,
    FaultInjected: 20,
    # Hedging is routine by design (a p95 delay hedges one call in twenty): a line per
    # hedge at INFO would flood a busy service's log.
    HedgeStarted: 10,
    # The outage's WARNING is the backend's own, once on resilient.fleet: a policy's
    # line would repeat it for every policy on the backend.
    FleetUnavailable: 20,
    FleetRestored: 20,
}
