"""How long :class:`resilient.Retry` waits between attempts: constant, linear, exponential.

Why jitter: clients that failed together retry together. Without it, every client hit by
the same outage wakes at the same instants and the retries land in synchronised waves on
a service that is trying to recover. :func:`exponential` spreads them out with the three
variants of the AWS Architecture Blog's "Exponential Backoff And Jitter" (Brooker, 2015),
where ``d = min(cap, base * factor ** (attempt - 1))``:

- ``"full"`` (the default): uniform in ``[0, d]``. In the post's simulation it did the
  least work (fewest calls to the struggling service) for about the same completion time.
- ``"equal"``: ``d/2`` plus uniform in ``[0, d/2]``, for when a retry must never follow
  almost at once. The post found it did more work and took longer than full jitter.
- ``"decorrelated"``: ``min(cap, uniform(base, 3 * previous))``, growing from the
  previous wait rather than from the attempt number. Slightly faster than full jitter in
  the post, at slightly more work.

Every delay is finite, ``>= 0`` and within its cap for any attempt number: the exponent is
compared with the cap in log space before any power is taken, so attempt ``10**9`` (or
``10**100``) costs what attempt 3 costs and never overflows (stamina #104, tenacity #710).

A strategy is immutable and keeps no per-call state (decorrelated jitter is handed the
previous wait by its caller), so one instance can serve any number of threads and calls.
"""

from __future__ import annotations

import math
import os
import random
import sys
from abc import ABC, abstractmethod
from typing import Any, Literal

from resilient._core.configuration import options as opt
from resilient._errors import ConfigError

__all__ = ["Backoff", "constant", "exponential", "linear"]

Jitter = Literal["full", "equal", "decorrelated"]

# Global state: the one random source of every strategy built without ``rng=``. Never
# seeded, so separate processes jitter differently; reseeded in a forked child for the
# same reason (as the stdlib does for ``random``'s own instance), or every prefork worker
# would draw the same "random" waits. Tests pass their own seeded ``rng`` instead.
_shared_rng = random.Random()
if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_shared_rng.seed)

_MAX = sys.float_info.max
# Linear growth past this many attempts is moot (it is past any cap); clamping to it
# keeps the int-to-float conversion in ``step * (attempt - 1)`` from overflowing.
_MAX_STEPS = 2**1000


class Backoff(ABC):
    """A wait strategy: seconds to sleep after each failed attempt.

    Subclass it and implement :meth:`delay` for a strategy of your own. Instances are
    also plain ``callable(attempt, exception) -> seconds``, the form Retry accepts from
    users, so a strategy can go wherever such a callable is expected.
    """

    __slots__ = ()

    @abstractmethod
    def delay(self, attempt: int, previous: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        ``previous`` is the wait chosen before this one in the same call (None before the
        first wait); only decorrelated jitter uses it. Raises ValueError if ``attempt < 1``.
        """

    def __call__(self, attempt: int, exception: BaseException | None) -> float:
        """``delay(attempt, None)``: the exception does not change the wait."""
        return self.delay(attempt, None)


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (attempts are numbered from 1), got {attempt!r}")


class _Frozen(Backoff):
    """The built-in strategies: immutable, equal when built from equal options, and
    pickled as the constructor call that made them."""

    __slots__ = ()

    def _args(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self!r} is immutable; build a new one instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self!r} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._args() == other._args()

    def __hash__(self) -> int:
        return hash((type(self), self._args()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._args())


class _Constant(_Frozen):
    __slots__ = ("seconds",)
    seconds: float

    def __init__(self, seconds: float) -> None:
        object.__setattr__(self, "seconds", seconds)

    def _args(self) -> tuple[Any, ...]:
        return (self.seconds,)

    def delay(self, attempt: int, previous: float | None) -> float:
        _check_attempt(attempt)
        return self.seconds

    def __repr__(self) -> str:
        return f"constant(seconds={self.seconds!r})"


class _Linear(_Frozen):
    __slots__ = ("cap", "start", "step")
    start: float
    step: float
    cap: float | None

    def __init__(self, start: float, step: float, cap: float | None) -> None:
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "cap", cap)

    def _args(self) -> tuple[Any, ...]:
        return (self.start, self.step, self.cap)

    def delay(self, attempt: int, previous: float | None) -> float:
        _check_attempt(attempt)
        wait = self.start + self.step * min(attempt - 1, _MAX_STEPS)
        # Uncapped, a huge attempt would give inf; the largest float is as good as forever
        # and keeps the caller's arithmetic finite.
        return min(wait, _MAX if self.cap is None else self.cap)

    def __repr__(self) -> str:
        return f"linear(start={self.start!r}, step={self.step!r}, cap={self.cap!r})"


class _Exponential(_Frozen):
    __slots__ = ("_capped_from", "base", "cap", "factor", "jitter", "rng")
    base: float
    factor: float
    cap: float
    jitter: Jitter | None
    # None: the shared source. Pickling keeps it None, so a default strategy unpickles
    # onto the receiving process's source instead of a copy of this one's state.
    rng: random.Random | None
    # From this exponent (attempt - 1) on, base * factor ** exponent >= cap. Found with
    # logs at construction so that no power of a huge exponent is ever computed.
    _capped_from: float

    def __init__(
        self,
        base: float,
        factor: float,
        cap: float,
        jitter: Jitter | None,
        rng: random.Random | None,
    ) -> None:
        if base >= cap:
            capped_from = 0.0
        elif base == 0.0 or factor == 1.0:
            capped_from = math.inf  # never grows; _grown() returns base
        else:
            capped_from = (math.log(cap) - math.log(base)) / math.log(factor)
        for name, value in [
            ("base", base),
            ("factor", factor),
            ("cap", cap),
            ("jitter", jitter),
            ("rng", rng),
            ("_capped_from", capped_from),
        ]:
            object.__setattr__(self, name, value)

    def _args(self) -> tuple[Any, ...]:
        return (self.base, self.factor, self.cap, self.jitter, self.rng)

    def _grown(self, attempt: int) -> float:
        """The delay before jitter: ``min(cap, base * factor ** (attempt - 1))``."""
        exponent = attempt - 1
        if exponent >= self._capped_from:  # int-float comparison is exact at any size
            return self.cap
        if self.base == 0.0 or self.factor == 1.0:
            return self.base
        try:
            grown = self.base * self.factor**exponent
        except OverflowError:
            # factor ** exponent alone can pass the largest float while the product is
            # still under cap (a tiny base); in logs it stays finite.
            grown = math.exp(math.log(self.base) + exponent * math.log(self.factor))
        return min(self.cap, grown)

    def delay(self, attempt: int, previous: float | None) -> float:
        _check_attempt(attempt)
        jitter = self.jitter
        if jitter is None:
            return self._grown(attempt)
        rng = _shared_rng if self.rng is None else self.rng
        if jitter == "full":
            return rng.uniform(0.0, self._grown(attempt))
        if jitter == "equal":
            grown = self._grown(attempt)
            half = grown / 2
            return min(grown, half + rng.uniform(0.0, half))  # min: rounding of subnormals
        # Decorrelated (AWS): sleep = min(cap, random_between(base, sleep * 3)).
        if previous is None:
            previous = self.base
        elif not previous >= 0.0:  # also catches NaN
            raise ValueError(f"previous must be a number of seconds >= 0, got {previous!r}")
        # A previous wait outside [base, cap] did not come from this strategy; clamping it
        # keeps the result in [base, cap] and 3 * previous finite.
        previous = min(max(previous, self.base), self.cap)
        return min(self.cap, rng.uniform(self.base, min(previous * 3.0, _MAX)))

    def __repr__(self) -> str:
        rng = "" if self.rng is None else f", rng={self.rng!r}"
        return (
            f"exponential(base={self.base!r}, factor={self.factor!r}, cap={self.cap!r},"
            f" jitter={self.jitter!r}{rng})"
        )


# Declared options (see resilient._core.configuration.options): what each keyword
# accepts and why its default was chosen. Cross-option rules (cap >= base) are checked after these.

_seconds = opt.duration(allow_zero=True)
_SECONDS = "a finite number of seconds >= 0"


def _growth_factor(value: Any) -> float:
    factor = opt.real(value)  # a number, not a duration: "2s" is no factor
    if factor < 1.0:
        raise opt.Invalid
    return factor


def _random_source(value: Any) -> random.Random | None:
    if value is not None and not isinstance(value, random.Random):
        raise opt.Invalid
    return value


_CONSTANT_OPTIONS = (
    opt.Option("seconds", None, _seconds, _SECONDS, "The wait after every failed attempt."),
)

_LINEAR_OPTIONS = (
    opt.Option("start", None, _seconds, _SECONDS, "The wait after the first failure."),
    opt.Option("step", None, _seconds, _SECONDS, "Added to the wait after each failure."),
    opt.Option(
        "cap",
        None,
        opt.optional(opt.duration(allow_zero=False)),
        "None or a finite number of seconds > 0",
        "The longest wait; must be >= start. None: no cap.",
    ),
)

_EXPONENTIAL_OPTIONS = (
    opt.Option(
        "base",
        0.1,
        _seconds,
        _SECONDS,
        "The wait after the first failure, before jitter. 0.1 s (stamina's default too)"
        " lets a blip pass while a caller that succeeds on the retry barely notices it.",
    ),
    opt.Option(
        "factor",
        2.0,
        _growth_factor,
        "a finite number >= 1",
        "The wait is multiplied by this after each failure: doubling, as in the AWS post."
        " Decorrelated jitter grows from the previous wait instead and ignores it.",
    ),
    opt.Option(
        "cap",
        30.0,
        opt.duration(allow_zero=False),
        "a finite number of seconds > 0",
        "The longest wait; must be >= base. 30 s, the breaker's default open_for: past"
        " that a caller is usually better served by an error than by a longer wait.",
    ),
    opt.Option(
        "jitter",
        "full",
        opt.optional(opt.choice("full", "equal", "decorrelated")),
        "'full', 'equal', 'decorrelated' or None",
        "How the wait is randomised (see the module docs). 'full' did the least work in"
        " the AWS post's simulation; None waits exactly min(cap, base * factor ** n).",
    ),
    opt.Option(
        "rng",
        None,
        _random_source,
        "None or a random.Random instance",
        "Where jitter draws from. None: a shared, unseeded source; tests pass a seeded one.",
    ),
)


def constant(seconds: opt.Duration) -> Backoff:
    """Wait the same ``seconds`` after every failed attempt."""
    cfg = opt.resolve(_CONSTANT_OPTIONS, {"seconds": seconds}, "resilient.backoff.constant")
    return _Constant(cfg["seconds"])


def linear(start: opt.Duration, step: opt.Duration, *, cap: opt.Duration | None = None) -> Backoff:
    """Wait ``start + step * (attempt - 1)`` seconds, at most ``cap`` (None: no cap)."""
    owner = "resilient.backoff.linear"
    cfg = opt.resolve(_LINEAR_OPTIONS, {"start": start, "step": step, "cap": cap}, owner)
    if cfg["cap"] is not None and cfg["cap"] < cfg["start"]:
        raise ConfigError(
            "cap",
            cap,
            f"None or a finite number of seconds > 0 and >= start ({start!r})",
            owner=owner,
        )
    return _Linear(cfg["start"], cfg["step"], cfg["cap"])


def exponential(
    base: opt.Duration = 0.1,
    factor: float = 2.0,
    *,
    cap: opt.Duration = 30.0,
    jitter: Jitter | None = "full",
    rng: random.Random | None = None,
) -> Backoff:
    """Wait ``min(cap, base * factor ** (attempt - 1))`` seconds, randomised by ``jitter``.

    Defaults: 0.1 s, doubling, never over 30 s, full jitter (why: see the module docs).
    With ``jitter="decorrelated"`` the wait grows from the previous one, not by ``factor``.
    ``rng`` is the random source for jitter; None shares one unseeded ``random.Random``,
    tests pass a seeded one for repeatable waits.
    """
    owner = "resilient.backoff.exponential"
    given = {"base": base, "factor": factor, "cap": cap, "jitter": jitter, "rng": rng}
    cfg = opt.resolve(_EXPONENTIAL_OPTIONS, given, owner)
    if cfg["cap"] < cfg["base"]:
        raise ConfigError(
            "cap", cap, f"a finite number of seconds > 0 and >= base ({base!r})", owner=owner
        )
    if cfg["jitter"] == "decorrelated" and cfg["base"] == 0.0:
        # It grows from base (sleep = uniform(base, 3 * sleep)), so from 0 it never grows.
        raise ConfigError(
            "base",
            base,
            "a finite number of seconds > 0 with jitter='decorrelated'",
            owner=owner,
        )
    return _Exponential(cfg["base"], cfg["factor"], cfg["cap"], cfg["jitter"], cfg["rng"])


#: The functions that make strategies: ``wait=backoff.exponential`` (not called) is a
#: mistake that Retry refuses at once, rather than at the first retry.
MAKERS = (constant, linear, exponential)
