"""Fallback: when a call fails, answer with a value (or a handler's) instead of the error.

The last line of a pipeline: a cached page, an empty list, a default price. It catches
only ``Exception``s matching ``on`` (our own rejections included: an open breaker's
CircuitOpenError is the classic case); cancellation and interpreter exits pass through.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution.drivers import (
    CoroutineType,
    Decorates,
    is_async_callable,
    returned_coroutine,
)
from resilient._errors import ConfigError, UsageError

__all__ = ["Fallback"]

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()


class Fallback(Configured, Decorates):
    """Return ``value``, or ``handler(exc)``, when the call raises an exception matching ``on``.

    Give exactly one of ``value`` and ``handler``. A handler may be ``async def`` when it
    guards async code. As ``with fallback:`` the matching exception is swallowed (after
    the handler, if any, has seen it), since a block has no value to replace.
    ``RESILIENT_ENABLED=0`` switches it off like every policy: errors pass through.
    """

    KIND = "fallback"
    OPTIONS = ()

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[[Exception], Any] | None = None,
        on: opt.Exceptions = Exception,
    ) -> None:
        if (value is _MISSING) == (handler is None):
            raise ConfigError(
                "value/handler",
                {"value": None if value is _MISSING else value, "handler": handler},
                "exactly one of value= and handler=",
                owner="Fallback",
            )
        if handler is not None and (not callable(handler) or isinstance(handler, type)):
            raise ConfigError("handler", handler, "a callable(exception)", owner="Fallback")
        try:
            self._on = opt.exception_filter(on, catchable=True)
        except opt.Invalid:
            raise ConfigError(
                "on",
                on,
                "an Exception subclass, a tuple or list of them, or a predicate(exc) -> bool",
                owner="Fallback",
            ) from None
        self._value = value
        self._handler = handler
        self._async_handler = handler is not None and is_async_callable(handler)
        self._register(self._configure(None, {}))

    def _compile(self, settings: Settings) -> bool:
        return settings.enabled

    def _switch(self, compiled: bool) -> None:
        self._enabled = compiled

    def _catches(self, exc: Exception) -> bool:
        return self._enabled and not isinstance(exc, UsageError) and bool(self._on(exc))

    def _recover(self, exc: Exception) -> Any:
        return self._value if self._handler is None else self._handler(exc)

    async def _recover_async(self, exc: Exception) -> Any:
        if self._handler is None:
            return self._value  # a value is returned as given, awaitable or not
        answer = self._handler(exc)
        return await answer if inspect.isawaitable(answer) else answer

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        if self._async_handler:
            raise UsageError(
                f"Fallback's handler {self._handler!r} is async, but {fn!r} is not:"
                " a sync call cannot await it"
            )
        fallback = self

        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = fn(*args, **kwargs)
                if result.__class__ is CoroutineType:
                    raise returned_coroutine(fn, result)
                return result
            except Exception as exc:
                if not fallback._catches(exc):
                    raise
                return fallback._recover(exc)  # type: ignore[no-any-return]

        return guarded

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        fallback = self

        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                if not fallback._catches(exc):
                    raise
                return await fallback._recover_async(exc)  # type: ignore[no-any-return]

        return guarded

    # A block has no value to replace: the forms swallow the exception, after the handler.

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not isinstance(exc, Exception) or not self._catches(exc):
            return False
        if self._async_handler:
            raise UsageError("Fallback's handler is async: use 'async with'") from exc
        self._recover(exc)
        return True

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not isinstance(exc, Exception) or not self._catches(exc):
            return False
        await self._recover_async(exc)
        return True

    def __repr__(self) -> str:
        what = f"handler={self._handler!r}" if self._handler is not None else f"{self._value!r}"
        return f"Fallback({what})"
