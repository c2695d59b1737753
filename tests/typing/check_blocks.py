"""Checked by mypy --strict, never run: a return inside a guard's or a Timeout's block
needs no other (neither swallows the exception)."""

from __future__ import annotations

from resilient import Bulkhead, CircuitBreaker, RateLimiter, Timeout

breaker = CircuitBreaker()
bulkhead = Bulkhead(2)


async def a() -> int:
    async with breaker:
        return 1


async def b() -> int:
    async with bulkhead:
        return 1


def c() -> int:
    with Timeout(1):
        return 1


async def d() -> int:
    async with Timeout(1):
        return 1


def e() -> int:
    with breaker:
        return 1


async def g() -> int:
    async with RateLimiter(1):
        return 1
