"""Fallback: each scenario in every flavour (sync, asyncio, trio x decorator, with, call).

``flavour.call(fallback, outcome)`` runs one guarded call whose body returns ``outcome``
or raises it, as conftest's flavours do. A ``with`` block has no value to replace, so
there a caught exception is swallowed (after the handler saw it) and the call gives None.
conftest's sync ``with`` form assumes the policy never swallows (after the block it falls
through to ``anyio.run(backend="sync")``), hence the ``flavour`` fixture below.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import trio

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    Fallback,
    ResilienceError,
    Retry,
    State,
)
from resilient.testing import ManualClock

from .conftest import ALL_FLAVOURS, Flavour

BOOM = ConnectionError("boom")


@dataclass(frozen=True)
class FallbackFlavour(Flavour):
    """conftest's Flavour, with a sync ``with`` block that may swallow the exception."""

    def call(self, policy: Any, outcome: Any = "ok", before: Any = None) -> Any:
        if (self.mode, self.form) != ("sync", "with"):
            return super().call(policy, outcome, before)
        with policy:
            if before is not None:
                before()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return None


FLAVOURS = [FallbackFlavour(f.mode, f.form) for f in ALL_FLAVOURS]


@pytest.fixture(params=FLAVOURS, ids=str)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[f for f in FLAVOURS if f.mode != "sync"], ids=str)
def async_flavour(request: pytest.FixtureRequest) -> Flavour:
    """The flavours an async handler can guard."""
    return request.param  # type: ignore[no-any-return]


def expected(flavour: Flavour, value: Any) -> Any:
    """What a call that fell back gives: the fallback's value, or None for a block."""
    return None if flavour.form == "with" else value


class Handler:
    """A handler that notes every exception it is given and answers ``answer``."""

    def __init__(self, answer: Any = "from handler") -> None:
        self.answer = answer
        self.seen: list[Exception] = []

    def __call__(self, exc: Exception) -> Any:
        self.seen.append(exc)
        return self.answer


class AsyncHandler(Handler):
    async def __call__(self, exc: Exception) -> Any:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        return super().__call__(exc)


class TestRecovery:
    def test_a_value_replaces_a_matching_exception(self, flavour: Flavour) -> None:
        assert flavour.call(Fallback("cached"), BOOM) == expected(flavour, "cached")

    @pytest.mark.parametrize("value", [None, 0, False, "", []], ids=repr)
    def test_falsy_values_are_values(self, flavour: Flavour, value: Any) -> None:
        assert flavour.call(Fallback(value), BOOM) is expected(flavour, value)
        assert flavour.call(Fallback(value=value), BOOM) is expected(flavour, value)

    def test_a_handler_gets_the_exception_and_gives_the_answer(self, flavour: Flavour) -> None:
        handler = Handler()
        error = ValueError("bad")
        assert flavour.call(Fallback(handler=handler), error) == expected(flavour, "from handler")
        assert handler.seen == [error]
        assert handler.seen[0] is error

    def test_an_async_handler_is_awaited_in_async_code(self, async_flavour: Flavour) -> None:
        handler = AsyncHandler()
        answer = async_flavour.call(Fallback(handler=handler), BOOM)
        assert answer == expected(async_flavour, "from handler")
        assert handler.seen == [BOOM]

    @pytest.mark.parametrize("mode", ["asyncio", "trio"])
    def test_an_async_def_handler_is_awaited(self, mode: str) -> None:
        seen: list[Exception] = []

        async def handler(exc: Exception) -> str:
            seen.append(exc)
            await anyio.lowlevel.checkpoint()
            return "async answer"

        fallback = Fallback(handler=handler)
        assert FallbackFlavour(mode, "decorator").call(fallback, BOOM) == "async answer"
        assert FallbackFlavour(mode, "call").call(fallback, BOOM) == "async answer"
        assert FallbackFlavour(mode, "with").call(fallback, BOOM) is None
        assert seen == [BOOM] * 3

    def test_a_success_passes_through_untouched(self, flavour: Flavour) -> None:
        handler = Handler()
        result = object()
        assert flavour.call(Fallback(handler=handler), result) is result
        assert flavour.call(Fallback("cached"), result) is result
        assert handler.seen == []

    def test_the_function_gets_its_arguments(self) -> None:
        @Fallback(-1)
        def divide(a: int, b: int = 1) -> float:
            return a / b

        assert divide(6, b=3) == 2
        assert divide(6, b=0) == -1
        assert Fallback(-1).call(divide.__wrapped__, 1, 0) == -1  # type: ignore[attr-defined]

    def test_a_raising_handler_raises_chained_to_the_original(self, flavour: Flavour) -> None:
        def handler(exc: Exception) -> None:
            raise LookupError("handler bug")

        with pytest.raises(LookupError, match="handler bug") as info:
            flavour.call(Fallback(handler=handler), BOOM)
        assert info.value.__context__ is BOOM


class TestWhatIsCaught:
    @pytest.mark.parametrize(
        "on",
        [ConnectionError, (TimeoutError, ConnectionError), lambda exc: "boom" in str(exc)],
        ids=["type", "tuple", "predicate"],
    )
    def test_on_selects_the_exceptions_to_replace(self, flavour: Flavour, on: Any) -> None:
        handler = Handler()
        fallback = Fallback(handler=handler, on=on)
        assert flavour.call(fallback, BOOM) == expected(flavour, "from handler")
        other = ValueError("other")
        with pytest.raises(ValueError, match="other") as info:
            flavour.call(fallback, other)
        assert info.value is other
        assert handler.seen == [BOOM]

    def test_resilients_own_rejections_are_caught(self, flavour: Flavour) -> None:
        clock = ManualClock()
        breaker = CircuitBreaker("svc", min_calls=1, window_size=1, open_for=10, clock=clock)
        with pytest.raises(ConnectionError):
            breaker.call(lambda: (_ for _ in ()).throw(BOOM))
        assert breaker.state is State.OPEN
        handler = Handler("cached")

        def through_the_breaker() -> None:
            breaker.call(lambda: "never")

        fallback = Fallback(handler=handler, on=CircuitOpenError)
        assert flavour.call(fallback, "x", before=through_the_breaker) == expected(
            flavour, "cached"
        )
        assert isinstance(handler.seen[0], CircuitOpenError)
        assert handler.seen[0].retry_after == pytest.approx(10.0)

    @pytest.mark.parametrize(
        "exc",
        [KeyboardInterrupt(), SystemExit(3), GeneratorExit(), asyncio.CancelledError()],
        ids=type,
    )
    @pytest.mark.parametrize(
        "on", [Exception, BaseException, lambda exc: True], ids=["Exception", "Base", "always"]
    )
    @pytest.mark.parametrize("form", ["decorator", "with", "call"])
    def test_base_exceptions_pass_through(self, exc: BaseException, on: Any, form: str) -> None:
        handler = Handler()
        with pytest.raises(type(exc)) as info:
            FallbackFlavour("sync", form).call(Fallback(handler=handler, on=on), exc)
        assert info.value is exc
        assert handler.seen == []

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    @pytest.mark.parametrize("form", ["decorator", "with", "call"])
    def test_cancellation_passes_through(self, backend: str, form: str) -> None:
        handler = Handler()
        fallback = Fallback(handler=handler, on=BaseException)
        caught: list[BaseException] = []

        async def hang() -> None:
            try:
                await anyio.sleep_forever()
            except BaseException as exc:
                caught.append(exc)
                raise

        async def main() -> bool:
            with anyio.move_on_after(0.01) as scope:
                if form == "decorator":
                    await fallback(hang)()
                elif form == "call":
                    await fallback.call_async(hang)
                else:
                    async with fallback:
                        await hang()
            return scope.cancelled_caught

        assert anyio.run(main, backend=backend)
        assert handler.seen == []
        cancelled = trio.Cancelled if backend == "trio" else asyncio.CancelledError
        assert isinstance(caught[0], cancelled)


class TestAsyncHandlerOnSyncCode:
    def test_decorating_a_sync_function_raises_at_decoration(self) -> None:
        fallback = Fallback(handler=AsyncHandler())
        with pytest.raises(TypeError, match="async"):

            @fallback
            def fetch() -> None: ...

        with pytest.raises(TypeError, match="async"):
            fallback.call(lambda: None)

    def test_a_sync_with_block_refuses_it_and_points_to_async_with(self) -> None:
        handler = AsyncHandler()
        fallback = Fallback(handler=handler)
        with fallback:
            pass  # nothing to handle: nothing to refuse
        with pytest.raises(TypeError, match="async with") as info, fallback:
            raise BOOM
        assert info.value.__cause__ is BOOM
        assert handler.seen == []


class TestConfig:
    @pytest.mark.parametrize(
        ("args", "kwargs", "option"),
        [
            ((), {}, "value/handler"),
            (("cached",), {"handler": Handler()}, "value/handler"),
            ((), {"value": None, "handler": Handler()}, "value/handler"),
            ((), {"handler": 5}, "handler"),
            ((), {"handler": ValueError}, "handler"),
            (("x",), {"on": "ValueError"}, "on"),
            (("x",), {"on": int}, "on"),
            (("x",), {"on": (ValueError, 5)}, "on"),
        ],
        ids=[
            "neither",
            "both",
            "both-value-None",
            "handler-not-callable",
            "handler-a-class",
            "on-a-string",
            "on-not-an-exception",
            "on-tuple-with-junk",
        ],
    )
    def test_bad_options_raise_config_error(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], option: str
    ) -> None:
        with pytest.raises(ConfigError) as info:
            Fallback(*args, **kwargs)
        err = info.value
        assert isinstance(err, ValueError)
        assert isinstance(err, ResilienceError)
        assert err.option == option
        message = str(err)
        assert message.startswith("Fallback: ")
        assert option in message

    def test_exactly_one_of_value_and_handler_is_the_message(self) -> None:
        with pytest.raises(ConfigError, match="exactly one of value= and handler="):
            Fallback()

    def test_repr(self) -> None:
        assert repr(Fallback([])) == "Fallback([])"
        assert repr(Fallback(handler=len)).startswith("Fallback(handler=")


class TestForms:
    def test_decorated_functions_keep_their_identity(self) -> None:
        fallback = Fallback(None)

        def fetch(url: str, *, timeout: float = 1.0) -> str:
            """Fetch url."""
            return url

        async def afetch(url: str, *, timeout: float = 1.0) -> str:
            """Fetch url, async."""
            return url

        for fn in (fetch, afetch):
            wrapped = fallback(fn)
            assert wrapped.__name__ == fn.__name__
            assert wrapped.__doc__ == fn.__doc__
            assert wrapped.__wrapped__ is fn  # type: ignore[attr-defined]
            assert inspect.signature(wrapped) == inspect.signature(fn)
            assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(fn)

    def test_call_refuses_an_async_function(self) -> None:
        async def fetch() -> None: ...

        with pytest.raises(TypeError, match="call_async"):
            Fallback(None).call(fetch)  # type: ignore[arg-type, unused-coroutine]

    def test_with_swallows_and_the_code_after_the_failure_does_not_run(self) -> None:
        handler = Handler()
        ran: list[str] = []
        with Fallback(handler=handler):
            ran.append("before")
            raise BOOM
        ran.append("after the block")
        assert ran == ["before", "after the block"]
        assert handler.seen == [BOOM]


# -- composition: Fallback around Retry around CircuitBreaker ----------------------------


def stacked(
    mode: str, clock: ManualClock, body: Callable[[], Any], handler: Handler
) -> Callable[[], Any]:
    """``@Fallback @Retry @CircuitBreaker`` on a sync or async function running ``body``."""
    breaker = CircuitBreaker(
        "svc", min_calls=2, window_size=2, open_for=10, half_open_calls=1, clock=clock
    )
    retry = Retry(3, wait=1, clock=clock)
    fallback = Fallback(handler=handler)
    if mode == "sync":

        @fallback
        @retry
        @breaker
        def call() -> Any:
            return body()

        return call

    @fallback
    @retry
    @breaker
    async def acall() -> Any:
        await anyio.lowlevel.checkpoint()
        return body()

    return lambda: anyio.run(acall, backend=mode)


def test_fallback_around_retry_around_circuit_breaker(mode: str) -> None:
    clock = ManualClock()
    healthy = False
    calls: list[float] = []

    def body() -> str:
        calls.append(clock.monotonic())
        if not healthy:
            raise ConnectionError("down")
        return "fresh"

    handler = Handler("cached")
    call = stacked(mode, clock, body, handler)

    # t=0 fails, t=1 fails and opens the breaker, t=2 is rejected: the retry gives up on
    # the rejection and the fallback answers.
    assert call() == "cached"
    assert calls == [0.0, 1.0]
    (rejection,) = handler.seen
    assert isinstance(rejection, CircuitOpenError)
    assert rejection.retry_after == pytest.approx(9.0)
    # The rejection names what opened the breaker, and the note what each attempt raised.
    assert repr(rejection.last_failure) == "ConnectionError('down')"
    assert rejection.__notes__ == [
        "Retry: gave up after 3 attempts; the attempts raised ConnectionError: down (x2),"
        " then CircuitOpenError"
    ]

    # Healthy again: the first attempt is rejected, the retry waits out the breaker's
    # hint (to t=11) and its probe succeeds.
    healthy = True
    assert call() == "fresh"
    assert calls == [0.0, 1.0, 11.0]
    assert len(handler.seen) == 1


def test_an_awaitable_value_is_returned_as_given() -> None:
    async def main() -> None:
        future = asyncio.get_running_loop().create_future()
        future.set_result("inner")

        @Fallback(future)
        async def fails() -> Any:
            raise ConnectionError

        assert await fails() is future

    anyio.run(main)


class TestTheHandlerSeesTheCall:
    """``with_args=True``: the handler gets the failure, then the call's own arguments."""

    PRICES = {"A-1": 9.99, "B-2": 4.5}  # noqa: RUF012 - read only

    def test_sync_decorator_and_call(self) -> None:
        seen: list[tuple[Exception, str, str]] = []

        def last_known(exc: Exception, sku: str, *, currency: str = "EUR") -> float:
            seen.append((exc, sku, currency))
            return self.PRICES[sku]

        fallback = Fallback(handler=last_known, with_args=True)

        @fallback
        def price(sku: str, *, currency: str = "EUR") -> float:
            raise BOOM

        assert price("A-1") == 9.99
        assert price("B-2", currency="USD") == 4.5
        assert fallback.call(price.__wrapped__, "A-1", currency="GBP") == 9.99  # type: ignore[attr-defined]
        assert seen == [(BOOM, "A-1", "EUR"), (BOOM, "B-2", "USD"), (BOOM, "A-1", "GBP")]

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    @pytest.mark.parametrize("async_handler", [False, True], ids=["def", "async def"])
    def test_async_decorator_and_call(self, backend: str, async_handler: bool) -> None:
        def sync_handler(exc: Exception, sku: str) -> float:
            assert exc is BOOM
            return self.PRICES[sku]

        async def coroutine_handler(exc: Exception, sku: str) -> float:
            await anyio.lowlevel.checkpoint()
            return sync_handler(exc, sku)

        handler = coroutine_handler if async_handler else sync_handler
        fallback = Fallback(handler=handler, with_args=True)

        async def price(sku: str) -> float:
            await anyio.lowlevel.checkpoint()
            raise BOOM

        async def main() -> list[float]:
            return [await fallback(price)("A-1"), await fallback.call_async(price, "B-2")]

        assert anyio.run(main, backend=backend) == [9.99, 4.5]

    def test_a_block_has_no_arguments_to_give(self) -> None:
        seen: list[tuple[Any, ...]] = []
        with Fallback(handler=lambda *args: seen.append(args), with_args=True):
            raise BOOM
        assert seen == [(BOOM,)]

    def test_without_it_the_handler_gets_the_exception_only(self) -> None:
        @Fallback(handler=lambda exc: type(exc).__name__)
        def price(sku: str) -> str:
            raise BOOM

        assert price("A-1") == "ConnectionError"

    @pytest.mark.parametrize("bad", [1, "yes", None])
    def test_with_args_is_a_bool(self, bad: Any) -> None:
        with pytest.raises(ConfigError, match="with_args"):
            Fallback(handler=print, with_args=bad)

    def test_with_args_needs_a_handler(self) -> None:
        with pytest.raises(ConfigError, match=r"with_args.*only with a handler"):
            Fallback(0, with_args=True)

    def test_a_raising_handler_is_chained_to_the_failure(self) -> None:
        def handler(exc: Exception, sku: str) -> float:
            raise KeyError(sku)

        @Fallback(handler=handler, with_args=True)
        def price(sku: str) -> float:
            raise BOOM

        with pytest.raises(KeyError) as info:
            price("Z-9")
        assert info.value.__context__ is BOOM


class TestTheHandlerRunsWhileTheFailureIsHandled:
    """As in an except block: a bare ``raise``, ``sys.exc_info()``, logging.exception()
    and the chain of an error the handler raises all see the failure."""

    @pytest.mark.parametrize("backend", ["sync", "asyncio", "trio"])
    def test_exc_info_bare_raise_and_chaining(self, backend: str) -> None:
        import sys

        def seen(exc: Exception) -> Any:
            return sys.exc_info()[1]

        def reraises(exc: Exception) -> Any:
            raise

        def wraps(exc: Exception) -> Any:
            try:
                return {}["cached"]
            except KeyError:
                raise LookupError("no cached value")  # noqa: B904 - chained implicitly

        def run(fallback: Fallback) -> Any:
            if backend == "sync":

                def body() -> None:
                    raise BOOM

                return fallback.call(body)

            async def abody() -> None:
                await anyio.lowlevel.checkpoint()
                raise BOOM

            return anyio.run(fallback.call_async, abody, backend=backend)

        assert run(Fallback(handler=seen)) is BOOM
        with pytest.raises(ConnectionError) as info:
            run(Fallback(handler=reraises))
        assert info.value is BOOM
        with pytest.raises(LookupError) as chained:
            run(Fallback(handler=wraps))
        assert isinstance(chained.value.__context__, KeyError)
        assert chained.value.__context__.__context__ is BOOM


def test_a_raising_on_predicate_never_replaces_the_calls_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def on(exc: BaseException) -> bool:
        raise LookupError("predicate bug")

    @Fallback("fallback", on=on)
    def fetch() -> str:
        raise ConnectionError("downstream")

    for _ in range(2):
        with pytest.raises(ConnectionError, match="downstream"):
            fetch()
    assert sum("its on callable failed" in r.getMessage() for r in caplog.records) == 1
