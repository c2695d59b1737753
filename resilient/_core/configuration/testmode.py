"""Global state department: the one process-wide switch, for test suites.

``resilient.testing.set_testing()`` and the pytest plugin's ``resilient_testing``
fixture and marker flip it. While ``current().enabled``, a policy that would wait for
time to pass (a retry's backoff, a rate limiter's wait for its turn) waits zero seconds
instead, and a retry stops after ``current().attempts`` attempts (if not None). A wait
for another call to finish (a bulkhead's queue) is no such wait, and injected latency
(InjectLatency) is not skipped: it is the fault the test asked for. A
policy reads it only off its happy path (when it is about to wait), so it costs nothing
in production; the mode is swapped whole, so one read gives a consistent answer.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TestMode", "current", "replace"]


class TestMode(NamedTuple):
    """Frozen, swapped whole: a reader sees the old or the new mode, never a mix."""

    enabled: bool = False
    attempts: int | None = None  # cap on a retry's attempts while enabled


_mode = TestMode()


def current() -> TestMode:
    return _mode


def replace(mode: TestMode) -> TestMode:
    """Install ``mode``; return the one it replaces."""
    global _mode
    old, _mode = _mode, mode
    return old
