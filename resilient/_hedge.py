"""Hedge: when a call is slow to answer, start another attempt alongside it; the first
success wins, the others are cancelled and waited for.

A tail-latency tool (Dean and Barroso, "The Tail at Scale"; gRPC's hedging policy): a
request stuck behind a slow replica, a GC pause or a lost packet is overtaken by a copy
sent a little later, most often to another replica. ``delay`` is fixed, or a percentile
of recent successful calls' latencies (``"p95"``: hedge the slowest 5%), kept on a ring
of the last ``window`` latencies (``_core/state/ring.py``) and recomputed every quarter
of a window, never per call.

This module decides (when to hedge, whether a budget allows it, what a call answers);
``_core/execution/racing.py`` runs the attempts on asyncio and trio. Hedging is for
async code only: an attempt that lost must be stopped, and a thread cannot be.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, NoReturn, ParamSpec, TypeVar

from resilient._budget import RetryBudget, check_budget
from resilient._core.configuration import events, parse
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution import backend
from resilient._core.execution.drivers import Decorates, Propagates
from resilient._core.state.clock import SYSTEM_CLOCK, Clock
from resilient._core.state.primitives import counter
from resilient._core.state.ring import Samples
from resilient._errors import ConfigError, UsageError, shown_failure
from resilient.events import LEVELS, BudgetExhausted, HedgeStarted

__all__ = ["OPTIONS", "Hedge", "HedgeMetrics"]

P = ParamSpec("P")
R = TypeVar("R")

_PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")

#: More extra copies of one request than this is a load test, not a hedge.
MAX_HEDGES = 10
#: The most latencies a window keeps (8 bytes each; a percentile sorts them all).
MAX_WINDOW = 100_000


def _check_delay(value: Any) -> float | str:
    """Seconds >= 0, or a percentile written ``"p95"``, ``"p99.9"`` (0 < p < 100)."""
    if isinstance(value, str):
        text = value.strip().lower()
        match = _PERCENTILE.fullmatch(text)
        if match is not None:
            if not 0.0 < float(match[1]) < 100.0:
                raise opt.Invalid
            return text
        if text.startswith("p"):
            raise opt.Invalid("a percentile is written p50, p95, p99.9 (0 < p < 100)")
    return _seconds(value)  # type: ignore[no-any-return]


_seconds = opt.duration(allow_zero=True)


def _check_max_hedges(value: Any) -> int:
    if opt.non_negative_int(value) > MAX_HEDGES:
        raise opt.Invalid
    return value  # type: ignore[no-any-return]


opt.written(
    _check_delay,
    str.strip,
    "a duration (200ms, 0.2, 1s) or a percentile (p95, p99.9)",
    forms=f"{opt.DURATION_FORMS}; or a percentile, written p95",
)
opt.written(_check_max_hedges, parse.parse_int, "a whole number, e.g. 2")

OPTIONS = (
    opt.Option(
        "delay",
        opt.REQUIRED,
        _check_delay,
        "seconds >= 0, or a percentile of recent latencies, 'p50' to 'p99.9' (0 < p < 100)",
        "How long an attempt may go without an answer before the next one starts. A"
        " percentile (`'p95'`) follows the service: the latency 95% of recent successful"
        " calls beat, over the last `window` of them, never below `min_delay`.",
    ),
    opt.Option(
        "max_hedges",
        1,
        _check_max_hedges,
        f"a whole number from 0 to {MAX_HEDGES}",
        "How many extra attempts a call may start, each `delay` after the one before, or"
        " at once when one fails. 0: no hedging (hedges are extra load: an operator can"
        " stop them without a deploy).",
    ),
    opt.Option(
        "min_delay",
        0.0,
        opt.duration(allow_zero=True),
        "seconds >= 0, a finite number",
        "A percentile `delay` never goes below this: for a service so fast that a hedge"
        " would cost more than the wait it saves.",
    ),
    opt.Option(
        "initial_delay",
        None,
        opt.optional(opt.duration(allow_zero=True)),
        "None, or seconds >= 0",
        "A percentile `delay` only: the delay used until `min_calls` latencies are known."
        " None: no hedging until then (nothing is known yet of what slow is).",
    ),
    opt.Option(
        "min_calls",
        20,
        opt.positive_int,
        "a whole number from 1 to `window`",
        "A percentile `delay` only: how many successful calls' latencies it needs before"
        " it is trusted (a p99 means little below 100).",
    ),
    opt.Option(
        "window",
        1000,
        opt.bounded_int(MAX_WINDOW),
        f"a whole number from 1 to {MAX_WINDOW:,}",
        "A percentile `delay` only: how many recent successful calls' latencies it is"
        " taken over; it is recomputed every quarter of a window of calls.",
    ),
    opt.Option(
        "on",
        Exception,
        opt.counted_exceptions,
        "an Exception subclass, a tuple or list of them, or a predicate(exc) -> bool",
        "Failures that start the next attempt at once (gRPC's non-fatal codes). Any other"
        " error is final: the call fails with it at once and the other attempts are"
        " cancelled (a not-found, a bad request: asking again only adds load).",
    ),
    opt.Option(
        "budget",
        None,
        check_budget,
        "None or a resilient.RetryBudget",
        "A share of recent calls that hedges may add: each hedge takes one from it, and"
        " is not started when it is spent. The first attempt never needs it.",
    ),
    opt.Option(
        "clock",
        None,
        opt.clock("monotonic", "sleep_async"),
        "None or an object with monotonic() and sleep_async()",
        "Where latencies and delays are measured; tests pass ManualClock, whose"
        " `sleep_async` then paces the hedges.",
    ),
)
_OPTION_NAMES = frozenset(option.name for option in OPTIONS)


class HedgeMetrics(NamedTuple):
    """A Hedge's counts since it was made (or reset)."""

    hedges: int  #: extra attempts started
    won: int  #: calls a hedge answered (not the first attempt)
    refused: int  #: hedges not started because the budget was spent
    delay: float | None  #: the delay in force now (None: no hedging yet)
    latencies: int  #: successful calls' latencies held for a percentile


class _Delays:
    """When a call hedges: a fixed delay, or a quantile of recent successful calls'
    latencies, cached with the alarms of that delay and refreshed every quarter of a
    window of records (a sort of the window: O(log N) a call, amortised)."""

    __slots__ = ("_every", "_next", "alarms", "min_calls", "min_delay", "quantile", "samples")

    def __init__(
        self,
        delay: float | str,
        min_delay: float,
        initial: float | None,
        min_calls: int,
        samples: Samples,
    ) -> None:
        self.samples = samples
        self.min_delay = min_delay
        self.min_calls = min_calls
        self._every = max(1, samples.size // 4)
        self._next = min_calls
        if isinstance(delay, float):
            self.quantile: float | None = None
            self.alarms: backend.Alarms | None = backend.Alarms(delay, racing_rung)
        else:
            self.quantile = float(delay[1:]) / 100.0
            self.alarms = None if initial is None else backend.Alarms(initial, racing_rung)
            known = len(samples)
            if known >= min_calls:
                self._refresh(known)

    def record(self, latency: float) -> None:
        known = self.samples.record(latency)
        if known >= self._next:
            self._refresh(known)

    def _refresh(self, known: int) -> None:
        self._next = known + self._every  # (two racing refreshes: the same answer twice)
        assert self.quantile is not None
        found = self.samples.quantile(self.quantile)
        if found is None:
            return
        delay = max(self.min_delay, found)
        alarms = self.alarms
        # Within 1% of the delay in force: kept, with its alarms (each new delay has a
        # timer of its own per loop: on trio a task, which lingers a second once idle).
        if alarms is None or abs(delay - alarms.seconds) > 0.01 * alarms.seconds:
            self.alarms = backend.Alarms(delay, racing_rung)


def racing_rung(alarm: Any) -> None:
    """An alarm rang: the race driver starts the next attempt (imported when a hedge is
    first needed, not with ``import resilient``)."""
    from resilient._core.execution import racing

    racing._rung(alarm)


class _Plan:
    """What a call reads, switched whole by a reload (the latencies are kept)."""

    __slots__ = (
        "budget",
        "clock",
        "delays",
        "judging",
        "max_hedges",
        "meter",
        "now",
        "on",
        "policy",
        "samples",
        "timed",
    )

    def __init__(self, hedge: Hedge, settings: Settings, delays: _Delays) -> None:
        self.policy = hedge
        self.max_hedges: int = settings["max_hedges"]
        on = settings.enabled and self.max_hedges > 0
        self.delays = delays if on else None  # None: switched off, calls pass through
        self.samples = delays.samples  # (kept by a reload that keeps the window's size)
        self.budget: RetryBudget | None = settings["budget"]
        self.on: opt.ExceptionFilter = settings["on"]
        # A predicate that raises is logged once; the failure is then treated as one
        # that hedges (the default), and the downstream's own error goes on.
        self.judging = opt.Fallback("on", hedge._owner())
        self.clock: Clock = settings["clock"] or SYSTEM_CLOCK
        self.now = self.clock.monotonic
        self.timed = self.clock is SYSTEM_CLOCK  # else the clock's sleeps pace hedges
        self.meter: events.Meter | None = hedge._metered()

    async def sleep_async(self, seconds: float) -> None:
        await self.clock.sleep_async(seconds)

    def hedges_after(self, exc: Exception) -> bool:
        """Whether failure ``exc`` starts the next attempt (else it is the call's end)."""
        try:
            return bool(self.on(exc))
        except Exception as error:
            self.judging.failed(error, f"on {type(exc).__name__}", "treated as one that hedges")
            return True

    def race(self, delay: float) -> _Attempts:
        return _Attempts(self, delay)


class _Attempts:
    """One hedged call's attempts, decided without I/O: which may start, who won, what
    the call answers. Made only once a call needs more than its first attempt."""

    __slots__ = (
        "delay",
        "failures",
        "final",
        "in_flight",
        "plan",
        "settled",
        "started",
        "total",
        "winner",
    )

    def __init__(self, plan: _Plan, delay: float) -> None:
        self.plan = plan
        self.delay = delay
        self.total = 1 + plan.max_hedges
        self.started = 1
        self.in_flight = {0}
        self.winner: tuple[int, object] | None = None
        self.failures: list[tuple[int, Exception]] = []
        # a failure `on` does not match, or a KeyboardInterrupt/SystemExit: the call's end
        self.final: tuple[int, BaseException] | None = None
        self.settled = False

    def start(self, reason: str) -> bool:
        if self.settled or self.started >= self.total:
            return False
        plan = self.plan
        hedge = plan.policy
        budget = plan.budget
        if budget is not None and not budget._withdraw():
            self.total = self.started  # (no later hedge of this call asks again)
            hedge._refused.incr()
            if events.wanted(hedge, LEVELS[BudgetExhausted]):
                at = plan.now()
                events.emit(hedge, BudgetExhausted(hedge, at, self.started, budget))
            self._settle()
            return False
        n = self.started
        self.started += 1
        self.in_flight.add(n)
        hedge._hedges.incr()
        if events.wanted(hedge, LEVELS[HedgeStarted]):
            events.emit(hedge, HedgeStarted(hedge, plan.now(), n + 1, reason, self.delay))
        return True

    def ended(self, n: int, exc: BaseException | None, result: object) -> bool:
        if n not in self.in_flight:
            return False  # (said already)
        self.in_flight.discard(n)
        if exc is None:
            if self.winner is None and self.final is None:  # (a final error ended it)
                self.winner = (n, result)
                self.settled = True
                if n > 0:
                    self.plan.policy._won.incr()
            return False
        if isinstance(exc, Exception):  # a failure: the next attempt starts at once
            if self.settled:
                return False  # (lost to an answer known already)
            if not self.plan.hedges_after(exc):  # final: the call ends with it
                self.final = (n, exc)
                self.settled = True
                return False
            self.failures.append((n, exc))
            if self.started < self.total:
                return True
        self._settle()  # (anything else is a cancellation: ours, or the caller's)
        return False

    def _settle(self) -> None:
        if not self.in_flight and self.started >= self.total:
            self.settled = True

    def abandon(self) -> None:
        self.settled = True

    def escalated(self, n: int, exc: BaseException) -> None:
        self.in_flight.discard(n)
        self.final = (n, exc)  # (over a winner too: an interrupt is never swallowed)
        self.settled = True

    def answer(self) -> Any:
        if self.final is not None:
            raise self.final[1]
        if self.winner is not None:
            return self.winner[1]
        n, last = self.failures[-1]
        hedge = self.plan.policy
        who = "hedge" if hedge.name is None else f"hedge {hedge.name!r}"
        notes: list[str] = list(getattr(last, "__notes__", None) or [])
        if len(self.failures) > 1:
            failed = len(self.failures)
            lines = [f"{who}: all {failed} attempts failed; this is attempt {n + 1}'s error"]
            lines += [
                f"{who}: attempt {i + 1} failed with {shown_failure(error)}"
                for i, error in sorted(self.failures[:-1], key=lambda failure: failure[0])
            ]
            notes += [line for line in lines if line not in notes]
        # add_note() keeps its notes in __notes__ (3.11+); a 3.10 traceback does not print
        # them, but the attribute keeps them there too, for a handler or a log to read.
        last.__notes__ = notes  # type: ignore[attr-defined]
        raise last


class Hedge(Configured, Propagates, Decorates):
    """Start another attempt when ``delay`` passes without an answer; the first success wins.

    For ``async def`` (asyncio and trio), as a decorator or through ``call_async``. The
    attempts that lose are cancelled, and the call returns only once each has ended.
    A failed attempt starts the next at once; when every attempt has failed, the last
    error is raised, with notes naming the others. Sync code raises UsageError: a losing
    call on a thread could not be stopped, and would go on loading the downstream.
    """

    KIND = "hedge"
    OPTIONS = OPTIONS
    #: a wrapped client's plain methods pass through it (resilient.wrap)
    async_only = True
    _plan: _Plan

    def __init__(
        self,
        delay: opt.Duration,
        *,
        max_hedges: int = 1,
        min_delay: opt.Duration = 0.0,
        initial_delay: opt.Duration | None = None,
        min_calls: int = 20,
        window: int = 1000,
        on: opt.Exceptions = Exception,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        settings = self._configure(name, given)
        self._hedges = counter()
        self._won = counter()
        self._refused = counter()
        self._register(settings)

    def _compile(self, settings: Settings) -> _Plan:
        if settings["min_calls"] > settings["window"]:
            option, value = settings.blame("min_calls")
            window = "{}={!r}".format(*settings.blame("window"))
            raise ConfigError(
                option, value, f"at most {window}: the window holds no more", owner=self._owner()
            )
        size = settings["window"]
        old = getattr(self, "_plan", None)
        samples = old.samples if old is not None and old.samples.size == size else Samples(size)
        delays = _Delays(
            settings["delay"],
            settings["min_delay"],
            settings["initial_delay"],
            settings["min_calls"],
            samples,
        )
        return _Plan(self, settings, delays)

    def _switch(self, compiled: _Plan) -> None:
        self._plan = compiled

    # -- forms ------------------------------------------------------------------------

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        raise UsageError(
            f"Hedge is for async code, and {fn!r} is sync: a hedge runs attempts side by"
            " side and cancels those that lose, but a thread cannot be cancelled, so a"
            " losing sync call would go on loading the downstream unseen. Hedge an async"
            " def (or await hedge.call_async(...)); in sync code, use a Timeout and a Retry"
        )

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        from resilient._core.execution import racing

        return racing.hedging(self, fn)

    _BLOCK_TOKENS = False

    def _enter_block(self, asynchronous: bool) -> NoReturn:
        raise UsageError(
            "a Hedge cannot guard a with block: it must be able to run the code again"
            " alongside itself, and a block runs once. Decorate an async def, or await"
            " hedge.call_async(fn, ...)"
        )

    # -- reading ----------------------------------------------------------------------

    @property
    def delay(self) -> float | None:
        """The delay in force now, in seconds (None: no hedging yet, or switched off)."""
        delays = self._plan.delays
        alarms = None if delays is None else delays.alarms
        return None if alarms is None else alarms.seconds

    @property
    def metrics(self) -> HedgeMetrics:
        return HedgeMetrics(
            self._hedges.value,
            self._won.value,
            self._refused.value,
            self.delay,
            len(self._plan.samples),
        )

    def _health(self) -> dict[str, Any]:
        return self.metrics._asdict()

    def reset(self) -> None:
        """Count from zero again (the latencies learnt are kept)."""
        self._hedges = counter()
        self._won = counter()
        self._refused = counter()

    def __repr__(self) -> str:
        values = self.settings.values
        name = "" if self.name is None else f", name={self.name!r}"
        return f"Hedge({values['delay']!r}, max_hedges={values['max_hedges']}{name})"
