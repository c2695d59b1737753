"""Objects that environment variables name by import path in test_env.py and test_registry.py.

``RESILIENT_X_BREAKER_CLOCK=tests._envtargets:clock`` and the like resolve to these. Tests
that need a fresh object (a clock at zero, an empty budget) monkeypatch the attribute
before making the policy.
"""

from __future__ import annotations

import threading
from typing import Any

from resilient import RetryBudget
from resilient.backoff import constant
from resilient.testing import ManualClock

clock = ManualClock()
budget = RetryBudget(ratio=0.5, min_per_second=1.0, window=5.0, clock=ManualClock())
stingy_budget = RetryBudget(ratio=0.01, min_per_second=0.0, window=5.0, clock=ManualClock())
quarter_second = constant(0.25)
local_a = threading.local()
local_b = threading.local()
not_a_clock = object()


def is_error_result(result: object) -> bool:
    return result == "error"


def is_none(result: object) -> bool:
    return result is None


def open_for(times_opened: int) -> float:
    return 7.0 * times_opened


def wait_none(attempt: int, exc: BaseException | None) -> float:
    return 0.0


def stop_after_two(state: Any) -> bool:
    return bool(state.attempt_number >= 2)


# Tagging predicates and waits for the reload-atomicity tests: each one notes on the
# exception ("seen", a list shared by one call's attempts) which configuration asked.


def _tag(exc: BaseException | None, tag: str) -> None:
    seen = getattr(exc, "seen", None)
    if seen is not None:
        seen.append(tag)


def retry_on_a(exc: BaseException) -> bool:
    _tag(exc, "a")
    return True


def retry_on_b(exc: BaseException) -> bool:
    _tag(exc, "b")
    return True


def wait_a(attempt: int, exc: BaseException | None) -> float:
    _tag(exc, "a")
    return 0.0


def wait_b(attempt: int, exc: BaseException | None) -> float:
    _tag(exc, "b")
    return 0.0


def ignore_a(exc: BaseException) -> bool:
    _tag(exc, "a")
    return False


def ignore_b(exc: BaseException) -> bool:
    _tag(exc, "b")
    return False


def record_a(exc: BaseException) -> bool:
    _tag(exc, "a")
    return False  # never a failure: the breaker stays CLOSED and its window counts all


def record_b(exc: BaseException) -> bool:
    _tag(exc, "b")
    return False


class Tagged(Exception):
    """An exception that carries the list its policies' predicates write their tags to."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__("tagged")
        self.seen = seen


class _OnlyMonotonic:
    """A clock a breaker accepts but a Retry does not (it cannot sleep)."""

    def monotonic(self) -> float:
        return 0.0


monotonic_only = _OnlyMonotonic()
