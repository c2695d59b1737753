"""What decorating keeps: names, docs, signatures, coroutine-ness, method binding, pickling."""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio
import pytest

from resilient import CircuitBreaker, CircuitOpenError, State

module_breaker = CircuitBreaker("module")


@module_breaker
def square(x: int, *, offset: int = 0) -> int:
    """Square x, then add offset."""
    return x * x + offset


@module_breaker
async def fetch(url: str, timeout: float = 1.0) -> str:
    """Fetch url."""
    await anyio.lowlevel.checkpoint()
    return url


def test_decorated_function_keeps_its_identity() -> None:
    assert square.__name__ == "square"
    assert square.__qualname__ == "square"
    assert square.__doc__ == "Square x, then add offset."
    assert square.__module__ == __name__
    assert inspect.signature(square) == inspect.signature(square.__wrapped__)  # type: ignore[attr-defined]
    assert str(inspect.signature(square)) == "(x: 'int', *, offset: 'int' = 0) -> 'int'"
    assert square(3, offset=1) == 10


def test_async_function_stays_a_coroutine_function() -> None:
    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.iscoroutinefunction(fetch)
    assert not inspect.iscoroutinefunction(square)
    assert fetch.__name__ == "fetch"
    assert "timeout" in inspect.signature(fetch).parameters
    assert anyio.run(fetch, "u") == "u"


def test_partial_and_callable_objects_of_async_functions_get_async_wrappers() -> None:
    class Handler:
        async def __call__(self, x: int) -> int:
            return x

    b = CircuitBreaker()
    assert inspect.iscoroutinefunction(b(Handler()))
    assert inspect.iscoroutinefunction(b(functools.partial(fetch, "u")))
    assert anyio.run(b(Handler()), 4) == 4


def test_decorated_module_function_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(square)) is square
    assert pickle.loads(pickle.dumps(fetch)) is fetch


def test_decorated_function_runs_in_a_process_pool() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert list(pool.map(square, [1, 2, 3])) == [1, 4, 9]


breaker = CircuitBreaker("methods", min_calls=1, window_size=1)


class Service:
    def __init__(self) -> None:
        self.calls = 0

    @breaker
    def method(self, x: int) -> tuple[Service, int]:
        self.calls += 1
        return self, x

    @breaker
    async def amethod(self, x: int) -> tuple[Service, int]:
        return self, x

    @breaker
    @classmethod
    def cm_outer(cls, x: int) -> tuple[type, int]:
        return cls, x

    @classmethod
    @breaker
    def cm_inner(cls, x: int) -> tuple[type, int]:
        return cls, x

    @breaker
    @staticmethod
    def sm_outer(x: int) -> int:
        return x

    @staticmethod
    @breaker
    def sm_inner(x: int) -> int:
        return x

    @breaker
    @classmethod
    async def acm(cls, x: int) -> tuple[type, int]:
        return cls, x


class Sub(Service):
    pass


@pytest.mark.parametrize("name", ["cm_outer", "cm_inner"])
def test_classmethods_in_either_order(name: str) -> None:
    assert getattr(Sub, name)(1) == (Sub, 1)
    assert getattr(Sub(), name)(2) == (Sub, 2)


@pytest.mark.parametrize("name", ["sm_outer", "sm_inner"])
def test_staticmethods_in_either_order(name: str) -> None:
    assert getattr(Service, name)(1) == 1
    assert getattr(Service(), name)(2) == 2


def test_methods_bind_and_go_through_the_breaker() -> None:
    s = Service()
    assert s.method(1) == (s, 1)
    assert anyio.run(s.amethod, 2) == (s, 2)
    assert anyio.run(Sub.acm, 3) == (Sub, 3)
    assert inspect.iscoroutinefunction(Service.amethod)
    assert list(inspect.signature(s.method).parameters) == ["x"]
    breaker.force_open()
    try:
        with pytest.raises(CircuitOpenError):
            s.method(1)
        with pytest.raises(CircuitOpenError):
            Service.cm_outer(1)
        with pytest.raises(CircuitOpenError):
            Service.sm_inner(1)
        assert s.calls == 1
    finally:
        breaker.reset()


def test_generators_are_refused_with_a_clear_error() -> None:
    def gen() -> Any:
        yield 1

    async def agen() -> Any:
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="generator"):
            CircuitBreaker()(fn)


def test_non_callables_are_refused() -> None:
    with pytest.raises(TypeError, match="guards callables"):
        CircuitBreaker()(42)  # type: ignore[call-overload]


def test_call_forms_pass_arguments_through() -> None:
    b = CircuitBreaker()
    assert b.call(square, 3, offset=2) == 11
    assert anyio.run(functools.partial(b.call_async, fetch, "x", timeout=2.0)) == "x"


def test_nested_with_blocks_on_one_breaker() -> None:
    b = CircuitBreaker(min_calls=4, window_size=10, failure_rate=0.25)
    with b, b:
        pass

    def inner_then_fail() -> None:
        with b:
            with b:
                pass
            raise ConnectionError

    with pytest.raises(ConnectionError):
        inner_then_fail()
    m = b.metrics
    assert (m.calls, m.failures, b.state) == (4, 1, State.OPEN)


def test_exit_without_enter_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        CircuitBreaker().__exit__(None, None, None)


def test_with_blocks_in_concurrent_tasks_keep_their_own_tokens() -> None:
    b = CircuitBreaker(min_calls=100, window_size=100)

    async def one(i: int) -> None:
        async with b:
            await anyio.sleep(0.001 * (i % 3))
            if i % 2:
                raise ConnectionError

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(guarded, i)

    async def guarded(i: int) -> None:
        try:
            await one(i)
        except ConnectionError:
            pass

    anyio.run(main)
    assert (b.metrics.calls, b.metrics.failures) == (20, 10)


def test_call_refuses_async_functions_and_generators() -> None:
    b = CircuitBreaker()
    with pytest.raises(TypeError, match="call_async"):
        b.call(fetch, "u")  # type: ignore[arg-type]

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        b.call(gen)
    assert b.metrics.calls == 0


def test_a_class_with_an_async_call_stays_a_sync_factory() -> None:
    @CircuitBreaker()
    class Handler:
        async def __call__(self) -> int:
            return 1

    assert not inspect.iscoroutinefunction(Handler)
    assert isinstance(Handler(), Handler.__wrapped__)  # type: ignore[attr-defined]


def test_with_blocks_do_not_grow_the_context() -> None:
    import contextvars

    before = len(contextvars.copy_context())
    for _ in range(100):
        with CircuitBreaker():
            pass
    assert len(contextvars.copy_context()) <= before + 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_call_async_with_a_sync_function_is_a_usage_error(backend: str) -> None:
    """Not counted by a breaker, not retried, not replaced by a fallback."""
    from resilient import Fallback, Retry, UsageError

    calls = []

    def sync() -> int:
        calls.append(1)
        return 42

    async def awaitable() -> int:
        return 7

    b = CircuitBreaker(min_calls=1, window_size=1)
    for policy in (b, Retry(3), Fallback(0)):
        with pytest.raises(UsageError, match="cannot be awaited"):
            anyio.run(policy.call_async, sync, backend=backend)
        # a plain function that returns an awaitable is fine
        assert anyio.run(policy.call_async, lambda: awaitable(), backend=backend) == 7
    assert len(calls) == 3  # once per policy: never retried
    assert b.state is State.CLOSED
    assert b.metrics.failures == 0
