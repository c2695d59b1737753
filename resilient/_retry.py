"""Retry: call again after a failure, speaking tenacity's vocabulary at a fraction of its cost.

The decision (retry or give up, and how long to wait) is made in one place,
:meth:`_Call.next_wait`, without doing any I/O; the loop driver
(``_core/execution/drivers.py``) sleeps and calls, on threads, asyncio and trio. Through
the decorator, a first attempt that succeeds costs a few attribute reads (plus a clock
read when a deadline, stop strategy or budget needs the start): per-call state
(:class:`_Call`) is created when a first attempt fails, on the stack of that call,
never on the shared :class:`Retry`.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any

from resilient._budget import RetryBudget, check_budget
from resilient._core.configuration import events, testmode
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution.deadline import AHEAD, remaining
from resilient._core.execution.drivers import (
    Attempt,
    AttemptForms,
    Attempts,
    BlockForms,
    LoopForms,
    Plan,
)
from resilient._core.state.clock import SYSTEM_CLOCK, Clock
from resilient._errors import ResilienceError, UsageError, failure_line, note, remade
from resilient.backoff import MAKERS, Backoff
from resilient.events import LEVELS, BudgetExhausted, RetryGaveUp, RetryScheduled

__all__ = ["Attempt", "Retry"]

#: A wait: a duration, a resilient.backoff strategy, a callable(attempt, exception) ->
#: seconds, or a tenacity wait strategy (a callable of tenacity's RetryCallState).
WaitSpec = (
    opt.Duration | Backoff | Callable[[int, BaseException | None], float] | Callable[[Any], float]
)
#: What to retry: exception types, a predicate, or a tenacity retry strategy (a callable
#: of tenacity's RetryCallState).
OnSpec = opt.Exceptions | Callable[[Any], bool]


_TENACITY_MODULES = {
    "wait_base": "tenacity.wait",
    "stop_base": "tenacity.stop",
    "retry_base": "tenacity.retry",
}


def _tenacity(kind: str) -> type | None:
    """tenacity's base class ``kind``, if tenacity is loaded: a tenacity object given to
    us means it is, and ``import resilient`` never pays for importing it."""
    module = sys.modules.get(_TENACITY_MODULES[kind])
    return getattr(module, kind, None) if module is not None else None


def _is_tenacity(value: object, kind: str) -> bool:
    base = _tenacity(kind)
    return base is not None and isinstance(value, base)


def _judges_results(strategy: object) -> bool:
    """Whether a tenacity retry strategy can ask to retry a *returned* value.

    Most look at exceptions only; for those a successful call need not build tenacity's
    RetryCallState (a Future and a Condition: microseconds) just to be told no.
    """
    module = sys.modules["tenacity.retry"]
    if type(strategy) in (module.retry_any, module.retry_all):
        return any(_judges_results(child) for child in strategy.retries)  # type: ignore[attr-defined]
    # Exact types: a subclass (ours or tenacity's, e.g. retry_unless_exception_type,
    # which retries every success) may judge results however it likes.
    exception_only = {
        module.retry_if_exception,
        module.retry_if_exception_type,
        module.retry_if_not_exception_type,
        module.retry_if_exception_message,
        module.retry_if_exception_cause_type,
        type(module.retry_never),
    }
    return type(strategy) not in exception_only


def _not_made(value: Any, option: str, bases: tuple[type, ...]) -> opt.Invalid | None:
    """A strategy's maker given where the strategy goes (``wait=backoff.exponential``,
    ``wait=wait_exponential``): refused now, rather than failing at the first retry."""
    if any(value is maker for maker in MAKERS):  # identity: a value's __eq__ may be odd
        made = f"backoff.{value.__name__}()"
    elif (
        isinstance(value, type)
        and issubclass(value, bases)
        and not getattr(value, "__abstractmethods__", None)
    ):
        made = f"{value.__qualname__}()"
    else:
        return None
    return opt.Invalid(
        f"this makes a strategy, call it: {option}={made} (a variable gives the import"
        " path of a strategy so made)"
    )


def _check_wait(value: Any) -> Any:
    if _is_tenacity(value, "wait_base") or isinstance(value, Backoff):
        return value
    not_made = _not_made(value, "wait", (Backoff, *filter(None, [_tenacity("wait_base")])))
    if not_made is not None:
        raise not_made
    if callable(value) and not isinstance(value, type):
        return value
    return _seconds_or_zero(value)


def _check_on(value: Any) -> Any:
    if _is_tenacity(value, "retry_base"):
        return value
    return opt.exception_filter(value, catchable=True)


def _check_stop(value: Any) -> Any:
    if value is None or _is_tenacity(value, "stop_base"):
        return value
    not_made = _not_made(value, "stop", tuple(filter(None, [_tenacity("stop_base")])))
    if not_made is not None:
        raise not_made
    # A plain callable is handed tenacity's RetryCallState: without tenacity (an optional
    # dependency), say so now, not at the first failure.
    if callable(value) and not isinstance(value, type):
        from importlib.util import find_spec  # (constructing a Retry with stop= only)

        if find_spec("tenacity") is not None:
            return value
    raise opt.Invalid


_seconds_or_zero = opt.duration(allow_zero=True)

opt.written(
    _check_wait,
    opt.parse_duration_or_object,
    "a duration (250ms, 2s, 1.5m, 1h or bare seconds), or a strategy's import path",
    forms=opt.DURATION_FORMS,
)
opt.written(
    _check_on,
    opt.exception_filter.parse,  # type: ignore[attr-defined]
    opt.exception_filter.syntax,  # type: ignore[attr-defined]
)
opt.written(_check_stop, opt.none_or_import, "none, or a stop strategy's import path")

OPTIONS = (
    opt.Option(
        "attempts",
        3,
        opt.positive_int,
        "a whole number from 1 to 1,000,000 (the first attempt included)",
        "How many times to call at most. 3: one failure in a flaky network is common,"
        " two in a row already says the downstream is in trouble.",
    ),
    opt.Option(
        "wait",
        0.0,
        _check_wait,
        "seconds >= 0, a resilient.backoff strategy, a tenacity wait strategy,"
        " or a callable(attempt, exception) -> seconds",
        "How long to wait after a failed attempt before the next one.",
    ),
    opt.Option(
        "max_wait",
        60.0,
        opt.longest_wait,
        "seconds > 0, at most 31,536,000 (a year)",
        "The longest single wait. A longer wait from the strategy is cut to it; a server's"
        " retry_after beyond it ends the retry at once, re-raising its error with a note"
        " (waiting less than it asked would only earn another refusal). 60 s: a caller"
        " kept waiting longer is better told to come back.",
    ),
    opt.Option(
        "on",
        Exception,
        _check_on,
        "an Exception subclass, a tuple or list of them, a predicate(exc) -> bool,"
        " or a tenacity retry strategy",
        "Which failures to retry. Cancellation, KeyboardInterrupt, SystemExit and"
        " GeneratorExit never are, whatever this says.",
    ),
    opt.Option(
        "on_result",
        None,
        opt.predicate,
        "None or a predicate(result) -> bool",
        "Retry when this is true of a returned value; when attempts run out, the last"
        " value is returned.",
    ),
    opt.Option(
        "retry_after",
        None,
        opt.predicate,
        "None or a callable(outcome) -> seconds or None",
        "Reads the downstream's hint of when to come back from a failed attempt's"
        " outcome: the value on_result refused (a 429 or 503 response) or the exception."
        " None from it, or no callable: an exception's own retry_after attribute.",
    ),
    opt.Option(
        "deadline",
        None,
        opt.optional(opt.duration(allow_zero=False)),
        "None or seconds > 0",
        "A budget of time for all attempts and waits: no wait crosses it and no attempt"
        " starts after it.",
    ),
    opt.Option(
        "stop",
        None,
        _check_stop,
        "None, a tenacity stop strategy, or a callable(retry_state) -> bool"
        ' (retry_state is tenacity\'s: pip install "resilient-toolkit[tenacity]")',
        "Also give up when this says so (e.g. stop_after_delay(10) | stop_after_attempt(5)).",
    ),
    opt.WAITING_CLOCK,
    opt.Option(
        "budget",
        None,
        check_budget,
        "None or a resilient.RetryBudget",
        "A share of recent calls that retries may add, shared by every Retry given it.",
    ),
)
_OPTION_NAMES = frozenset(option.name for option in OPTIONS)


class _Plan(Plan):
    """A Retry's configuration and the decisions made from it, switched whole: a call
    takes the engine current when it starts and keeps it to its end, so a reload never
    mixes two configurations in one call."""

    def __init__(self, settings: Settings, policy: Retry) -> None:
        self.owner = owner = policy._owner()
        self.policy = policy  # (whose events a call tells)
        self._attempts: int = settings["attempts"]
        self._max_wait: float = settings["max_wait"]
        self._wait_fallback = opt.Fallback("wait", owner)
        self._wait = settings["wait"]
        if isinstance(self._wait, float):
            self._wait = min(self._wait, self._max_wait)
        self._on = settings["on"]
        self._on_tenacity = _is_tenacity(self._on, "retry_base")
        self._on_result: Callable[[Any], bool] | None = settings["on_result"]
        self._retry_after: Callable[[Any], float | None] | None = settings["retry_after"]
        self._hint_fallback = opt.Fallback("retry_after", owner)
        # A predicate that raises is logged (once) and never replaces the call's outcome.
        self._judging = {option: opt.Fallback(option, owner) for option in ("on", "on_result")}
        self._deadline: float | None = settings["deadline"]
        self._stop = settings["stop"]
        self._clock: Clock = settings["clock"] or SYSTEM_CLOCK
        self._budget: RetryBudget | None = settings["budget"]
        self._enabled = settings.enabled  # switched off: nothing is retried
        # Results need a look only if someone asked to retry on them.
        self._on_judges_results = self._on_tenacity and _judges_results(self._on)
        self.checks_results = self._enabled and (
            self._on_result is not None or self._on_judges_results
        )
        # The first attempt's start is read only if something measures from it, and the
        # budget hears of first attempts only if there is one.
        self._timed = (
            self._deadline is not None
            or self._stop is not None
            or self._on_tenacity
            or _is_tenacity(self._wait, "wait_base")  # tenacity reads seconds_since_start
        )
        self.begins = self._enabled and (self._timed or self._budget is not None)
        self._retrying_stub: Any = None
        # calls(), as a C-level partial: a failed first attempt pays no frame for it.
        self.calls = functools.partial(_Call, self)  # type: ignore[method-assign]

    def _owner(self) -> str:
        return self.owner

    # -- the happy path: what every call pays ----------------------------------------

    def begin(self) -> float:
        """Before a first attempt: count it for the budget, note when it started."""
        if self._budget is not None:
            self._budget._deposit()
        return self._clock.monotonic() if self._timed else 0.0

    def decides(self, exc: Exception) -> bool:
        """Whether ``exc`` is a failure this policy retries (for a plain ``on``)."""
        if isinstance(exc, UsageError) or not self._enabled:
            return False
        if self._on_tenacity:
            return True
        try:
            return bool(self._on(exc))
        except Exception as error:  # never the call's: its own error goes on, not retried
            note(exc, self._judging["on"].failed(error, "on it", "not retried"))
            return False

    def result_fails(self, call: Attempts | None, result: object) -> bool:
        try:
            if self._on_result is not None and self._on_result(result):
                return True
            if self._on_judges_results:
                assert call is None or isinstance(call, _Call)
                return bool(self._on(_Call.tenacity_state(self, call, None, result)))
        except Exception as error:  # never the call's: its value is returned
            self._judging["on_result"].failed(error, "on a result", "it was returned")
        return False

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)

    async def sleep_async(self, seconds: float) -> None:
        await self._clock.sleep_async(seconds)


class Retry(Configured, BlockForms, LoopForms, AttemptForms):
    """Call again after a failure: ``@retry`` on ``def``/``async def``, ``retry.call(...)``,
    ``await retry.call_async(...)``, or the block form ``for attempt in retry: with attempt:``
    (``async for`` in async code).

    When attempts run out, the last exception itself is re-raised, with a note saying
    how many attempts were made (an ``on_result`` retry returns the last value instead).
    """

    KIND = "retry"
    OPTIONS = OPTIONS
    _plan: _Plan

    def __init__(
        self,
        attempts: int = 3,
        *,
        wait: WaitSpec = 0.0,
        max_wait: opt.Duration = 60.0,
        on: OnSpec = Exception,
        on_result: Callable[[Any], bool] | None = None,
        retry_after: Callable[[Any], float | None] | None = None,
        deadline: opt.Duration | None = None,
        stop: Callable[[Any], bool] | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        self._register(self._configure(name, given))

    def _compile(self, settings: Settings) -> _Plan:
        return _Plan(settings, self)

    def _switch(self, compiled: _Plan) -> None:
        self._plan = compiled
        self._loop = self._driven(compiled)  # (what the drivers read)

    @property
    def attempts(self) -> int:
        return self._plan._attempts

    def __repr__(self) -> str:
        return f"<{self._owner()} attempts={self._plan._attempts}>"

    def _health(self) -> dict[str, Any]:
        budget = self._plan._budget
        return {
            "attempts": self._plan._attempts,
            "budget_available": None if budget is None else budget.available,
        }

    # -- the block form: ``for attempt in retry: with attempt: ...`` (AttemptForms) --

    _BLOCK_TOKENS = False

    def _enter_block(self, asynchronous: bool) -> object:
        if asynchronous:
            raise UsageError(
                "an async with-block runs once and cannot be retried: write"
                " 'async for attempt in retry: with attempt: ...'"
            )
        raise UsageError(
            "a with-block runs once and cannot be retried: write"
            " 'for attempt in retry: with attempt: ...' (or 'async for' in async code)"
        )


#: How many runs of one kind of error a giving-up note tells apart.
_RUNS = 8


def _line(kind: type[BaseException] | None, args: tuple[Any, ...]) -> str:
    """An attempt's error in a note, from its type and args: as its own str() would
    say it (made again, by the class's __new__), our own errors by their type alone (a
    rejection's text changes as time passes)."""
    if kind is None:
        return "others"
    if issubclass(kind, ResilienceError):
        return kind.__name__
    again = remade(kind, args)
    try:
        message = str(again) if again is not None else ", ".join(map(repr, args))
    except Exception:  # a __str__ that fails: the type says enough
        message = ""
    return failure_line(kind.__name__, message)


def _attempts(n: int) -> str:
    return "1 attempt" if n == 1 else f"{n} attempts"


class _Call(Attempts):
    """One call's attempts: created when its first attempt fails, gone when it ends."""

    __slots__ = (
        "args",
        "fn",
        "kwargs",
        "previous",
        "raised",
        "retry",
        "started",
        "state",
        "trouble",
    )

    def __init__(
        self,
        retry: _Plan,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float,
    ) -> None:
        self.attempt = 1  # (Attempts.__init__, inlined: a failure's budget is tight too)
        self.idle = 0.0
        self.retry = retry
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.started = started
        self.previous: float | None = None  # the last wait, for decorrelated jitter
        self.trouble: str | None = None  # what went wrong with the wait strategy, if anything
        # What the failed attempts raised, as runs of one type: [type, the first one's
        # line, how many]; text, not the exceptions, whose tracebacks hold the frames
        # that hold this object; at most _RUNS runs (then only counted), so a call of a
        # million attempts keeps a few lines, and formats one per run.
        self.raised: list[list[Any]] = []
        self.state: Any = None  # tenacity's RetryCallState, built only if a strategy needs it

    # -- the decision ----------------------------------------------------------------

    def next_wait(self, exc: BaseException | None, result: object) -> float | None:
        """After attempt ``self.attempt`` failed (``exc``, or a ``result`` to retry on):
        seconds to wait before the next one, or None to give up. No I/O."""
        retry = self.retry
        if exc is not None:  # what the attempts raised, in runs of one kind
            runs = self.raised
            if runs and runs[-1][0] is exc.__class__:
                runs[-1][2] += 1
            elif len(runs) < _RUNS:  # args, not text: made only if a note is written
                runs.append([exc.__class__, exc.args, 1])
            else:  # too many changes of kind to tell: counted in the last run
                runs[-1][0] = None
                runs[-1][2] += 1
        mode = testmode._mode  # (testmode.current(), a frame less on every failure)
        limit = retry._attempts
        if mode.enabled and mode.attempts is not None:
            limit = min(limit, mode.attempts)
        if exc is not None and retry._on_tenacity and not retry._on(self._state(exc, result)):
            return self._give_up(None, None, "", "")  # not a failure tenacity's strategy retries
        if self.attempt >= limit:
            return self._give_up(exc, result, "attempts", f"after {_attempts(self.attempt)}")
        wait = retry._wait  # a fixed wait (cut to max_wait when compiled), or a strategy's
        if wait.__class__ is not float:
            wait = min(self._wait_after(exc), retry._max_wait)
        own = wait
        if retry._retry_after is None:
            hint = getattr(exc, "retry_after", None)
        else:
            hint = self._hint(exc, result)
        if (
            isinstance(hint, (int, float))
            and not isinstance(hint, bool)
            and math.isfinite(hint)  # a nonsense hint is no reason to wait forever
            and hint > wait
        ):
            if hint > retry._max_wait:  # waiting less than asked earns another refusal
                return self._give_up(
                    exc,
                    result,
                    "retry_after",
                    f"after {_attempts(self.attempt)}: it asked to wait {float(hint):.6g}s,"
                    f" more than max_wait ({retry._max_wait:g}s)",
                )
            wait = float(hint)  # the downstream (or our own breaker) said when
        if mode.enabled:
            wait = 0.0
        if retry._stop is not None:
            state = self._state(exc, result)
            state.upcoming_sleep = wait  # as tenacity does: stop_before_delay reads it
            if retry._stop(state):
                return self._give_up(
                    exc, result, "stop", f"after {_attempts(self.attempt)}: stop strategy"
                )
        left = remaining()  # the context's deadline (resilient.deadline, a Timeout's end):
        if left is not None and wait + AHEAD >= left:  # no time for another attempt
            return self._give_up(
                exc, result, "deadline", f"after {_attempts(self.attempt)}: the deadline in force"
            )
        if retry._deadline is not None:
            now = retry._clock.monotonic()
            if now + wait > self.started + retry._deadline:
                return self._give_up(
                    exc,
                    result,
                    "deadline",
                    f"after {_attempts(self.attempt)}: the {retry._deadline}s deadline",
                )
        budget = retry._budget
        if budget is not None and not budget._withdraw():
            if events.wanted(retry.policy, LEVELS[BudgetExhausted]):
                at = retry._clock.monotonic()
                events.emit(retry.policy, BudgetExhausted(retry.policy, at, self.attempt, budget))
            return self._give_up(
                exc, result, "budget", f"after {_attempts(self.attempt)}: retry budget spent"
            )
        self.previous = own  # decorrelated jitter grows from its own last wait, not a hint
        policy = retry.policy
        if events.wanted(policy, LEVELS[RetryScheduled]):
            at = retry._clock.monotonic()
            events.emit(policy, RetryScheduled(policy, at, self.attempt, wait, exc, result))
        return wait

    def _hint(self, exc: BaseException | None, result: object) -> object:
        """The downstream's hint, read by the ``retry_after`` callable from the outcome;
        an exception's own attribute when the callable has none. A callable that fails
        gives no hint: logged once, noted on the error, never raised in its place."""
        retry = self.retry
        assert retry._retry_after is not None
        outcome = exc if exc is not None else result
        try:
            hint: object = retry._retry_after(outcome)
        except Exception as error:
            hint = None
            asked = f"after attempt {self.attempt}"
            self.trouble = retry._hint_fallback.failed(error, asked, "no hint used")
        if hint is None and exc is not None:
            hint = getattr(exc, "retry_after", None)
        return hint

    def _wait_after(self, exc: BaseException | None) -> float:
        wait = self.retry._wait
        if isinstance(wait, float):
            return wait

        def compute() -> object:
            if isinstance(wait, Backoff):
                return wait.delay(self.attempt, self.previous)
            if _is_tenacity(wait, "wait_base"):
                return wait(self._state(exc, None))
            return wait(self.attempt, exc)

        # A strategy that fails now must not replace the downstream's error: the last
        # wait it gave (or none) instead, logged once, and a note on the error.
        seconds, why = self.retry._wait_fallback.seconds(
            compute, f"after attempt {self.attempt}", self.previous or 0.0
        )
        if why is not None:
            self.trouble = why  # noted on the error this call finally raises
        return seconds

    def _give_up(
        self, exc: BaseException | None, result: object, reason: str, why: str
    ) -> float | None:
        """Give up, for ``reason`` (told to listeners), noting ``why`` on the error."""
        policy = self.retry.policy
        if reason and events.wanted(policy, LEVELS[RetryGaveUp]):
            at = self.retry._clock.monotonic()
            events.emit(policy, RetryGaveUp(policy, at, self.attempt, reason, exc, result))
        if exc is not None and why:
            if self.trouble is not None:
                note(exc, self.trouble)
            gave_up = f"{self.retry._owner()}: gave up "
            note(exc, gave_up + why + self._history(type(exc)), replaces=gave_up)
        return None  # "give up", as next_wait says it

    def _history(self, last: type[BaseException]) -> str:
        """What the attempts raised, when some raised another kind of error than the one
        re-raised (a breaker that opened midway: the ConnectionErrors behind its
        CircuitOpenError); nothing when the error itself tells."""
        if all(kind is last for kind, _, _ in self.raised):
            return ""
        told = ", then ".join(
            _line(kind, args) + ("" if n == 1 else f" (x{n})") for kind, args, n in self.raised
        )
        return f"; the attempts raised {told}"

    def _state(self, exc: BaseException | None, result: object) -> Any:
        return _Call.tenacity_state(self.retry, self, exc, result)

    @staticmethod
    def tenacity_state(
        retry: _Plan, call: _Call | None, exc: BaseException | None, result: object
    ) -> Any:
        """tenacity's RetryCallState for this attempt, for tenacity's own strategies."""
        import tenacity

        if retry._retrying_stub is None:
            retry._retrying_stub = tenacity.Retrying()
        state = call.state if call is not None else None
        if state is None:
            fn = call.fn if call is not None else None
            args = call.args if call is not None else ()
            kwargs = call.kwargs if call is not None else {}
            state = tenacity.RetryCallState(retry._retrying_stub, fn, args, kwargs)
            state.start_time = call.started if call is not None else retry._clock.monotonic()
            if call is not None:
                call.state = state
        state.attempt_number = call.attempt if call is not None else 1
        state.idle_for = call.idle if call is not None else 0.0
        outcome = tenacity.Future(state.attempt_number)
        if exc is not None:
            outcome.set_exception(exc)
        else:
            outcome.set_result(result)
        state.outcome = outcome
        state.outcome_timestamp = retry._clock.monotonic()
        return state
