"""Sliding windows of call outcomes, recorded without a lock.

Two kinds share one interface (``record(outcome, now)`` and ``tally(now)``):

* :class:`CountWindow` keeps the last N outcomes in a ring: a ``collections.deque``
  with ``maxlen=N``, which CPython implements as a ring of preallocated 64-slot blocks.
  Recording is one ``deque.append``: a single C call that stores the outcome and evicts
  the oldest, which the GIL never interrupts half-way, so no record is lost or doubled.
* :class:`TimeWindow` keeps the last N seconds in buckets of N/20 seconds. Each bucket
  holds one ``itertools.count`` per outcome; recording is one ``next()`` on it. A new
  bucket is published with ``dict.setdefault``, which is atomic for int keys, so two
  threads that race to open the same bucket agree on one object.

Reading (``tally``) is O(N) in slots or buckets, but the breaker asks for it only when a
rate may have crossed its threshold (a failure, a slow call, a new time bucket), never
on an ordinary success, so the happy path stays O(1).

On a free-threaded build (``sys._is_gil_enabled()`` false) these single operations are no
longer guaranteed atomic, so :func:`count_window` and :func:`time_window` hand out the
locked variants instead, behind the same interface. docs/architecture.md has the detail.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = [
    "FAILURE",
    "SLOW_FAILURE",
    "SLOW_SUCCESS",
    "SUCCESS",
    "CountWindow",
    "Tally",
    "TimeWindow",
    "Window",
    "count_value",
    "count_window",
    "time_window",
]

# Outcome codes, small ints so that a window's snapshot is a bytes object to count in.
SUCCESS = 1
FAILURE = 2
SLOW_SUCCESS = 3
SLOW_FAILURE = 4

#: How many buckets a time window is split into: it slides in steps of 1/20 of its length.
TIME_BUCKETS = 20


class Tally(NamedTuple):
    """What a window holds right now."""

    calls: int
    failures: int
    slow: int


class Window(Protocol):
    def record(self, outcome: int, now: float) -> bool | None:
        """Record an outcome; true if that slid old outcomes out of a time window."""
        ...

    def tally(self, now: float) -> Tally: ...


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def count_value(counter: itertools.count[int]) -> int:
    # itertools.count exposes its value only through repr ("count(42)"); __reduce__ is
    # deprecated since 3.12 and gone in 3.14. Reads happen off the happy path.
    return int(repr(counter)[6:-1])


class CountWindow:
    """The last ``size`` outcomes, in a ring (``collections.deque`` with ``maxlen``).

    ``append`` is the deque's own C method: recording a success from the breaker's happy
    path costs one C call and no Python frame.
    """

    __slots__ = ("_ring", "append")

    def __init__(self, size: int) -> None:
        self._ring: deque[int] = deque(maxlen=size)
        self.append: Callable[[int], None] = self._ring.append

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def outcomes(self) -> bytes:
        """The outcomes held, oldest first (to carry them into a window of another size)."""
        return bytes(self._ring)

    def record(self, outcome: int, now: float = 0.0) -> None:
        self.append(outcome)

    def tally(self, now: float = 0.0) -> Tally:
        ring = bytes(self._ring)  # one C-level pass: a consistent snapshot under the GIL
        slow_success = ring.count(SLOW_SUCCESS)
        slow_failure = ring.count(SLOW_FAILURE)
        return Tally(
            calls=len(ring),
            failures=ring.count(FAILURE) + slow_failure,
            slow=slow_success + slow_failure,
        )


class _Bucket:
    __slots__ = ("counters", "incs")

    def __init__(self) -> None:
        # Index = outcome code; slot 0 is never recorded to.
        self.counters = tuple(itertools.count() for _ in range(SLOW_FAILURE + 1))
        self.incs = tuple(c.__next__ for c in self.counters)

    def values(self) -> tuple[int, int, int, int, int]:
        s, f, ss, sf = (count_value(c) for c in self.counters[1:])
        return (0, s, f, ss, sf)


class TimeWindow:
    """The outcomes of the last ``seconds`` seconds, in :data:`TIME_BUCKETS` buckets."""

    __slots__ = ("_buckets", "_span", "_width", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._width = seconds / TIME_BUCKETS
        self._span = TIME_BUCKETS
        self._buckets: dict[int, _Bucket] = {}

    def _epoch(self, now: float) -> int:
        return math.floor(now / self._width)

    def record(self, outcome: int, now: float) -> bool:
        epoch = math.floor(now / self._width)  # self._epoch(), inlined: every call records
        bucket = self._buckets.get(epoch)
        if bucket is None:
            self._open(epoch).incs[outcome]()
            return True
        bucket.incs[outcome]()
        return False

    def _open(self, epoch: int) -> _Bucket:
        bucket = self._buckets.setdefault(epoch, _Bucket())
        oldest = epoch - self._span
        for key in list(self._buckets):  # list(dict) is one C-level copy
            if key <= oldest:
                self._buckets.pop(key, None)
        return bucket

    def tally(self, now: float) -> Tally:
        current = self._epoch(now)
        oldest = current - self._span
        s = f = ss = sf = 0
        for epoch, bucket in list(self._buckets.items()):
            if epoch <= oldest or epoch > current:
                continue
            # Every bucket is read live: a caller that took ``now`` before a stall may still
            # record into an old bucket, so no bucket is ever final while in the window.
            values = bucket.values()
            s += values[SUCCESS]
            f += values[FAILURE]
            ss += values[SLOW_SUCCESS]
            sf += values[SLOW_FAILURE]
        return Tally(calls=s + f + ss + sf, failures=f + sf, slow=ss + sf)


class _LockedCountWindow(CountWindow):
    """CountWindow for free-threaded builds, where a slot store is not atomic."""

    __slots__ = ("_lock",)

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._lock = threading.Lock()
        self.append = self._append_locked

    def _append_locked(self, outcome: int) -> None:
        with self._lock:
            self._ring.append(outcome)

    def tally(self, now: float = 0.0) -> Tally:
        with self._lock:
            return super().tally(now)


class _LockedTimeWindow(TimeWindow):
    """TimeWindow for free-threaded builds, where count() and dict ops may interleave."""

    __slots__ = ("_lock",)

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self._lock = threading.Lock()

    def record(self, outcome: int, now: float) -> bool:
        with self._lock:
            return super().record(outcome, now)

    def tally(self, now: float) -> Tally:
        with self._lock:
            return super().tally(now)


def count_window(size: int) -> CountWindow:
    """A count window, lock-free where the interpreter makes that exact."""
    return CountWindow(size) if _gil_enabled() else _LockedCountWindow(size)


def time_window(seconds: float) -> TimeWindow:
    """A time window, lock-free where the interpreter makes that exact."""
    return TimeWindow(seconds) if _gil_enabled() else _LockedTimeWindow(seconds)
