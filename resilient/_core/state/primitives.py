"""Concurrency primitives: the one place that decides between lock-free and locked code.

**What the lock-free code relies on.** Under the GIL the interpreter hands the processor to
another thread only between bytecodes. A call of a C function on a built-in object that
neither calls back into Python code, nor releases the GIL, nor allocates an object the
cyclic garbage collector tracks (a collection could run a finalizer written in Python)
therefore runs whole, as one step, whatever ``sys.setswitchinterval`` says. The state core
relies on these calls, and on no others:

- ``next()`` on a ``range`` iterator (:func:`ticks`): the next number, to exactly one caller;
- ``next()`` on a ``zip`` of such iterators: one number from each, taken together (zip
  reuses its result tuple, so nothing is allocated between the two);
- ``list(map(methodcaller("__length_hint__"), iterators))`` (:func:`read_ticks`): how many
  numbers each has handed out, all at one instant (no bytecode runs between the reads,
  and ``methodcaller`` calls the method without making a bound-method object);
- one item stored into an ``array.array`` (``a[i] = v``): a reader sees the old or the new;
- ``deque.append``/``pop``/``popleft``, ``dict.setdefault``/``pop``/``get``, ``list(dict)``;
- ``random.Random.random()`` (:func:`draws`): the next number of a seeded sequence, to
  exactly one caller (the Mersenne Twister's step is C; the float it makes is untracked).

A ``range`` iterator is a counter whose value can be read without a data race (unlike
``itertools.count``, whose value only its ``repr`` tells); ``sys.maxsize`` numbers will not
run out.

**Free-threaded builds** (``sys._is_gil_enabled()`` false) run threads truly in parallel,
and none of the above is promised there operation by operation; two stores to two
different objects are not even seen in the same order by every thread. So there every
structure of the core takes its locked variant: the same interface, a small lock held for
a few bytecodes, never while user code runs. :data:`LOCK_FREE` says which is in force.

``RESILIENT_PRIMITIVES=locked`` (read once, when this module is imported) forces the
locked variants on any build, so the code a free-threaded build runs is tested here.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from operator import methodcaller
from typing import Any

__all__ = [
    "LOCK_FREE",
    "SWITCH",
    "TOP",
    "Counter",
    "LockedCounter",
    "counter",
    "draws",
    "left_of",
    "read_ticks",
    "ticks",
]

#: The environment variable that forces the locked variants (value ``locked``).
SWITCH = "RESILIENT_PRIMITIVES"
#: How many numbers a counter from :func:`ticks` holds: more than will ever be taken.
TOP = sys.maxsize


def _lock_free() -> bool:
    choice = os.environ.get(SWITCH, "auto").strip().lower()
    if choice not in ("auto", "locked"):
        from resilient._errors import ConfigError

        raise ConfigError(SWITCH, choice, "'auto' or 'locked'")
    check = getattr(sys, "_is_gil_enabled", None)
    gil = True if check is None else bool(check())
    return gil and choice == "auto"


#: True where the GIL makes the operations above atomic and no switch asks for locks.
LOCK_FREE: bool = _lock_free()

_LEFT = methodcaller("__length_hint__")


def ticks() -> Iterator[int]:
    """A counter: ``next()`` hands out 0, 1, 2, ... each number to exactly one caller."""
    return iter(range(TOP))


def read_ticks(counters: Sequence[Iterator[int]]) -> list[int]:
    """How many numbers each of ``counters`` (from :func:`ticks`) has handed out, at one
    instant: one C-level pass under the GIL."""
    left = list(map(_LEFT, counters))  # list(), not a comprehension: no bytecode between
    return list(map(TOP.__sub__, left))


def left_of(counter: Iterator[int]) -> Callable[[], int]:
    """How many numbers ``counter`` (from :func:`ticks`) has yet to hand out, as a bound
    method: it has handed out ``TOP - left()``. Reads of several counters made this way
    are of one instant if a counter that advances whenever any of them does reads the
    same before and after them (a window's count of every outcome does)."""
    return counter.__length_hint__  # type: ignore[attr-defined,no-any-return]


class Counter:
    """A counter that only grows: ``incr()`` is one C call, ``value`` is exact."""

    __slots__ = ("_left", "incr")

    def __init__(self) -> None:
        numbers = ticks()
        self.incr = numbers.__next__
        self._left = left_of(numbers)

    @property
    def value(self) -> int:
        return TOP - self._left()


class LockedCounter:
    """:class:`Counter` for builds without a GIL: the increment takes a lock."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def incr(self) -> int:
        with self._lock:
            value = self._value
            self._value = value + 1
        return value

    @property
    def value(self) -> int:
        return self._value


def counter() -> Counter | LockedCounter:
    """A counter of the variant in force."""
    return Counter() if LOCK_FREE else LockedCounter()


def draws(rng: Any) -> Callable[[], float]:
    """The next number from ``rng`` (a ``random.Random``) for each caller, each number
    to exactly one: under the GIL its own C method; else the same under a lock."""
    if LOCK_FREE:
        return rng.random  # type: ignore[no-any-return]
    lock = threading.Lock()
    draw = rng.random

    def locked() -> float:
        with lock:
            return draw()  # type: ignore[no-any-return]

    return locked
