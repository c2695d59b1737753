"""Checked by mypy --strict, never run: the injectors keep a decorated callable's type,
and take what they inject in the shapes their docs give."""

from __future__ import annotations

from typing_extensions import assert_type

from resilient import InjectFault, InjectLatency, InjectResult, Pipeline, Retry
from resilient.testing import ManualClock

fault = InjectFault(ConnectionError, rate=0.1, seed=1, name="typing")
made = InjectFault(factory=lambda: TimeoutError("slow"))
instance = InjectFault(ConnectionError("down"), enabled=True)
latency = InjectLatency("250ms", rate=0.5, clock=ManualClock())
result = InjectResult([], rate=0.2)
fresh = InjectResult(factory=dict)


@fault
def fetch(key: str) -> bytes:
    return key.encode()


@latency
async def afetch(key: str) -> bytes:
    return key.encode()


@Pipeline(Retry(3), result)
def listing(page: int) -> list[int]:
    return [page]


assert_type(fetch("a"), bytes)
assert_type(listing(1), list[int])


async def main() -> None:
    assert_type(await afetch("a"), bytes)
    assert_type(await made.call_async(afetch, "b"), bytes)
    assert_type(instance.call(fetch, "c"), bytes)
    async with latency:
        pass
    with fault:
        pass
    assert_type(fresh.enabled, bool)
    assert_type(latency.seconds, float)
    assert_type(fault.injected, int)
