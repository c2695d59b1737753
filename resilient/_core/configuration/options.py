"""Declared options: one place that says what each option takes, its default and why.

A policy lists its options as :class:`Option` objects. The same declaration validates the
constructor's keywords now, and is meant to drive environment overrides, the CLI listing
and the docs table, so no second copy of a range or a default ever exists.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from types import BuiltinFunctionType, CodeType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Union

from resilient._core.configuration import parse as text
from resilient._core.configuration.parse import Invalid
from resilient._errors import ConfigError, logger

if TYPE_CHECKING:
    from datetime import timedelta

__all__ = [
    "DURATION_FORMS",
    "REQUIRED",
    "Duration",
    "Exceptions",
    "Invalid",
    "Option",
    "bounded_int",
    "check_name",
    "choice",
    "duration",
    "exception_filter",
    "flag",
    "fraction",
    "is_async_callable",
    "non_negative_int",
    "positive_int",
    "predicate",
    "rate",
    "real",
    "resolve",
    "seconds",
    "written",
]


Checker = Callable[[Any], Any]

#: What a duration option takes in code: what its environment variable takes (a number
#: of seconds, "250ms", "2s", "1.5m", "1h"), or a timedelta. Stored as float seconds.
Duration = Union[float, str, "timedelta"]  # Union: "timedelta" is only a forward reference

#: What an exception filter takes: a type, a tuple or list of types, or a predicate.
Exceptions = type[BaseException] | Sequence[type[BaseException]] | Callable[[BaseException], bool]


class Required(Enum):
    """The default of an option the caller must always give (a Timeout's ``seconds``):
    an enum member, so a type checker tells it from every real default (PEP 484)."""

    REQUIRED = "required"

    def __repr__(self) -> str:
        return "required"


REQUIRED: Final = Required.REQUIRED


class Option(NamedTuple):
    """One keyword of a policy: its default, what it accepts (``expected``) and why."""

    name: str
    default: Any
    check: Checker
    expected: str
    doc: str

    def validate(self, value: Any, owner: str) -> Any:
        try:
            return self.check(value)
        except Invalid as invalid:
            raise ConfigError(
                self.name, value, self.expecting(value, invalid), owner=owner
            ) from None

    def expecting(self, value: Any, invalid: Invalid, *, as_text: bool = False) -> str:
        """What an error about ``value`` says was expected: the declared range, how the
        value may be written (a duration's forms, for a value that is no number; the
        variable's syntax, ``as_text``), and the checker's hint if it gave one."""
        expected = self.expected
        if as_text:
            expected = f"{expected}, written as {self.syntax}"
        if invalid.args:
            return f"{expected}; {invalid.args[0]}"
        forms = getattr(self.check, "forms", None)
        if forms is not None and not as_text and not isinstance(value, (int, float)):
            return f"{expected}; {forms}"
        return expected

    @property
    def syntax(self) -> str:
        """How the option is written in an environment variable."""
        return str(getattr(self.check, "syntax", _OBJECTS_SYNTAX))

    def from_text(self, raw: str) -> Any:
        """The value an environment variable's text stands for, checked; or Invalid."""
        parse: Callable[[str], Any] = getattr(self.check, "parse", _parse_objects)
        return self.check(parse(raw))


_OBJECTS_SYNTAX = "an import path (package.module:name), or several separated by commas"


def _parse_objects(raw: str) -> Any:
    parts = [part.strip() for part in raw.split(",")]
    if not all(parts):
        raise Invalid
    objects = tuple(text.parse_import(part) for part in parts)
    return objects[0] if len(objects) == 1 else objects


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(raw: str) -> Any:
        return None if raw.strip().lower() == "none" else parse(raw)

    return parse_optional


def written(
    check: Checker, parse: Callable[[str], Any], syntax: str, *, forms: str | None = None
) -> Checker:
    """Say how ``check``'s values are written as text (for environment variables), and
    ``forms``: the other ways code may write them, told when a value is refused."""
    check.parse = parse  # type: ignore[attr-defined]
    check.syntax = syntax  # type: ignore[attr-defined]
    if forms is not None:
        check.forms = forms  # type: ignore[attr-defined]
    return check


_DURATION_SYNTAX = "a duration: 250ms, 2s, 1.5m, 1h or bare seconds"
DURATION_FORMS = (
    "a duration is a number of seconds, a string (250ms, 2s, 1.5m, 1h) or a datetime.timedelta"
)


def resolve(options: Sequence[Option], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Validated values for every option: the given ones checked, the rest defaulted."""
    return {
        option.name: option.validate(given[option.name], owner)
        if option.name in given
        else option.default
        for option in options
    }


def computed_seconds(value: object, option: str, asked: str, owner: str) -> float:
    """Seconds a user's callable returned (an ``open_for`` or ``wait`` strategy): >= 0 and
    finite, or a ConfigError naming the option and what it was asked (``asked``)."""
    try:
        if isinstance(value, str):  # computed, not written: a number (or a timedelta)
            raise Invalid
        return _at_once_or_later(value)  # type: ignore[no-any-return]
    except Invalid:
        expected = f"the {option} callable to return seconds >= 0 ({asked})"
        raise ConfigError(option, value, expected, owner=owner) from None


class Fallback:
    """What a user's callable computes while calls run (an ``open_for`` or a ``wait``
    strategy's seconds, a predicate's verdict), with a safe answer when it fails: its
    error never replaces the downstream's, nor leaves a state stuck. The first failure is
    logged (logger ``resilient``), once per policy configuration; ``why`` says what
    happened, for a note on the downstream's error."""

    __slots__ = ("_logged", "option", "owner")

    def __init__(self, option: str, owner: str) -> None:
        self.option = option
        self.owner = owner
        self._logged = False

    def seconds(
        self, compute: Callable[[], object], asked: str, fallback: float
    ) -> tuple[float, str | None]:
        try:
            return computed_seconds(compute(), self.option, asked, self.owner), None
        except Exception as error:
            return fallback, self.failed(error, asked, f"{fallback:g}s used instead")

    def failed(self, error: Exception, asked: str, instead: str) -> str:
        """Tell that the callable raised ``error`` (logged once), and what was done
        ``instead``: the line for a note on the downstream's error."""
        # (its type, not its text: a predicate's error can quote the value it was given)
        what = type(error).__name__
        why = f"{self.owner}: its {self.option} callable failed {asked} ({what}); {instead}"
        if not self._logged:
            self._logged = True
            logger().warning(why)
        return why


def check_name(name: object, owner: str) -> str | None:
    """A policy's name: None, or a string with at least one ASCII letter or digit. It
    names metrics and environment variables, which spell it in A-Z, 0-9 and _: a name
    of other characters only ("платежи") would read every variable of every such name."""
    if name is not None and (
        not isinstance(name, str) or not any(c.isascii() and c.isalnum() for c in name)
    ):
        expected = (
            "None or a string with at least one ASCII letter or digit (environment"
            " variables spell the name in A-Z, 0-9 and _)"
        )
        raise ConfigError("name", name, expected, owner=owner)
    return name


# Checkers. Each returns the normalised value or raises Invalid. None is handled by
# ``optional`` so that "no limit" is always spelled None, never a falsy number.


def real(value: Any) -> float:
    """A finite int or float (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid
    try:
        number = float(value)
    except OverflowError:  # an int past the largest float
        raise Invalid from None
    if not math.isfinite(number):
        raise Invalid
    return number


def seconds(value: Any) -> float:
    """A duration as float seconds, written any way code may write it (:data:`Duration`):
    a number, the text an environment variable takes, or a ``datetime.timedelta``. Every
    duration option reads its value through this one function."""
    if isinstance(value, str):
        return text.parse_duration(value)
    # A timedelta given to us means datetime is imported: ``import resilient`` never is.
    datetime = sys.modules.get("datetime")
    if datetime is not None and isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    return real(value)


def rate(value: Any) -> float:
    """A share of calls: 0 < x <= 1."""
    share = real(value)
    if not 0.0 < share <= 1.0:
        raise Invalid
    return share


written(rate, text.parse_float, "a decimal number, e.g. 0.25")


def fraction(value: Any) -> float:
    """A share of calls that may be none: 0 <= x <= 1."""
    share = real(value)
    if not 0.0 <= share <= 1.0:
        raise Invalid
    return share


written(fraction, text.parse_float, "a decimal number, e.g. 0.25")


def flag(value: Any) -> bool:
    """True or False (not 1 or 0: a number where a switch goes is a slip)."""
    if not isinstance(value, bool):
        raise Invalid
    return value


written(flag, text.parse_bool, "1/0, true/false, yes/no, on/off")


#: The one bound of every whole-number option: more calls, probes, attempts or waiters
#: than this is a typo, not a setting (and a count window's ring needs fewer than 2**24).
MAX_COUNT = 1_000_000


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise Invalid
    return value


written(positive_int, text.parse_int, "a whole number, e.g. 5")


def bounded_int(most: int) -> Checker:
    """A whole number from 1 to ``most``."""

    def check(value: Any) -> int:
        if positive_int(value) > most:
            raise Invalid
        return value  # type: ignore[no-any-return]

    return written(check, text.parse_int, "a whole number, e.g. 5")


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise Invalid
    return value


written(non_negative_int, text.parse_int, "a whole number, e.g. 5")


#: The most calls a count window holds. Its rings cost 8 bytes per slot for each kind of
#: outcome it marks (failures; slow calls too if timed), 8 to 24 MB at a million, spent
#: at construction.
MAX_WINDOW_CALLS = MAX_COUNT

#: A time window (a breaker's, a retry budget's) spans 1 ms to a year: its buckets are a
#: twentieth of it, and the clock divided by a bucket's width must stay a finite number.
MIN_SPAN = 0.001
MAX_SPAN = 365 * 24 * 3600.0


def time_span(value: Any) -> float:
    """Seconds of a time window: from :data:`MIN_SPAN` to :data:`MAX_SPAN`."""
    span = seconds(value)
    if not MIN_SPAN <= span <= MAX_SPAN:
        raise Invalid
    return span


written(time_span, text.parse_duration, _DURATION_SYNTAX, forms=DURATION_FORMS)


def longest_wait(value: Any) -> float:
    """Seconds a single wait may last: more than 0, at most :data:`MAX_SPAN` (so that no
    sleep overflows, whatever a strategy or a server asks for)."""
    wait = seconds(value)
    if not 0.0 < wait <= MAX_SPAN:
        raise Invalid
    return wait


written(longest_wait, text.parse_duration, _DURATION_SYNTAX, forms=DURATION_FORMS)


def window_size(value: Any) -> int | float:
    """A whole number of calls (1 to :data:`MAX_WINDOW_CALLS`), or seconds of a time
    window (:func:`time_span`). Text reads as the environment reads it: "100" is calls."""
    if isinstance(value, str):
        value = _parse_window_size(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return positive_int(value)
    return time_span(value)


def per_second(value: Any) -> float:
    """A rate in events a second: 0 to :data:`MAX_COUNT`."""
    rate_ = real(value)
    if not 0.0 <= rate_ <= MAX_COUNT:
        raise Invalid
    return rate_


written(per_second, text.parse_float, "a decimal number, e.g. 10")


def _parse_window_size(raw: str) -> int | float:
    try:
        return text.parse_int(raw)
    except Invalid:
        return text.parse_duration(raw)


written(
    window_size,
    _parse_window_size,
    "a whole number of calls, or a duration (60s, 1.5m, 1h)",
    forms=f"a whole number of calls, or {DURATION_FORMS.removeprefix('a duration is ')}",
)


def duration(*, allow_zero: bool) -> Checker:
    """Seconds as a finite number, > 0 (or >= 0 where zero means "at once")."""

    def check(value: Any) -> float:
        length = seconds(value)
        if length < 0.0 or (length == 0.0 and not allow_zero):
            raise Invalid
        return length

    return written(check, text.parse_duration, _DURATION_SYNTAX, forms=DURATION_FORMS)


#: Seconds >= 0: a wait, or what a user's callable computed.
_at_once_or_later = duration(allow_zero=True)


def optional(check: Checker) -> Checker:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    parse = getattr(check, "parse", _parse_objects)
    syntax = getattr(check, "syntax", _OBJECTS_SYNTAX)
    forms = getattr(check, "forms", None)
    return written(check_optional, _none_or(parse), f"none, or {syntax}", forms=forms)


def choice(*choices: str) -> Checker:
    def check(value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            raise Invalid
        return value

    return written(check, lambda raw: raw.strip().lower(), " or ".join(choices))


def predicate(value: Any) -> Any:
    """A callable, or None."""
    if value is not None and (not callable(value) or isinstance(value, type)):
        raise Invalid
    return value


#: ``none``, or the object at an import path.
none_or_import = _none_or(text.parse_import)

written(predicate, none_or_import, "none, or an import path (package.module:name)")


ExceptionFilter = Callable[[BaseException], bool]


def exception_filter(value: Any, *, catchable: bool = False) -> ExceptionFilter:
    """An exception type, a tuple or list of them (any sequence but a string), or a
    predicate on the exception; as a predicate.

    ``catchable``: for a policy that only ever sees ``Exception``s, a type that could never
    match one (KeyboardInterrupt, CancelledError...) is a mistake, not a setting.
    """

    def ok(t: Any) -> bool:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            return False
        return not catchable or issubclass(t, Exception) or issubclass(Exception, t)

    if ok(value):
        return TypeFilter((value,))
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        types = tuple(value)
        if all(ok(t) for t in types):
            return TypeFilter(types, listed=not isinstance(value, tuple))
    elif callable(value) and not isinstance(value, type):
        return value  # type: ignore[no-any-return]
    raise Invalid


class TypeFilter:
    """``isinstance(exc, types)`` as a predicate; a policy on a hot path may read
    ``types`` and ask ``isinstance`` itself, without a call."""

    __slots__ = ("listed", "types")

    def __init__(self, types: tuple[type[BaseException], ...], *, listed: bool = False) -> None:
        self.types = types
        self.listed = listed  # given as a list (or another sequence): shown as one

    def __call__(self, exc: BaseException) -> bool:
        return isinstance(exc, self.types)

    def __repr__(self) -> str:  # as a user writes it: ConnectionError, (A, B), (), [A, B]
        names = ", ".join(t.__qualname__ for t in self.types)
        if self.listed:
            return f"[{names}]"
        return names if len(self.types) == 1 else f"({names})"


_EXCEPTIONS_SYNTAX = (
    "exception types by import path, separated by commas (ConnectionError,"
    " httpx.TimeoutException), a predicate's import path, or none"
)
written(exception_filter, text.parse_exceptions, _EXCEPTIONS_SYNTAX)


def counted_exceptions(value: Any) -> ExceptionFilter:
    """An exception filter for a policy that counts only ``Exception``s (a breaker): a
    type no Exception can be (KeyboardInterrupt, CancelledError) could never match."""
    return exception_filter(value, catchable=True)


written(counted_exceptions, text.parse_exceptions, _EXCEPTIONS_SYNTAX)


def duration_or_callable(value: Any) -> Any:
    """Seconds (>= 0), or a callable that computes them."""
    if callable(value) and not isinstance(value, type):
        return value
    return _at_once_or_later(value)


def parse_duration_or_object(raw: str) -> Any:
    try:
        return text.parse_duration(raw)
    except Invalid:
        return _parse_objects(raw)


written(
    duration_or_callable,
    parse_duration_or_object,
    f"{_DURATION_SYNTAX}; or a callable's import path",
    forms=DURATION_FORMS,
)


def clock(*needs: str) -> Checker:
    """None for the system clock, or an object with the methods named in ``needs``."""

    def check(value: Any) -> Any:
        if value is not None and (
            isinstance(value, type) or not all(callable(getattr(value, n, None)) for n in needs)
        ):
            raise Invalid
        return value

    return written(check, none_or_import, "none, or an import path (package.module:name)")


#: The clock of a policy that waits (Retry, RateLimiter, InjectLatency): one declaration.
WAITING_CLOCK = Option(
    "clock",
    None,
    clock("monotonic", "sleep", "sleep_async"),
    "None or an object with monotonic(), sleep() and sleep_async()",
    "Where time comes from and how waits are made; tests pass ManualClock.",
)


def _fleet_backend(value: Any) -> Any:
    """None, a RedisBackend, or a Redis URL (checked here; a backend when compiled).
    Only a URL imports resilient.redis (and redis-py): a backend given means it is."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            from resilient import redis as fleet
        except ImportError:
            raise Invalid('a URL needs redis-py: pip install "resilient-toolkit[redis]"') from None
        try:
            fleet.check_url(value)
        except ConfigError as error:
            raise Invalid(error.expected) from None
        return value
    fleet_module = sys.modules.get("resilient.redis")
    if fleet_module is not None and isinstance(value, fleet_module.RedisBackend):
        return value
    raise Invalid


def _parse_backend(raw: str) -> str | None:
    raw = raw.strip()
    return None if raw.lower() == "none" else raw


written(_fleet_backend, _parse_backend, "none, or a Redis URL: redis://host:port/db")


def backend(doc: str) -> Option:
    """The ``backend`` option of a policy a fleet of processes may share (docs/fleet.md)."""
    return Option(
        "backend",
        None,
        _fleet_backend,
        "None, a resilient.redis.RedisBackend, or a Redis URL (redis://host:port/db)",
        doc,
    )


def markdown_table(options: Sequence[Option]) -> str:
    """The options as a Markdown table, for the docs (a test keeps the docs in step)."""
    rows = ["| option | default | accepts | what it does |", "| --- | --- | --- | --- |"]
    for option in options:
        default = getattr(option.default, "__name__", None) or repr(option.default)
        cells = (f"`{option.name}`", f"`{default}`", option.expected, option.doc)
        rows.append("| " + " | ".join(map(cell, cells)) + " |")
    return "\n".join(rows)


def cell(text: str) -> str:
    """Text for a Markdown table cell: a pipe in it would end the cell."""
    return text.replace("|", "\\|")


#: Code flags, as ``inspect`` names them (CPython's values since 3.5; a test compares):
#: read here without importing inspect, which costs a third of ``import resilient``.
CO_GENERATOR, CO_COROUTINE, CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, partials of them and objects with an async __call__."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, type):
        return False  # calling a class makes an instance, whatever its __call__ does
    code = getattr(fn, "__code__", None)
    if isinstance(code, CodeType) and "_is_coroutine_marker" not in getattr(fn, "__dict__", ()):
        return bool(code.co_flags & CO_COROUTINE)  # a function or method: its flags say
    if isinstance(fn, BuiltinFunctionType):
        return False
    import inspect  # anything else (rare): worth no import up front

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the __call__ of a callable object
    )
