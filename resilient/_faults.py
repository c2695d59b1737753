"""Fault injection (Polly's Simmy): InjectFault, InjectLatency, InjectResult, for a user's
own resilience tests, innermost in a Pipeline.

Each is a guard. While it is switched on, a call draws once from the policy's own random
source (``random.Random(seed)``: the same seed injects on the same calls, in the order
they are made) and is injected into at ``rate``: InjectFault raises its error instead
of calling, InjectLatency waits ``seconds`` on its clock and then calls, InjectResult
returns its value instead of calling. Off by default, so it can ship in production code
and be switched on where wanted, in code or by ``RESILIENT_<NAME>_<KIND>_ENABLED`` (and
``_RATE``) and :func:`resilient.reload`, without a deploy. Off, or at rate 0, its state
is ``fast``: the drivers call straight through, as they do for a CLOSED breaker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NoReturn

from resilient._core.configuration import events
from resilient._core.configuration import options as opt
from resilient._core.configuration import parse as text
from resilient._core.configuration.config import Settings
from resilient._core.configuration.options import is_async_callable
from resilient._core.configuration.registry import Configured
from resilient._core.execution.drivers import MUST_WAIT, Answered, GuardForms, Refusal, outcome_of
from resilient._core.state.clock import SYSTEM_CLOCK, Clock
from resilient._core.state.primitives import counter, draws
from resilient._errors import ConfigError, UsageError, note
from resilient.events import LEVELS, FaultInjected

__all__ = ["InjectFault", "InjectLatency", "InjectResult"]


def _whole(value: Any) -> int:
    """A whole number >= 0, of any size (a seed)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise opt.Invalid
    return value


opt.written(_whole, text.parse_int, "a whole number, e.g. 42")

_ENABLED = opt.Option(
    "enabled",
    False,
    opt.flag,
    "True or False",
    "Whether it injects at all. Off by default, so it can ship in production code and be"
    " switched on where wanted: in code, or by `RESILIENT_<NAME>_<KIND>_ENABLED` and"
    " `resilient.reload()`.",
)
_RATE = opt.Option(
    "rate",
    1.0,
    opt.fraction,
    "a number from 0 to 1",
    "The share of calls it injects into while switched on; each call draws once from"
    " its random source. 0 injects into none, and costs what being switched off costs.",
)
_SEED = opt.Option(
    "seed",
    None,
    opt.optional(_whole),
    "None, or a whole number >= 0",
    "Seeds its own random source, `random.Random(seed)`: the same seed injects into the"
    " same calls, counted in the order they are made. None: seeded by the system.",
)

FAULT_OPTIONS = (_ENABLED, _RATE, _SEED)
RESULT_OPTIONS = FAULT_OPTIONS
LATENCY_OPTIONS = (
    opt.Option(
        "seconds",
        opt.REQUIRED,
        opt.longest_wait,
        "seconds > 0, at most a year",
        "How long an injected call waits before it is made (on the clock's `sleep` or"
        " `sleep_async`: cancellable in async code, and an enclosing Timeout ends it).",
    ),
    *FAULT_OPTIONS,
    opt.WAITING_CLOCK,
)
_ALL_NAMES = frozenset(option.name for option in LATENCY_OPTIONS)


def _passed(result: object) -> None:
    """A call that went straight in (switched off, or rate 0) records nothing."""


class _Plan:
    """What a call reads, switched whole by a reload; also the gate the drivers read
    (``_state``): ``fast`` while it cannot inject (switched off, or rate 0)."""

    __slots__ = ("clock", "draw", "enabled", "fast", "meter", "rate", "seconds", "seed")

    refusal: Refusal | None = None  # it never refuses every call until a known time
    passed = staticmethod(_passed)

    def __init__(
        self,
        enabled: bool,
        rate: float,
        seed: int | None,
        draw: Callable[[], float],
        meter: events.Meter | None,
        seconds: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.enabled = enabled
        self.fast = not (enabled and rate > 0.0)  # nothing to inject: straight through
        self.rate = rate
        self.seed = seed
        self.draw = draw  # the policy's random source, kept across reloads of one seed
        self.meter = meter
        self.seconds = seconds
        self.clock = clock


class _Injector(Configured, GuardForms):
    """What the three have in common: the switch, the rate, the seeded draw, the event."""

    OPTIONS: ClassVar[tuple[opt.Option, ...]]
    _plan: _Plan
    _state: _Plan  # the same object: what the drivers read

    def _start(self, name: str | None, given: dict[str, Any]) -> None:
        """The end of every ``__init__``: configure and register."""
        settings = self._configure(name, given)
        self._injected = counter()
        self._register(settings)

    def _compile(self, settings: Settings) -> _Plan:
        rate: float = settings["rate"]
        seed: int | None = settings["seed"]
        old: _Plan | None = getattr(self, "_plan", None)
        if old is not None and old.seed == seed:
            draw = old.draw  # the same sequence goes on where it was
        else:
            import random  # (not at import: a policy is made rarely, imported always)

            draw = draws(random.Random(seed))
        enabled = settings.enabled and settings["enabled"]
        extra = {}
        if "seconds" in settings.values:
            extra = {"seconds": settings["seconds"], "clock": settings["clock"] or SYSTEM_CLOCK}
        return _Plan(enabled, rate, seed, draw, self._metered(), **extra)

    def _switch(self, compiled: _Plan) -> None:
        self._plan = self._state = compiled

    def _after_fork(self) -> None:
        """In a forked child: an unseeded source is seeded afresh, or every worker of a
        pre-fork server would inject into the same calls as its siblings."""
        plan = self._plan
        if plan.seed is None:
            import random

            plan.draw = draws(random.Random())

    @property
    def enabled(self) -> bool:
        """Whether it is switched on now: in code or by its variables, and not off by
        ``RESILIENT_ENABLED=0``. (It injects only at a rate above 0.)"""
        return self._plan.enabled

    @property
    def rate(self) -> float:
        return self._plan.rate

    @property
    def seed(self) -> int | None:
        return self._plan.seed

    @property
    def injected(self) -> int:
        """How many calls it has injected into since it was made (or reset)."""
        return self._injected.value

    def reset(self) -> None:
        """Count injections from zero again (the random sequence goes on)."""
        self._injected = counter()

    def _health(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "rate": self.rate, "injected": self.injected}

    def _repr(self, what: str) -> str:
        name = "" if self.name is None else f", name={self.name!r}"
        plan = self._plan
        return f"{type(self).__name__}({what}, rate={plan.rate!r}, enabled={self.enabled}{name})"

    # -- the guard protocol -----------------------------------------------------------

    def _admit(self, state: _Plan) -> object:
        if state.draw() < state.rate:
            self._injected.incr()
            return self._inject(state)
        return state

    def _inject(self, state: _Plan) -> object:
        raise NotImplementedError

    def _exit(self, token: object, exc: BaseException | None, result: object) -> None:
        """Nothing to record: whatever the call did, the next draw is the same."""

    def _failed(self, state: _Plan, error: BaseException) -> None:
        """An error that is the call's end, raised before the call (an injected fault, a
        failing factory): metered here, since the drivers time nothing before it."""
        meter = state.meter
        if meter is not None:
            meter.call(self, outcome_of(error), 0.0, error)

    def _told(self, state: _Plan, error: BaseException | None = None) -> None:
        if events.wanted(self, LEVELS[FaultInjected]):
            seconds = state.seconds if self.KIND == "latency" else None
            event = FaultInjected(self, state.clock.monotonic(), self.KIND, error, seconds)
            events.emit(self, event)


class InjectFault(_Injector):
    """While switched on, raise ``error`` instead of making the call, at ``rate``.

    ``error`` is an exception instance (raised as it is each time) or class (made with
    no arguments each time); or give ``factory``, a callable that makes a fresh one per
    injected call. Every form: decorator on ``def`` and ``async def``, ``with``/``async
    with`` (raised on entry: the block does not run), ``call``/``call_async``. The error
    carries a note naming this policy, and a :class:`~resilient.events.FaultInjected`
    event tells it was injected.
    """

    KIND = "fault"
    OPTIONS = FAULT_OPTIONS

    def __init__(
        self,
        error: BaseException | type[BaseException] | None = None,
        *,
        factory: Callable[[], BaseException] | None = None,
        rate: float = 1.0,
        enabled: bool = False,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        given = {key: arg for key, arg in locals().items() if key in _ALL_NAMES}
        self._make, self._shown = self._maker(error, factory)
        self._start(name, given)

    @staticmethod
    def _maker(error: object, factory: object) -> tuple[Callable[[], BaseException], str]:
        """A maker of the error to raise, and how a repr shows it; ConfigError if neither
        or both are given, or ``error`` is no exception."""
        if (error is None) == (factory is None):
            raise ConfigError(
                "error/factory",
                {"error": error, "factory": factory},
                "exactly one of error (an exception instance or class) and factory=, e.g."
                " InjectFault(ConnectionError)",
                owner="InjectFault",
            )
        if factory is not None:
            if not callable(factory):
                expected = "a callable with no arguments that returns an exception"
                raise ConfigError("factory", factory, expected, owner="InjectFault")
            return factory, f"factory={factory!r}"
        if isinstance(error, BaseException):
            instance = error

            def raised_again() -> BaseException:
                return instance.with_traceback(None)  # (its last raise's frames let go)

            return raised_again, repr(error)
        if isinstance(error, type) and issubclass(error, BaseException):
            try:
                error()
            except Exception as failed:
                expected = (
                    "an exception class that can be made with no arguments"
                    f" ({type(failed).__name__}: {failed}); give an instance, or factory="
                )
                raise ConfigError("error", error, expected, owner="InjectFault") from None
            return error, error.__qualname__
        raise ConfigError(
            "error",
            error,
            "an exception instance or class (a callable that makes one goes in factory=)",
            owner="InjectFault",
        )

    def _inject(self, state: _Plan) -> NoReturn:
        error = self._error()
        self._told(state, error)
        self._failed(state, error)
        try:
            raise error
        finally:  # no frame -> traceback -> error -> frame cycle for the collector
            del error

    def _error(self) -> BaseException:
        error = self._make()
        if not isinstance(error, BaseException):
            raise UsageError(
                f"{self._owner()}: its factory {self._make!r} returned {error!r}, not an exception"
            )
        note(error, f"injected by resilient's {self._owner()}: not a real failure")
        return error

    def __repr__(self) -> str:
        return self._repr(self._shown)


class InjectLatency(_Injector):
    """While switched on, wait ``seconds`` before making the call, at ``rate``.

    The wait goes through the clock's ``sleep`` (threads) or ``sleep_async`` (asyncio,
    trio), so a ManualClock makes it take no real time, and in async code it is
    cancellable: an enclosing Timeout ends it. Every form, ``with``/``async with``
    included (the wait is made on entry).
    """

    KIND = "latency"
    OPTIONS = LATENCY_OPTIONS

    def __init__(
        self,
        seconds: opt.Duration,
        *,
        rate: float = 1.0,
        enabled: bool = False,
        seed: int | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        given = {key: arg for key, arg in locals().items() if key in _ALL_NAMES}
        self._start(name, given)

    @property
    def seconds(self) -> float:
        return self._plan.seconds

    def _health(self) -> dict[str, Any]:
        return {**super()._health(), "seconds": self.seconds}

    def _inject(self, state: _Plan) -> object:
        return MUST_WAIT

    def _wait(self, state: _Plan) -> object:
        self._told(state)
        state.clock.sleep(state.seconds)
        return state

    async def _wait_async(self, state: _Plan) -> object:
        self._told(state)
        await state.clock.sleep_async(state.seconds)
        return state

    def __repr__(self) -> str:
        return self._repr(repr(self.seconds))


_MISSING: Any = object()


class InjectResult(_Injector):
    """While switched on, return ``value`` instead of making the call, at ``rate``.

    Give ``value`` (returned as it is, the same object each time) or ``factory``, a
    callable with no arguments that makes the value for each injected call (its error,
    if it raises, is the call's; an ``async def`` one is awaited, in async code only).
    A decorator on ``def`` and ``async def`` (whose caller gets the value as the awaited
    result), and ``call``/``call_async``; not ``with``: a block has no result to
    replace, so that form raises UsageError, switched on or off.
    """

    KIND = "result"
    OPTIONS = RESULT_OPTIONS

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        factory: Callable[[], Any] | None = None,
        rate: float = 1.0,
        enabled: bool = False,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        if (value is _MISSING) == (factory is None):
            raise ConfigError(
                "value/factory",
                {"value": None if value is _MISSING else value, "factory": factory},
                "exactly one of value and factory=, e.g. InjectResult(None)",
                owner="InjectResult",
            )
        if factory is not None and not callable(factory):
            expected = "a callable with no arguments that makes the value"
            raise ConfigError("factory", factory, expected, owner="InjectResult")
        given = {key: arg for key, arg in locals().items() if key in _ALL_NAMES}
        self._value = value
        self._factory = factory
        self._async_factory = factory is not None and is_async_callable(factory)
        self._start(name, given)

    def _inject(self, state: _Plan) -> object:
        return MUST_WAIT  # the drivers then take the answer from _wait

    def _wait(self, state: _Plan) -> object:
        factory = self._factory
        if factory is None:
            value = self._value
        elif self._async_factory:
            raise UsageError(
                f"{self._owner()}: its factory {factory!r} is async, and a sync call cannot"
                " await it"
            )
        else:
            try:
                value = factory()
            except BaseException as error:
                self._failed(state, error)
                raise
        self._told(state)
        return Answered(value)

    async def _wait_async(self, state: _Plan) -> object:
        if not self._async_factory:
            return self._wait(state)
        assert self._factory is not None
        try:
            value = await self._factory()
        except BaseException as error:
            self._failed(state, error)
            raise
        self._told(state)
        return Answered(value)

    def _enter_block(self, asynchronous: bool) -> NoReturn:
        raise UsageError(
            f"{self._owner()} replaces a call's result, and a with-block has none:"
            " decorate the function, or use call()/call_async()"
        )

    def __enter__(self) -> None:
        self._enter_block(False)

    def __repr__(self) -> str:
        shown = f"factory={self._factory!r}" if self._factory is not None else repr(self._value)
        return self._repr(shown)
