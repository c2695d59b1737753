"""Declared options: one place that says what each option takes, its default and why.

A policy lists its options as :class:`Option` objects. The same declaration validates the
constructor's keywords now, and is meant to drive environment overrides, the CLI listing
and the docs table, so no second copy of a range or a default ever exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resilient._core.parse import Invalid
from resilient._errors import ConfigError

__all__ = [
    "REQUIRED",
    "Invalid",
    "Option",
    "check_name",
    "choice",
    "duration",
    "exception_filter",
    "non_negative_int",
    "positive_int",
    "predicate",
    "rate",
    "resolve",
]


Checker = Callable[[Any], Any]


class _Required:
    __name__ = "required"

    def __repr__(self) -> str:
        return "required"


#: The default of an option the caller must always give (a Timeout's ``seconds``).
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Option:
    """One keyword of a policy: its default, what it accepts (``expected``) and why."""

    name: str
    default: Any
    check: Checker
    expected: str
    doc: str

    def validate(self, value: Any, owner: str) -> Any:
        try:
            return self.check(value)
        except Invalid:
            raise ConfigError(self.name, value, self.expected, owner=owner) from None


def resolve(options: Sequence[Option], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Validated values for every option: the given ones checked, the rest defaulted."""
    return {
        option.name: option.validate(given[option.name], owner)
        if option.name in given
        else option.default
        for option in options
    }


def check_name(name: object, owner: str) -> str | None:
    """A policy's name: None, or a non-empty string (it names metrics and variables)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("name", name, "None or a non-empty string", owner=owner)
    return name


# Checkers. Each returns the normalised value or raises Invalid. None is handled by
# ``optional`` so that "no limit" is always spelled None, never a falsy number.


def _real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid
    number = float(value)
    if not math.isfinite(number):
        raise Invalid
    return number


def rate(value: Any) -> float:
    """A share of calls: 0 < x <= 1."""
    share = _real(value)
    if not 0.0 < share <= 1.0:
        raise Invalid
    return share


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid
    return value


def window_size(value: Any) -> int | float:
    """A positive whole number, or a positive finite float (seconds of a time window)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return positive_int(value)
    seconds = _real(value)
    if seconds <= 0.0:
        raise Invalid
    return seconds


def duration(*, allow_zero: bool) -> Checker:
    """Seconds as a finite number, > 0 (or >= 0 where zero means "at once")."""

    def check(value: Any) -> float:
        seconds = _real(value)
        if seconds < 0.0 or (seconds == 0.0 and not allow_zero):
            raise Invalid
        return seconds

    return check


def optional(check: Checker) -> Checker:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    return check_optional


def choice(*choices: str) -> Checker:
    def check(value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            raise Invalid
        return value

    return check


def predicate(value: Any) -> Any:
    """A callable, or None."""
    if value is not None and (not callable(value) or isinstance(value, type)):
        raise Invalid
    return value


ExceptionFilter = Callable[[BaseException], bool]


def exception_filter(value: Any, *, catchable: bool = False) -> ExceptionFilter:
    """An exception type, a tuple of them, or a predicate on the exception; as a predicate.

    ``catchable``: for a policy that only ever sees ``Exception``s, a type that could never
    match one (KeyboardInterrupt, CancelledError...) is a mistake, not a setting.
    """

    def ok(t: Any) -> bool:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            return False
        return not catchable or issubclass(t, Exception) or issubclass(Exception, t)

    if ok(value):
        types: tuple[type[BaseException], ...] = (value,)
    elif isinstance(value, tuple) and all(ok(t) for t in value):
        types = value
    elif callable(value) and not isinstance(value, type):
        return value  # type: ignore[no-any-return]
    else:
        raise Invalid
    if not types:
        return _never
    return lambda exc: isinstance(exc, types)


def _never(exc: BaseException) -> bool:
    return False


def duration_or_callable(value: Any) -> Any:
    """Seconds (>= 0), or a callable that computes them."""
    if callable(value) and not isinstance(value, type):
        return value
    return duration(allow_zero=True)(value)


def clock(*needs: str) -> Checker:
    """None for the system clock, or an object with the methods named in ``needs``."""

    def check(value: Any) -> Any:
        if value is not None and (
            isinstance(value, type) or not all(callable(getattr(value, n, None)) for n in needs)
        ):
            raise Invalid
        return value

    return check


def markdown_table(options: Sequence[Option]) -> str:
    """The options as a Markdown table, for the docs (a test keeps the docs in step)."""
    rows = ["| option | default | accepts | what it does |", "| --- | --- | --- | --- |"]
    for option in options:
        default = getattr(option.default, "__name__", None) or repr(option.default)
        rows.append(f"| `{option.name}` | `{default}` | {option.expected} | {option.doc} |")
    return "\n".join(rows)
