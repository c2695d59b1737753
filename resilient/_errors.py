"""The errors resilient raises; the caller's own exceptions always pass through untouched.

::

    ResilienceError
      RejectedError (name, retry_after)   a policy refused to run the call
        CircuitOpenError (state)
        BulkheadFullError                 no slot came free in time
        RateLimitedError                  over the rate, and no turn within max_wait
      TimeoutExpired (also TimeoutError)  the call ran out of time
      ConfigError (also ValueError)       an option got a value outside its range
      UsageError (also TypeError)         a policy was called the wrong way

Each error also subclasses the stdlib parent that a caller would naturally catch, so
``except ValueError`` still sees a bad option.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigError",
    "ConfigWarning",
    "RateLimitedError",
    "RejectedError",
    "ResilienceError",
    "TimeoutExpired",
    "UsageError",
    "logger",
]


def logger() -> logging.Logger:
    """The ``resilient`` logger, where errors that must not reach a call are told
    (a listener's, a wait strategy's); logging is imported when the first one comes."""
    import logging

    return logging.getLogger("resilient")


class ResilienceError(Exception):
    """Base class of every error that resilient itself raises."""


class RejectedError(ResilienceError):
    """A policy refused to run the call; nothing reached the downstream.

    ``retry_after`` is how many seconds until the policy expects to admit calls again,
    or None when it cannot know (a forced-open breaker, probes in flight).
    """

    # Rejections are raised on the hot path of an outage, so an instance keeps its values
    # in ``args`` alone and reads them through properties: a policy makes one with
    # ``BaseException.__new__(cls, *args)``, a single C call, no Python __init__ at all.
    __slots__ = ()

    def __init__(self, name: str | None = None, retry_after: float | None = None) -> None:
        self.args = (name, retry_after)

    @property
    def name(self) -> str | None:
        """The policy's name (None if it has none)."""
        return self.args[0] if self.args else None

    @property
    def retry_after(self) -> float | None:
        args = self.args
        return args[1] if len(args) > 1 else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, retry_after={self.retry_after!r})"

    def __str__(self) -> str:
        retry_after = self.retry_after
        hint = "" if retry_after is None else f"; retry after {retry_after:.3f}s"
        return f"{self._what()}{hint}"

    def _what(self, named: bool = True) -> str:
        """What refused and why; ``named=False`` leaves the policy's name out (a web
        answer to an outside client: the name may be an internal host)."""
        kind = type(self).__name__.removesuffix("Error").lower()
        return f"{self._subject(kind, named)} rejected the call"

    def _subject(self, kind: str, named: bool) -> str:
        return f"{kind} {self._who()}" if named else kind

    def _who(self) -> str:
        return f"{self.name!r}" if self.name is not None else "(unnamed)"


class CircuitOpenError(RejectedError):
    """The circuit breaker is not admitting calls (OPEN, FORCED_OPEN, or HALF_OPEN and full).

    A fresh instance is raised on every rejection, so its traceback never grows. An OPEN
    breaker's error knows when the spell ends and says, when read, how long is left:
    ``retry_after`` shrinks as time passes, and reaches 0.0 when a probe may go in.
    """

    __slots__ = ()

    def __init__(
        self,
        name: str | None = None,
        retry_after: float | None = None,
        state: Any = None,
        last_failure: BaseException | None = None,
    ) -> None:
        self.args = (name, retry_after, state, None, None, last_failure)

    @property
    def retry_after(self) -> float | None:
        args = self.args
        if len(args) > 4 and args[4] is not None:  # the breaker's own: (..., until, clock)
            left: float = args[3] - args[4].monotonic()
            return max(0.0, left)
        return args[1] if len(args) > 1 else None

    @property
    def state(self) -> Any:
        """The breaker's state when it refused (a :class:`resilient.State`)."""
        args = self.args
        return args[2] if len(args) > 2 else None

    @property
    def last_failure(self) -> BaseException | None:
        """The failure that opened the breaker (the last one it recorded before the open
        spell began): the root cause behind the rejection, as a copy of that exception
        (its type, args and attributes) without its traceback, so an open breaker keeps
        no frame of the failed call alive. None when no failure opened it
        (``force_open()``, slow calls that returned), and in a pickled copy: an exception
        may hold what cannot cross to another process."""
        args = self.args
        return args[5] if len(args) > 5 else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after, self.state))

    def __repr__(self) -> str:
        cause = self.last_failure
        shown = "" if cause is None else f", last_failure={cause!r}"
        return (
            f"{type(self).__name__}(name={self.name!r}, retry_after={self.retry_after!r},"
            f" state={self.state!r}{shown})"
        )

    def __str__(self) -> str:
        cause = self.last_failure
        shown = "" if cause is None else f"; opened by {shown_failure(cause)}"
        return super().__str__() + shown

    def _what(self, named: bool = True) -> str:
        state = getattr(self.state, "value", self.state)
        return f"{self._subject('circuit breaker', named)} is {state}"


def detached(exc: BaseException) -> BaseException | None:
    """A copy of ``exc`` to keep for a while: its type, args and attributes, none of its
    traceback, context or cause (which hold the frames of the call that raised it); None
    if the class will not be made again (the root cause is then not kept, and the call's
    own error goes on untouched)."""
    return remade(type(exc), exc.args, getattr(exc, "__dict__", None))


def remade(
    kind: type[BaseException], args: tuple[Any, ...], state: dict[str, Any] | None = None
) -> BaseException | None:
    """An exception of ``kind`` made again from its args (and attributes), by the class's
    ``__new__`` alone: its ``__init__`` may want other arguments. None if it will not be."""
    try:
        copy = kind.__new__(kind, *args)
        copy.args = args
        if state:
            copy.__dict__.update(state)
    except Exception:
        return None
    return copy


def shown_failure(exc: BaseException) -> str:
    """``exc`` in a line: its type and message, cut short (a note, an error's text)."""
    try:
        message = str(exc)
    except Exception:  # a __str__ that fails: the type says enough
        message = ""
    return failure_line(type(exc).__name__, message)


def note(exc: BaseException, note: str, replaces: str = "") -> None:
    """Add ``note`` to ``exc`` once (``add_note()``'s list, which 3.10 keeps but does not
    show); with ``replaces``, first drop the notes that start with it (an exception
    instance raised again and again, a module-level constant, gets one "gave up" note
    per policy, not one per call)."""
    notes: list[str] = getattr(exc, "__notes__", None) or []
    if replaces:
        notes = [n for n in notes if not n.startswith(replaces)]
    if note not in notes:
        notes.append(note)
    exc.__notes__ = notes  # type: ignore[attr-defined]  # what add_note() keeps


def failure_line(kind: str, message: str | None) -> str:
    """A failure's type and message in one line of at most 100 characters."""
    text = f"{kind}: {message}" if message else kind
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."


class BulkheadFullError(RejectedError):
    """The bulkhead had no free slot, and none came free within its ``max_wait``."""

    __slots__ = ()

    def _what(self, named: bool = True) -> str:
        return f"{self._subject('bulkhead', named)} is full"


class RateLimitedError(RejectedError):
    """The rate limiter refused the call: over its rate, with no turn within ``max_wait``.

    ``retry_after`` is exactly how many seconds later a call would have been admitted;
    the message says why a call allowed to wait did not (its turn was beyond
    ``max_wait``, or beyond an enclosing deadline)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rate_limited, self.args)

    def _what(self, named: bool = True) -> str:
        why = self.args[2] if len(self.args) > 2 else ""
        return f"{self._subject('rate limiter', named)} is over its rate{why}"


def _rate_limited(*args: Any) -> RateLimitedError:
    """A pickled RateLimitedError made again, its reason and all."""
    return RateLimitedError.__new__(RateLimitedError, *args)


class TimeoutExpired(ResilienceError, TimeoutError):
    """The call did not finish within its time: the Timeout's own, or an enclosing deadline's.

    ``seconds`` is the limit that ran out (the nearer of the two), ``name`` the Timeout's.
    It is also the builtin :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """

    def __init__(
        self, name: str | None = None, seconds: float | None = None, detail: str = ""
    ) -> None:
        who = "timeout" if name is None else f"timeout {name!r}"
        limit = "" if seconds is None else f" after {seconds:.3g}s"
        super().__init__(f"{who} expired{limit}{detail}")
        self.name = name
        self.seconds = seconds
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.seconds, self.detail))

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigError(ResilienceError, ValueError):
    """An option got a value it cannot take; raised at construction, never later.

    ``option`` names the option (or environment variable), ``value`` is what was given and
    ``expected`` says what would have been accepted. When several environment variables
    are bad at once, one error reports them all: ``errors`` lists each (the first is
    also this error's own option, value and expected).
    """

    def __init__(
        self,
        option: str,
        value: object,
        expected: str,
        *,
        owner: str = "",
        errors: tuple[ConfigError, ...] = (),
    ) -> None:
        super().__init__(option, value, expected, owner)
        self.option = option
        self.value = value
        self.expected = expected
        self.owner = owner
        self.errors: tuple[ConfigError, ...] = errors or (self,)

    @classmethod
    def combine(cls, errors: list[ConfigError]) -> ConfigError:
        """One error for several (one for one): they are all reported, none is lost."""
        seen: set[tuple[str, str]] = set()
        flat = []
        for each in (each for error in errors for each in error.errors):
            key = (each.option, repr(each.value))  # one bad variable, read by many policies
            if key not in seen:
                seen.add(key)
                flat.append(each)
        if len(flat) == 1:
            return flat[0]
        first = flat[0]
        return cls(
            first.option, first.value, first.expected, owner=first.owner, errors=tuple(flat)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        errors = () if self.errors == (self,) else self.errors
        return (_rebuild_config_error, (*self.args, errors))

    def __str__(self) -> str:
        if len(self.errors) > 1:
            lines = "\n".join(f"  {error._line()}" for error in self.errors)
            return f"{len(self.errors)} invalid settings:\n{lines}"
        return self._line()

    def _line(self) -> str:
        where = f"{self.owner}: " if self.owner else ""
        return f"{where}{self.option}={shown(self.value)} is invalid: expected {self.expected}"


#: How much of a bad value an error message quotes.
SHOWN = 80


def shown(value: object) -> str:
    """``repr(value)`` for a message: at most :data:`SHOWN` characters, and never an
    error of its own (a value whose ``__repr__`` raises is still reported)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__} object (its repr failed)>"
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 3]}..."


def _rebuild_config_error(
    option: str,
    value: object,
    expected: str,
    owner: str,
    errors: tuple[ConfigError, ...] = (),
) -> ConfigError:
    return ConfigError(option, value, expected, owner=owner, errors=errors)


class ConfigWarning(UserWarning):
    """A setting that is valid but probably not what was meant: a ``RESILIENT_*``
    variable that matches no option of any policy (with a "did you mean")."""


class UsageError(ResilienceError, TypeError):
    """A mistake in how a policy was called, not an outcome of the call.

    No policy counts it as a failure, retries it or falls back from it: it says the
    code is wrong, and hiding it would be the worst answer.
    """
