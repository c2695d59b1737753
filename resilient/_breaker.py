"""The circuit breaker: stop calling a downstream that is failing, probe it, recover.

State lives in one :class:`_Phase` object that is swapped whole (never edited in place
where a reader could see half a change). A call is admitted under a phase and its outcome
is reported back to *that* phase, so an outcome can never change a state it was not
admitted under: a stale success cannot close an open breaker, a stale failure cannot
extend its open time.

The CLOSED path takes no lock: admission is a read of ``_state``, recording is a
lock-free store into the phase's window (``_core.window``). The lock below guards only
the rare things: transitions, and the handful of HALF_OPEN probe permits. It is never
held while user code runs.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from resilient._core.configuration import config, events
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution.drivers import MUST_WAIT, NO_RESULT, GuardForms, Refusal
from resilient._core.state.clock import SYSTEM_CLOCK, MonotonicClock
from resilient._core.state.primitives import counter
from resilient._core.state.ring import Ring
from resilient._core.state.window import (
    FAILURE,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    Tally,
    Window,
    count_window,
    time_window,
)
from resilient._errors import CircuitOpenError, ConfigError, RejectedError, UsageError, detached
from resilient.events import StateChange
from resilient.events import Tally as Counted

if TYPE_CHECKING:
    from resilient.redis import BreakerLink, RedisBackend, Shared

__all__ = ["HISTORY", "BreakerMetrics", "CircuitBreaker", "State", "StateChange"]

#: How many transitions a breaker's history keeps; how many ``resilient.health()`` shows.
HISTORY = 100
HEALTH_TAIL = 5

L = TypeVar("L", bound=Callable[..., object])


class State(str, Enum):
    """Where a breaker stands. The values are the spellings used in configuration."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
FORCED_OPEN, DISABLED = State.FORCED_OPEN, State.DISABLED


class BreakerMetrics(NamedTuple):
    """A snapshot of a breaker's current window.

    Rates are None until the window holds ``min_calls`` calls (in HALF_OPEN: until every
    probe has reported), because below that the breaker does not decide on them either.
    ``rejected`` counts rejections since construction or the last ``reset()``.
    """

    state: State
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    rejected: int


class _Phase:
    """One state of the breaker and what belongs to it; replaced whole on a transition."""

    __slots__ = (
        "admitted",
        "ask_after",
        "cause",
        "failures",
        "fast",
        "forward",
        "gen",
        "kind",
        "meter",
        "passed",
        "pending",
        "pending_stamp",
        "plain",
        "record",
        "refusal",
        "rejected_before",
        "reopen_for",
        "reported",
        "since",
        "slow",
        "success",
        "times_opened",
        "told",
        "until",
        "window",
    )

    def __init__(
        self,
        kind: State,
        window: Window,
        *,
        since: float = 0.0,
        until: float = 0.0,
        times_opened: int = 0,
        reopen_for: float = 0.0,
        fast: bool = False,
        plain: bool = False,
        refusal: Refusal | None = None,
    ) -> None:
        self.kind = kind
        # OPEN, FORCED_OPEN: every call is refused until a known time (the drivers do it).
        self.refusal = refusal
        # The driver admits a call on a fast phase without asking: CLOSED and untimed.
        self.fast = fast
        # Read by the drivers off the fast path: who hears of each call (set by _install).
        self.meter: events.Meter | None = None
        # CLOSED, and a success needs nothing but a slot store: no timing, no predicate.
        self.plain = plain
        self.window = window
        self.record = window.record
        self.success = window.success  # a plain phase's whole record of a success
        # A fast phase: what the drivers call with the result of a call that returned
        # (set by CircuitBreaker._arm: the window's own record, or the full _exit).
        self.passed: Callable[[object], object] = window.success
        self.since = since
        self.until = until
        self.times_opened = times_opened
        # HALF_OPEN: how long to open for if the probes fail, computed before the spell
        # so that the user's open_for callable never runs under the lock.
        self.reopen_for = reopen_for
        # CLOSED: a rate is over its threshold but the window is still under min_calls,
        # so successes must re-judge too (they can bring the window up to min_calls).
        self.pending = False
        self.pending_stamp = -1  # the stamp of the tally that set ``pending``
        # HALF_OPEN probe bookkeeping; only touched under the breaker's lock.
        self.admitted = self.reported = self.failures = self.slow = 0
        self.cause: BaseException | None = None  # HALF_OPEN: the last probe's failure
        # OPEN, FORCED_OPEN: the breaker's count of rejections when the spell began, and
        # when its last rejection was told (a log line tells those held back since)
        self.rejected_before = self.told = 0
        # CLOSED, replaced by a reload that changed its window or its flags: the phase
        # that took over, where the outcomes of calls admitted under this one now go.
        self.forward: _Phase | None = None
        # With a backend: the fleet's generation this phase belongs to (0: none known),
        # and, HALF_OPEN, until when a fleet that had no permit left is not asked again.
        self.gen = 0
        self.ask_after = -math.inf


_Token = _Phase | tuple[_Phase, float]  # timed tokens carry the start time

_FAILED = {SUCCESS: FAILURE, SLOW_SUCCESS: SLOW_FAILURE}


OPTIONS = (
    opt.Option(
        "failure_rate",
        0.5,
        opt.rate,
        "a number with 0 < failure_rate <= 1",
        "Open when the share of failed calls in the window reaches this (>=).",
    ),
    opt.Option(
        "window_size",
        100,
        opt.window_size,
        "a whole number of calls from 1 to 1,000,000 (count window), or seconds from 0.001 to"
        " 31,536,000 (time window)",
        "How much history the failure rate is computed over.",
    ),
    opt.Option(
        "window_type",
        "count",
        opt.choice("count", "time"),
        "'count' or 'time'",
        "'count': the last window_size calls; 'time': the calls of the last window_size s.",
    ),
    opt.Option(
        "min_calls",
        20,
        opt.positive_int,
        "a whole number from 1 to 1,000,000",
        "No decision while the window holds fewer calls. 20 rather than resilience4j's and"
        " Polly's 100: an outage is acted on after 20 calls, not 100, yet a steady 10% error"
        " rate reaches 50% of 20 calls with odds of about 1 in 140,000 (of 10: 1 in 600).",
    ),
    opt.Option(
        "open_for",
        30.0,
        opt.duration_or_callable,
        "seconds >= 0, or a callable(times_opened) returning them",
        "How long to stay OPEN before letting probes through. 30 s sits between Polly's 5 s"
        " (which keeps probing a service still restarting) and resilience4j's 60 s (which"
        " leaves a recovered one unused for a minute); pass a callable to back off.",
    ),
    opt.Option(
        "half_open_calls",
        5,
        opt.positive_int,
        "a whole number from 1 to 1,000,000",
        "Probes admitted in HALF_OPEN; the breaker decides once all have reported. 5 gives"
        " the failure rate something to stand on (1 probe would let a single lucky call"
        " close the breaker) while risking few calls on a service that may still be down.",
    ),
    opt.Option(
        "half_open_max_wait",
        None,
        opt.optional(opt.duration(allow_zero=False)),
        "None or seconds > 0",
        "If probes have not all reported this long after HALF_OPEN began, reopen.",
    ),
    opt.Option(
        "slow_call_duration",
        None,
        opt.optional(opt.duration(allow_zero=False)),
        "None or seconds > 0",
        "Calls taking at least this long count as slow. None: no call is timed.",
    ),
    opt.Option(
        "slow_call_rate",
        1.0,
        opt.rate,
        "a number with 0 < slow_call_rate <= 1",
        "Open when the share of slow calls reaches this (>=).",
    ),
    opt.Option(
        "record",
        Exception,
        opt.counted_exceptions,
        "an Exception subclass, a tuple or list of them, or a predicate(exc) -> bool",
        "Exceptions counted as failures; other exceptions count as successes. An inner"
        " policy's `RejectedError` (a rate limiter's, a bulkhead's: nothing reached the"
        " downstream) counts as neither.",
    ),
    opt.Option(
        "ignore",
        (),
        opt.counted_exceptions,
        "an Exception subclass, a tuple or list of them, or a predicate(exc) -> bool",
        "Exceptions counted as neither failure nor success; wins over record.",
    ),
    opt.Option(
        "failure_result",
        None,
        opt.predicate,
        "None or a predicate(result) -> bool",
        "A returned value for which this is true counts as a failure.",
    ),
    opt.Option(
        "clock",
        None,
        opt.clock("monotonic"),
        "None or an object with a monotonic() method",
        "Where time comes from; tests pass resilient.testing.ManualClock.",
    ),
    opt.backend(
        "Where a fleet of processes shares the breaker's state (docs/fleet.md): a trip in"
        " one process opens it in all; the window stays local. None: this process alone."
    ),
)

#: With a backend, a half-open spell whose permits are all out longer than this (or
#: than half_open_max_wait, if set) starts again: a probe's process may have died.
PROBE_LEASE = 60.0
#: With a backend, how long a process told "no permit left" refuses probes on its own
#: before asking the fleet again.
PROBE_RECHECK = 0.1


#: Environment only: ``RESILIENT_<NAME>_BREAKER_STATE`` pins a breaker from outside.
PINNED = opt.Option(
    "state",
    "auto",
    opt.choice("auto", "forced_open", "disabled"),
    "auto, forced_open or disabled",
    "Set only by the environment: forced_open rejects every call, disabled lets every"
    " call through unrecorded, auto (or no variable) leaves the breaker to itself.",
)
_PINS = {"auto": None, "forced_open": FORCED_OPEN, "disabled": DISABLED}


def _min_calls_capped(settings: Settings) -> str:
    """Why a min_calls given above a count window's size (by code or environment, or
    one by each) cannot be met, and what is used instead."""
    size = settings["window_size"]
    given = "{}={!r}".format(*settings.blame("min_calls"))
    window = "{}={!r}".format(*settings.blame("window_size"))
    return (
        f"{given} is above {window}: a count window never holds more than {size} calls,"
        f" so min_calls={size} is used; set min_calls to at most window_size"
    )


class _Plan:
    """A breaker's configuration and the judgements made from it, replaced whole."""

    def __init__(self, settings: Settings, owner: str, meter: events.Meter | None) -> None:
        self.owner = owner
        self.meter = meter
        open_for = settings["open_for"]
        # The last duration open_for gave: what a breaker opens for if it later fails.
        self.last_open_for: float = next(o.default for o in OPTIONS if o.name == "open_for")
        self._open_for_fallback = opt.Fallback("open_for", owner)
        if callable(open_for):
            self.open_for: Callable[[int], float] = open_for
            try:  # a callable that cannot answer fails now, not mid-outage
                self.last_open_for = opt.computed_seconds(
                    open_for(1), "open_for", "called with 1", owner=owner
                )
            except Exception as error:
                option, value = settings.blame("open_for")
                if isinstance(error, ConfigError) and option == "open_for":
                    raise  # the keyword's own callable: its error names it already
                expected = f"a callable(times_opened) -> seconds >= 0 (open_for(1): {error})"
                raise ConfigError(option, value, expected, owner=owner) from error
        else:
            self.open_for = lambda times_opened: open_for
        self.failure_rate: float = settings["failure_rate"]
        self.window_type: str = settings["window_type"]
        self.window_size: float = settings["window_size"]
        min_calls: int = settings["min_calls"]
        self.capped: str | None = None  # why min_calls was cut to the window's size
        if self.window_type == "count":
            if not isinstance(self.window_size, int):
                option, value = settings.blame("window_size")
                expected = next(o.expected for o in OPTIONS if o.name == "window_size")
                raise ConfigError(option, value, expected, owner=owner)
            if min_calls > self.window_size:
                if settings.sources["min_calls"] != "default":  # the default just fits
                    self.capped = _min_calls_capped(settings)
                min_calls = self.window_size
        self.min_calls = min_calls
        self.half_open_calls: int = settings["half_open_calls"]
        self.half_open_max_wait: float | None = settings["half_open_max_wait"]
        slow_after: float | None = settings["slow_call_duration"]
        self.timed = slow_after is not None
        self.slow_after = math.inf if slow_after is None else slow_after
        self.slow_rate: float = settings["slow_call_rate"]
        self.is_failure: opt.ExceptionFilter = settings["record"]
        self.is_ignored: opt.ExceptionFilter = settings["ignore"]
        # Exceptions told apart by type alone (the usual case): a plain phase classifies
        # a failure with isinstance checks instead of predicate calls. ``neither``: the
        # Exceptions that count as neither failure nor success (None: ask the predicates).
        self.neither: tuple[type[BaseException], ...] | None = None
        self.failing: tuple[type[BaseException], ...] = ()
        if isinstance(self.is_failure, opt.TypeFilter) and isinstance(
            self.is_ignored, opt.TypeFilter
        ):
            self.neither = (UsageError, RejectedError, *self.is_ignored.types)
            self.failing = self.is_failure.types
        self.failure_result: Callable[[Any], bool] | None = settings["failure_result"]
        # A predicate that raises is logged (once) and never replaces the call's outcome.
        self.judging = {
            option: opt.Fallback(option, owner) for option in ("failure_result", "record")
        }
        self.clock: MonotonicClock = settings["clock"] or SYSTEM_CLOCK
        self.now = self.clock.monotonic
        self.pinned: str = settings["state"]
        self.backend: RedisBackend | str | None = settings["backend"]
        self.enabled = settings.enabled
        # CLOSED admits without asking: no call is timed, for slowness or for a meter.
        self.fast = not self.timed and meter is None
        # A success needs nothing but a slot store: no timing, no clock, no predicate.
        self.plain_success = (
            not self.timed and self.window_type == "count" and self.failure_result is None
        )

    def new_window(self) -> Window:
        if self.window_type == "count":
            return count_window(int(self.window_size), slow=self.timed)
        return time_window(self.window_size)

    def reshaped(self, window: Window) -> Window:
        """``window`` if it has this shape already; else a new one (a count window keeps
        its latest outcomes, as many as fit; a time window cannot be re-bucketed)."""
        if (
            window.kind == self.window_type
            and window.length == self.window_size
            and (window.records_slow or not self.timed)
        ):
            return window
        if self.window_type == "count" and window.kind == "count":
            new = count_window(int(self.window_size), slow=self.timed)
            for outcome in window.outcomes()[-int(self.window_size) :]:
                new.record(outcome, 0.0)
            return new
        return self.new_window()

    def open_duration(self, times_opened: int) -> float:
        """How long to open for; if the open_for callable fails now, the last duration it
        gave (or the option's default): the breaker must still open and close again."""
        seconds, _ = self._open_for_fallback.seconds(
            lambda: self.open_for(times_opened),
            f"called with {times_opened}",
            self.last_open_for,
        )
        self.last_open_for = seconds
        return seconds

    def classify(self, outcome: int, exc: BaseException | None, result: object) -> int | None:
        """SUCCESS/FAILURE (slow or not), or None for a call that counts as neither."""
        if exc is None:
            if self.failure_result is not None and result is not NO_RESULT:
                try:
                    if self.failure_result(result):
                        return _FAILED[outcome]
                except Exception as error:  # never the call's: counted as neither
                    self.judging["failure_result"].failed(error, "on a result", "not counted")
                    return None
            return outcome
        if not isinstance(exc, Exception) or isinstance(exc, (UsageError, RejectedError)):
            return None  # cancellation, KeyboardInterrupt...; an inner policy's refusal
        try:
            if self.is_ignored(exc):
                return None
            return _FAILED[outcome] if self.is_failure(exc) else outcome
        except Exception as error:  # the call's own error goes on; it failed, after all
            what = f"on {type(exc).__name__}"
            self.judging["record"].failed(error, what, "counted as a failure")
            return _FAILED[outcome]

    def over(self, tally: Tally) -> bool:
        calls = tally.calls
        return tally.failures / calls >= self.failure_rate or (
            self.timed and tally.slow / calls >= self.slow_rate
        )

    def why(self, tally: Tally, probes: bool = False) -> str:
        """Why ``tally`` opens the breaker (or, of probes, why it closes): for the log."""
        calls = tally.calls
        of = f"{calls} probes" if probes else f"the last {calls} calls"
        if tally.failures / calls >= self.failure_rate:
            return (
                f"{tally.failures} of {of} failed, at or over failure_rate={self.failure_rate:g}"
            )
        if self.timed and tally.slow / calls >= self.slow_rate:
            return f"{tally.slow} of {of} were slow, at or over slow_call_rate={self.slow_rate:g}"
        return f"{calls - tally.failures} of {of} succeeded"


class CircuitBreaker(Configured, GuardForms):
    """Stops calls to a failing downstream, then lets a few probes decide when to resume.

    CLOSED counts outcomes in a sliding window; once it holds ``min_calls`` calls and the
    failure (or slow-call) share reaches its threshold, the breaker opens. OPEN rejects
    every call with :class:`CircuitOpenError` for ``open_for`` seconds; the next call
    after that turns it HALF_OPEN, which admits ``half_open_calls`` probes and, once all
    have reported, closes (with a fresh window) or opens again.

    Use it as ``@breaker`` on ``def`` or ``async def``, ``with breaker:``,
    ``async with breaker:``, ``breaker.call(fn, ...)`` or
    ``await breaker.call_async(fn, ...)``. Defaults and their reasons: docs/breaker.md.
    """

    KIND = "breaker"
    OPTIONS = OPTIONS
    ENV_OPTIONS = (PINNED,)

    _state: _Phase  # the one current phase; replaced whole by _swap, never edited
    _plan: _Plan  # the configuration; replaced whole by a reload, never edited
    _link: BreakerLink | None = None  # with a backend: the tie to the fleet

    def __init__(
        self,
        name: str | None = None,
        *,
        failure_rate: float = 0.5,
        window_size: opt.Duration = 100,
        window_type: Literal["count", "time"] = "count",
        min_calls: int = 20,
        open_for: opt.Duration | Callable[[int], float] = 30.0,
        half_open_calls: int = 5,
        half_open_max_wait: opt.Duration | None = None,
        slow_call_duration: opt.Duration | None = None,
        slow_call_rate: float = 1.0,
        record: opt.Exceptions = Exception,
        ignore: opt.Exceptions = (),
        failure_result: Callable[[Any], bool] | None = None,
        clock: MonotonicClock | None = None,
        backend: RedisBackend | str | None = None,
    ) -> None:
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        settings = self._configure(name, given)
        self._lock = threading.Lock()
        #: the last HISTORY transitions, oldest first (``history``)
        self._history: Ring[StateChange] = Ring(HISTORY)
        self._rejected = counter()
        self._pinned_by_env = False  # the state is pinned by the environment
        self._code_pin: State | None = None  # ... or by force_open()/disable()
        self._fresh_on_lift = False  # reset() was called under an environment pin
        self._register(settings)

    def _compile(self, settings: Settings) -> _Plan:
        rules = _Plan(settings, self._owner(), self._metered())
        if rules.backend is not None:
            from resilient.redis import resolve

            rules.backend = resolve(self, settings)
        old: _Plan | None = getattr(self, "_plan", None)
        if rules.capped is not None and (old is None or old.capped != rules.capped):
            config.warn(f"{rules.owner}: {rules.capped}")  # once, not at every reload
        return rules

    def _switch(self, compiled: _Plan) -> None:
        """Adopt new rules, keeping the state and, where its shape allows, the window.

        A pin from the environment (``STATE``, or ``RESILIENT_ENABLED=0``) overrides the
        state; lifting it returns to a pin made in code (``force_open()``, ``disable()``),
        if there is one, else to CLOSED with the window kept.
        """
        c = compiled
        link = self._link
        moved = (None if link is None else link.backend) is not c.backend
        if moved:  # (a reload that sets, changes or drops the backend)
            if link is not None:
                link.backend.unlink(link)
            self._link = None if c.backend is None else c.backend.link(self)  # type: ignore[union-attr]
        with self._lock:
            self._plan = c  # (the phases made below read it)
            now = c.now()
            st: _Phase | None = getattr(self, "_state", None)
            env_pin = DISABLED if not c.enabled else _PINS[c.pinned]
            new: _Phase | None = None
            why, tally = "", None
            lifted = False  # (with a backend: the fleet's state is read again, below)
            owed: tuple[str, str] | None = None  # (or code's call made under the pin, told)
            if env_pin is not None:
                if st is None or st.kind is not env_pin:
                    new = self._pinned(env_pin, c.new_window() if st is None else st.window, now)
                    why = (
                        "RESILIENT_ENABLED=0"
                        if not c.enabled
                        else f"the environment's state={c.pinned}"
                    )
            elif st is None:
                new = self._closed(c)
            elif self._pinned_by_env:  # the environment's pin is lifted: code's calls apply
                why, lifted = "the environment's pin was lifted", True
                if self._code_pin is FORCED_OPEN:
                    owed = ("forced_open", "force_open()")
                elif self._code_pin is None and self._fresh_on_lift:
                    owed = ("closed", "reset()")
                if self._code_pin is not None:
                    new = self._pinned(self._code_pin, st.window, now)
                else:
                    new = self._closed(c, None if self._fresh_on_lift else st.window)
            elif st.kind is CLOSED:  # the fast-path flags and the window follow the rules
                window = c.reshaped(st.window)
                if window is not st.window or (st.fast, st.plain) != (c.fast, c.plain_success):
                    new = self._closed(c, window, st)
                    self._forward(st, new)
                # else the phase stays: a reload that changes nothing about it is unseen
            elif st.kind is HALF_OPEN and st.reported >= c.half_open_calls:
                new, why, tally = self._probed(c, st, now)  # fewer probes: enough reported
            # Else HALF_OPEN stays too: its probes report to it, and the new rules' number
            # of probes applies to them (reopen_for as computed when the spell began: no
            # user callable runs under the lock). OPEN and its end stay as they are.
            self._pinned_by_env = env_pin is not None
            if not self._pinned_by_env:
                self._fresh_on_lift = False  # (a reset made under a pin waits for its lift)
            if new is not None:
                self._install(new, why, tally, now=now)
            elif st is not None:
                st.meter = c.meter  # (a meter came or went: the phase stays)
        events.deliver()
        self._listening_changed()  # (a meter came or went, perhaps)
        link = self._link
        if link is not None and lifted and owed is not None:
            link.send("force", *owed)  # (force_open() or reset() made under the pin)
        elif link is not None and (moved or lifted):
            if lifted:
                link.known = 0  # (a pin took none of the fleet's changes: all anew)
            self._fleet_load(link)

    # -- the call path ----------------------------------------------------------------

    def _exit(self, token: _Token, exc: BaseException | None, result: object) -> str | None:
        if token.__class__ is _Phase and token.plain:  # CLOSED, untimed, count window
            if exc is None:
                token.success()
            else:  # told apart by type, recorded without a clock: no _settle, no predicate
                c = self._plan
                neither = c.neither
                if neither is None:
                    return self._settle(token, exc, result)
                if not isinstance(exc, Exception) or isinstance(exc, neither):
                    return None  # cancellation, an ignored error...: counts as nothing
                if isinstance(exc, c.failing):
                    token.record(FAILURE, 0.0)
                    self._judge(c, token, None, exc)
                    return None
                token.success()
            if token.pending:
                self._judge(self._plan, token, None)
            return None
        return self._settle(token, exc, result)

    def _settle(self, token: _Token, exc: BaseException | None, result: object) -> str | None:
        """Record the outcome; "failure" if a returned value counts as one."""
        c = self._plan
        now = c.now()
        if isinstance(token, tuple):
            st, started = token
            outcome = SLOW_SUCCESS if now - started >= c.slow_after else SUCCESS
        else:
            st, outcome = token, SUCCESS
        if st.kind is DISABLED:
            return None
        try:
            counted = c.classify(outcome, exc, result)
        except BaseException:
            self._report(c, st, None, now)  # a raising predicate must not leak a probe permit
            raise
        self._report(c, st, counted, now, exc)
        return "failure" if exc is None and counted in (FAILURE, SLOW_FAILURE) else None

    def _report(
        self,
        c: _Plan,
        st: _Phase,
        outcome: int | None,
        now: float,
        exc: BaseException | None = None,
    ) -> None:
        if st.kind is CLOSED:
            while st.forward is not None:  # admitted before a reload replaced the phase
                st = st.forward
            if outcome is not None:
                # A success can push a rate over its threshold only by completing the
                # window to min_calls (pending) or, in a time window, when old buckets
                # have just slid out (the record opened a new bucket).
                slid = st.record(outcome, now)
                if outcome != SUCCESS or st.pending or slid:
                    self._judge(c, st, now, exc)
        elif st.kind is HALF_OPEN:
            with self._lock:
                if self._state is not st:
                    return  # a probe of a half-open spell that has ended: stale
                c = self._plan  # (as of now: a reload or a meter may have switched it)
                link = self._link
                if st.gen and link is not None and link.backend._usable():
                    # A fleet spell: the fleet's probes decide together (the worker hands
                    # back the outcome); this process counts its own, for metrics.
                    self._fleet_probed(c, link, st, outcome, exc, now)
                elif outcome is None:
                    st.admitted -= 1  # ignored or cancelled: let another probe in
                    return
                else:
                    st.reported += 1
                    st.failures += outcome in (FAILURE, SLOW_FAILURE)
                    st.slow += outcome in (SLOW_SUCCESS, SLOW_FAILURE)
                    if outcome in (FAILURE, SLOW_FAILURE) and exc is not None:
                        st.cause = detached(exc) or st.cause
                    if st.reported >= c.half_open_calls:  # the last probe decides, once
                        self._install(*self._probed(c, st, now), now=now)
            events.deliver()

    def _judge(
        self, c: _Plan, st: _Phase, now: float | None, exc: BaseException | None = None
    ) -> None:
        """Open if the window's rates are over their thresholds (called off the happy path).

        ``now`` is None for a count window judged on the plain path: the clock is read
        only if the breaker opens. ``exc``: the failure just recorded, if any, which the
        rejections of the open spell it starts carry as their ``last_failure``."""
        while st.forward is not None:  # (a reload replaced the phase as the call ran)
            st = st.forward
        tally = st.window.tally(0.0 if now is None else now)
        if not tally.calls:
            return
        over = c.over(tally)
        if tally.calls < c.min_calls:
            # Warming up: whether successes must keep judging is decided by the latest
            # tally (by stamp, not by count: a time window empties as time passes), so an
            # older tally never overwrites a newer one.
            self._set_pending(st, tally.stamp, over)
            return
        if st.pending:  # warmed up: successes need not judge any more
            self._set_pending(st, tally.stamp, False)
        if over:
            if now is None:
                now = c.now()
            wait = c.open_duration(st.times_opened + 1)
            self._swap(st, self._opened(st, now, wait, exc), now, c.why(tally), tally)

    def _set_pending(self, st: _Phase, stamp: int, pending: bool) -> None:
        with self._lock:
            if stamp >= st.pending_stamp:
                st.pending_stamp = stamp
                st.pending = pending
                self._arm(st)

    def _probed(self, c: _Plan, st: _Phase, now: float) -> tuple[_Phase, str, Tally]:
        """Under the lock: what a HALF_OPEN spell whose probes have reported turns into,
        why, and the probes' tally."""
        tally = Tally(st.reported, st.failures, st.slow)
        why = c.why(tally, probes=True)
        if c.over(tally):
            return self._opened(st, now, st.reopen_for, st.cause), why, tally
        return self._closed(c), why, tally

    def _forward(self, old: _Phase, new: _Phase) -> None:
        """Under the lock: ``new`` takes over from the CLOSED phase ``old``; the calls
        admitted under ``old`` report to ``new`` (through _settle, which follows)."""
        old.forward = new
        old.plain = False
        old.passed = functools.partial(self._exit, old, None)

    def _arm(self, st: _Phase) -> None:
        """Say what a call that returned through the fast path records: on a plain phase
        that is not warming up, only the window's own record of a success (one C call,
        no frame of ours); else the full _exit."""
        c = self._plan
        if st.plain and not st.pending:
            st.passed = st.success
        elif st.fast and not st.pending and c.window_type == "count" and c.failure_result:
            st.passed = functools.partial(self._judged, st)  # (fast: CLOSED, untimed)
        else:
            st.passed = functools.partial(self._exit, st, None)

    def _judged(self, st: _Phase, result: object) -> None:
        """A returned value on a fast count-window phase with a ``failure_result``: one
        call of the predicate, then the window's own record of a success, or a failure
        recorded and judged (an HTTP transport's 200s cost a predicate, not _settle)."""
        c = self._plan
        outcome = c.classify(SUCCESS, None, result)
        if outcome == SUCCESS:
            st.success()
        elif outcome is not None:  # (None: the predicate failed; counted as nothing)
            self._report(c, st, outcome, c.now())

    # -- transitions: the only code that changes _state -------------------------------

    def _swap(
        self,
        expected: _Phase | None,
        new: _Phase,
        now: float,
        why: str,
        tally: Tally | None = None,
    ) -> bool:
        """Make ``new`` current if ``expected`` still is (None: whatever is)."""
        with self._lock:
            if expected is not None and self._state is not expected:
                return False
            self._install(new, why, tally, now=now)
        events.deliver()
        return True

    def _install(
        self,
        new: _Phase,
        why: str,
        tally: Tally | None = None,
        *,
        now: float,
        fleet: bool = False,
    ) -> None:
        """Under the lock: make ``new`` current, keep the change in the history and
        queue its event (stamped ``now``), which this thread delivers once it lets go.
        ``fleet``: the change comes from the fleet (else, with a backend, it goes to it)."""
        old = getattr(self, "_state", None)
        if old is not None and self._link is not None and not fleet:
            # Made here, from the state the fleet last told; but a half-open spell made
            # here (Redis away, or nothing shared: a FLUSHALL) is this process's own, at
            # generation 0: its probes are admitted and decide here (_permitted, _report).
            if not new.gen and new.kind is not HALF_OPEN:
                new.gen = old.gen or self._link.known
            self._fleet_send(self._link, old, new, why, now)
        self._adopt(new)
        if old is not None and old.kind is not new.kind:
            if old.refusal is not None:  # the spell's rejections, told once at its end
                rejected = self._rejected.value - old.rejected_before
                if rejected > 0:
                    calls = "call" if rejected == 1 else "calls"
                    why = f"{why}; {rejected} {calls} rejected while {old.kind.value}"
            counted = None if tally is None else Counted(tally.calls, tally.failures, tally.slow)
            until = new.until if new.kind is OPEN else None
            change = StateChange(
                self, old.kind, new.kind, now, counted, why, until, new.times_opened
            )
            self._history.append(change._replace(breaker=None))  # type: ignore[arg-type]
            events.queue(self, change)

    def _adopt(self, new: _Phase) -> None:
        """Under the lock: make ``new`` current, metered and counted as the plan says now
        (a phase made from a plan read before a switch takes the current one's flags)."""
        c = self._plan
        if new.kind is CLOSED and new.fast != c.fast:
            new = self._closed(c, new.window, new)
        new.meter = c.meter
        if new.refusal is not None:
            new.rejected_before = new.told = self._rejected.value
        self._state = new

    def _closed(self, c: _Plan, window: Window | None = None, was: _Phase | None = None) -> _Phase:
        """A CLOSED phase under ``c``: a fresh window, or ``window`` carried over into
        one of ``c``'s shape (``was``: the CLOSED phase it replaces, warm-up and all)."""
        window = c.new_window() if window is None else c.reshaped(window)
        st = _Phase(CLOSED, window, fast=c.fast, plain=c.plain_success)
        if was is not None and was.window is window:
            st.pending, st.pending_stamp = was.pending, was.pending_stamp
        else:
            st.pending = window.tally(c.now()).calls > 0  # re-judge the carried records
        self._arm(st)
        return st

    def _opened(
        self, st: _Phase, now: float, wait: float, cause: BaseException | None = None
    ) -> _Phase:
        until = now + wait
        c = self._plan
        if cause is not None:
            cause = detached(cause)  # kept all spell long: without the failed call's frames
        # The error is made by one C call and says how long is left when read.
        error = functools.partial(
            BaseException.__new__, CircuitOpenError, self.name, None, OPEN, until, c.clock, cause
        )
        # The drivers refuse on their own only from the spell's first rejection on, which
        # comes through _admit: until=now (see _reject).
        refusal = Refusal(c.now, now, self._rejected.incr, error)
        opened = _Phase(
            OPEN,
            st.window,
            since=now,
            until=until,
            times_opened=st.times_opened + 1,
            refusal=refusal,
        )
        opened.cause = cause
        return opened

    def _pinned(self, kind: State, window: Window, now: float) -> _Phase:
        """A phase pinned by code or the environment: FORCED_OPEN (refusing every call,
        with no retry_after: nobody knows when) or DISABLED."""
        refusal = None
        if kind is FORCED_OPEN:
            error = functools.partial(
                BaseException.__new__, CircuitOpenError, self.name, None, FORCED_OPEN
            )
            refusal = Refusal(self._plan.now, now, self._rejected.incr, error)
        return _Phase(kind, window, since=now, refusal=refusal)

    def _probing(self, c: _Plan, st: _Phase, now: float) -> _Phase:
        # How long to reopen for is asked now, outside the lock, not when probes fail.
        reopen_for = c.open_duration(st.times_opened + 1)
        probing = _Phase(
            HALF_OPEN, st.window, since=now, times_opened=st.times_opened, reopen_for=reopen_for
        )
        probing.cause = st.cause  # until a probe fails: what opened the spell before
        return probing

    def _admit(self, st: _Phase, local: bool = False) -> object:
        """Admission off the fast path: a token, or CircuitOpenError; with a backend,
        MUST_WAIT for a half-open permit from the fleet (``local``: Redis is away)."""
        c = self._plan
        while True:
            kind = st.kind
            if kind is OPEN:
                now = c.now()
                if now < st.until:  # (the drivers refuse on their own, once armed: _reject)
                    raise self._reject(st, now)
                link = self._link
                if not local and link is not None and link.backend._usable():
                    return MUST_WAIT  # the fleet's permit: _wait or _wait_async
                # lazily, on the first call after
                self._swap(st, self._probing(c, st, now), now, "open_for has passed")
            elif kind is HALF_OPEN:
                now = c.now()
                max_wait = c.half_open_max_wait
                if max_wait is not None and now - st.since >= max_wait:
                    hung = f"probes did not report within half_open_max_wait={max_wait:g}s"
                    self._swap(st, self._opened(st, now, st.reopen_for), now, hung)
                elif not local and self._link is not None and self._link.backend._usable():
                    if now < st.ask_after:  # the fleet had no permit left a moment ago
                        self._refused("half_open_full")
                        raise CircuitOpenError(self.name, None, st.kind, st.cause)
                    return MUST_WAIT
                else:
                    with self._lock:
                        current = self._state is st
                        if current and st.admitted < c.half_open_calls:
                            st.admitted += 1
                            return (st, now) if c.timed else st
                    if current:
                        # Full: if probes may hang, we know when this spell ends at the latest.
                        until = None if max_wait is None else st.since + max_wait
                        self._refused("half_open_full", until)
                        hint = None if until is None else until - now
                        raise CircuitOpenError(self.name, hint, st.kind, st.cause)
            elif kind is FORCED_OPEN:
                raise self._reject(st, c.now())
            else:  # CLOSED when timed, DISABLED
                return (st, c.now()) if c.timed and kind is CLOSED else st
            st = self._state

    def _refused(self, reason: str, until: float | None = None) -> None:
        """A rejection: counted, told (a fresh error is raised for each, so no
        traceback ever grows)."""
        self._rejected.incr()
        events.refused(self, reason, self._plan.now, until)

    # An OPEN spell's rejections are the hot path of an outage. While nobody listens, the
    # drivers refuse on their own (a clock read, the counter's C-level increment, the
    # error) until the refusal's ``until``: the spell's end, or sooner, the time of the
    # next log line, at most one every REJECTION_LOG_SECONDS (of the breaker's clock).
    # Then a rejection comes through _admit, which tells it with the count held back
    # since the last line and arms the refusal again. While a listener or a meter is on,
    # every rejection comes through here, to be told. The spell's count is told at its
    # end, in its transition's reason.

    def _reject(self, st: _Phase, now: float) -> CircuitOpenError:
        """A rejection off the drivers' own path: counted, told, the refusal armed."""
        refusal = st.refusal
        assert refusal is not None
        self._rejected.incr()
        until = st.until if st.kind is OPEN else None
        held = self._rejected.value - st.told - 1
        st.told = self._rejected.value
        events.refused(self, st.kind.value, self._plan.now, until, held)
        self._arm_refusal(st, now)
        error = refusal.error()
        assert isinstance(error, CircuitOpenError)
        return error

    def _arm_refusal(self, st: _Phase, now: float) -> None:
        """Let the drivers refuse on their own until the next line is due (never while
        someone listens: each rejection is told then)."""
        refusal = st.refusal
        if refusal is None:
            return
        if events.listened(self):
            st.refusal = refusal._replace(until=now)
        else:
            end = st.until if st.kind is OPEN else math.inf
            st.refusal = refusal._replace(until=min(end, now + events.REJECTION_LOG_SECONDS))

    def _listening_changed(self) -> None:
        """Someone started or stopped listening: a refusing phase counts accordingly."""
        st = self._state
        if st.refusal is not None:
            self._arm_refusal(st, self._plan.now() if events.listened(self) else -math.inf)

    # -- the fleet: decide locally, agree in Redis (docs/fleet.md) ----------------------
    #
    # With a backend the CLOSED path is unchanged (no Redis). A change this process makes
    # is sent from _install to the backend's worker, which runs it as one script and
    # hands the fleet's answer back to _fleet_adopt, as it does every change another
    # process makes (a message, or the refresh each second). Only a half-open permit is
    # asked in the call's way: _admit answers MUST_WAIT and the drivers call _wait (the
    # sync client) or _wait_async. Whenever Redis is away, the breaker decides alone.

    def _wait(self, state: _Phase) -> object:
        link = self._link
        shared = None if link is None else link.ask("probe", *self._probe_args())
        return self._permitted(state, link, shared)

    async def _wait_async(self, state: _Phase) -> object:
        link = self._link
        shared = None
        if link is not None:
            shared = await link.ask_async(
                "probe", *self._probe_args(), abandoned=self._fleet_abandoned
            )
        return self._permitted(state, link, shared)

    def _fleet_abandoned(self, shared: Shared) -> None:
        """A task asking for a permit was cancelled while the script ran: a permit the
        fleet gave it goes back, as a probe that counts as nothing does."""
        link = self._link
        if shared.permit and link is not None:
            c = self._plan
            link.send("probed", str(shared.gen), "none", str(c.half_open_calls), "1", "2", "0")

    def _probe_args(self) -> tuple[str, str]:
        c = self._plan
        lease = PROBE_LEASE if c.half_open_max_wait is None else c.half_open_max_wait
        return str(c.half_open_calls), str(math.ceil(lease * 1000))

    def _permitted(self, st: _Phase, link: BreakerLink | None, shared: Shared | None) -> object:
        """The fleet's answer to a probe: a permit (a probe's token), CLOSED (a token of
        the closed state), or a refusal; no answer (Redis away): local admission."""
        if link is None or shared is None:
            return self._admit(self._state, local=True)
        if not shared.gen:  # nothing shared (a FLUSHALL, an expiry): this spell is ours
            with self._lock:
                st = self._state
                if st.kind is HALF_OPEN:
                    st.gen = 0  # (its probes are admitted and decide here)
            return self._admit(st, local=True)
        st = self._fleet_adopt(link, shared)
        c = self._plan
        now = c.now()
        if shared.permit and st.kind is HALF_OPEN and st.gen == shared.gen:
            with self._lock:
                st.admitted += 1
            return (st, now) if c.timed else st
        if st.kind is HALF_OPEN and st.gen:  # the fleet's spell, every permit out: ask
            # again a little later (a spell of this process's own admits here, below)
            st.ask_after = now + PROBE_RECHECK
            self._refused("half_open_full")
            raise CircuitOpenError(self.name, None, st.kind, st.cause)
        if st.kind in (OPEN, FORCED_OPEN) and (st.kind is FORCED_OPEN or now < st.until):
            raise self._reject(st, now)
        return self._admit(st, local=True)  # closed (or pinned, or a spell just over)

    def _fleet_probed(
        self,
        c: _Plan,
        link: BreakerLink,
        st: _Phase,
        outcome: int | None,
        exc: BaseException | None,
        now: float,
    ) -> None:
        """Under the lock: a probe of a fleet spell reported; the fleet decides. When
        this process ran every probe of the spell, it knows the fleet's decision: it
        takes it at once (its next call is not refused while the worker agrees)."""
        if outcome is None:
            st.admitted -= 1
            code = "none"
        else:
            st.reported += 1
            failed = outcome in (FAILURE, SLOW_FAILURE)
            st.failures += failed
            st.slow += outcome in (SLOW_SUCCESS, SLOW_FAILURE)
            if failed and exc is not None:
                st.cause = detached(exc) or st.cause
            code = _PROBED[outcome]
        slow_rate = repr(c.slow_rate) if c.timed else "2"  # (no rate of slow calls: never)
        reopen_ms = str(math.ceil(st.reopen_for * 1000))
        rate = repr(c.failure_rate)
        link.send("probed", str(st.gen), code, str(c.half_open_calls), rate, slow_rate, reopen_ms)
        if outcome is not None and st.reported >= c.half_open_calls:  # every probe ours
            new, why, tally = self._probed(c, st, now)
            new.gen = st.gen  # (the fleet's answer, a generation later, is adopted)
            self._install(new, why, tally, now=now, fleet=True)  # (sent just above)

    def _fleet_send(
        self, link: BreakerLink, old: _Phase, new: _Phase, why: str, now: float
    ) -> None:
        """Under the lock: a change this process made, for the fleet to agree on. Only
        trips and code's force_open()/reset() are shared: an environment's pin and
        disable() are this process's, and a spell decided here while Redis was away
        (OPEN to HALF_OPEN to CLOSED) stays here."""
        if why == "force_open()":
            link.send("force", "forced_open", why)
        elif why == "reset()":
            link.send("force", "closed", why)
        elif new.kind is CLOSED and old.kind is HALF_OPEN and old.gen:
            link.send("close", str(old.gen), why)  # (a reload that needs fewer probes)
        elif new.kind is OPEN and old.kind in (CLOSED, HALF_OPEN):
            # (whole ms, up: but now + open_for - now is open_for plus a float's error)
            left = str(max(0, math.ceil((new.until - now) * 1000 - 1e-6)))
            link.send("open", str(old.gen or link.known), left, why)

    def _fleet_adopt(self, link: BreakerLink, shared: Shared) -> _Phase:
        """The fleet's state, as Redis answered or another process told: adopted if its
        generation is newer than the last one seen (a stale message changes nothing);
        the current phase returned. A pin (the environment's, disable()) wins here."""
        c = self._plan
        # (how long a failed fleet spell reopens for, asked before the lock: user code)
        reopen_for = c.open_duration(shared.opened + 1) if shared.state == "half_open" else 0.0
        with self._lock:
            st = self._state
            if link is not self._link or shared.gen < link.known:
                return st
            if self._pinned_by_env or self._code_pin is DISABLED or st.kind is DISABLED:
                return st  # (nothing seen: the lift reads the fleet again)
            kind = State(shared.state)
            now = c.now()
            told_again = shared.gen == link.known
            link.known = shared.gen
            # A state told again (a refresh, an answer, a message after the answer) is
            # not taken again: what this process made of it since stays (a spell it
            # decided while Redis was away, say). But an OPEN spell the fleet holds
            # longer than this process thought (its clock ran ahead, a message came
            # late) is taken as told.
            if (told_again or (st.gen == shared.gen and st.kind is kind)) and not (
                kind is OPEN and st.kind is OPEN and now + shared.left > st.until + 0.001
            ):
                return st
            if kind is CLOSED and st.kind is CLOSED:
                st.gen = shared.gen  # (closed here too: the window stays)
                return st
            if kind is OPEN:
                base = _Phase(CLOSED, st.window, times_opened=max(0, shared.opened - 1))
                new = self._opened(base, now, shared.left, st.cause)
            elif kind is HALF_OPEN:
                new = _Phase(
                    HALF_OPEN,
                    st.window,
                    since=now,
                    times_opened=shared.opened,
                    reopen_for=reopen_for,
                )
                new.cause = st.cause
            elif kind is FORCED_OPEN:
                new = self._pinned(FORCED_OPEN, st.window, now)
            else:
                new = self._closed(c)
            new.gen = shared.gen
            # force_open() and reset() are the fleet's: so is the pin they make or lift
            # (a lift of the environment's pin returns to it, as to one made here).
            if kind is FORCED_OPEN:
                self._code_pin = FORCED_OPEN
            elif self._code_pin is FORCED_OPEN:
                self._code_pin = None
            if shared.by:
                why = f"the fleet: {shared.reason} (by {shared.by})"
            else:
                why = f"the fleet's state: {kind.value}"
            self._install(new, why, now=now, fleet=True)
            st = new
        events.deliver()
        return st

    def _fleet_unsent(self, link: BreakerLink, gen: int) -> None:
        """A probe's outcome of the fleet's spell ``gen`` could not be sent (Redis went
        away): once every probe this process ran has reported, they decide its state."""
        with self._lock:
            st = self._state
            if link is not self._link or st.kind is not HALF_OPEN or st.gen != gen:
                return
            if st.reported and st.reported >= st.admitted:
                c = self._plan
                self._install(*self._probed(c, st, c.now()), now=c.now())
        events.deliver()

    def _fleet_load(self, link: BreakerLink) -> None:
        """As the breaker is made (or moved to a backend): the fleet's state and why,
        read at once (bounded by the backend's timeout), so a process that starts late
        is OPEN before its first call if the fleet is."""
        shared = link.ask("read")
        if shared is not None and shared.gen:  # (None: away, told; 0: nothing shared yet)
            self._fleet_adopt(link, shared)

    # -- inspection and manual control ------------------------------------------------

    @property
    def history(self) -> list[StateChange]:
        """The last transitions (at most ``HISTORY``, 100), oldest first: enough to
        rebuild the state (:meth:`replay`). Only transitions are kept, never calls."""
        return [change._replace(breaker=self) for change in self._history.items()]

    def replay(self, history: Iterable[StateChange]) -> None:
        """Take the state the transitions in ``history`` lead to, as told by another
        breaker's :attr:`history` (times on this breaker's clock): the state, an OPEN
        spell's end, how many spells in a row it opened for, and a pin made in code
        (``force_open()``, ``disable()``). A pin the environment made there belongs to
        that process and is not replayed; this breaker's own environment pins it as
        usual (and a replayed state is then dropped: the pin's lift applies as always).
        The window starts empty; listeners hear nothing (the changes happened before,
        elsewhere). The history becomes this breaker's own."""
        changes = list(history)
        for change in changes:
            if not isinstance(change, StateChange):
                raise TypeError(f"replay() takes StateChange events, not {change!r}")
        if not changes:
            return
        code_pin: State | None = None
        last: StateChange | None = None  # the last change not made by the environment
        for change in changes:
            if change.reason in ("force_open()", "disable()"):
                code_pin = State(change.new)
            elif change.reason == "reset()":
                code_pin = None
            if not change.reason.startswith(_BY_ENVIRONMENT):
                last = change
        c = self._plan
        window = c.new_window()
        kind = CLOSED if last is None else State(last.new)
        new: _Phase | None = None
        if last is not None and kind is OPEN:  # (outside the lock: open_for is the user's)
            base = _Phase(CLOSED, window, times_opened=last.times_opened - 1)
            new = self._opened(base, last.at, (last.until or last.at) - last.at)
        elif last is not None and kind is HALF_OPEN:
            new = self._probing(c, _Phase(OPEN, window, times_opened=last.times_opened), last.at)
        elif last is not None and kind in (FORCED_OPEN, DISABLED):
            new = self._pinned(kind, window, last.at)
        with self._lock:
            self._code_pin = code_pin
            for change in changes:  # (kept without a breaker: no cycle through it)
                self._history.append(change._replace(breaker=None))  # type: ignore[arg-type]
            if not self._pinned_by_env:
                self._adopt(new if new is not None else self._closed(self._plan))

    @property
    def state(self) -> State:
        """The current state. OPEN turns HALF_OPEN lazily, on the first call after open_for."""
        return self._state.kind

    @property
    def metrics(self) -> BreakerMetrics:
        c = self._plan
        st = self._state
        if st.kind is HALF_OPEN:
            with self._lock:
                tally = Tally(st.reported, st.failures, st.slow)
            need = c.half_open_calls
        else:
            tally = st.window.tally(c.now())
            need = c.min_calls
        calls = tally.calls
        enough = calls >= need and calls > 0
        return BreakerMetrics(
            state=st.kind,
            calls=calls,
            failures=tally.failures,
            slow_calls=tally.slow,
            failure_rate=tally.failures / calls if enough else None,
            slow_call_rate=tally.slow / calls if enough else None,
            rejected=self._rejected.value,
        )

    def _health(self) -> dict[str, Any]:
        m = self.metrics
        st = self._state
        now = self._plan.now()
        open_for = max(0.0, st.until - now) if st.kind is OPEN else None
        tail = [
            {
                "seconds_ago": max(0.0, now - change.at),
                "from": change.old.value,
                "to": change.new.value,
                "reason": change.reason,
                "tally": None if change.tally is None else change.tally._asdict(),
            }
            for change in self._history.items()[-HEALTH_TAIL:]
        ]
        return {
            "state": m.state.value,
            "calls": m.calls,
            "failures": m.failures,
            "slow_calls": m.slow_calls,
            "failure_rate": m.failure_rate,
            "slow_call_rate": m.slow_call_rate,
            "open_for_seconds": open_for,
            "times_opened": st.times_opened,
            "rejected": m.rejected,
            "history": tail,
            **self._fleet_health(),
        }

    def _fleet_health(self) -> dict[str, Any]:
        """With a backend: whether the fleet is shared now, the generation this process
        last adopted, and the fleet's last changes from Redis (its event-sourced record,
        read at the call, bounded by the backend's timeout; [] while Redis is away)."""
        link = self._link
        if link is None:
            return {}
        backend = link.backend
        return {
            "fleet": {
                "backend": repr(backend),
                "shared": backend._away is None,
                "generation": link.known,
                "history": link.history(HEALTH_TAIL),
            }
        }

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (retry_after is None: nobody knows when).

        The environment wins over code: under ``RESILIENT_ENABLED=0`` or a ``STATE``
        variable this is remembered, and applies once the environment lifts its pin."""
        self._pin(FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing, until ``reset()``."""
        self._pin(DISABLED)

    def _pin(self, kind: State) -> None:
        with self._lock:
            self._code_pin = kind  # only reset() undoes it
            if not self._pinned_by_env:  # the environment's pin wins until it is lifted
                now = self._plan.now()
                why = "force_open()" if kind is FORCED_OPEN else "disable()"
                self._install(self._pinned(kind, self._state.window, now), why, now=now)
        events.deliver()

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, and HALF_OPEN probes in flight on the parent's
        other threads, which will never report, give their permits back."""
        self._lock = threading.Lock()
        st = self._state
        st.window.after_fork()
        if st.kind is HALF_OPEN:
            st.admitted = st.reported

    def reset(self) -> None:
        """Back to CLOSED with an empty window; forgets open counts and rejections.

        Under a pin from the environment (``RESILIENT_ENABLED=0``, ``..._BREAKER_STATE``)
        the pin holds: the reset applies when the environment lifts it."""
        with self._lock:
            c = self._plan
            self._rejected = counter()
            self._code_pin = None
            self._fresh_on_lift = self._pinned_by_env  # (made under a pin: at its lift)
            if not self._pinned_by_env:
                now = c.now()
                self._install(self._closed(c), "reset()", now=now)
        events.deliver()

    def __repr__(self) -> str:
        return f"<{self._owner()} {self._state.kind.value}>"


_OPTION_NAMES = frozenset(option.name for option in OPTIONS)

#: A probe's outcome as the fleet's script spells it.
_PROBED = {SUCCESS: "ok", FAILURE: "fail", SLOW_SUCCESS: "slow_ok", SLOW_FAILURE: "slow_fail"}

#: How a transition the environment made says so (``_switch``): not replayed elsewhere.
_BY_ENVIRONMENT = ("RESILIENT_ENABLED=0", "the environment's state=")
