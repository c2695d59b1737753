"""Pipeline: several policies as one, the first given outermost.

``Pipeline(Timeout(10), Retry(3), CircuitBreaker(), Timeout(2))`` is
``Timeout(10)(Retry(3)(CircuitBreaker()(Timeout(2)(fn))))`` with every form a single
policy has. The chain of wrappers is built once, when a function is decorated, so a
call costs what its policies cost and nothing more: no list walked, no object made.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from resilient._core.execution.drivers import Decorates, pop_block, push_block
from resilient._errors import ConfigError

__all__ = ["Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")


class Pipeline(Decorates):
    """``policies`` applied outermost-first, as one decorator, context manager or caller.

    A Pipeline inside a Pipeline is flattened. As ``with``/``async with`` every policy
    must support that form (a Retry does not: a block cannot run twice); the policies are
    entered outermost-first and left in reverse, each seeing what the inner ones raised.
    """

    def __init__(self, *policies: Decorates) -> None:
        flat: list[Decorates] = []
        for policy in policies:
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, Decorates):
                flat.append(policy)
            else:
                raise ConfigError(
                    "policies",
                    policy,
                    "resilient policies: CircuitBreaker, Retry, Timeout, Bulkhead, Fallback"
                    " or a Pipeline, outermost first",
                    owner="Pipeline",
                )
        if not flat:
            raise ConfigError("policies", (), "at least one policy", owner="Pipeline")
        self.policies: tuple[Decorates, ...] = tuple(flat)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.policies))})"

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        for policy in reversed(self.policies):
            fn = policy._wrap_sync(fn)
        return fn

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        wrapped: Callable[P, Awaitable[R]] = fn
        for policy in reversed(self.policies):
            wrapped = policy._wrap_async(wrapped)
        return _as_coroutine_function(wrapped)

    # -- context managers ---------------------------------------------------------------
    # A rejection while entering (an open breaker, a full bulkhead) leaves the policies
    # already entered, then propagates: no policy can skip a with-block's body, so not
    # even a Fallback can answer in its place.

    def __enter__(self) -> None:
        stack = ExitStack()
        try:
            for policy in self.policies:
                stack.enter_context(policy)  # type: ignore[arg-type]
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        push_block(self, stack)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack: ExitStack = pop_block(self)
        return bool(stack.__exit__(exc_type, exc, tb))

    async def __aenter__(self) -> None:
        stack = AsyncExitStack()
        try:
            for policy in self.policies:
                await stack.enter_async_context(policy)  # type: ignore[arg-type]
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        push_block(self, stack)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack: AsyncExitStack = pop_block(self)
        return bool(await stack.__aexit__(exc_type, exc, tb))


def _as_coroutine_function(
    fn: Callable[P, Awaitable[R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    return fn  # type: ignore[return-value]  # every policy's async wrapper is one
