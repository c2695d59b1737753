"""Fallback: when a call fails, answer with a value (or a handler's) instead of the error.

The last line of a pipeline: a cached page, an empty list, a default price. It catches
only ``Exception``s matching ``on`` (our own rejections included: an open breaker's
CircuitOpenError is the classic case); cancellation and interpreter exits pass through.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from resilient._core.configuration import events
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.options import is_async_callable
from resilient._core.configuration.registry import Configured
from resilient._core.execution.drivers import (
    ANSWER,
    NO_RESULT,
    Attempts,
    BlockForms,
    Later,
    LoopForms,
    Plan,
)
from resilient._errors import ConfigError, UsageError
from resilient.events import LEVELS, FallbackUsed

__all__ = ["Fallback"]

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()


class _Plan(Plan):
    """What a call reads, switched whole by a reload: a loop that never goes round."""

    __slots__ = ("_judging", "_on", "enabled", "fallback")

    def __init__(self, fallback: Fallback, enabled: bool) -> None:
        self.fallback = fallback
        self.enabled = enabled
        self._on = fallback._on
        self._judging = opt.Fallback("on", fallback._owner())

    def decides(self, exc: Exception) -> bool:
        if not self.enabled or isinstance(exc, UsageError):
            return False
        try:
            return bool(self._on(exc))
        except Exception as error:  # never the call's: its own error goes on
            self._judging.failed(error, f"on {type(exc).__name__}", "not replaced")
            return False

    def calls(
        self,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float,
    ) -> _Recovery:
        fallback = self.fallback
        return (_Value if fallback._handler is None else _Recovery)(fallback, args, kwargs)


class _Recovery(Attempts):
    """A failed call's answer: what the handler makes of the failure."""

    __slots__ = ("args", "fallback", "kwargs")

    awaits = True  # an async handler's coroutine is awaited

    def __init__(self, fallback: Fallback, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.fallback = fallback
        self.args = args
        self.kwargs = kwargs

    def next_wait(self, exc: BaseException | None, result: object) -> float | None:
        return ANSWER

    def answer(self, exc: BaseException | None, result: object) -> Any:
        self.fallback._used(exc, result)
        handler: Any = self.fallback._handler
        if self.fallback._with_args:
            return handler(exc, *self.args, **self.kwargs)
        return handler(exc)


class _Value(_Recovery):
    """A failed call's answer: the value, returned as given (awaitable or not)."""

    __slots__ = ()

    awaits = False

    def answer(self, exc: BaseException | None, result: object) -> Any:
        self.fallback._used(exc, result)
        return self.fallback._value


class Fallback(Configured, BlockForms, LoopForms):
    """Return ``value``, or ``handler(exc)``, when the call raises an exception matching ``on``.

    Give exactly one of ``value`` and ``handler``. With ``with_args=True`` the handler
    also gets the call's own arguments, ``handler(exc, *args, **kwargs)`` (a "last known
    price for this SKU"). A handler may be ``async def`` when it guards async code. As
    ``with fallback:`` the matching exception is swallowed (after the handler, if any,
    has seen it), since a block has no value to replace. ``RESILIENT_ENABLED=0``
    switches it off like every policy: errors pass through.
    """

    KIND = "fallback"
    OPTIONS = ()
    _plan: _Plan

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[..., Any] | None = None,
        with_args: bool = False,
        on: opt.Exceptions = Exception,
        name: str | None = None,
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
        if not isinstance(with_args, bool) or (with_args and handler is None):
            raise ConfigError(
                "with_args",
                with_args,
                "True or False; True only with a handler, which then gets (exc, *args, **kwargs)",
                owner="Fallback",
            )
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
        self._with_args = with_args
        self._async_handler = handler is not None and is_async_callable(handler)
        self._register(self._configure(name, {}))

    def _compile(self, settings: Settings) -> _Plan:
        return _Plan(self, settings.enabled)

    def _switch(self, compiled: _Plan) -> None:
        self._plan = compiled
        self._loop = self._driven(compiled)  # (what the drivers read)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        if self._async_handler:
            raise UsageError(
                f"Fallback's handler {self._handler!r} is async, but {fn!r} is not:"
                " a sync call cannot await it"
            )
        return super()._wrap_sync(fn)

    # A block has no value to replace: the forms swallow the exception, after the handler.

    # A block's token is its meter and start, while a meter is on (else None).

    def _enter_block(self, asynchronous: bool) -> object:
        loop = self._loop
        return None if loop is self._plan else loop.begin()

    def _exit_block(self, token: Any, exc: BaseException | None, asynchronous: bool) -> object:
        if token is not None:  # metered: its attempts decide, and tell how the block ended
            calls = self._loop.calls(None, (), {}, token)
            if calls.next_wait(exc, NO_RESULT) != ANSWER or exc is None:
                return False  # (a success, or an error not for this Fallback)
        elif not isinstance(exc, Exception) or not self._plan.decides(exc):
            return False
        else:
            calls = self._plan.calls(None, (), {}, 0.0)
        if not asynchronous and self._async_handler:
            raise UsageError("Fallback's handler is async: use 'async with'") from exc
        answer = calls.answer(exc, None)
        if asynchronous and calls.awaits and isinstance(answer, Awaitable):
            return Later(_swallowed(answer))
        return True

    def _used(self, exc: BaseException | None, result: object) -> None:
        if events.wanted(self, LEVELS[FallbackUsed]):
            events.emit(self, FallbackUsed(self, time.monotonic(), exc, result))

    def __repr__(self) -> str:
        what = f"handler={self._handler!r}" if self._handler is not None else f"{self._value!r}"
        return f"Fallback({what})"


async def _swallowed(answer: Awaitable[Any]) -> bool:
    await answer
    return True
