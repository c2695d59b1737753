"""What every benchmark wraps, and the loops that call it: one copy for every file."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any

Loop = Callable[[int], int]
AsyncFn = Callable[[int], Awaitable[int]]


def f(x: int) -> int:
    return x


async def af(x: int) -> int:
    return x


def wraps_passthrough(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The least any ``*args, **kwargs`` wrapper costs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def calls(fn: Callable[[int], int]) -> Loop:
    """``n`` calls of ``fn(1)``; returns the last result, for the smoke run to check."""

    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = fn(1)
        return result

    return loop


def call_form(policy: Any) -> Loop:
    """``n`` calls of ``policy.call(f, 1)``."""

    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = policy.call(f, 1)
        return result

    return loop


async def awaits(fn: AsyncFn, n: int) -> int:
    """``n`` awaits of ``fn(1)``; returns the last result, for the smoke run to check."""
    result = 0
    for _ in range(n):
        result = await fn(1)
    return result
