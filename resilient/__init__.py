"""resilient: circuit breakers and friends for sync and async Python.

Layout: ``_core/`` is self-contained (clock, lock-free windows, declared options,
deadlines, cancellation, worker threads, and the adapter that gives every policy its
decorator, context-manager and call forms) and imports no policy. Each policy is one
private module over that core (``_breaker.py``, ``_retry.py``, ``_budget.py``,
``_fallback.py``, ``_timeout.py``, ``_bulkhead.py``, ``_ratelimit.py``, ``_hedge.py``;
``_faults.py``, fault injection for tests), and ``_pipeline.py`` composes them.
``_wrap.py`` puts a client object behind policies; it needs wrapt, so :func:`wrap` here
imports it on first use. Errors live in ``_errors.py``. Users import only what this
module re-exports, plus the public ``resilient.backoff`` and ``resilient.testing``.
"""

import collections.abc as _abc
import typing as _typing

from resilient._breaker import BreakerMetrics, CircuitBreaker, State, StateChange
from resilient._budget import RetryBudget
from resilient._bulkhead import Bulkhead, BulkheadMetrics
from resilient._core.configuration import events as _events
from resilient._core.configuration import registry as _registry
from resilient._core.configuration.registry import registry, reload
from resilient._core.execution.deadline import deadline, remaining
from resilient._core.state.clock import Clock, MonotonicClock, SystemClock
from resilient._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    ConfigWarning,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    TimeoutExpired,
    UsageError,
)
from resilient._fallback import Fallback
from resilient._pipeline import Pipeline, Policy
from resilient._retry import Attempt, Retry
from resilient._timeout import Timeout, TimeoutMetrics, WorkersExhaustedError

if _typing.TYPE_CHECKING:  # imported on first use: see __getattr__
    from resilient._faults import InjectFault, InjectLatency, InjectResult
    from resilient._hedge import Hedge, HedgeMetrics
    from resilient._ratelimit import RateLimiter, RateLimiterMetrics

#: Policies whose modules load on first use, so that a program that never uses them does
#: not pay for them in ``import resilient`` (their variables are known all the same:
#: ``config.KINDS`` loads them when asked for every kind).
_LAZY = {
    "Hedge": "resilient._hedge",
    "HedgeMetrics": "resilient._hedge",
    "InjectFault": "resilient._faults",
    "InjectLatency": "resilient._faults",
    "InjectResult": "resilient._faults",
    "RateLimiter": "resilient._ratelimit",
    "RateLimiterMetrics": "resilient._ratelimit",
}

_Client = _typing.TypeVar("_Client")
_Listener = _typing.TypeVar("_Listener", bound=_abc.Callable[..., object])


def wrap(
    client: _Client,
    policy: Policy,
    *,
    methods: _abc.Iterable[str] | _abc.Mapping[str, Policy] | None = None,
    exclude: _abc.Iterable[str] = (),
) -> _Client:
    """``client`` behind a transparent proxy whose public methods run through ``policy``.

    ``policy`` is any policy or a Pipeline. ``methods`` (default: every public method
    the client's class defines, except ``close``/``aclose``) names the methods to guard,
    or maps names to policies of their own, the other methods keeping ``policy``;
    ``exclude`` names methods left unguarded. ``_private`` methods, dunders, properties
    and attributes are never guarded: they, assignment, ``isinstance``, ``repr`` and
    ``with``/``async with`` pass through (``as`` gives the proxy when the client's
    ``__enter__`` gives the client). An ``async def`` stays a coroutine function. The
    proxy has the client's static type, so completions still work. docs/clients.md has
    the rules, pagination included. Raises ConfigError for a name that is not a method.
    """
    from resilient._wrap import wrap as wrap_client  # wrapt only when used

    return wrap_client(client, policy, methods=methods, exclude=exclude)


def add_listener(listener: _Listener, *kinds: type) -> _Listener:
    """Call ``listener(event)`` with every event of every policy, live and future
    (``resilient.events``), or only those of the classes given; usable as a decorator.
    It runs as a policy's own listeners do: on the thread that caused the event, its
    errors logged once and never the call's.
    """
    _events.GLOBAL.add(listener, kinds)
    _registry.listening_changed()
    return listener


def remove_listener(listener: _abc.Callable[[_typing.Any], object]) -> None:
    """Stop calling a listener added with :func:`add_listener`; ValueError if it was not."""
    _events.GLOBAL.remove(listener)
    _registry.listening_changed()


def health(*, names: _abc.Iterable[str] | None = None) -> dict[str, _typing.Any]:
    """A JSON-able view of every live named policy (or of those called one of ``names``),
    for a readiness probe or a debug page: each one's state, window tally and rates,
    open-until as seconds from now, bulkhead slots in use and queued, and the tail of a
    breaker's history; ``status`` is "degraded" while a breaker refuses calls, and
    ``degraded`` names them."""
    from resilient._health import health as view

    found: dict[str, _typing.Any] = view(names)
    return found


#: The distribution's name on the package index ("resilient" there is another project).
_DISTRIBUTION = "resilient-toolkit"


def __getattr__(name: str) -> _typing.Any:
    """The lazily loaded policies (``_LAZY``), and ``__version__``, read from the
    installed metadata on first use: importlib.metadata costs more than the rest of
    ``import resilient`` together."""
    module = _LAZY.get(name)
    if module is not None:
        found = getattr(__import__(module, fromlist=[name]), name)
        found.__module__ = __name__
        globals()[name] = found
        return found
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        version = "0.0.0"
    globals()["__version__"] = version
    return version


__all__ = [
    "Attempt",
    "BreakerMetrics",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadMetrics",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConfigError",
    "ConfigWarning",
    "Fallback",
    "Hedge",
    "HedgeMetrics",
    "InjectFault",
    "InjectLatency",
    "InjectResult",
    "MonotonicClock",
    "Pipeline",
    "Policy",
    "RateLimitedError",
    "RateLimiter",
    "RateLimiterMetrics",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "State",
    "StateChange",
    "SystemClock",
    "Timeout",
    "TimeoutExpired",
    "TimeoutMetrics",
    "UsageError",
    "WorkersExhaustedError",
    "__version__",
    "add_listener",
    "deadline",
    "health",
    "registry",
    "reload",
    "remaining",
    "remove_listener",
    "wrap",
]

# Reprs and docs say resilient.X, not resilient._breaker.X.
for _name in __all__:
    _obj = globals().get(_name)  # (__version__ is not there yet: it comes on first use)
    if _obj is not None and hasattr(_obj, "__module__"):
        _obj.__module__ = __name__
del _name, _obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
