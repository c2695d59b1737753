"""Checked by mypy --strict, never run: decorated callables keep their types."""

from __future__ import annotations

from typing_extensions import assert_type

from resilient import CircuitBreaker

breaker = CircuitBreaker("typing")
timed = CircuitBreaker("t", window_type="time", window_size=0.5, slow_call_duration=0.1)


class Ticks:
    def monotonic(self) -> float:
        return 0.0


ticking = CircuitBreaker(clock=Ticks())


@breaker
def add(a: int, b: int = 0) -> int:
    return a + b


@breaker
async def fetch(url: str) -> bytes:
    return url.encode()


class Client:
    @breaker
    def get(self, path: str) -> str:
        return path

    @classmethod
    @breaker
    def build(cls, name: str) -> Client:
        return cls()

    @breaker
    @staticmethod
    def version() -> int:
        return 1


async def use() -> None:
    assert_type(add(1, b=2), int)
    assert_type(await fetch("x"), bytes)
    assert_type(Client().get("/"), str)
    assert_type(Client.build("n"), Client)
    assert_type(Client.version(), int)
    assert_type(breaker.call(add, 1, 2), int)
    assert_type(await breaker.call_async(fetch, "u"), bytes)
    add("1")  # type: ignore[arg-type]
    breaker.call(add, "1")  # type: ignore[arg-type]
    with breaker:
        pass
    async with breaker:
        pass
