"""Global state department: the one process-wide switch, for test suites.

``resilient.testing.set_testing()`` flips it so that policies that wait (retry backoff)
do not, and retries stop after a given number of attempts. Policies read it only off
their happy path (when they are about to wait), so it costs nothing in production.
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
