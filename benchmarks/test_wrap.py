"""What ``wrap()`` adds to a guarded call: the proxy's read of the method, per call.

Rows: a bare method call; the method guarded once by ``breaker(client.get)`` (the floor:
a proxy can only add to it); the same through ``wrap(client, breaker).get`` (the read
finds the guarded method in the proxy's cache, after checking it is still the client's
method); and ``breaker(client.get)(1)``, decorating on every call, which is what a
proxy that cached nothing would cost. Then an attribute read: bare, through wrap(), and
through a plain ``wrapt.ObjectProxy``. A round is ``CALLS`` calls, as in test_sync.py.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import pytest
import wrapt

from resilient import CircuitBreaker, wrap

from ._subjects import Loop, calls

CALLS = 1000


class Client:
    def __init__(self) -> None:
        self.base_url = "https://api.test"

    def get(self, x: int) -> int:
        return x


def method_of(proxy: Any) -> Loop:
    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = proxy.get(1)
        return result

    return loop


def decorated_per_call(client: Client, breaker: CircuitBreaker) -> Loop:
    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = breaker(client.get)(1)
        return result

    return loop


def attribute_of(obj: Any) -> Loop:
    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = len(obj.base_url)
        return result

    return loop


client = Client()
breaker = CircuitBreaker()

CALL_SUBJECTS: dict[str, Loop] = {
    "bare method": calls(client.get),
    "breaker(client.get), once": calls(breaker(client.get)),
    "wrap(client, breaker).get": method_of(wrap(client, breaker)),
    "breaker(client.get), each call": decorated_per_call(client, breaker),
}

ATTRIBUTE_SUBJECTS: dict[str, Loop] = {
    "bare": attribute_of(client),
    "wrap()": attribute_of(wrap(client, breaker)),
    "wrapt.ObjectProxy": attribute_of(wrapt.ObjectProxy(client)),
}


@pytest.mark.benchmark(group="wrap: a guarded method call")
@pytest.mark.parametrize("name", list(CALL_SUBJECTS))
def test_wrap_method_call(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare method")
    assert benchmark(CALL_SUBJECTS[name], CALLS) == 1


@pytest.mark.benchmark(group="wrap: an attribute read")
@pytest.mark.parametrize("name", list(ATTRIBUTE_SUBJECTS))
def test_wrap_attribute_read(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "bare")
    assert benchmark(ATTRIBUTE_SUBJECTS[name], CALLS) == len("https://api.test")
