"""A constructor called the wrong way answers with the right call.

The policies' constructors differ in shape, on purpose: ``CircuitBreaker("payments")``
takes its name first, ``Retry(3)``, ``Timeout(2)`` and ``Bulkhead(10)`` a number, and
every other option is keyword-only. A newcomer, or code moved from pybreaker, stamina,
tenacity, retrying or backoff, meets those shapes with the wrong call; Python's own
TypeError ("takes 2 positional arguments but 3 were given") says what failed, not what
to write. :func:`shaped` wraps a class's ``__init__`` so that each such mistake raises
an error showing the call that works:

- a call that cannot bind (too many positional arguments, a keyword we do not have,
  one given twice, one missing): :class:`UsageError` (also a TypeError), with the
  right call; another library's keyword is translated by :data:`PEERS`, a typo gets a
  "did you mean";
- a function in the first slot, the decorator without parentheses (``@Retry``):
  :class:`UsageError` "write @Retry()" (``Fallback(f)``: also "handler=f");
- a value that reached an option but belongs elsewhere (``Retry("payments")``: a name in
  the number's slot; ``CircuitBreaker(5)``: a number in the name's): the option's
  :class:`ConfigError` (also a ValueError), with the right call added.

The rule between the two: a value that reached an option is a ConfigError, whatever
its mistake; a call that has the wrong form is a UsageError.

Why a wrapped ``__init__``: the typed signature stays exactly the one written in the
class (type checkers read the source, ``inspect.signature`` follows ``__wrapped__``),
unlike ``*args, **kwargs`` or an extra positional parameter typed to be refused, which
would show in every signature and ``help()``. A metaclass ``__call__`` would do the same
at the same cost (one Python frame per construction, nothing at import), but a class
may have only one metaclass: a policy could then no longer also be a Protocol's or an
ABC's subclass. Everything here but the wrapper itself runs only once a call has failed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import FunctionType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import inspect

from resilient._errors import ConfigError, UsageError

__all__ = ["PEERS", "shaped"]

C = TypeVar("C", bound=type)


class Hint:
    """Another library's keyword, in our terms: ``keywords`` to write instead (``{0}`` is
    the value as given, through ``convert``), or ``instead``, a sentence, when there is
    no keyword to write. (A plain class: a NamedTuple's creation costs more at import.)"""

    __slots__ = ("convert", "instead", "keywords", "peer")

    def __init__(
        self,
        peer: str,
        keywords: str = "",
        convert: Callable[[Any], Any] | None = None,
        *,
        instead: str = "",
    ) -> None:
        self.peer = peer
        self.keywords = keywords
        self.convert = convert
        self.instead = instead


def _from_ms(value: Any) -> Any:
    return value / 1000


def _first_wait_from_ms(value: Any) -> Any:
    return 2 * value / 1000  # retrying waits multiplier * 2 ** attempt ms; ours starts at base


def _attempts(retries: Any) -> Any:
    return retries + 1


_IN_A_ROW = "failure_rate=1.0, min_calls={0}, window_size={0}"
_RETRIES = Hint(
    "a count of retries (attempts counts the first call too)", "attempts={0}", _attempts
)

#: The one table of other libraries' keywords, by (class, keyword). A keyword not here
#: gets difflib's closest option of the class, if one is close.
PEERS: dict[tuple[str, str], Hint] = {
    # pybreaker, aiobreaker and the circuitbreaker package count failures in a row; a
    # count window of that many calls that must all fail is the same rule.
    ("CircuitBreaker", "fail_max"): Hint("pybreaker's fail_max (failures in a row)", _IN_A_ROW),
    ("CircuitBreaker", "failure_threshold"): Hint(
        "the circuitbreaker package's failure_threshold (failures in a row)", _IN_A_ROW
    ),
    ("CircuitBreaker", "reset_timeout"): Hint("pybreaker's reset_timeout", "open_for={0}"),
    ("CircuitBreaker", "recovery_timeout"): Hint(
        "the circuitbreaker package's recovery_timeout", "open_for={0}"
    ),
    ("CircuitBreaker", "timeout_duration"): Hint("aiobreaker's timeout_duration", "open_for={0}"),
    ("CircuitBreaker", "expected_exception"): Hint(
        "the circuitbreaker package's expected_exception", "record={0}"
    ),
    ("CircuitBreaker", "exclude"): Hint("pybreaker's exclude", "ignore={0}"),
    ("CircuitBreaker", "success_threshold"): Hint(
        "pybreaker's success_threshold", "half_open_calls={0}"
    ),
    ("CircuitBreaker", "fallback_function"): Hint(
        "the circuitbreaker package's fallback_function",
        instead="a fallback is a policy of its own: Pipeline(Fallback(handler=...), breaker)",
    ),
    ("Retry", "timeout"): Hint("stamina's timeout (for all attempts)", "deadline={0}"),
    ("Retry", "wait_initial"): Hint(
        "stamina's wait_initial", "wait=backoff.exponential(base={0})"
    ),
    ("Retry", "wait_max"): Hint("stamina's wait_max", "max_wait={0}"),
    ("Retry", "wait_exp_base"): Hint(
        "stamina's wait_exp_base", "wait=backoff.exponential(factor={0})"
    ),
    ("Retry", "wait_jitter"): Hint(
        "stamina's wait_jitter",
        instead="jitter is chosen by wait=backoff.exponential(jitter=...):"
        " 'full' (the default), 'equal', 'decorrelated' or None",
    ),
    ("Retry", "stop_max_attempt_number"): Hint(
        "retrying's stop_max_attempt_number", "attempts={0}"
    ),
    ("Retry", "stop_max_delay"): Hint(
        "retrying's stop_max_delay (milliseconds)", "deadline={0}", _from_ms
    ),
    ("Retry", "wait_fixed"): Hint("retrying's wait_fixed (milliseconds)", "wait={0}", _from_ms),
    ("Retry", "wait_exponential_multiplier"): Hint(
        "retrying's wait_exponential_multiplier (milliseconds; its first wait is twice it)",
        "wait=backoff.exponential(base={0}, jitter=None)",
        _first_wait_from_ms,
    ),
    ("Retry", "wait_exponential_max"): Hint(
        "retrying's wait_exponential_max (milliseconds)", "max_wait={0}", _from_ms
    ),
    ("Retry", "retry_on_exception"): Hint("retrying's retry_on_exception", "on={0}"),
    ("Retry", "retry_on_result"): Hint("retrying's retry_on_result", "on_result={0}"),
    ("Retry", "max_tries"): Hint("backoff's max_tries", "attempts={0}"),
    ("Retry", "max_time"): Hint("backoff's max_time", "deadline={0}"),
    ("Retry", "tries"): Hint("the retry package's tries", "attempts={0}"),
    ("Retry", "delay"): Hint("the retry package's delay", "wait={0}"),
    ("Retry", "max_delay"): Hint("the retry package's max_delay", "max_wait={0}"),
    ("Retry", "exceptions"): Hint("the retry package's exceptions", "on={0}"),
    ("Retry", "retry"): Hint("tenacity's retry", "on={0}"),
    ("Retry", "reraise"): Hint(
        "tenacity's reraise", instead="the last exception is always re-raised: leave it out"
    ),
    ("Retry", "retries"): _RETRIES,
    ("Retry", "max_retries"): _RETRIES,
    ("Timeout", "timeout"): Hint("a timeout", "seconds={0}"),
    ("Timeout", "delay"): Hint("async_timeout's delay", "seconds={0}"),
    ("Bulkhead", "limit"): Hint("a limit of calls at once", "max_concurrent={0}"),
    ("Bulkhead", "capacity"): Hint("a capacity", "max_concurrent={0}"),
    ("Bulkhead", "max_queued"): Hint("a queue's length", "max_waiting={0}"),
    ("Fallback", "default"): Hint("a default", "value={0}"),
    ("Fallback", "fallback_function"): Hint("a fallback function", "handler={0}"),
    ("RateLimiter", "max_rate"): Hint("aiolimiter's max_rate", "rate={0}"),
    ("RateLimiter", "time_period"): Hint("aiolimiter's time_period", "per={0}"),
    ("RateLimiter", "limit_for_period"): Hint("resilience4j's limitForPeriod", "rate={0}"),
    ("RateLimiter", "limit_refresh_period"): Hint("resilience4j's limitRefreshPeriod", "per={0}"),
    ("RateLimiter", "timeout_duration"): Hint("resilience4j's timeoutDuration", "max_wait={0}"),
    ("RateLimiter", "calls"): Hint("the ratelimit package's calls", "rate={0}"),
    ("RateLimiter", "period"): Hint("the ratelimit package's period", "per={0}"),
    ("RateLimiter", "capacity"): Hint("a token bucket's capacity", "burst={0}"),
    ("RateLimiter", "bucket_size"): Hint("hyx's bucket_size", "burst={0}"),
    ("RateLimiter", "block"): Hint(
        "a blocking acquire", instead="a call waits for its turn up to max_wait=seconds"
    ),
    ("Hedge", "hedging_delay"): Hint("Polly's HedgingDelay", "delay={0}"),
    ("Hedge", "max_hedged_attempts"): Hint("Polly's MaxHedgedAttempts", "max_hedges={0}"),
    ("Hedge", "max_attempts"): Hint(
        "gRPC's maxAttempts (the first attempt included)",
        instead="max_hedges counts the hedges only: max_hedges=maxAttempts - 1",
    ),
    ("InjectFault", "injection_rate"): Hint("Simmy's InjectionRate", "rate={0}"),
    ("InjectFault", "exception"): Hint("an exception", "error={0}"),
    ("InjectLatency", "injection_rate"): Hint("Simmy's InjectionRate", "rate={0}"),
    ("InjectLatency", "latency"): Hint("Simmy's Latency", "seconds={0}"),
    ("InjectLatency", "delay"): Hint("a delay", "seconds={0}"),
    ("InjectResult", "injection_rate"): Hint("Simmy's InjectionRate", "rate={0}"),
    ("InjectResult", "outcome"): Hint("Simmy's outcome", "value={0}"),
}

_P_DIGIT = frozenset(f"p{d}" for d in "0123456789")

#: A class's first argument in examples, and how it decorates.
EXAMPLES = {
    "Retry": "3",
    "Timeout": "2",
    "Bulkhead": "10",
    "RateLimiter": "100",
    "Hedge": "0.2",
    "InjectLatency": "0.5",
}
DECORATES = {
    "Timeout": "@Timeout(2)",
    "Bulkhead": "@Bulkhead(10)",
    "Fallback": "@Fallback(value) or @Fallback(handler=...)",
    "InjectFault": "@InjectFault(ConnectionError)",
    "InjectLatency": "@InjectLatency(0.5)",
    "InjectResult": "@InjectResult(value) or @InjectResult(factory=...)",
}
#: A number where a class's name goes: the keyword of the library that takes one there.
NUMBER_FOR_NAME = {"CircuitBreaker": "fail_max"}

_DEFS = (FunctionType, staticmethod, classmethod)


def shaped(cls: C, *, decorates: bool = True) -> C:
    """Wrap ``cls.__init__`` so that a wrongly shaped call raises an error that shows the
    right one. ``decorates``: instances decorate functions, so ``@cls`` without
    parentheses is the likely mistake behind a lone function argument."""
    init = cls.__dict__["__init__"]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if decorates and args and isinstance(args[0], _DEFS):
            raise UsageError(_undecorated(cls, init, args[0]))
        try:
            init(self, *args, **kwargs)
        except TypeError as error:
            # Raised by the call itself (binding the arguments), not inside __init__:
            # the traceback then has no frame of __init__'s after this one.
            tb = error.__traceback__
            if tb is None or tb.tb_next is not None:
                raise
            raise UsageError(_misuse(cls, init, args, kwargs, error)) from None
        except ConfigError as error:
            hint = _misplaced(cls, init, args, error)
            if hint is None:
                raise
            raise ConfigError(
                error.option, error.value, f"{error.expected}; {hint}", owner=error.owner
            ) from None

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def _parameters(init: Callable[..., Any]) -> list[inspect.Parameter]:
    import inspect  # (only once a call has failed)

    return list(inspect.signature(init).parameters.values())[1:]  # without self


def _positional(init: Callable[..., Any]) -> list[str]:
    kinds = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")
    return [p.name for p in _parameters(init) if p.kind.name in kinds]


def _keywords(init: Callable[..., Any]) -> list[str]:
    kinds = ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")
    return [p.name for p in _parameters(init) if p.kind.name in kinds]


def code(value: Any) -> str:
    """``value`` as code would write it: a class or function by name, text in double quotes."""
    if isinstance(value, (type, FunctionType)):
        return value.__qualname__
    if isinstance(value, (list, tuple)) and all(isinstance(v, type) for v in value):
        names = ", ".join(v.__qualname__ for v in value)
        if isinstance(value, list):
            return f"[{names}]"
        return f"({names},)" if len(value) == 1 else f"({names})"
    if isinstance(value, str) and '"' not in value and "\\" not in value and value.isprintable():
        return f'"{value}"'
    return repr(value)


def _call(who: str, args: tuple[Any, ...], kwargs: dict[str, Any], *extra: str) -> str:
    parts = [*map(code, args), *(f"{k}={code(v)}" for k, v in kwargs.items()), *extra]
    return f"{who}({', '.join(parts)})"


def _undecorated(cls: type, init: Callable[..., Any], fn: Any) -> str:
    who = cls.__name__
    first = _positional(init)[0]
    name = getattr(fn, "__qualname__", None) or getattr(
        getattr(fn, "__func__", None), "__qualname__", repr(fn)
    )
    decorate = f"as a decorator, write {DECORATES.get(who, f'@{who}()')}, with parentheses"
    if "factory" in _keywords(init):  # what it injects: made by a factory, given as one
        return (
            f"{who} got the function {name} as its {first}: write {who}(factory={name}) to"
            f" call it for each injected call; {decorate}"
        )
    if first == "value":  # a value is returned as is: a function there is never called
        return (
            f"{who} got the function {name} as its value, which would be returned, not"
            f" called: write {who}(handler={name}) to call it on failure, or"
            f" {who}(value={name}) to return the function itself; {decorate}"
        )
    return f"{who} got the function {name} as {first}: a policy is made first; {decorate}"


def _misuse(
    cls: type,
    init: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: TypeError,
) -> str:
    who = cls.__name__
    positional, keywords = _positional(init), _keywords(init)
    unknown = [k for k in kwargs if k not in keywords]
    if unknown:
        return "; ".join(_unknown(who, k, args, kwargs, keywords) for k in unknown)
    if len(args) > len(positional):
        return _too_many(who, positional, keywords, args, kwargs)
    twice = [p for p in positional[: len(args)] if p in kwargs]
    if twice:
        p = twice[0]
        value = args[positional.index(p)]
        return (
            f"{who} got {p} twice, by position ({code(value)}) and by keyword"
            f" ({code(kwargs[p])}): give it once"
        )
    missing = [
        p.name
        for i, p in enumerate(_parameters(init))
        if p.default is p.empty and i >= len(args) and p.name not in kwargs
    ]
    if missing:
        example = EXAMPLES.get(who, "...")
        return f"{who} needs {missing[0]}: e.g. {who}({example})"
    return f"{who}: {error}"  # pragma: no cover - every binding error is one of the above


def _unknown(
    who: str, keyword: str, args: tuple[Any, ...], kwargs: dict[str, Any], keywords: list[str]
) -> str:
    value = kwargs[keyword]
    rest = {k: v for k, v in kwargs.items() if k != keyword and k in keywords}
    hint = PEERS.get((who, keyword))
    if hint is not None:
        said = f"{who} has no option {keyword!r}; {hint.peer}"
        if hint.instead:
            return f"{said}: {hint.instead}"
        try:
            shown = code(hint.convert(value) if hint.convert is not None else value)
        except Exception:  # a value the conversion cannot take: show the keywords alone
            shown = "..."
        return f"{said} is written {_call(who, args, rest, hint.keywords.format(shown))}"
    import difflib  # (only once a call has failed)

    close = difflib.get_close_matches(keyword, keywords, n=1, cutoff=0.6)
    if close:
        right = _call(who, args, rest, f"{close[0]}={code(value)}")
        return f"{who} has no option {keyword!r}; did you mean {close[0]}? {right}"
    return f"{who} has no option {keyword!r}; its options are {', '.join(keywords)}"


def _too_many(
    who: str,
    positional: list[str],
    keywords: list[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    n = len(positional)
    takes = f"one positional argument ({positional[0]})" if n == 1 else f"{n} positional arguments"
    said = f"{who} takes {takes}; the other options go by keyword"
    extra = args[n:]
    if (
        len(extra) == 1
        and isinstance(extra[0], str)
        and "name" in keywords
        and "name" not in positional
        and "name" not in kwargs
    ):
        return f"{said}: {_call(who, args[:n], kwargs, f'name={code(extra[0])}')}"
    options = ", ".join(k for k in keywords if k not in positional)
    return f"{said} ({options}): {_call(who, args[:n], kwargs, 'option=...')}"


def _misplaced(
    cls: type, init: Callable[..., Any], args: tuple[Any, ...], error: ConfigError
) -> str | None:
    """What to add to the first argument's ConfigError when the value belongs elsewhere."""
    if not args or error.value is not args[0] or len(error.errors) > 1:
        return None
    who, value = cls.__name__, args[0]
    first = _positional(init)[0]
    if error.option != first:
        return None
    if first == "name":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        said = f'the first argument is the name: {who}("payments")'
        peer = NUMBER_FOR_NAME.get(who)
        hint = PEERS.get((who, peer)) if peer is not None else None
        if hint is None or not isinstance(value, int):
            return said
        right = _call(who, (), {}, hint.keywords.format(code(value)))
        return f"{said}; for {hint.peer} of {value}: {right}"
    # A number, or a percentile ("p100": a Hedge's delay out of range), is a value gone
    # wrong, not a name given first.
    looks_like_a_value = isinstance(value, str) and (
        value.strip()[:1] in tuple("0123456789.+-") or value.strip()[:2].lower() in _P_DIGIT
    )
    if isinstance(value, str) and not looks_like_a_value and "name" in _keywords(init):
        example = EXAMPLES.get(who, "...")
        return f"a name goes by keyword: {who}({example}, name={code(value)})"
    return None
