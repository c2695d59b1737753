"""Sliding windows of call outcomes: recorded without a lock, tallied in O(1) or O(buckets).

Two kinds share one interface, :class:`Window`:

* a **count window** holds the last N outcomes;
* a **time window** holds the outcomes of the last N seconds, in :data:`TIME_BUCKETS`
  buckets, so it slides in steps of N/20 seconds.

Each comes in two variants behind that interface, and :mod:`.primitives` picks one:

* **lock-free** (the GIL in force). The count window numbers every outcome from one
  counter: a success is nothing but taking its number, one C call. A failure or a slow
  call also takes a number of its own kind, in the same C call, and writes both into a
  ring of that kind (one array store). The window holds the outcomes numbered
  ``E - N .. E - 1``, where E is how many were numbered; so a kind's count is how many of
  its numbers were taken, less those of its ring that have fallen below ``E - N``, and a
  tally reads the counters at one instant and steps over the newly fallen (each outcome
  once: amortised O(1), whatever N is). The time window keeps a few counters per bucket
  and reads them all at one instant.
* **locked** (free-threaded builds, or ``RESILIENT_PRIMITIVES=locked``). The count window
  is a ring of N one-byte slots with running counts, each record a slot exchange under a
  small lock; the time window, buckets of plain ints under a lock.

Either way a tally is a state the window was in at one instant, and after every recording
thread has finished it counts exactly the outcomes held. docs/architecture.md has the
argument for each.
"""

from __future__ import annotations

import functools
import math
import threading
from array import array
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

from resilient._core.state.primitives import LOCK_FREE, TOP, left_of, read_ticks, ticks

__all__ = [
    "FAILURE",
    "SLOW_FAILURE",
    "SLOW_SUCCESS",
    "SUCCESS",
    "TIME_BUCKETS",
    "Tally",
    "Window",
    "count_window",
    "time_window",
]

# Outcome codes: small ints, so a slot is a byte and a code indexes a tuple.
SUCCESS = 1
FAILURE = 2
SLOW_SUCCESS = 3
SLOW_FAILURE = 4
_MARKED = (FAILURE, SLOW_SUCCESS, SLOW_FAILURE)  # the kinds a count window keeps a ring for

#: How many buckets a time window is split into: it slides in steps of 1/20 of its length.
TIME_BUCKETS = 20


class Tally(NamedTuple):
    """What a window held at one instant.

    ``stamp`` orders tallies of one window: a tally with a larger stamp saw a later state
    (it counts the outcomes recorded so far), so of two racing judges the later wins.
    """

    calls: int
    failures: int
    slow: int
    stamp: int = 0


class Window(Protocol):
    """Everything a policy uses of a window."""

    @property
    def kind(self) -> str:
        """``"count"`` or ``"time"``."""
        ...

    @property
    def length(self) -> float:
        """N outcomes or N seconds."""
        ...

    @property
    def records_slow(self) -> bool:
        """Whether it can record slow outcomes (every window but a lock-free count window
        made without: a breaker that does not time its calls never records one)."""
        ...

    def success(self, result: object = None, /) -> object:
        """Record a success in a count window (no clock needed; one C call where
        lock-free). ``result``, the call's, is ignored: a driver passes it."""
        ...

    def record(self, outcome: int, now: float) -> bool:
        """Record an outcome; true if a time window opened a new bucket (old outcomes may
        have slid out, so a rate may have risen even on a success)."""
        ...

    def tally(self, now: float) -> Tally: ...

    def outcomes(self) -> bytes:
        """The outcomes held, oldest first (to carry into a count window of another size)."""
        ...

    def after_fork(self) -> None:
        """In a forked child: a lock the parent's other threads may have held is new."""
        ...


#: Tally((calls, failures, slow, stamp)) without the Python-level __new__ of a NamedTuple:
#: a tally is made on every failure.
_new_tally: Callable[[tuple[int, int, int, int]], Tally] = functools.partial(tuple.__new__, Tally)


def _tally(calls: int, counts: list[int], stamp: int) -> Tally:
    """From the held counts of (SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE) by index."""
    slow_failure = counts[SLOW_FAILURE]
    return _new_tally(
        (calls, counts[FAILURE] + slow_failure, counts[SLOW_SUCCESS] + slow_failure, stamp)
    )


# -- count windows ------------------------------------------------------------------------

# A ring slot packs an outcome's number (modulo 2**39) above 24 bits of its kind-number, the
# tag, so a reader tells a slot already written for kind-number j from the one N earlier
# that a thread paused between taking j and writing it has left there (N < 2**24).
_TAG_BITS = 24
_TAG = (1 << _TAG_BITS) - 1
_SEQ = (1 << 39) - 1
_HALF = 1 << 38


class _Marks:
    """One non-success kind of a lock-free count window: its counter and its ring."""

    __slots__ = ("hint", "kinds", "left", "ring", "take")

    def __init__(self, numbers: Iterator[int], size: int) -> None:
        self.kinds = ticks()  # kind-numbers handed out
        self.left = left_of(self.kinds)
        self.take = zip(numbers, self.kinds, strict=False).__next__  # both numbers, in one C call
        self.ring = array("q", [-1]) * size
        self.hint = 0  # kind-numbers below it have fallen out (only ever a lower bound)


class _NoLock:
    __slots__ = ()

    def after_fork(self) -> None:
        """A lock-free window has no lock to renew."""


class _Relock:
    __slots__ = ()

    def after_fork(self) -> None:
        """A lock the parent's other threads may have held is replaced."""
        object.__setattr__(self, "_lock", threading.Lock())


class CountWindow(_NoLock):
    """The last ``size`` outcomes, lock-free (see the module docstring).

    ``slow``: whether it keeps rings for slow outcomes too (a breaker that times calls);
    one that does not refuses them, and reads one counter less per tally.
    """

    __slots__ = (
        "_counters",
        "_failures",
        "_marks",
        "_numbers",
        "_numbers_left",
        "_rings",
        "length",
        "records_slow",
        "size",
        "success",
    )

    kind = "count"

    def __init__(self, size: int, slow: bool = True) -> None:
        self.size = size
        self.length: float = size
        self.records_slow = slow
        self._numbers = ticks()
        # next(numbers[, ignored]): a builtin called through a partial, which takes the
        # call's result (and ignores it) when a driver records a plain success.
        self.success: Callable[..., object] = functools.partial(next, self._numbers)
        codes = _MARKED if slow else (FAILURE,)
        marks = {code: _Marks(self._numbers, size) for code in codes}
        self._marks = tuple(marks.get(code, _REFUSE) for code in range(SLOW_FAILURE + 1))
        self._rings = tuple(marks.items())  # (code, marks), in the order of _counters
        self._counters = (self._numbers, *(m.kinds for m in marks.values()))
        self._numbers_left = left_of(self._numbers)
        self._failures = None if slow else marks[FAILURE]  # the one ring, if only one

    def record(self, outcome: int, now: float = 0.0) -> bool:
        if outcome == SUCCESS:
            self._numbers.__next__()
            return False
        marks = self._marks[outcome]
        number, j = marks.take()
        marks.ring[j % self.size] = (number & _SEQ) << _TAG_BITS | (j & _TAG)
        return False

    def tally(self, now: float = 0.0) -> Tally:
        only = self._failures
        if only is not None:  # failures only: read two counters, without a list
            before = self._numbers_left()
            only_left = only.left()
            if self._numbers_left() == before:  # nothing recorded between: one instant
                numbered, size = TOP - before, self.size
                count = TOP - only_left
                held = count - _fallen(only, size, count, numbered - size) if count else 0
                return _new_tally((numbered if numbered < size else size, held, 0, numbered))
        taken = read_ticks(self._counters)  # the outcomes, then each kind's: one instant
        numbered = taken[0]
        size = self.size
        first = numbered - size  # the oldest number still held
        failures = slow = 0
        for (code, marks), kind_taken in zip(self._rings, taken[1:], strict=True):
            if not kind_taken:
                continue
            held = kind_taken - _fallen(marks, size, kind_taken, first)
            if code != SLOW_SUCCESS:
                failures += held
            if code != FAILURE:
                slow += held
        return _new_tally((numbered if numbered < size else size, failures, slow, numbered))

    def outcomes(self) -> bytes:
        taken = read_ticks(self._counters)
        numbered = taken[0]
        held = min(numbered, self.size)
        first = numbered - held
        out = bytearray([SUCCESS]) * held
        for (code, marks), kind_taken in zip(self._rings, taken[1:], strict=True):
            for j in range(max(0, kind_taken - self.size), kind_taken):
                slot = marks.ring[j % self.size]
                number = first + (((slot >> _TAG_BITS) - first) & _SEQ)
                if slot & _TAG == j & _TAG and first <= number < numbered:
                    out[number - first] = code
        return bytes(out)


def _fallen(marks: _Marks, size: int, kind_taken: int, first: int) -> int:
    """How many of a kind's first ``kind_taken`` outcomes are numbered below ``first``:
    step from the last answer over those that fell out since (each slot about once).

    Numbers grow with kind-numbers, so a written slot numbered below ``first`` proves
    every earlier one fallen, slots still in flight (taken, not yet written) included,
    and one at or above ``first`` proves every later one held. Only in-flight slots
    between the last of the one and the first of the other stay undecided, and count as
    held: at most one per thread paused mid-record.
    """
    ring = marks.ring
    j = fallen = max(marks.hint, kind_taken - size)  # older ones were overwritten: fallen
    while j < kind_taken:
        slot = ring[j % size]
        if slot & _TAG == j & _TAG:  # written (else in flight: the next written decides)
            if ((slot >> _TAG_BITS) - first) & _SEQ < _HALF:
                break  # numbered at or after first: held, and so is every later one
            fallen = j + 1
        j += 1
    if fallen > marks.hint:
        marks.hint = fallen  # a racing reader may store a smaller hint: that only costs steps
    return fallen


class _Refused:
    """Stands for the rings of slow outcomes in a count window that keeps none."""

    __slots__ = ()

    def take(self) -> tuple[int, int]:
        raise AssertionError("this count window was made without rings for slow outcomes")

    ring: array[int] = array("q")


_REFUSE: Any = _Refused()


class LockedCountWindow(_Relock):
    """The last ``size`` outcomes in a ring of one-byte slots with running counts; each
    record exchanges one slot under a lock (builds without a GIL)."""

    __slots__ = ("_counts", "_lock", "_next", "_ring", "length", "size", "success")

    kind = "count"
    records_slow = True

    def __init__(self, size: int) -> None:
        self.size = size
        self.length: float = size
        self._lock = threading.Lock()
        self._ring = bytearray(size)  # 0: an empty slot
        self._counts = [0, 0, 0, 0, 0]  # held per code; index 0 counts empty slots
        self._counts[0] = size
        self._next = 0  # outcomes recorded so far; the next goes to slot _next % size
        # record(SUCCESS[, the call's result in place of the unused now]): one frame.
        self.success: Callable[..., object] = functools.partial(self.record, SUCCESS)

    def record(self, outcome: int, now: object = 0.0) -> bool:
        with self._lock:
            at = self._next
            slot = at % self.size
            old = self._ring[slot]
            self._ring[slot] = outcome
            self._next = at + 1
            counts = self._counts
            counts[old] -= 1
            counts[outcome] += 1
        return False

    def tally(self, now: float = 0.0) -> Tally:
        with self._lock:
            counts = self._counts[:]
            numbered = self._next
        return _tally(self.size - counts[0], counts, numbered)

    def outcomes(self) -> bytes:
        with self._lock:
            start = self._next % self.size
            ring = self._ring[start:] + self._ring[:start]
        return bytes(ring).lstrip(b"\0")


# -- time windows -------------------------------------------------------------------------


class _Bucket:
    """The counts of one slice of time: a counter per outcome code, each taken together
    with the window's count of every outcome (the stamp), in one C call."""

    __slots__ = ("counters", "takes")

    def __init__(self, everything: Iterator[int]) -> None:
        self.counters = tuple(ticks() for _ in _CODES)
        # Index = outcome code; slot 0 is never recorded to.
        self.takes: tuple[Callable[[], object], ...] = (
            _no_outcome,
            *(zip(everything, c, strict=False).__next__ for c in self.counters),
        )


def _no_outcome() -> None:
    raise AssertionError("outcome code 0 is never recorded")


_CODES = (SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE)


class TimeWindow(_NoLock):
    """The outcomes of the last ``seconds`` seconds, lock-free (see the module docstring)."""

    __slots__ = ("_buckets", "_everything", "_width", "length", "seconds")

    kind = "time"
    records_slow = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.length = seconds
        self._width = seconds / TIME_BUCKETS
        self._buckets: dict[int, _Bucket] = {}
        self._everything = ticks()  # every outcome ever recorded: the tallies' stamp

    def success(self, result: object = None, /) -> None:
        raise NotImplementedError("a time window records with the time: record()")

    def _epoch(self, now: float) -> int:
        return math.floor(now / self._width)

    def record(self, outcome: int, now: float) -> bool:
        epoch = math.floor(now / self._width)  # self._epoch(), inlined: every call records
        bucket = self._buckets.get(epoch)
        if bucket is None:
            self._open(epoch).takes[outcome]()
            return True
        bucket.takes[outcome]()
        return False

    def _open(self, epoch: int) -> _Bucket:
        bucket = self._buckets.setdefault(epoch, _Bucket(self._everything))
        oldest = epoch - TIME_BUCKETS
        for key in list(self._buckets):  # list(dict) is one C-level copy
            if key <= oldest:
                self._buckets.pop(key, None)
        return bucket

    def tally(self, now: float) -> Tally:
        current = self._epoch(now)
        oldest = current - TIME_BUCKETS
        while True:
            held = [(e, b) for e, b in list(self._buckets.items()) if oldest < e <= current]
            # Every bucket is read live, at one instant: a caller that read the clock
            # before a stall may still record into an old bucket, so none is ever final.
            counters = [self._everything]
            for _, bucket in held:
                counters.extend(bucket.counters)
            taken = read_ticks(counters)
            if [e for e, _ in held] == [e for e in list(self._buckets) if oldest < e <= current]:
                break  # no bucket came or went meanwhile: the read is of one instant
        counts = [0, 0, 0, 0, 0]
        for i in range(1, len(taken), 4):
            counts[SUCCESS] += taken[i]
            counts[FAILURE] += taken[i + 1]
            counts[SLOW_SUCCESS] += taken[i + 2]
            counts[SLOW_FAILURE] += taken[i + 3]
        return _tally(sum(counts), counts, taken[0])

    def outcomes(self) -> bytes:
        raise NotImplementedError("a time window cannot be carried into another")


class LockedTimeWindow(_Relock):
    """The time window's buckets as plain ints under a lock (builds without a GIL)."""

    __slots__ = ("_buckets", "_everything", "_lock", "_width", "length", "seconds")

    kind = "time"
    records_slow = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.length = seconds
        self._width = seconds / TIME_BUCKETS
        self._buckets: dict[int, list[int]] = {}
        self._everything = 0
        self._lock = threading.Lock()

    def success(self, result: object = None, /) -> None:
        raise NotImplementedError("a time window records with the time: record()")

    def record(self, outcome: int, now: float) -> bool:
        epoch = math.floor(now / self._width)
        with self._lock:
            self._everything += 1
            bucket = self._buckets.get(epoch)
            if bucket is not None:
                bucket[outcome] += 1
                return False
            self._buckets[epoch] = bucket = [0, 0, 0, 0, 0]
            bucket[outcome] += 1
            for key in [key for key in self._buckets if key <= epoch - TIME_BUCKETS]:
                del self._buckets[key]
            return True

    def tally(self, now: float) -> Tally:
        current = math.floor(now / self._width)
        counts = [0, 0, 0, 0, 0]
        with self._lock:
            for epoch, bucket in self._buckets.items():
                if current - TIME_BUCKETS < epoch <= current:
                    for code in _CODES:
                        counts[code] += bucket[code]
            stamp = self._everything
        return _tally(sum(counts), counts, stamp)

    def outcomes(self) -> bytes:
        raise NotImplementedError("a time window cannot be carried into another")


def count_window(size: int, slow: bool = True) -> CountWindow | LockedCountWindow:
    """A count window of the variant in force (``slow``: it will record slow outcomes)."""
    return CountWindow(size, slow) if LOCK_FREE else LockedCountWindow(size)


def time_window(seconds: float) -> TimeWindow | LockedTimeWindow:
    """A time window of the variant in force."""
    return TimeWindow(seconds) if LOCK_FREE else LockedTimeWindow(seconds)
