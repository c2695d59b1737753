"""resilient: circuit breakers and friends for sync and async Python.

Layout: ``_core/`` is self-contained (clock, lock-free windows, declared options,
deadlines, cancellation, worker threads, and the adapter that gives every policy its
decorator, context-manager and call forms) and imports no policy. Each policy is one
private module over that core (``_breaker.py``, ``_retry.py``, ``_budget.py``,
``_fallback.py``, ``_timeout.py``, ``_bulkhead.py``), and ``_pipeline.py`` composes them.
Errors live in ``_errors.py``. Users import only what this module re-exports, plus the
public ``resilient.backoff`` and ``resilient.testing`` modules.
"""

from importlib import metadata as _metadata

from resilient._breaker import BreakerMetrics, CircuitBreaker, State, StateChange
from resilient._budget import RetryBudget
from resilient._bulkhead import Bulkhead, BulkheadMetrics
from resilient._core.configuration.registry import registry, reload
from resilient._core.execution.deadline import deadline, remaining
from resilient._core.state.clock import Clock, MonotonicClock, SystemClock
from resilient._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    ConfigWarning,
    RejectedError,
    ResilienceError,
    TimeoutExpired,
    UsageError,
)
from resilient._fallback import Fallback
from resilient._pipeline import Pipeline
from resilient._retry import Attempt, Retry
from resilient._timeout import Timeout, TimeoutMetrics, WorkersExhaustedError

try:
    __version__ = _metadata.version("resilient")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
    "MonotonicClock",
    "Pipeline",
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
    "deadline",
    "registry",
    "reload",
    "remaining",
]

# Reprs and docs say resilient.X, not resilient._breaker.X.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__"):
        _obj.__module__ = __name__
del _name, _obj
