"""RateLimiter: at most ``rate`` calls per ``per`` seconds, with bursts up to ``burst``.

GCRA (the generic cell rate algorithm): one number, the theoretical arrival time
``tat`` of the next call were calls spaced evenly, ``interval = per / rate`` apart. A
call at ``now`` is admitted if ``tat - now <= tolerance`` (``(burst - 1) * interval``),
and moves ``tat`` on by one interval. No window edges (a window that resets on the
second lets two bursts through around the reset), no refill task, and in any span of T
seconds at most ``burst + rate * T / per`` calls are admitted.

A call over the rate is refused with :class:`RateLimitedError`, whose ``retry_after`` is
exactly when it would have been admitted; with ``max_wait`` it reserves its turn instead
and sleeps until then (through the clock, so a ManualClock's tests take no time). Turns
are handed out in the order calls reach the lock: FIFO. A waiting call that is cancelled
gives its turn back when no later call has reserved one; otherwise the turn goes unused
(the limiter errs towards fewer calls, never more).

The lock is held for a few arithmetic operations, never while a call runs or waits; it
is the one way to move ``tat`` exactly with or without a GIL (a read-modify-write of a
float is several bytecodes).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from resilient._core.configuration import events, parse, testmode
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.registry import Configured
from resilient._core.execution import deadline as dl
from resilient._core.execution.drivers import MUST_WAIT, GuardForms, Refusal
from resilient._core.state.clock import SYSTEM_CLOCK, Clock
from resilient._core.state.primitives import counter
from resilient._errors import ConfigError, RateLimitedError

if TYPE_CHECKING:
    from resilient.redis import RedisBackend

__all__ = ["OPTIONS", "RateLimiter", "RateLimiterMetrics"]


def _calls_rate(value: Any) -> float:
    """Calls per period: more than 0, at most a million (more is a typo, not a limit)."""
    number = opt.real(value)
    if not 0.0 < number <= opt.MAX_COUNT:
        raise opt.Invalid
    return number


opt.written(_calls_rate, parse.parse_float, "a decimal number, e.g. 100")


OPTIONS = (
    opt.Option(
        "rate",
        opt.REQUIRED,
        _calls_rate,
        "a number > 0, at most 1,000,000",
        "How many calls may start per `per` seconds, on average.",
    ),
    opt.Option(
        "per",
        1.0,
        opt.time_span,
        "seconds from 0.001 to a year",
        "The period `rate` is counted over.",
    ),
    opt.Option(
        "burst",
        None,
        opt.optional(opt.positive_int),
        "None, or a whole number from 1 to 1,000,000",
        "How many calls may start at once after a quiet spell. None: `rate` (at least 1).",
    ),
    opt.Option(
        "max_wait",
        0.0,
        opt.duration(allow_zero=True),
        "seconds >= 0, a finite number",
        "How long a call over the rate may wait for its turn; 0 refuses it at once. A"
        " call whose turn is further off is refused at once, without waiting. An"
        " enclosing `resilient.deadline` that ends sooner wins.",
    ),
    opt.WAITING_CLOCK,
    opt.backend(
        "Where a fleet of processes shares the limit (docs/fleet.md): every call asks"
        " Redis (one round trip); None: this process alone."
    ),
    opt.Option(
        "fleet_size",
        1,
        opt.positive_int,
        "a whole number from 1 to 1,000,000",
        "How many processes share the limit through `backend`: while Redis is away each"
        " admits `rate / fleet_size`, never the whole rate. No effect without a backend.",
    ),
)
_OPTION_NAMES = frozenset(option.name for option in OPTIONS)


class _Turn:
    """A turn a call waits for: the origin ``tat`` was kept from then and the plan's
    generation (a reload's), the ``tat`` it left, and the interval it took."""

    __slots__ = ("end", "generation", "interval", "origin")

    def __init__(self, origin: float, generation: int, end: float, interval: float) -> None:
        self.origin, self.generation, self.end, self.interval = origin, generation, end, interval


class RateLimiterMetrics(NamedTuple):
    """A rate limiter's state at one instant."""

    rate: float
    per: float
    burst: int
    available: int  #: calls that could start now without waiting
    waiting: int  #: calls waiting for their turn now
    rejected: int  #: calls refused since the limiter was made (or reset)


class _Fleet:
    """A limiter's share of a fleet: the backend, the key's name, and the global
    schedule the fleet's GCRA keeps (the plan's own is the local share's)."""

    __slots__ = ("backend", "call", "interval", "name", "tolerance")

    def __init__(self, backend: RedisBackend, name: str, interval: float, tolerance: float):
        self.backend, self.name = backend, name
        self.interval, self.tolerance = interval, tolerance
        # The script's key and arguments, made once (checked: a bad one raises now).
        self.call = backend._gcra_call(name, interval, tolerance, lean=True)


class _Plan:
    """What a call reads, switched whole by a reload; also the gate the drivers read.

    With a backend (``fleet``), ``interval``, ``tolerance`` and ``due`` are this
    process's share (``rate / fleet_size``), the local schedule while Redis is away, and
    ``early`` is -inf: no call is admitted locally before Redis is asked."""

    __slots__ = (
        "burst",
        "clock",
        "due",
        "early",
        "fast",
        "fleet",
        "fleet_size",
        "interval",
        "max_wait",
        "meter",
        "now",
        "per",
        "rate",
        "tolerance",
    )

    refusal: Refusal | None = None

    @staticmethod
    def passed(result: object) -> None:
        """Switched off (fast): nothing to record."""

    def __init__(self, settings: Settings, meter: events.Meter | None) -> None:
        self.rate: float = settings["rate"]
        self.per: float = settings["per"]
        burst = settings["burst"]
        self.burst: int = max(1, int(self.rate)) if burst is None else burst
        self.interval = self.per / self.rate
        # How early a call may be: burst - 1 intervals (a whole burst at once); ``early``
        # adds a billionth of one more, so that float rounding (0.1 + 0.2 > 0.3) never
        # refuses a call that is exactly on time.
        self.tolerance = (self.burst - 1) * self.interval
        self.early = self.due = self.tolerance + self.interval * 1e-9
        self.fleet: _Fleet | None = None
        self.fleet_size = 1
        self.max_wait: float = settings["max_wait"]
        self.clock: Clock = settings["clock"] or SYSTEM_CLOCK
        self.now = self.clock.monotonic
        self.fast = not settings.enabled
        self.meter = meter

    def share(self, fleet: _Fleet, fleet_size: int) -> None:
        """Make this a fleet's plan: Redis decides, and while it is away the local
        schedule admits this process's share, ``rate / fleet_size`` with a burst of
        ``burst // fleet_size`` (at least 1): the fleet together never more than
        the whole."""
        self.fleet, self.fleet_size = fleet, fleet_size
        burst = max(1, self.burst // fleet_size)
        self.interval = fleet.interval * fleet_size
        self.tolerance = (burst - 1) * self.interval
        self.due = self.tolerance + self.interval * 1e-9
        self.early = -math.inf


class RateLimiter(Configured, GuardForms):
    """At most ``rate`` calls per ``per`` seconds, up to ``burst`` at once; over it, a call
    is refused with RateLimitedError, or waits its turn up to ``max_wait`` seconds.

    A decorator for ``def`` and ``async def``, ``with``/``async with``, and
    ``call``/``call_async``. A reload that changes the rate keeps the calls already
    owed: a limiter that was just emptied stays empty, at the new pace.
    """

    KIND = "rate_limiter"
    OPTIONS = OPTIONS
    _plan: _Plan
    _state: _Plan  # the same object: what the drivers read

    def __init__(
        self,
        rate: float,
        per: opt.Duration = 1.0,
        *,
        burst: int | None = None,
        max_wait: opt.Duration = 0.0,
        name: str | None = None,
        clock: Clock | None = None,
        backend: RedisBackend | str | None = None,
        fleet_size: int = 1,
    ) -> None:
        given = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        settings = self._configure(name, given)
        self._lock = threading.Lock()
        # ``tat`` is kept from an origin on the clock, moved up to ``now`` whenever the
        # limiter is idle: its sums stay small numbers, exact to far below an interval
        # even when the clock reads 1e9 (a float's step there is 1e-7 s).
        self._origin = 0.0
        self._tat = -math.inf  # no call yet: the first finds a full burst
        self._generation = 0  # plans installed: a turn given under another is not given back
        self._waiting = 0
        self._rejected = counter()  # (counted without the lock: a refusal is a hot path)
        self._register(settings)

    def _compile(self, settings: Settings) -> _Plan:
        plan = _Plan(settings, self._metered())
        if not plan.interval <= opt.MAX_SPAN:
            option, value = settings.blame("rate")
            per = "{}={!r}".format(*settings.blame("per"))
            raise ConfigError(
                option,
                value,
                f"at least one call a year ({per}): slower is no limit, but a typo",
                owner=self._owner(),
            )
        if settings["backend"] is not None:
            fleet = self._fleet(settings, plan)
            if fleet is not None:  # (None: a DEFAULT variable's, and this one is unnamed)
                plan.share(fleet, settings["fleet_size"])
        return plan

    def _fleet(self, settings: Settings, plan: _Plan) -> _Fleet | None:
        """The fleet of a plan with a backend (a URL made one: resilient.redis loads)."""
        from resilient.redis import resolve

        backend = resolve(self, settings)
        if backend is None:
            return None
        backend.attach(self)  # (told of outages)
        assert self.name is not None  # (resolve requires it)
        return _Fleet(backend, self.name, plan.interval, plan.tolerance)

    def _switch(self, compiled: _Plan) -> None:
        """Install a plan; the calls owed (how far ``tat`` is ahead of now, on the old
        plan's clock) carry over, each now owed at the new interval, from the new
        clock's now."""
        old = getattr(self, "_plan", None)
        then = None if old is None else old.now()  # (clocks read outside the lock)
        now = compiled.now()
        with self._lock:
            if old is not None and then is not None:
                ahead = self._tat - (then - self._origin)
                tat = ahead / old.interval * compiled.interval if ahead > 0 else -math.inf
                if self._waiting:  # turns given stand on the old schedule: the last of
                    # them may start old.tolerance early, and the next call comes a new
                    # interval after it at the soonest (as if it began the new schedule)
                    last = ahead - old.interval - old.tolerance
                    tat = max(tat, last + compiled.interval + compiled.tolerance)
                self._origin = now
                self._tat = tat
                self._generation += 1
            self._plan = self._state = compiled

    @property
    def rate(self) -> float:
        return self._plan.rate

    @property
    def per(self) -> float:
        return self._plan.per

    @property
    def burst(self) -> int:
        return self._plan.burst

    @property
    def max_wait(self) -> float:
        return self._plan.max_wait

    def __repr__(self) -> str:
        name = "" if self.name is None else f", name={self.name!r}"
        fleet = self._plan.fleet
        if fleet is not None:
            name += f", backend={fleet.backend!r}"
        return (
            f"RateLimiter({self.rate:g}, per={self.per:g}, burst={self.burst},"
            f" max_wait={self.max_wait:g}{name})"
        )

    @property
    def metrics(self) -> RateLimiterMetrics:
        plan, now = self._locked()
        ahead = max(0.0, self._tat - now)
        waiting = self._waiting
        self._lock.release()
        rejected = self._rejected.value
        # Calls that fit before tat - now passes the tolerance.
        room = (plan.due - ahead) / plan.interval
        available = 0 if room < 0 else min(plan.burst, math.floor(room) + 1)
        return RateLimiterMetrics(plan.rate, plan.per, plan.burst, available, waiting, rejected)

    def _health(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "rate": m.rate,
            "per": m.per,
            "burst": m.burst,
            "available": m.available,
            "waiting": m.waiting,
            "rejected": m.rejected,
            **self._fleet_health(),
        }

    def _fleet_health(self) -> dict[str, Any]:
        """With a backend: whether the limit is shared now (else each process admits its
        share), and the share. ``available`` and ``waiting`` are the local share's."""
        fleet = self._plan.fleet
        if fleet is None:
            return {}
        backend = fleet.backend
        return {
            "fleet": {
                "backend": repr(backend),
                "shared": backend._away is None,
                "fleet_size": self._plan.fleet_size,
            }
        }

    def reset(self) -> None:
        """A full burst again, and rejections counted from zero (turns that calls are
        waiting for are kept: they were given)."""
        with self._lock:
            if not self._waiting:
                self._tat = -math.inf
        self._rejected = counter()

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, and nobody waits (the waiting calls were the
        parent's other threads). The child keeps the parent's pace: it was forked from
        the same budget of calls, which it does not get twice."""
        self._lock = threading.Lock()
        self._waiting = 0

    # -- for code that cannot be wrapped ----------------------------------------------

    def try_acquire(self) -> bool:
        """Take a turn if one is due now, never waiting; False if none is (a refusal,
        counted and told like any other). For a loop that skips work over the rate."""
        plan = self._state
        if plan.fast:
            return True
        try:
            if self._admit(plan) is not MUST_WAIT:
                return True
        except RateLimitedError:
            return False
        fleet_plan = self._plan
        if fleet_plan.fleet is not None:
            try:
                if self._ask_fleet(fleet_plan, 0.0):
                    return True
                return self._wait(fleet_plan, 0.0) is None  # Redis away: the local share
            except RateLimitedError:
                return False
        plan, now = self._locked()  # (with max_wait, _admit leaves the refusal to the wait)
        wait = max(self._tat, now) - now - plan.tolerance
        self._lock.release()
        self._refuse(plan, wait)
        return False

    def acquire(self) -> None:
        """Take a turn, waiting for it up to ``max_wait``; RateLimitedError if none comes
        in time. What a call through the limiter does first, for code that cannot be
        wrapped (``with limiter:`` around a block does the same)."""
        plan = self._state
        if not plan.fast and self._admit(plan) is MUST_WAIT:
            self._wait(plan)

    async def acquire_async(self) -> None:
        """:meth:`acquire` for async code: the wait is cancellable (asyncio, trio)."""
        plan = self._state
        if not plan.fast and self._admit(plan) is MUST_WAIT:
            await self._wait_async(plan)

    # -- the guard protocol -----------------------------------------------------------

    def _admit(self, state: _Plan) -> object:
        now = state.now()  # (the clock read outside the lock: it is the user's code)
        lock = self._lock
        lock.acquire()
        try:  # (not ``with``: the admitted path is the hot one, and this is 50 ns less)
            if self._plan is state:
                now -= self._origin
                tat = self._tat
                if tat < now:  # idle: the schedule starts again from now
                    self._origin += now
                    tat = now = 0.0
                if tat - now <= state.early:
                    self._tat = tat + state.interval
                    return None  # nothing to give back: the drivers call no _exit
                wait = tat - now - state.tolerance
            else:
                wait = -1.0  # a reload came between: asked again, by the plan in force
        finally:
            lock.release()
        if state.fleet is not None:  # (off the admitted path: free without a backend)
            return MUST_WAIT  # the fleet decides, in _wait or _wait_async: a round trip
        if wait < 0.0:
            return self._admit(self._plan)
        if state.max_wait:
            return MUST_WAIT
        raise self._refuse(state, wait)

    def _exit(self, token: object, exc: BaseException | None, result: object) -> None:
        """A started call is spent whatever its outcome: nothing to record."""

    def _reserve(self, most: float | None = None) -> tuple[float, _Turn]:
        """Take the next turn if it comes within ``max_wait`` (or ``most``) and the
        deadline: the seconds to wait for it, and the turn (to give it back)."""
        limit, by_deadline = dl.limit(self._plan.max_wait if most is None else most)
        # (the limit first: nothing raises once the turn is taken)
        plan, now = self._locked()
        try:
            tat = self._tat
            if tat < now:
                self._origin += now
                tat = now = 0.0
            wait = tat - now - plan.tolerance
            if tat - now <= plan.due:
                wait = 0.0
            if wait <= limit:
                self._tat = end = tat + plan.interval
                if wait > 0:
                    self._waiting += 1
                return wait, _Turn(self._origin, self._generation, end, plan.interval)
        finally:
            self._lock.release()
        raise self._refuse(plan, wait, self._beyond(plan, limit, by_deadline))

    @staticmethod
    def _beyond(plan: _Plan, limit: float, by_deadline: bool) -> str:
        """Why a call allowed to wait was refused (nothing to say of one that was not)."""
        if by_deadline:
            return f", its turn beyond the enclosing deadline ({limit:.3g}s left)"
        if limit:
            return f", its turn beyond max_wait={plan.max_wait:g}s"
        return ""

    def _locked(self) -> tuple[_Plan, float]:
        """The lock taken, with the plan in force and now from the origin on its clock
        (read before the lock: a clock is the user's code)."""
        lock = self._lock
        while True:
            plan = self._plan
            now = plan.now()
            lock.acquire()
            if self._plan is plan:
                return plan, now - self._origin
            lock.release()

    def _refuse(self, plan: _Plan, wait: float, why: str = "") -> RateLimitedError:
        """A refusal, counted and told (outside the lock: a listener may read metrics)."""
        self._rejected.incr()
        events.refused(self, "rate_limited", plan.now, retry_after=wait)
        # (made by the C constructor alone, args and all: no __init__ frame)
        return RateLimitedError.__new__(RateLimitedError, self.name, wait, why)

    def _give_back(self, turn: _Turn) -> None:
        """A waiting call left before its turn: if it holds the last turn given (and no
        reload or idle spell has come since), the turn is free again; else a later call
        waits for its own, and this one lapses."""
        with self._lock:
            self._waiting -= 1
            if (
                self._generation == turn.generation
                and self._origin == turn.origin
                and self._tat == turn.end
            ):
                self._tat = turn.end - turn.interval

    def _wait(self, state: _Plan, most: float | None = None) -> object:
        plan = self._plan
        if plan.fleet is not None and most is None and self._ask_fleet(plan):
            return None
        wait, turn = self._reserve(most)
        if wait > 0:
            try:
                if not testmode._mode.enabled:
                    self._plan.clock.sleep(wait)
            except BaseException:
                self._give_back(turn)
                raise
            with self._lock:
                self._waiting -= 1
        return None

    async def _wait_async(self, state: _Plan) -> object:
        plan = self._plan
        if plan.fleet is not None and await self._ask_fleet_async(plan):
            return None
        wait, turn = self._reserve()
        if wait > 0:
            try:
                if not testmode._mode.enabled:
                    await self._plan.clock.sleep_async(wait)
            except BaseException:
                self._give_back(turn)
                raise
            with self._lock:
                self._waiting -= 1
        return None

    # -- the fleet: one script in Redis per call, the local share while it is away ------
    #
    # The script admits a call or says when it would be; it reserves nothing. So a call
    # allowed to wait sleeps that long (through the clock) and asks again, while its
    # max_wait and the deadline allow; calls racing for one turn across the fleet are
    # not served in order (locally they are). Any failure of Redis sends the call to the
    # local share (_reserve on the plan's own schedule); the backend tells the outage.

    _ROUNDS = 1000  # asks of one call at most (each after a wait the server named)

    def _ask_fleet(self, plan: _Plan, most: float | None = None) -> bool:
        """True once Redis admits the call; False when it cannot be asked (the local
        share decides); RateLimitedError when its turn is beyond the limit."""
        from resilient.redis import AWAY  # (loaded: the plan has a backend)

        fleet = plan.fleet
        assert fleet is not None
        backend = fleet.backend
        limit = dl.limit(plan.max_wait if most is None else most)
        started, wait = plan.now(), None
        for _ in range(self._ROUNDS):
            retry_after = backend._attempt(backend._admit, fleet.call)
            if retry_after is AWAY:
                return False
            wait = self._fleet_turn(plan, retry_after, limit, plan.now() - started)
            if wait is None:
                return True
            plan.clock.sleep(wait)
        raise self._fleet_refused(plan, limit, wait or 0.0)

    async def _ask_fleet_async(self, plan: _Plan) -> bool:
        """:meth:`_ask_fleet` for a task: on asyncio through redis.asyncio, on trio
        through the sync client in a worker thread."""
        from resilient.redis import AWAY  # (loaded: the plan has a backend)

        fleet = plan.fleet
        assert fleet is not None
        backend = fleet.backend
        limit = dl.limit(plan.max_wait)
        started, wait = plan.now(), None
        for _ in range(self._ROUNDS):
            retry_after = await backend._attempt_async(
                backend._run_async, backend._admit_async, backend._admit, fleet.call
            )
            if retry_after is AWAY:
                return False
            wait = self._fleet_turn(plan, retry_after, limit, plan.now() - started)
            if wait is None:
                return True
            await plan.clock.sleep_async(wait)
        raise self._fleet_refused(plan, limit, wait or 0.0)

    def _fleet_turn(
        self, plan: _Plan, wait: float | None, limit: tuple[float, bool], waited: float
    ) -> float | None:
        """The fleet's answer (None: admitted; else the server's exact ``retry_after``)
        judged: None (admitted), the seconds to sleep before asking again, or a refusal."""
        if wait is None:
            return None
        if wait > limit[0] - waited:
            raise self._fleet_refused(plan, limit, wait or 0.0)
        if testmode._mode.enabled:
            return None  # (waits skipped: the call goes, as a local turn would)
        return wait

    def _fleet_refused(
        self, plan: _Plan, limit: tuple[float, bool], wait: float
    ) -> RateLimitedError:
        return self._refuse(plan, wait, self._beyond(plan, *limit))
