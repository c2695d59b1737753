"""Every form a guarding policy takes, written once: decorator, context manager, plain call.

A *guard* is a policy that decides before a call and learns from its outcome, without
looping or waiting (a circuit breaker; later a bulkhead's fast path). It provides:

``_state``
    its current state object; when ``_state.fast`` is true the call is admitted with no
    further work and the state itself is the token (a CLOSED breaker: one attribute read),
    and a call that returns is recorded by ``_state.passed(result)`` (a CLOSED breaker:
    one C call), read when it returns;
    when ``_state.refusal`` is a :class:`Refusal`, the call is refused until its time
    without asking the guard (an OPEN breaker);
``_admit(state) -> token``
    the full admission otherwise, without blocking: a token that ties the outcome to the
    admission, or raise (a rejection), or :data:`MUST_WAIT` when the call may queue for
    admission (a full bulkhead with ``max_wait``);
``_wait(state) -> token`` and ``async _wait_async(state) -> token``
    that queueing, on a thread or in a task, under the state ``_admit`` was given;
    only called after :data:`MUST_WAIT`; or, instead of a token, an :class:`Answered`
    whose value is the call's result: the call is not made and ``_exit`` not called
    (an injected substitute result). A guard whose wait may answer refuses the block
    forms, whose result cannot be replaced;
``_exit(token, exc, result)``
    record how it went: ``exc`` is None on return, else the exception (any
    BaseException: the guard decides what counts); ``result`` is :data:`NO_RESULT`
    for a ``with`` block, which has none.

:class:`GuardForms` turns those three into ``@guard`` on ``def`` and ``async def`` (sync or
async wrapper chosen once, at decoration), ``with``/``async with``, ``call`` and
``call_async``. The wrappers are plain closures rather than ``wrapt.FunctionWrapper``:
wrapt's proxy costs about 500 ns a call on a plain function, more than the whole budget
of a closed breaker; a closure costs one frame, keeps ``__wrapped__``/``inspect``
working through :func:`functools.update_wrapper`, and pickles by reference.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from enum import Enum
from time import perf_counter
from types import CodeType, CoroutineType, TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from resilient._core.configuration.events import Meter
from resilient._core.configuration.options import (
    CO_ASYNC_GENERATOR,
    CO_COROUTINE,
    CO_GENERATOR,
    is_async_callable,
)
from resilient._errors import UsageError

__all__ = [
    "ANSWER",
    "MUST_WAIT",
    "NO_RESULT",
    "Answered",
    "Attempt",
    "AttemptForms",
    "Attempts",
    "BlockForms",
    "CoroutineType",
    "Decorates",
    "GuardForms",
    "Later",
    "LoopForms",
    "Plan",
    "Refusal",
    "is_async_callable",
    "pop_block",
    "push_block",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Gate(Protocol):
    """What the drivers read of a guard's state: may the call go straight in (``fast``),
    and if so what records a call that returned (``passed(result)``, in place of
    ``_exit``); or is every call refused until a known time (``refusal``, else None)?
    And, read off the fast path only, is a meter on (``meter``: a metered state is
    never fast), which hears of each call's outcome and duration."""

    fast: bool
    refusal: Refusal | None
    meter: Meter | None

    @property
    def passed(self) -> Callable[[Any], object]: ...


class Refusal(NamedTuple):
    """A state that refuses every call until ``until`` (on ``now``'s clock): the drivers
    raise ``error()`` there and then, counting it with ``counted()``, without a call into
    the guard. An open breaker's rejection is the hot path of an outage; this keeps it to
    one frame (the wrapper's), a clock read, a count and a C-level construction of the
    error. A tuple, so the drivers unpack it in one step."""

    now: Callable[[], float]
    until: float
    counted: Callable[[], object]
    error: Callable[[], BaseException]


class Signal(Enum):
    """What the drivers and guards pass besides values: enum members, so a type checker
    tells each from every value (PEP 484's way to type a sentinel)."""

    #: What a ``with`` block "returns" to ``_exit``: nothing a result predicate may judge.
    NO_RESULT = "NO_RESULT"
    #: What ``_admit`` returns when the caller must queue (``_wait``/``_wait_async``).
    MUST_WAIT = "MUST_WAIT"

    def __repr__(self) -> str:
        return self.value


NO_RESULT: Final = Signal.NO_RESULT
MUST_WAIT: Final = Signal.MUST_WAIT


class Answered:
    """What a guard's ``_wait`` gives in place of a token when it answers the call
    itself: ``value`` is returned and the call is not made. Looked for only after
    :data:`MUST_WAIT`, so no other admission pays for it. (A plain class: a NamedTuple
    costs 70 us to define, paid by every ``import resilient``.)"""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# The open ``with`` blocks of this context, innermost last, as (owner, entry) pairs. One
# variable for every owner: a Context holds its variables for good, so one per owner
# would grow without bound in a process that makes policies on the fly.
_OPEN_BLOCKS: ContextVar[tuple[tuple[object, list[Any]], ...]] = ContextVar(
    "resilient_open_blocks", default=()
)

# Every owner's open entries, oldest first, whatever context entered them (the deque is
# the owner's ``_open_entries``): a block whose exit runs in another context (a generator
# resumed on a worker thread by anyio.to_thread, or closed by the garbage collector in
# another task) still gives back exactly one entry's token. An entry is a one-item list
# ``[token]``; whoever pops the item (one C call, atomic) gives that token back, so two
# exits never take the same entry, and no lock is needed.


def _entries(owner: Any) -> deque[list[Any]]:
    try:
        return owner._open_entries  # type: ignore[no-any-return]
    except AttributeError:  # the first block: setdefault makes racing threads agree
        return owner.__dict__.setdefault("_open_entries", deque())  # type: ignore[no-any-return]


def push_block(owner: object, token: object) -> None:
    """Remember ``owner``'s token for an open ``with`` block."""
    entry = [token]
    _entries(owner).append(entry)
    blocks = _OPEN_BLOCKS.get()
    if blocks:  # entries an exit elsewhere took already: gone from here too, not kept
        blocks = tuple(block for block in blocks if block[1])
    _OPEN_BLOCKS.set((*blocks, (owner, entry)))


def pop_block(owner: object) -> Any:
    """The token of ``owner``'s innermost open ``with`` block in this context, forgotten.

    A block entered in another context (its exit runs elsewhere) takes the oldest entry
    of ``owner`` that no exit has taken yet: every entry is given back exactly once.
    Entries of this context that an exit elsewhere took already are dropped on the way.
    """
    blocks = _OPEN_BLOCKS.get()
    entries = _entries(owner)
    for i in range(len(blocks) - 1, -1, -1):
        if blocks[i][0] is owner:
            entry = blocks[i][1]
            blocks = blocks[:i] + blocks[i + 1 :]
            _OPEN_BLOCKS.set(blocks)
            try:
                token = entry.pop()  # the usual case: ours, still open
            except IndexError:  # an exit elsewhere took it: look further, then astray
                continue
            try:
                entries.remove(entry)  # (one taken entry, [], like any other)
            except ValueError:  # a stray exit took it out of the deque first
                pass
            return token
    while entries:
        try:
            return entries.popleft().pop()
        except IndexError:  # taken already (or another exit emptied the deque first)
            continue
    raise RuntimeError(f"{owner!r}: __exit__ without a matching __enter__")


_GENERATOR = CO_GENERATOR | CO_ASYNC_GENERATOR


def _is_async(owner: object, fn: object) -> bool:
    """Whether ``owner`` may guard ``fn`` with an async driver; TypeError if not at all.

    A function or bound method answers by its code flags, a few attribute reads, where
    the inspect helpers cost a microsecond; call() asks this on every call.
    """
    code = getattr(fn, "__code__", None)
    if isinstance(code, CodeType) and "_is_coroutine_marker" not in getattr(fn, "__dict__", ()):
        flags = code.co_flags
        generator = bool(flags & _GENERATOR)
        is_async = bool(flags & CO_COROUTINE)
    elif callable(fn):  # a partial, a class, a builtin, a callable object
        inner: Any = fn
        while isinstance(inner, functools.partial):
            inner = inner.func
        code = getattr(inner, "__code__", None)
        generator = isinstance(code, CodeType) and bool(code.co_flags & _GENERATOR)
        is_async = is_async_callable(fn)
    else:
        raise UsageError(f"{type(owner).__name__} guards callables, not {fn!r}")
    if generator:
        raise UsageError(
            f"{type(owner).__name__} cannot guard the generator function {fn!r}: calling"
            " it only creates the generator; guard the code that consumes it instead"
        )
    return is_async


def returned_coroutine(fn: object, coroutine: Any) -> UsageError:
    """The error for a plain function that returned a coroutine to a sync call: it would
    be handed back unawaited and counted a success. (Sync wrappers check the result's
    class, one comparison; this closes the coroutine so it warns of nothing.)"""
    coroutine.close()
    return UsageError(
        f"{fn!r} returned a coroutine to a sync call, which cannot await it: guard the"
        " async def itself, or use 'await policy.call_async(fn, ...)'"
    )


class Decorates:
    """Mixin: the decorator and call forms of any policy, from two wrapper factories.

    A subclass provides ``_wrap_sync(fn)`` and ``_wrap_async(fn)``, which return the
    guarded callable for a sync and an async ``fn``; this class picks one once, at
    decoration, handles methods, classmethods and staticmethods, keeps the wrapped
    function's identity, and refuses what cannot be guarded (generators, non-callables).
    """

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        raise NotImplementedError

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        raise NotImplementedError

    # -- decorator ------------------------------------------------------------------

    @overload
    def __call__(self, fn: classmethod[T, P, R]) -> classmethod[T, P, R]: ...
    @overload
    def __call__(self, fn: staticmethod[P, R]) -> staticmethod[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Any) -> Any:
        """Guard ``fn``: every call goes through this policy."""
        if isinstance(fn, (classmethod, staticmethod)):
            return type(fn)(self(fn.__func__))
        wrap = self._wrap_async if _is_async(self, fn) else self._wrap_sync
        return functools.update_wrapper(wrap(fn), fn)

    # -- plain call -----------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through this policy."""
        if _is_async(self, fn):
            raise UsageError(
                f"{fn!r} is async: calling it only creates a coroutine, so use"
                f" 'await {type(self).__name__.lower()}.call_async(fn, ...)'"
            )
        return self._wrap_sync(fn)(*args, **kwargs)

    async def call_async(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through this policy.

        ``fn`` may also be a plain function that returns an awaitable (a lambda around a
        coroutine call); one that returns anything else raises :class:`UsageError`,
        which no policy counts, retries or replaces.
        """
        if not _is_async(self, fn):
            fn = awaiting(fn)
        return await self._wrap_async(fn)(*args, **kwargs)


def awaiting(fn: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
    async def awaited(*args: P.args, **kwargs: P.kwargs) -> Any:
        awaitable = fn(*args, **kwargs)
        if not isinstance(awaitable, Awaitable):
            raise UsageError(
                f"call_async({fn!r}): it returned {awaitable!r}, which cannot be awaited;"
                " use call() for a sync function"
            )
        return await awaitable

    return awaited


class Later:
    """What an async block form awaits before it goes on: a queued admission, an async
    handler, a checkpoint. (A sync form never meets one.)"""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable


class BlockForms:
    """Mixin: ``with policy:`` and ``async with policy:``, written once.

    A policy gives ``_enter_block(asynchronous)``, the token of a block that begins (for
    an async block, or a :class:`Later` whose awaited value is the token), and
    ``_exit_block(token, exc, asynchronous)``, True to swallow ``exc`` (or a Later whose
    awaited value says so). Tokens are kept per block, nested and across contexts, by
    :func:`push_block`/:func:`pop_block`; a policy whose blocks need none sets
    ``_BLOCK_TOKENS = False``.
    """

    _BLOCK_TOKENS = True

    def _enter_block(self, asynchronous: bool) -> object:
        raise NotImplementedError

    def _exit_block(self, token: Any, exc: BaseException | None, asynchronous: bool) -> object:
        raise NotImplementedError

    def __enter__(self) -> None:
        token = self._enter_block(False)
        if self._BLOCK_TOKENS:
            push_block(self, token)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        token = pop_block(self) if self._BLOCK_TOKENS else None
        return bool(self._exit_block(token, exc, False))

    async def __aenter__(self) -> None:
        token = self._enter_block(True)
        if token.__class__ is Later:
            token = await token.awaitable
        if self._BLOCK_TOKENS:
            push_block(self, token)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        token = pop_block(self) if self._BLOCK_TOKENS else None
        outcome = self._exit_block(token, exc, True)
        if outcome.__class__ is Later:
            outcome = await outcome.awaitable
        return bool(outcome)


class Propagates(BlockForms):
    """The block forms of a policy that never swallows the block's exception (a guard, a
    Timeout), so typed: a ``return`` inside its block needs no other after it."""

    if TYPE_CHECKING:

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> Literal[False]: ...

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> Literal[False]: ...


class GuardForms(Propagates, Decorates):
    """Mixin: every form of a guard, from its ``_state``, ``_admit`` and ``_exit``.

    Per-call state (the token) lives on the stack of the call, or for the
    context-manager form in a context variable, never on the shared guard.
    """

    _state: Gate

    def _admit(self, state: Any) -> object:
        raise NotImplementedError

    def _exit(self, token: Any, exc: BaseException | None, result: object) -> str | None:
        """Record the outcome; "failure" if a returned value counts as one (else None)."""
        raise NotImplementedError

    def _wait(self, state: Any) -> object:
        raise NotImplementedError

    async def _wait_async(self, state: Any) -> object:
        raise NotImplementedError

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_driver(self, fn)

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_driver(self, fn)

    # -- context manager ------------------------------------------------------------

    def _enter_block(self, asynchronous: bool) -> object:
        state: Any = self._state
        if state.fast:
            return state
        if state.meter is not None:
            return _timed_block(self, state, asynchronous)
        token = self._admit(state)
        if token is MUST_WAIT:
            return Later(self._wait_async(state)) if asynchronous else self._wait(state)
        return token

    def _exit_block(self, token: Any, exc: BaseException | None, asynchronous: bool) -> object:
        if token.__class__ is _Timed:
            token.exit(self, exc)
        else:
            self._exit(token, exc, NO_RESULT)
        return False

    # A sync guard's block is a hot path (``with breaker:`` around every call): the two
    # methods above inlined, a frame less each way; the async forms are BlockForms' own.

    def __enter__(self) -> None:
        state: Any = self._state
        if state.fast:
            token = state
        elif state.meter is not None:
            token = _timed_block(self, state, False)
        else:
            token = self._admit(state)
            if token is MUST_WAIT:
                token = self._wait(state)
        push_block(self, token)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        token = pop_block(self)
        if token.__class__ is _Timed:
            token.exit(self, exc)
        else:
            self._exit(token, exc, NO_RESULT)
        return False


class _Timed:
    """A metered block's token: the guard's own, and when the block began."""

    __slots__ = ("meter", "started", "token")

    def __init__(self, meter: Meter, started: float, token: object) -> None:
        self.meter, self.started, self.token = meter, started, token

    def exit(self, guard: GuardForms, exc: BaseException | None) -> None:
        judged = guard._exit(self.token, exc, NO_RESULT)
        outcome = judged or outcome_of(exc)  # (judged: a returned value's, only)
        self.meter.call(guard, outcome, perf_counter() - self.started, exc)


def _timed_block(guard: GuardForms, state: Any, asynchronous: bool) -> object:
    """A metered block's admission: its token, timed from before any queueing."""
    meter, started = state.meter, perf_counter()
    token = guard._admit(state)
    if token is MUST_WAIT:
        if asynchronous:

            async def queued() -> _Timed:
                return _Timed(meter, started, await guard._wait_async(state))

            return Later(queued())
        token = guard._wait(state)
    return _Timed(meter, started, token)


def outcome_of(exc: BaseException | None) -> str:
    """A call's outcome by how it ended: returned (success), raised an error (failure),
    or cancelled (any BaseException that is not an Exception: cancellation,
    KeyboardInterrupt, SystemExit)."""
    if exc is None:
        return "success"
    return "failure" if isinstance(exc, Exception) else "cancelled"


# The two drivers: admit, run, report. Every form of every guard goes through one of
# them; the decorator builds its closure once, call() and call_async() build one per call.


def _sync_driver(guard: GuardForms, fn: Callable[P, R]) -> Callable[P, R]:
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        token: Any = guard._state
        fast = token.fast
        if not fast:
            refusal = token.refusal
            if refusal is not None:
                now, until, counted, error = refusal
                if now() < until:
                    counted()
                    raise error()
            state = token
            meter = state.meter  # (read off the fast path only: a metered state is slow)
            if meter is not None:
                started = perf_counter()  # (queueing included)
            token = guard._admit(state)
            if token is MUST_WAIT:
                token = guard._wait(state)
                if token.__class__ is Answered:  # answered in the call's place
                    if meter is not None:
                        meter.call(guard, "success", perf_counter() - started, None)
                    return token.value  # type: ignore[no-any-return]
        try:
            result = fn(*args, **kwargs)
            if result.__class__ is CoroutineType:
                raise returned_coroutine(fn, result)
        except BaseException as exc:
            if token is not None:
                guard._exit(token, exc, None)
            if not fast and meter is not None:
                meter.call(guard, outcome_of(exc), perf_counter() - started, exc)
            raise
        if fast:
            token.passed(result)  # read now: it may have changed while the call ran
        elif meter is None:
            if token is not None:
                guard._exit(token, None, result)
        else:  # the guard says if a returned value failed (a breaker's failure_result)
            outcome = (token is not None and guard._exit(token, None, result)) or "success"
            meter.call(guard, outcome, perf_counter() - started, None)
        return result

    return guarded


def _async_driver(
    guard: GuardForms, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        token: Any = guard._state
        fast = token.fast
        if not fast:
            refusal = token.refusal
            if refusal is not None:
                now, until, counted, error = refusal
                if now() < until:
                    counted()
                    raise error()
            state = token
            meter = state.meter  # (read off the fast path only: a metered state is slow)
            if meter is not None:
                started = perf_counter()  # (queueing included)
            token = guard._admit(state)
            if token is MUST_WAIT:
                token = await guard._wait_async(state)
                if token.__class__ is Answered:  # answered in the call's place
                    if meter is not None:
                        meter.call(guard, "success", perf_counter() - started, None)
                    return token.value  # type: ignore[no-any-return]
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                guard._exit(token, exc, None)
            if not fast and meter is not None:
                meter.call(guard, outcome_of(exc), perf_counter() - started, exc)
            raise
        if fast:
            token.passed(result)  # read now: it may have changed while the call ran
        elif meter is None:
            if token is not None:
                guard._exit(token, None, result)
        else:  # the guard says if a returned value failed (a breaker's failure_result)
            outcome = (token is not None and guard._exit(token, None, result)) or "success"
            meter.call(guard, outcome, perf_counter() - started, None)
        return result

    return guarded


# -- the loop driver: attempt, decide, wait -------------------------------------------------
#
# A *looping* policy (Retry; Fallback is one that never goes round) writes its decisions
# once, without I/O, and this driver runs them on threads, asyncio and trio: the only
# code of a loop that knows sync from async.

#: What ``next_wait`` answers when the failure is to be replaced by ``answer(exc)``.
ANSWER: float = -1.0


class Plan:
    """A looping policy's configuration, read whole at the start of a call (a reload
    never mixes two in one call). All of it is read on the happy path: keep it cheap.
    A policy gives ``decides`` and ``calls``; the rest defaults to a loop that neither
    notes its start, nor judges results, nor waits (Fallback's)."""

    __slots__ = ()

    #: whether ``begin()`` must run before a first attempt (it reads a clock, counts)
    begins = False
    #: whether a returned value may be a failure (``result_fails``)
    checks_results = False

    def begin(self) -> Any:
        """Before a first attempt: what ``calls()`` is given back as ``started`` (a
        Retry: when it started; 0.0 when nothing measures from it)."""
        return 0.0

    def decides(self, exc: Exception) -> bool:
        """Whether ``exc`` is this policy's to decide on; if not it passes at once."""
        raise NotImplementedError

    def result_fails(self, calls: Attempts | None, result: object) -> bool:
        """Whether a returned value is a failure (``calls`` is None on a first attempt)."""
        return False

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError  # a plan whose attempts wait says how

    async def sleep_async(self, seconds: float) -> None:
        raise NotImplementedError

    def calls(
        self,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float,
    ) -> Attempts:
        """The per-call decisions, made when a first attempt has failed."""
        raise NotImplementedError


class Attempts:
    """One call's attempts, on the stack of that call, never on the shared policy."""

    __slots__ = ("attempt", "idle")

    #: whether an async call awaits what ``answer`` gives, when it is awaitable
    awaits = False
    #: whether a returned value that is retried must be let go of first (``release``):
    #: an HTTP response holds a connection until it is closed
    releases = False

    def __init__(self) -> None:
        #: the attempt that has just ended; the driver counts it up before each new one
        self.attempt = 1
        #: seconds waited so far
        self.idle = 0.0

    def next_wait(self, exc: BaseException | None, result: object) -> float | None:
        """After a failed attempt (``exc``, or a ``result`` that fails): seconds to wait
        before the next one; None to give up (re-raise ``exc``, or return ``result``);
        :data:`ANSWER` to answer with ``answer(exc)`` instead. No I/O."""
        raise NotImplementedError

    def answer(self, exc: BaseException | None, result: object) -> Any:
        """The value that replaces a failure, after :data:`ANSWER`."""
        raise NotImplementedError

    def release(self, result: object) -> None:
        """Let go of a returned value that failed and is retried (when ``releases``)."""

    async def release_async(self, result: object) -> None:
        self.release(result)


class MeteredPlan(Plan):
    """A looping policy's plan while a meter is on: ``policy``'s own plan, ``inner``,
    whose every call ends through :class:`_MeteredAttempts` (it always "decides", and
    always judges results), so the driver itself needs no branch for meters: an
    unmetered call pays nothing for them."""

    __slots__ = ("attempts_metered", "inner", "meter", "policy")

    begins = True
    checks_results = True

    def __init__(self, inner: Plan, policy: Any, meter: Meter, attempts_metered: bool) -> None:
        self.inner = inner
        self.policy = policy
        self.meter = meter
        self.attempts_metered = attempts_metered  # a Retry's attempts each have a duration

    def begin(self) -> tuple[Any, float]:
        """The policy's own start (its ``calls()`` gets it), and ours, for durations."""
        inner = self.inner
        return (inner.begin() if inner.begins else 0.0), perf_counter()

    def decides(self, exc: Exception) -> bool:
        return True  # the metered attempts ask the policy's own plan

    def result_fails(self, calls: Attempts | None, result: object) -> bool:
        return True  # ... and judge the result by it

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)

    async def sleep_async(self, seconds: float) -> None:
        await self.inner.sleep_async(seconds)

    def calls(
        self,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: Any,
    ) -> Attempts:
        own, ours = started
        return _MeteredAttempts(self, fn, args, kwargs, own, ours)


class _MeteredAttempts(Attempts):
    """One metered call: the policy's own attempts (made at the first failure, as the
    driver would), each attempt's end and the call's told to the meter."""

    __slots__ = ("answering", "args", "began", "fn", "inner", "kwargs", "own", "plan", "started")

    def __init__(
        self,
        plan: MeteredPlan,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        own: Any,
        started: float,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.own = own  # what the policy's own begin() gave, for its calls()
        self.started = self.began = started  # the call's start, the attempt's (ours)
        self.inner: Attempts | None = None
        self.answering = False  # answer() gives the policy's answer, not a result

    @property
    def releases(self) -> bool:  # type: ignore[override]
        return self.inner is not None and self.inner.releases

    @property
    def awaits(self) -> bool:  # type: ignore[override]
        return self.answering and self.inner is not None and self.inner.awaits

    def next_wait(self, exc: BaseException | None, result: object) -> float | None:
        plan = self.plan
        own = plan.inner
        now = perf_counter()
        if exc is not None:
            decided = isinstance(exc, Exception) and own.decides(exc)
        else:
            calls = self.inner
            decided = own.checks_results and own.result_fails(calls, result)
        if not decided:  # the attempt succeeded (or failed in a way not the policy's)
            self._attempt(now, exc)
            self._ended(now, exc, outcome_of(exc))
            if exc is not None:
                return None  # re-raised as it is
            self.answering = False
            return ANSWER  # answered with the result itself
        inner = self.inner
        if inner is None:
            inner = self.inner = own.calls(self.fn, self.args, self.kwargs, self.own)
        inner.attempt, inner.idle = self.attempt, self.idle
        wait = inner.next_wait(exc, result)
        self._attempt(now, exc, "failure")
        if wait is None:
            self._ended(now, exc, "failure")
        elif wait == ANSWER:
            self.answering = True  # told once the answer is made (it may fail)
        else:
            self.began = now + wait
        return wait

    def answer(self, exc: BaseException | None, result: object) -> Any:
        if not self.answering:
            return result
        assert self.inner is not None
        try:
            answer = self.inner.answer(exc, result)
        except BaseException as error:
            self._ended(perf_counter(), error, outcome_of(error))
            raise
        if self.inner.awaits and isinstance(answer, Awaitable):
            return self._awaited(answer, exc)
        self._ended(perf_counter(), exc, "fallback")
        return answer

    async def _awaited(self, answer: Awaitable[Any], exc: BaseException | None) -> Any:
        """An async answer (a Fallback's async handler): told once it is made."""
        try:
            value = await answer
        except BaseException as error:
            self._ended(perf_counter(), error, outcome_of(error))
            raise
        self._ended(perf_counter(), exc, "fallback")
        return value

    def succeeded(self, now: float) -> None:
        """A block-form attempt (``with attempt:``) ended without an error: done."""
        self._attempt(now, None)
        self._ended(now, None, "success")

    def release(self, result: object) -> None:
        assert self.inner is not None
        self.inner.release(result)

    async def release_async(self, result: object) -> None:
        assert self.inner is not None
        await self.inner.release_async(result)

    def _attempt(self, now: float, exc: BaseException | None, outcome: str = "") -> None:
        plan = self.plan
        if plan.attempts_metered:
            outcome = outcome or outcome_of(exc)
            plan.meter.attempt(plan.policy, outcome, max(0.0, now - self.began), exc)

    def _ended(self, now: float, exc: BaseException | None, outcome: str) -> None:
        plan = self.plan
        plan.meter.call(plan.policy, outcome, now - self.started, exc)


class LoopForms(Decorates):
    """Mixin: the decorator and call forms of a looping policy, from its ``_loop``: its
    plan, or while a meter is on that plan metered (``_driven``)."""

    _loop: Plan

    def _driven(self, plan: Plan) -> Plan:
        """What the drivers run for ``plan``: itself, or it metered while a meter is on."""
        meter: Meter | None = self._metered()  # type: ignore[attr-defined]
        if meter is None:
            return plan
        return MeteredPlan(plan, self, meter, attempts_metered=self.KIND == "retry")  # type: ignore[attr-defined]

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _sync_loop(self, fn)

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        return _async_loop(self, fn)


def _sync_loop(policy: LoopForms, fn: Callable[P, R]) -> Callable[P, R]:
    def looped(*args: P.args, **kwargs: P.kwargs) -> R:
        plan = policy._loop
        started = plan.begin() if plan.begins else 0.0
        try:
            result: Any = fn(*args, **kwargs)
            if result.__class__ is CoroutineType:
                raise returned_coroutine(fn, result)
        except Exception as failure:
            if not plan.decides(failure):
                raise
            exc: Exception | None = failure
            result = None
        else:
            if not (plan.checks_results and plan.result_fails(None, result)):
                return result  # type: ignore[no-any-return]
            exc = None
        # Out of the except block: later attempts must not chain to the first.
        calls = plan.calls(fn, args, kwargs, started)
        while True:
            wait = calls.next_wait(exc, result)
            if wait is None or wait == ANSWER:
                try:
                    if wait is None:
                        if exc is not None:
                            raise exc
                        return result  # type: ignore[no-any-return]
                    if exc is None:
                        return calls.answer(exc, result)  # type: ignore[no-any-return]
                    try:  # answered while handling it, as in an except block: a bare
                        raise exc  # raise, logger.exception(), chaining all see it
                    except BaseException:
                        return calls.answer(exc, result)  # type: ignore[no-any-return]
                finally:  # no frame -> traceback -> exception -> frame cycle for the GC
                    exc = None
            if exc is None and calls.releases:
                calls.release(result)
            if wait > 0:
                plan.sleep(wait)
                calls.idle += wait
            calls.attempt += 1
            try:
                result, exc = fn(*args, **kwargs), None
                if result.__class__ is CoroutineType:
                    raise returned_coroutine(fn, result)
            except Exception as failure:
                if not plan.decides(failure):
                    raise
                exc = failure
                continue
            if not (plan.checks_results and plan.result_fails(calls, result)):
                return result  # type: ignore[no-any-return]

    return looped


async def _answer(calls: Attempts, exc: BaseException | None, result: object) -> Any:
    answer = calls.answer(exc, result)
    if calls.awaits and isinstance(answer, Awaitable):
        answer = await answer
    return answer


def _async_loop(
    policy: LoopForms, fn: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    async def looped(*args: P.args, **kwargs: P.kwargs) -> R:
        plan = policy._loop
        started = plan.begin() if plan.begins else 0.0
        try:
            result: Any = await fn(*args, **kwargs)
        except Exception as failure:
            if not plan.decides(failure):
                raise
            exc: Exception | None = failure
            result = None
        else:
            if not (plan.checks_results and plan.result_fails(None, result)):
                return result  # type: ignore[no-any-return]
            exc = None
        calls = plan.calls(fn, args, kwargs, started)
        while True:
            wait = calls.next_wait(exc, result)
            if wait is None or wait == ANSWER:
                try:
                    if wait is None:
                        if exc is not None:
                            raise exc
                        return result  # type: ignore[no-any-return]
                    if exc is None:
                        return await _answer(calls, exc, result)  # type: ignore[no-any-return]
                    try:  # answered while handling it, as in an except block: a bare
                        raise exc  # raise, logger.exception(), chaining all see it
                    except BaseException:
                        return await _answer(calls, exc, result)  # type: ignore[no-any-return]
                finally:  # no frame -> traceback -> exception -> frame cycle for the GC
                    exc = None
            if exc is None and calls.releases:
                await calls.release_async(result)
            if wait > 0:
                await plan.sleep_async(wait)
                calls.idle += wait
            calls.attempt += 1
            try:
                result, exc = await fn(*args, **kwargs), None
            except Exception as failure:
                if not plan.decides(failure):
                    raise
                exc = failure
                continue
            if not (plan.checks_results and plan.result_fails(calls, result)):
                return result  # type: ignore[no-any-return]

    return looped


class AttemptForms:
    """Mixin: the block form of a looping policy, ``for attempt in policy: with attempt:``
    (``async for`` in async code, whose waits are async and cancellable)."""

    _loop: Plan

    def __iter__(self) -> Iterator[Attempt]:
        return _Blocks(self._loop)

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return _Blocks(self._loop)


class Attempt:
    """One attempt of the block form: ``with attempt:`` around the code to retry.

    Leaving the block with an exception that will be retried suppresses it (the loop
    then waits and goes round again); one that will not is let through (with a note
    saying why, when the retry gave up).
    """

    __slots__ = ("_blocks", "number")

    def __init__(self, blocks: _Blocks, number: int) -> None:
        self._blocks = blocks
        self.number = number

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._blocks.ended(exc)

    # ``async with attempt:`` works too (the same block: nothing in it awaits).
    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._blocks.ended(exc)

    def __repr__(self) -> str:
        return f"<Attempt {self.number}>"


class _Blocks:
    """The iterator behind ``for attempt in policy`` and ``async for attempt in policy``."""

    __slots__ = ("calls", "done", "number", "plan", "started", "wait")

    started: Any  # (what the plan's begin() gave)

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.calls: Attempts | None = None  # made on the first failure, as by the decorator
        self.number = 0
        self.done = False
        self.wait: float | None = None  # set when an attempt failed and will be retried
        self.started = 0.0

    def _next(self) -> Attempt:
        if self.done:
            raise StopIteration
        if self.number == 0:
            self.started = self.plan.begin() if self.plan.begins else 0.0
        elif self.wait is None:  # the last attempt was left without failing: done
            self.done = True
            raise StopIteration
        self.number += 1
        self.wait = None
        return Attempt(self, self.number)

    def __iter__(self) -> Iterator[Attempt]:
        return self

    def __next__(self) -> Attempt:
        if self.wait:
            self.plan.sleep(self.wait)
            self._waited(self.wait)
        return self._next()

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return self

    async def __anext__(self) -> Attempt:
        if self.wait:
            await self.plan.sleep_async(self.wait)
            self._waited(self.wait)
        try:
            return self._next()
        except StopIteration:
            raise StopAsyncIteration from None

    def _waited(self, seconds: float) -> None:
        if self.calls is not None:
            self.calls.idle += seconds

    def ended(self, exc: BaseException | None) -> bool:
        """An attempt's block ended: True to swallow ``exc`` and go round again."""
        if self.done or exc is None or not isinstance(exc, Exception):
            plan = self.plan
            if not self.done and plan.__class__ is MeteredPlan:
                if self.calls is None:  # (made now: the attempt's end is told by it)
                    self.calls = plan.calls(None, (), {}, self.started)
                assert isinstance(self.calls, _MeteredAttempts)
                if exc is None:
                    self.calls.succeeded(perf_counter())
                else:
                    self.calls._ended(perf_counter(), exc, outcome_of(exc))
            self.done = True  # (an attempt kept past the loop's end retries nothing)
            return False
        if not self.plan.decides(exc):
            self.done = True
            return False
        if self.calls is None:
            self.calls = self.plan.calls(None, (), {}, self.started)
        self.calls.attempt = self.number
        wait = self.calls.next_wait(exc, None)
        if wait is None or wait == ANSWER:
            self.done = True
            return False
        self.wait = wait
        return True
