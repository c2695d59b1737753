"""A ring of the last N objects, on the count window's technique: a counter numbers
each item, and slot ``j % N`` holds item j together with its number.

Appending is a counter increment and one slot store (``list[i] = v``), both atomic
under the GIL (primitives.py); no lock. A reader reads the counter, then the slots, and
keeps each item whose number says it belongs to the last N taken before the read, so an
append still in flight (numbered, not yet stored) is left out rather than shown as the
item it replaces. A breaker's history of transitions is one: it holds transitions only,
so a flood of calls never pushes them out.
"""

from __future__ import annotations

import math
import threading
from array import array
from typing import Generic, TypeVar

from resilient._core.state.primitives import LOCK_FREE, counter

__all__ = ["Ring", "Samples"]

T = TypeVar("T")


class Ring(Generic[T]):
    __slots__ = ("_count", "_slots", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._count = counter()
        self._slots: list[tuple[int, T] | None] = [None] * size

    def append(self, item: T) -> None:
        j = self._count.incr()
        self._slots[j % self.size] = (j, item)

    def items(self) -> list[T]:
        """The last ``size`` items appended, oldest first."""
        end = self._count.value
        start = max(0, end - self.size)
        found = [slot for slot in list(self._slots) if slot is not None and start <= slot[0] < end]
        found.sort(key=lambda slot: slot[0])
        return [item for _, item in found]

    def clear(self) -> None:
        self._count = counter()
        self._slots = [None] * self.size

    def __len__(self) -> int:
        return min(self._count.value, self.size)


class Samples:
    """The last N numbers recorded (a hedge's latencies), for a quantile of them.

    Recording is a counter increment and one store into a slot of an ``array('d')``
    (``j % N``), O(1) and lock-free under the GIL (primitives.py: ``array[i] = v``); a
    locked build takes a small lock for the two. A quantile sorts a copy of the slots,
    O(N log N): its user caches it and asks again only every so many records. A record
    in flight (numbered, not stored yet) leaves the value it replaces in its slot for a
    moment, which a quantile may read: an estimate of recent latencies, never a count.
    """

    __slots__ = ("_count", "_lock", "_slots", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._count = counter()
        self._slots = array("d", bytes(8 * size))
        self._lock = None if LOCK_FREE else threading.Lock()

    def record(self, value: float) -> int:
        """Keep ``value``; how many values were recorded so far, this one included."""
        if self._lock is None:
            j = self._count.incr()
            self._slots[j % self.size] = value
            return j + 1
        with self._lock:
            j = self._count.incr()
            self._slots[j % self.size] = value
        return j + 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q < 1, nearest rank) of the values held; None if none."""
        n = len(self)
        if n == 0:
            return None
        ordered = sorted(self._slots[:n])  # (before the ring is full, the first n slots)
        rank = min(n, max(1, math.ceil(q * n)))
        return ordered[rank - 1]

    def __len__(self) -> int:
        return min(self._count.value, self.size)
