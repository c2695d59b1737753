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

from typing import Generic, TypeVar

from resilient._core.state.primitives import counter

__all__ = ["Ring"]

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
