"""Watch resilience at work: one flaky service, called with and without it.

Two groups of clients send the same traffic to two identical simulated services
(same timeline, same dice) for --duration seconds. Each client sends a request
about every 100 ms without waiting for the last one's answer, as a web server
does for its users. The service has 5 workers per client; a call holds one until
it is answered or its caller gives up, and a call that finds none free is turned
away (503). Its timeline (at --intensity normal):

  healthy          answers in about 30 ms; 1% of calls fail
  latency spikes   a fifth of the calls take 0.4-1.2 s
  error burst      a quarter of the calls fail
  outage           calls hang, each holding its worker until the caller gives up
  recovery         healthy again, for calls that can get a worker

The unguarded clients await the service with a 5 s client timeout, like an HTTP
client's default. The resilient clients make the same call through

  Pipeline(
      Bulkhead(2 * clients, max_wait=50ms),  requests in flight at once
      Timeout(1s),                           each request, retries included
      Retry(3, exponential backoff),         on ConnectionError and timeouts
      CircuitBreaker(open_for=1s),           opens when 50% of the last 100
                                             attempts failed
      Timeout(250ms),                        each attempt
  )

A live view shows both groups side by side, and a summary says what changed.

The policies are named "demo" (the per-attempt timeout "demo-attempt"), so
RESILIENT_* variables retune them with no code change. Try:

  RESILIENT_DEMO_BREAKER_OPEN_FOR=5s        probe the failing service less often
  RESILIENT_DEMO_BREAKER_STATE=disabled     timeouts and retries, but no breaker
  RESILIENT_DEMO_BREAKER_STATE=forced_open  refuse every call
  RESILIENT_DEMO_RETRY_ATTEMPTS=1           no retries
  RESILIENT_ENABLED=0                       every policy a pass-through

'resilient env' lists every variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TextIO

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    ConfigWarning,
    Pipeline,
    Retry,
    State,
    StateChange,
    Timeout,
    backoff,
)
from resilient._core.configuration import config

__all__ = ["add_arguments", "run"]

NAME = "demo"  # RESILIENT_DEMO_<KIND>_<OPTION>
ATTEMPT_NAME = "demo-attempt"  # RESILIENT_DEMO_ATTEMPT_TIMEOUT_SECONDS
REQUEST_INTERVAL = 0.1  # seconds between a client's requests, on average
CLIENT_TIMEOUT = 5.0  # the plain client's own timeout, like an HTTP client's default
WORKERS_PER_CLIENT = 5  # the service's workers: 150 for 30 clients
GRACE = 0.3  # after the last request, how long answers may still come in
TICK = 0.1  # how often the view is refreshed
MAX_CLIENTS = 200  # beyond, one event loop falls behind the traffic it simulates
MAX_DURATION = 3600.0

OK, ERROR, TIMEOUT, BREAKER, BULKHEAD, UNANSWERED = (
    "ok",
    "error",
    "timeout",
    "breaker",
    "bulkhead",
    "unanswered",
)
GROUPS = ("unguarded", "resilient")


# -- the scenario ------------------------------------------------------------------------


@dataclass(frozen=True)
class Intensity:
    """How bad the bad phases are."""

    error_rate: float  # share of calls failing in the healthy phases
    spike_share: float  # share of calls slowed during the latency spikes
    spike_latency: tuple[float, float]  # how slow, in seconds
    burst_error_rate: float  # share of calls failing during the error burst
    hang_share: float  # share of outage calls that hang (the others are refused at once)


INTENSITIES = {
    "low": Intensity(0.005, 0.1, (0.3, 0.6), 0.15, 0.5),
    "normal": Intensity(0.01, 0.2, (0.4, 1.2), 0.25, 1.0),
    "high": Intensity(0.02, 0.4, (0.8, 2.5), 0.6, 1.0),
}

# (key, label, share of the run)
PHASES = (
    ("healthy", "healthy", 0.15),
    ("spikes", "latency spikes", 0.15),
    ("errors", "error burst", 0.15),
    ("outage", "outage", 0.30),
    ("recovery", "recovery", 0.25),
)


@dataclass(frozen=True)
class Phase:
    key: str
    label: str
    start: float  # seconds into the run
    end: float

    def span(self) -> str:
        return f"{self.start:g}-{self.end:g} s"


class Timeline:
    """The phases of a run of ``duration`` seconds that starts at ``t0`` (monotonic)."""

    def __init__(self, t0: float, duration: float) -> None:
        self.t0 = t0
        self.duration = duration
        self.phases: list[Phase] = []
        start = 0.0
        for key, label, share in PHASES:
            end = round(start + share * duration, 3)
            self.phases.append(Phase(key, label, start, end))
            start = end

    def index_at(self, now: float) -> int:
        elapsed = now - self.t0
        for index, phase in enumerate(self.phases):
            if elapsed < phase.end:
                return index
        return len(self.phases) - 1

    def phase(self, key: str) -> Phase:
        return next(p for p in self.phases if p.key == key)


def describe(key: str, intensity: Intensity) -> str:
    """What the service does in a phase, in a few words."""
    low, high = intensity.spike_latency
    if key == "spikes":
        return f"{intensity.spike_share:.0%} of calls take {low:g}-{high:g} s"
    if key == "errors":
        return f"{intensity.burst_error_rate:.0%} of calls fail"
    if key == "outage":
        if intensity.hang_share < 1:
            return f"{intensity.hang_share:.0%} of calls hang, the rest are refused"
        return "calls hang, nothing answers"
    return f"~30 ms, {intensity.error_rate:.1%} of calls fail"


class ClientTimeout(TimeoutError):
    """The plain client's own timeout ran out (a read timeout, in HTTP terms)."""


class Service:
    """A simulated downstream with ``workers`` workers: each call takes one until it is
    answered or its caller gives up; a call that finds them all busy is refused at once
    (503). How a call is answered depends on the phase and on the dice: the n-th call to
    either of two services made with the same seed gets the same draw.

    In the outage the service's own dependency is down and calls hang, holding their
    worker. When the outage ends new calls are answered again, but calls already hanging
    stay stuck until their callers give up, as on a connection that went dead.
    """

    def __init__(self, timeline: Timeline, intensity: Intensity, seed: int, workers: int) -> None:
        self.timeline = timeline
        self.intensity = intensity
        self.rng = random.Random(seed)
        self.workers = workers
        self.calls = 0
        self.calls_by_phase = [0] * len(timeline.phases)
        self.overloaded_by_phase = [0] * len(timeline.phases)  # refused: no free worker
        self.last_overloaded: float | None = None  # seconds into the run
        self.busy = 0  # workers handling (or stuck on) a call now
        self.peak_busy = 0

    async def handle(self) -> str:
        now = time.monotonic()
        index = self.timeline.index_at(now)
        self.calls += 1
        self.calls_by_phase[index] += 1
        # Four draws on every call, whatever happens, so two services stay in step.
        rng = self.rng
        fail, slow, wait, spread = rng.random(), rng.random(), rng.expovariate(66.0), rng.random()
        if self.busy >= self.workers:
            self.overloaded_by_phase[index] += 1
            self.last_overloaded = now - self.timeline.t0
            await asyncio.sleep(0.002)
            raise ConnectionError("503 service overloaded: no free worker")
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
        try:
            phase, shape = self.timeline.phases[index].key, self.intensity
            latency = 0.015 + min(wait, 0.135)
            if phase == "outage":
                if fail < shape.hang_share:
                    await asyncio.get_running_loop().create_future()  # never answered
                await asyncio.sleep(0.002)
                raise ConnectionError("connection refused")
            if phase == "spikes" and slow < shape.spike_share:
                low, high = shape.spike_latency
                latency = low + (high - low) * spread
            await asyncio.sleep(latency)
            if phase == "errors" and fail < shape.burst_error_rate:
                raise ConnectionError("503 service unavailable")
            if fail < shape.error_rate:
                raise ConnectionError("connection reset by peer")
            return "ok"
        finally:
            self.busy -= 1


# -- the clients -----------------------------------------------------------------------


@dataclass
class Request:
    phase: int
    started: float
    attempts: int = 0  # how many times the service was called for it


@dataclass
class Group:
    """One group of clients: what they sent and what they got back."""

    label: str
    service: Service
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    answers: list[tuple[int, str, float]] = field(default_factory=list)  # phase, outcome, s
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def begin(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def end(self, request: Request, outcome: str, now: float) -> None:
        self.in_flight -= 1
        self.outcomes[outcome] += 1
        self.answers.append((request.phase, outcome, now - request.started))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def failed(self) -> int:
        return self.outcomes[ERROR] + self.outcomes[TIMEOUT]

    @property
    def refused(self) -> int:
        return self.outcomes[BREAKER] + self.outcomes[BULKHEAD]


Call = Callable[[Request], Awaitable[str]]


def plain_call(group: Group) -> Call:
    """What every client does to reach the service: an await with a client timeout."""
    service = group.service

    async def call_service(request: Request) -> str:
        request.attempts += 1
        if request.attempts > 1:
            group.retries += 1
        try:
            return await asyncio.wait_for(service.handle(), CLIENT_TIMEOUT)
        except asyncio.TimeoutError:
            raise ClientTimeout(f"no answer in {CLIENT_TIMEOUT:g} s") from None

    return call_service


async def send(group: Group, call: Call, timeline: Timeline) -> None:
    """One request, from the client's point of view."""
    started = time.monotonic()
    request = Request(timeline.index_at(started), started)
    group.begin()
    outcome = UNANSWERED  # unless an answer comes before the demo ends
    try:
        await call(request)
        outcome = OK
    except CircuitOpenError:
        outcome = BREAKER
        if request.attempts:  # a retry that the breaker refused
            group.retries += 1
    except BulkheadFullError:
        outcome = BULKHEAD
    except TimeoutError:
        outcome = TIMEOUT
    except Exception:
        outcome = ERROR
    finally:
        group.end(request, outcome, time.monotonic())


async def client(index: int, group: Group, call: Call, sim: Simulation) -> None:
    """A client sends a request every ~100 ms until the end, whether or not the previous
    ones have been answered. Client ``index`` keeps the same schedule in both groups."""
    rng = random.Random(f"{sim.seed}:{index}")
    at = sim.timeline.t0 + rng.uniform(0, REQUEST_INTERVAL)
    for _ in range(sim.max_requests):
        if at >= sim.end:
            return
        await asyncio.sleep(at - time.monotonic())
        group.spawn(send(group, call, sim.timeline))
        at += REQUEST_INTERVAL * rng.uniform(0.5, 1.5)


# -- the resilient group's policies ------------------------------------------------------


@dataclass(frozen=True)
class Policies:
    bulkhead: Bulkhead
    total: Timeout
    retry: Retry
    breaker: CircuitBreaker
    attempt: Timeout

    @classmethod
    def make(cls, clients: int, seed: int) -> Policies:
        """The recommended order (docs/composition.md); the environment may retune each."""
        with warnings.catch_warnings():  # unknown variables are reported by the banner
            warnings.simplefilter("ignore", ConfigWarning)
            return cls(
                bulkhead=Bulkhead(2 * clients, max_wait=0.05, name=NAME),
                total=Timeout(1.0, name=NAME),
                retry=Retry(
                    3,
                    wait=backoff.exponential(base=0.05, cap=0.2, rng=random.Random(seed)),
                    on=(ConnectionError, TimeoutError),
                    name=NAME,
                ),
                breaker=CircuitBreaker(NAME, open_for=1.0),  # the defaults, but for open_for
                attempt=Timeout(0.25, name=ATTEMPT_NAME),
            )

    def all(self) -> tuple[Bulkhead, Timeout, Retry, CircuitBreaker, Timeout]:
        return (self.bulkhead, self.total, self.retry, self.breaker, self.attempt)

    def pipeline(self) -> Pipeline:
        return Pipeline(*self.all())

    @property
    def enabled(self) -> bool:
        return self.breaker.settings.enabled


#: The options the banner shows for each kind (any other one shows if the environment set it).
SHOWN = {
    "bulkhead": ("max_concurrent", "max_wait"),
    "timeout": ("seconds",),
    "retry": ("attempts", "wait"),
    "breaker": ("failure_rate", "window_size", "min_calls", "open_for", "half_open_calls"),
}
TITLES = {
    "bulkhead": "Bulkhead",
    "timeout": "Timeout",
    "retry": "Retry",
    "breaker": "CircuitBreaker",
}


def show_value(option: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float) and option in ("max_wait", "seconds", "open_for"):
        return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
    if isinstance(value, (int, float, str)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, backoff.Backoff):  # leave out what is the default anyway
        return re.sub(r", (rng=<[^>]*>|factor=2\.0|jitter='full')", "", repr(value))
    return str(getattr(value, "__qualname__", None) or value)


def describe_policies(policies: Policies) -> list[dict[str, Any]]:
    """Each policy's key settings, and where each value came from."""
    described = []
    for policy in policies.all():
        settings = policy.settings
        options = {}
        for option, value in settings.values.items():
            source = settings.sources[option]
            from_env = source.startswith(config.PREFIX)
            if option in SHOWN[policy.KIND] or from_env:
                shown = settings.texts[option] if from_env else show_value(option, value)
                options[option] = {"value": shown, "source": source}
        described.append({"kind": policy.KIND, "name": policy.name, "options": options})
    return described


def environment(policies: Policies) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """The RESILIENT_* variables set now, and those that match none of the demo's options."""
    set_now = {k: v for k, v in sorted(os.environ.items()) if k.startswith(config.PREFIX)}
    known = config.known_variables((p.KIND, p.name) for p in policies.all())
    return set_now, config.unknown_variables(known)


# -- the run ---------------------------------------------------------------------------


class Simulation:
    """Both groups, both services, the policies and what the breaker did."""

    def __init__(self, args: argparse.Namespace, policies: Policies) -> None:
        self.duration: float = args.duration
        self.clients: int = args.clients
        self.seed: int = args.seed
        self.intensity_name: str = args.intensity
        self.intensity = INTENSITIES[args.intensity]
        self.policies = policies
        self.timeline = Timeline(time.monotonic(), self.duration)
        self.end = self.timeline.t0 + self.duration
        self.workers = WORKERS_PER_CLIENT * self.clients
        self.max_requests = int(self.duration / (REQUEST_INTERVAL * 0.5)) + 1
        self.groups = {
            label: Group(label, Service(self.timeline, self.intensity, args.seed, self.workers))
            for label in GROUPS
        }
        self.first_state = policies.breaker.state
        self.changes: list[tuple[float, State, State]] = []  # seconds into the run, old, new
        policies.breaker.add_listener(self._changed)
        self.over = False  # the clients have stopped and the grace period is past
        self.finished_at: float | None = None

    def _changed(self, change: StateChange) -> None:
        self.changes.append((change.at - self.timeline.t0, change.old, change.new))

    def restart_clock(self) -> None:
        """Start the timeline now (the event loop is up)."""
        shift = time.monotonic() - self.timeline.t0
        self.timeline.t0 += shift
        self.end += shift

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.timeline.t0

    def breaker_state_at(self, elapsed: float) -> State:
        state = self.first_state
        for at, _, new in self.changes:
            if at > elapsed:
                break
            state = new
        return state

    async def run(self, view: View) -> None:
        self.restart_clock()
        guarded = self.policies.pipeline()
        calls = {
            "unguarded": plain_call(self.groups["unguarded"]),
            "resilient": guarded(plain_call(self.groups["resilient"])),
        }
        loops = [
            asyncio.create_task(client(i, group, calls[label], self))
            for i in range(self.clients)
            for label, group in self.groups.items()
        ]
        while (now := time.monotonic()) < self.end:
            view.update(self, now)
            await asyncio.sleep(min(TICK, self.end - now))
        await asyncio.gather(*loops)
        pending = {task for group in self.groups.values() for task in group.tasks}
        if pending:  # answers already on their way may still come in, briefly
            _, pending = await asyncio.wait(pending, timeout=GRACE)
        self.over = True
        view.update(self, time.monotonic())
        for task in pending:  # still waiting: abandoned (counted as unanswered)
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.finished_at = self.elapsed()


# -- the live view -----------------------------------------------------------------------


class View(Protocol):
    def update(self, sim: Simulation, now: float) -> None: ...

    def close(self) -> None: ...


class Style:
    """ANSI colours and box-drawing glyphs, or plain ASCII where they would not show."""

    CODES: ClassVar[dict[str, str]] = {
        "red": "31",
        "green": "32",
        "yellow": "33",
        "magenta": "35",
        "cyan": "36",
    }

    def __init__(self, out: TextIO, colour: bool) -> None:
        self.colour = colour
        try:
            "█░━▒·".encode(out.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            self.full, self.future, self.line, self.half, self.dot = "#", ".", "-", "~", "."
        else:
            self.full, self.future, self.line, self.half, self.dot = "█", "░", "━", "▒", "·"

    def paint(
        self, text: str, colour: str | None, *, dim: bool = False, bold: bool = False
    ) -> str:
        if not self.colour:
            return text
        codes = [self.CODES[colour]] if colour else []
        codes += ["2"] * dim + ["1"] * bold
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


PHASE_COLOURS = {
    "healthy": "green",
    "spikes": "yellow",
    "errors": "magenta",
    "outage": "red",
    "recovery": "cyan",
}
STATE_COLOURS = {
    State.CLOSED: "green",
    State.OPEN: "red",
    State.HALF_OPEN: "yellow",
    State.FORCED_OPEN: "red",
    State.DISABLED: None,
}


def counter_rows(sim: Simulation) -> list[tuple[str, str, str]]:
    """The live counters, one row each: label, unguarded, resilient."""
    plain, guarded = sim.groups["unguarded"], sim.groups["resilient"]

    def row(label: str, value: Callable[[Group], object]) -> tuple[str, str, str]:
        return (label, str(value(plain)), str(value(guarded)))

    return [
        row("requests sent", lambda g: g.requests),
        row("succeeded", lambda g: g.outcomes[OK]),
        row("failed: error", lambda g: g.outcomes[ERROR]),
        row("failed: timed out", lambda g: g.outcomes[TIMEOUT]),
        row("refused fast: breaker open", lambda g: g.outcomes[BREAKER]),
        row("refused fast: bulkhead full", lambda g: g.outcomes[BULKHEAD]),
        row("retries", lambda g: g.retries),
        row("waiting for an answer now", lambda g: g.in_flight),
        row("calls that reached the service", lambda g: g.service.calls),
        row("service workers busy now", lambda g: f"{g.service.busy}/{g.service.workers}"),
    ]


def breaker_note(sim: Simulation, now: float) -> str:
    breaker = sim.policies.breaker
    state = breaker.state
    if state is State.DISABLED:
        return "off: RESILIENT_ENABLED=0" if not sim.policies.enabled else "DISABLED"
    if state is State.FORCED_OPEN:
        return "FORCED OPEN"
    note = str(state).upper().replace("_", "-")
    open_for = breaker.settings.values["open_for"]
    opened = [at for at, _, new in sim.changes if new is State.OPEN]
    if state is State.OPEN and opened and isinstance(open_for, (int, float)):
        left = opened[-1] + open_for - sim.elapsed(now)
        note += f", probes in {max(left, 0):.1f} s"
    return note


class LiveView:
    """A panel redrawn in place (ANSI escapes), for a terminal."""

    def __init__(self, out: TextIO, style: Style) -> None:
        self.out = out
        self.style = style
        self.drawn = 0
        self.last = 0.0
        self.out.write("\x1b[?25l")  # hide the cursor while redrawing

    def update(self, sim: Simulation, now: float) -> None:
        if now - self.last < 0.12 and not sim.over:
            return
        self.last = now
        lines = self.panel(sim, now)
        up = f"\x1b[{self.drawn}A\r" if self.drawn else ""
        self.out.write(up + "".join(f"{line}\x1b[K\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        self.out.write("\x1b[0m\x1b[?25h")
        self.out.flush()

    def panel(self, sim: Simulation, now: float) -> list[str]:
        """The lines of the panel, none wider than 79 columns (a wrapped line would break
        the redraw): lanes for the service's phases and the breaker's state, then counters."""
        s = self.style
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(16, min(48, columns - 38))
        elapsed = min(sim.elapsed(now), sim.duration)
        phase = sim.timeline.phases[sim.timeline.index_at(now)]
        state = sim.policies.breaker.state
        what = "the clients have stopped" if sim.over else describe(phase.key, sim.intensity)
        lines = [
            s.paint("resilient demo", None, bold=True)
            + f"   t = {elapsed:4.1f} / {sim.duration:g} s   {sim.clients} clients per group"
            f"   intensity {sim.intensity_name}",
            f"service  {self.service_lane(sim, elapsed, width)}  "
            + s.paint(phase.label, PHASE_COLOURS[phase.key], bold=True),
            f"breaker  {self.breaker_lane(sim, elapsed, width)}  "
            + s.paint(breaker_note(sim, now), STATE_COLOURS.get(state), bold=True),
            f"{'':9}{what}",
            "",
            f"{'':<31}" + s.paint(f"{GROUPS[0]:>11}{GROUPS[1]:>11}", None, bold=True),
        ]
        colours = {"succeeded": "green", "failed": "red", "refused": "yellow", "retries": "cyan"}
        for label, plain, guarded in counter_rows(sim):
            colour = next((c for word, c in colours.items() if label.startswith(word)), None)
            values = f"{plain:>11}{guarded:>11}"
            lines.append(f"{label:<31}" + (s.paint(values, colour) if colour else values))
        return lines

    def service_lane(self, sim: Simulation, elapsed: float, width: int) -> str:
        cells = []
        for k in range(width):
            at = (k + 0.5) * sim.duration / width
            key = sim.timeline.phases[sim.timeline.index_at(sim.timeline.t0 + at)].key
            done = at <= elapsed
            glyph = self.style.full if done else self.style.future
            cells.append(self.style.paint(glyph, PHASE_COLOURS[key], dim=not done))
        return "".join(cells)

    def breaker_lane(self, sim: Simulation, elapsed: float, width: int) -> str:
        s = self.style
        glyphs = {
            State.CLOSED: s.line,
            State.OPEN: s.full,
            State.HALF_OPEN: s.half,
            State.FORCED_OPEN: s.full,
            State.DISABLED: s.dot,
        }
        cells = []
        for k in range(width):
            at = (k + 0.5) * sim.duration / width
            if at > elapsed:
                cells.append(" ")
                continue
            # The worst state seen in the cell, so a short OPEN spell is not lost.
            start, stop = k * sim.duration / width, (k + 1) * sim.duration / width
            states = {sim.breaker_state_at(start)}
            states.update(new for t, _, new in sim.changes if start <= t < stop)
            state = max(states, key=_severity)
            cells.append(s.paint(glyphs[state], STATE_COLOURS[state]))
        return "".join(cells)


def _severity(state: State) -> int:
    order = (State.DISABLED, State.CLOSED, State.HALF_OPEN, State.OPEN, State.FORCED_OPEN)
    return order.index(state)


class PlainView:
    """One line per second, for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.next_line = 1.0

    def update(self, sim: Simulation, now: float) -> None:
        elapsed = sim.elapsed(now)
        if elapsed + 1e-3 < self.next_line or sim.over:
            return
        self.next_line = int(elapsed + 1e-3) + 1.0
        phase = sim.timeline.phases[sim.timeline.index_at(now)]
        plain, guarded = sim.groups["unguarded"], sim.groups["resilient"]
        print(
            f"t={elapsed:4.1f}s {phase.label:<14}"
            f" | unguarded: {plain.requests} sent, {plain.outcomes[OK]} ok,"
            f" {plain.failed} failed, {plain.in_flight} waiting"
            f" | resilient: {guarded.requests} sent, {guarded.outcomes[OK]} ok,"
            f" {guarded.failed} failed, {guarded.refused} refused, {guarded.retries} retries"
            f" | breaker {sim.policies.breaker.state.value}",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        pass


# -- the summary -----------------------------------------------------------------------


def percentile(waits: Sequence[tuple[float, bool]], share: float) -> tuple[float | None, bool]:
    """The nearest-rank percentile of sorted (seconds, unanswered) pairs, and whether it
    is only a lower bound (an unanswered request's wait, cut short by the end); None for
    no values."""
    if not waits:
        return None, False
    rank = max(1, -(-int(share * 1000) * len(waits) // 1000))  # ceil, in integers
    return waits[min(rank, len(waits)) - 1]


def tally(answers: Sequence[tuple[int, str, float]]) -> dict[str, Any]:
    """Outcomes and answer times of some requests; an unanswered request counts with the
    time it had waited when the demo ended."""
    outcomes = Counter(outcome for _, outcome, _ in answers)
    waits = sorted((seconds, outcome == UNANSWERED) for _, outcome, seconds in answers)
    p50, p50_more = percentile(waits, 0.5)
    p99, p99_more = percentile(waits, 0.99)
    p50, p99 = (None if p is None else round(p, 6) for p in (p50, p99))
    return {
        "requests": len(answers),
        "succeeded": outcomes[OK],
        "errors": outcomes[ERROR],
        "timeouts": outcomes[TIMEOUT],
        "refused_breaker": outcomes[BREAKER],
        "refused_bulkhead": outcomes[BULKHEAD],
        "unanswered": outcomes[UNANSWERED],
        "p50": p50,
        "p99": p99,
        # true when the percentile is a request still waiting at the end: "more than"
        "p50_unfinished": p50_more,
        "p99_unfinished": p99_more,
    }


def group_summary(group: Group, timeline: Timeline) -> dict[str, Any]:
    service = group.service
    summary = tally(group.answers)
    summary.update(
        retries=group.retries,
        peak_in_flight=group.peak_in_flight,
        service_calls=service.calls,
        service_workers=service.workers,
        service_peak_busy=service.peak_busy,
        service_overloaded=sum(service.overloaded_by_phase),
        service_last_overloaded=(
            None if service.last_overloaded is None else round(service.last_overloaded, 4)
        ),
    )
    summary["phases"] = {
        phase.key: {
            **tally([a for a in group.answers if a[0] == index]),
            "service_calls": service.calls_by_phase[index],
            "service_overloaded": service.overloaded_by_phase[index],
        }
        for index, phase in enumerate(timeline.phases)
    }
    return summary


def breaker_summary(sim: Simulation) -> dict[str, Any]:
    outage, recovery = sim.timeline.phase("outage"), sim.timeline.phase("recovery")
    opened = [at for at, _, new in sim.changes if new is State.OPEN and at >= outage.start]
    opened_in = sorted(
        {
            sim.timeline.phases[sim.timeline.index_at(sim.timeline.t0 + at)].key
            for at, old, new in sim.changes
            if old is State.CLOSED and new is State.OPEN
        }
    )
    closed = [at for at, _, new in sim.changes if new is State.CLOSED and at >= recovery.start]
    return {
        "initial_state": sim.first_state.value,
        "final_state": sim.policies.breaker.state.value,
        "changes": [
            {"at": round(at, 4), "from": old.value, "to": new.value}
            for at, old, new in sim.changes
        ],
        "opened_in": opened_in,  # the phases in which it went from CLOSED to OPEN
        "state_at_outage_start": sim.breaker_state_at(outage.start).value,
        "state_at_recovery_start": sim.breaker_state_at(recovery.start).value,
        "opened_after_outage_start": round(opened[0] - outage.start, 4) if opened else None,
        "closed_after_recovery": round(closed[0] - recovery.start, 4) if closed else None,
    }


def summarise(sim: Simulation) -> dict[str, Any]:
    """Everything the summary says, as plain data (what --json prints)."""
    variables, unknown = environment(sim.policies)
    return {
        "duration": sim.duration,
        "clients": sim.clients,
        "intensity": sim.intensity_name,
        "seed": sim.seed,
        "elapsed": round(sim.finished_at or sim.elapsed(), 3),
        "client_timeout": CLIENT_TIMEOUT,
        "enabled": sim.policies.enabled,
        "environment": variables,
        "unknown_variables": [v for v, _ in unknown],
        "policies": describe_policies(sim.policies),
        "phases": [
            {"key": p.key, "label": p.label, "start": p.start, "end": p.end}
            for p in sim.timeline.phases
        ],
        "groups": {label: group_summary(g, sim.timeline) for label, g in sim.groups.items()},
        "breaker": breaker_summary(sim),
    }


def fmt_time(seconds: float | None, unfinished: bool = False) -> str:
    if seconds is None:
        return "-"
    if unfinished:  # a wait cut short by the end of the demo
        return ">" + fmt_time(seconds)
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def summary_lines(s: dict[str, Any]) -> Iterator[str]:
    """The summary table, per phase, and what changed, as lines of text."""
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    yield ""
    yield (
        f"Summary ({s['clients']} clients per group, {s['duration']:g} s, intensity"
        f" {s['intensity']}, seed {s['seed']}; took {s['elapsed']:.1f} s)"
    )
    yield ""
    yield f"  {'':<34}{'unguarded':>12}{'resilient':>12}"

    def row(label: str, left: object, right: object) -> str:
        return f"  {label:<34}{left!s:>12}{right!s:>12}"

    def counted(label: str, key: str) -> str:
        return row(
            label,
            f"{u[key]} {share(u[key], u['requests']):>4}",
            f"{r[key]} {share(r[key], r['requests']):>4}",
        )

    def wait(g: dict[str, Any], key: str) -> str:
        return fmt_time(g[key], g[f"{key}_unfinished"])

    def busy(g: dict[str, Any]) -> str:
        return f"{g['service_peak_busy']}/{g['service_workers']}"

    yield row("requests", u["requests"], r["requests"])
    yield counted("  succeeded", "succeeded")
    yield counted("  failed: error", "errors")
    yield counted("  failed: timed out", "timeouts")
    yield counted("  refused fast: breaker open", "refused_breaker")
    yield counted("  refused fast: bulkhead full", "refused_bulkhead")
    yield counted("  still unanswered at the end", "unanswered")
    yield row("retries", u["retries"], r["retries"])
    yield row("answer time, median", wait(u, "p50"), wait(r, "p50"))
    yield row("answer time, p99", wait(u, "p99"), wait(r, "p99"))
    yield row("most requests in flight at once", u["peak_in_flight"], r["peak_in_flight"])
    yield row("calls that reached the service", u["service_calls"], r["service_calls"])
    u_out, r_out = u["phases"]["outage"], r["phases"]["outage"]
    yield row("  during the outage", u_out["service_calls"], r_out["service_calls"])
    yield row("  turned away: no free worker", u["service_overloaded"], r["service_overloaded"])
    yield row("service workers busy, at most", busy(u), busy(r))
    yield ""
    yield f"  {'by phase: succeeded, p99 answer time':<34}{'unguarded':>15}{'resilient':>15}"
    for phase in s["phases"]:
        pu, pr = u["phases"][phase["key"]], r["phases"][phase["key"]]
        label = f"{phase['label']} ({phase['start']:g}-{phase['end']:g} s)"
        cells = [
            f"{share(p['succeeded'], p['requests']):>4} {wait(p, 'p99'):>9}" for p in (pu, pr)
        ]
        yield f"  {label:<34}{cells[0]:>15}{cells[1]:>15}"
    yield ""
    yield "What changed:"
    for sentence in explain(s):
        glued = re.sub(r"(\d) (ms|s)\b", "\\1\xa0\\2", sentence)  # keep "1.13 s" together
        text = textwrap.fill(
            glued, width=79, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
        )
        yield text.replace("\xa0", " ")


def explain(s: dict[str, Any]) -> list[str]:
    """Two to four plain sentences: what resilience changed, phase by phase."""
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    if not s["enabled"]:
        return [
            "Resilience was switched off (RESILIENT_ENABLED=0): every policy passed calls"
            " straight through, so the resilient group fared like the unguarded one"
            f" ({share(r['succeeded'], r['requests'])} of requests succeeded, against"
            f" {share(u['succeeded'], u['requests'])}).",
            _outage(s),
        ]
    if s["breaker"]["initial_state"] == State.FORCED_OPEN.value:
        return [
            "The breaker was forced open (RESILIENT_DEMO_BREAKER_STATE=forced_open): every"
            f" resilient request was refused in {fmt_time(r['p50'])} (median) and"
            f" {r['service_calls']} calls reached the service, while"
            f" {share(u['succeeded'], u['requests'])} of the unguarded requests succeeded."
        ]
    return [_mild(s), _outage(s), _recovery(s)]


def _mild(s: dict[str, Any]) -> str:
    """Spikes and errors: the work of the per-attempt timeout and the retries, unless
    they were bad enough to open the breaker."""
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    clauses = []
    retried = r["retries"] > 0
    for key in ("spikes", "errors"):
        up, rp = u["phases"][key], r["phases"][key]
        label = next(p["label"] for p in s["phases"] if p["key"] == key)
        if key in s["breaker"]["opened_in"]:
            clauses.append(
                f"in the {label} so many attempts failed that the breaker opened:"
                f" {share(rp['refused_breaker'], rp['requests'])} of the resilient requests"
                f" were refused fast, while {share(up['succeeded'], up['requests'])} of the"
                " unguarded ones succeeded"
            )
        elif key == "spikes":
            clauses.append(
                f"in the {label} the per-attempt timeout cut slow calls short"
                + (" and retried them" if retried else "")
                + ": 99% of resilient answers came within"
                f" {fmt_time(rp['p99'], rp['p99_unfinished'])} (unguarded:"
                f" {fmt_time(up['p99'], up['p99_unfinished'])}), and"
                f" {share(rp['succeeded'], rp['requests'])} succeeded (unguarded:"
                f" {share(up['succeeded'], up['requests'])})"
            )
        elif retried:
            extra = rp["service_calls"] - up["service_calls"]
            clauses.append(
                f"in the {label} retries took the share of requests that succeeded from"
                f" {share(up['succeeded'], up['requests'])} (unguarded) to"
                f" {share(rp['succeeded'], rp['requests'])}"
                + (f", at the cost of {extra} more calls to the service" if extra > 0 else "")
            )
        else:
            clauses.append(
                f"in the {label}, with no retries, {share(rp['succeeded'], rp['requests'])}"
                f" of the resilient requests succeeded (unguarded:"
                f" {share(up['succeeded'], up['requests'])})"
            )
    sentence = "; ".join(clauses) + "."
    return sentence[0].upper() + sentence[1:]


def _outage(s: dict[str, Any]) -> str:
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    uo, ro = u["phases"]["outage"], r["phases"]["outage"]
    phase = next(p for p in s["phases"] if p["key"] == "outage")
    hung = uo["timeouts"] + uo["unanswered"]
    unguarded = (
        f"During the outage ({phase['start']:g}-{phase['end']:g} s) the unguarded clients"
        f" sent {uo['service_calls']} calls to the failing service: {hung} hung, each holding"
        f" one of its {u['service_workers']} workers until its caller gave up"
        f" ({s['client_timeout']:g} s) or the demo ended"
    )
    if uo["service_overloaded"]:
        unguarded += (
            f", and the other {uo['service_overloaded']} were turned away: no worker was free"
        )
    if not s["enabled"]:
        return unguarded + "; the resilient clients, unguarded too, did the same."
    breaker = s["breaker"]
    opened = breaker["opened_after_outage_start"]
    if breaker["initial_state"] == State.DISABLED.value:
        how = "the breaker was disabled, but the per-attempt timeout freed hung workers"
    elif breaker["state_at_outage_start"] in (State.OPEN.value, State.HALF_OPEN.value):
        how = "the breaker was already open when it began"
    elif opened is not None:
        late = opened >= phase["end"] - phase["start"]  # a short run: the outage was over
        how = f"the breaker opened {fmt_time(opened)} after it began" + (
            ", when it was over" if late else ""
        )
    else:
        how = "the breaker never opened, but the per-attempt timeout freed hung workers"
    calls = ro["service_calls"]
    if not calls:
        reached = "no call reached the service"
    else:
        only = "only " if calls <= uo["service_calls"] / 2 else ""
        reached = f"{only}{calls} calls reached the service"
    return (
        f"{unguarded}. With resilience {how}, callers had their answer (mostly a fast"
        f" refusal) in {fmt_time(ro['p50'], ro['p50_unfinished'])} (median), and {reached}."
    )


def _recovery(s: dict[str, Any]) -> str:
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    ur, rr = u["phases"]["recovery"], r["phases"]["recovery"]
    phase = next(p for p in s["phases"] if p["key"] == "recovery")
    breaker = s["breaker"]
    sentence = f"The service came back at {phase['start']:g} s"
    if ur["service_overloaded"]:
        until = u["service_last_overloaded"]
        sentence += (
            ", but calls hanging since the outage still held the unguarded side's workers,"
            f" so it turned away {ur['service_overloaded']} more unguarded calls"
            + (f" until {until:.1f} s" if until < s["duration"] - 0.2 else " to the end")
        )
    options = next(p for p in s["policies"] if p["kind"] == "breaker")["options"]
    open_for = options["open_for"]["value"]
    closed = breaker["closed_after_recovery"]
    state = breaker["state_at_recovery_start"]
    if state in (State.CLOSED.value, State.DISABLED.value):
        sentence += f", and the resilient side, its breaker {state}, answered at once."
    elif closed is not None:
        sentence += (
            f"; the breaker, probing every open_for={open_for}, closed {fmt_time(closed)}"
            f" later, and refused {rr['refused_breaker']} resilient requests until then."
        )
    else:
        sentence += (
            f"; the breaker (open_for={open_for}) had not closed by the end: a shorter"
            " open_for finds a recovery sooner, a longer one spares a struggling service more."
        )
    return sentence


# -- the command -----------------------------------------------------------------------


def wrap(items: Sequence[str], first: str, then: str, sep: str = " ") -> list[str]:
    """``items`` joined by ``sep`` and wrapped to 79 columns, never inside an item."""
    text = sep.join(item.replace(" ", "\xa0") for item in items)  # textwrap keeps \xa0
    lines = textwrap.wrap(
        text, width=79, initial_indent=first, subsequent_indent=then, break_on_hyphens=False
    )
    return [line.replace("\xa0", " ") for line in lines]


def banner(sim: Simulation, out: TextIO) -> None:
    """Before the run: the timeline, the two groups, the settings in force and their source."""
    p = sim.policies
    lines = [
        f"resilient demo: two groups of {sim.clients} clients, each client sending"
        f" ~{1 / REQUEST_INTERVAL:g} requests/s",
        f"for {sim.duration:g} s (intensity {sim.intensity_name}, seed {sim.seed})",
        *wrap(
            [f"{phase.label} {phase.span()}" for phase in sim.timeline.phases],
            f"  the service ({sim.workers} workers): ",
            "    ",
            sep=", ",
        ),
        f"  unguarded clients: await service(), with a {CLIENT_TIMEOUT:g} s client timeout",
        "  resilient clients: the same call through Pipeline(",
    ]
    for entry in describe_policies(p):
        title = f"{TITLES[entry['kind']]}({entry['name']!r})"
        shown = [
            f"{option}={o['value']}" + ("*" if o["source"].startswith(config.PREFIX) else "")
            for option, o in entry["options"].items()
        ]
        lines += wrap(shown, f"    {title:<25} ", " " * 30)
    lines.append("  )")
    variables, unknown = environment(p)
    if not p.enabled:
        lines.append("  RESILIENT_ENABLED=0: every policy passes calls straight through")
    ignored = {var for var, _ in unknown}
    if used := [f"{k}={v}" for k, v in variables.items() if k not in ignored]:
        lines += wrap(used, "  * from the environment: ", "    ")
    for var, suggestion in unknown:
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        note = f"note: {var} matches no option of the demo's policies{hint}"
        lines += wrap(note.split(), "  ", "    ")
    if not variables:
        lines.append("  tweak them with e.g. RESILIENT_DEMO_BREAKER_OPEN_FOR=5s; more in --help")
    print(*lines, "", sep="\n", file=out, flush=True)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_DURATION:g} seconds, not {text}"
        )
    return value


def client_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_CLIENTS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_CLIENTS}, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long the clients send requests (default: 10, at most 3600); the"
        " phases scale with it",
    )
    parser.add_argument(
        "--clients",
        type=client_count,
        default=30,
        metavar="N",
        help=f"clients in each group, each sending ~10 requests/s (default: 30, at most"
        f" {MAX_CLIENTS})",
    )
    parser.add_argument(
        "--intensity",
        choices=tuple(INTENSITIES),
        default="normal",
        help="how bad the spikes, errors and outage are (default: normal)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="N",
        help="seed of the simulation's dice, so that runs compare (default: 1)",
    )
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        default=None,
        help="print a line per second instead of the live view (the default when not"
        " on a terminal)",
    )
    parser.add_argument("--live", action="store_true", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (progress goes to stderr)",
    )


def make_view(out: TextIO, live: bool | None) -> View:
    on_terminal = out.isatty()
    wide = shutil.get_terminal_size((80, 24)).columns >= 80  # or lines would wrap
    if live or (live is None and on_terminal and wide):
        colour = on_terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        return LiveView(out, Style(out, colour))
    return PlainView(out)


def run(args: argparse.Namespace) -> int:
    try:
        policies = Policies.make(args.clients, args.seed)
    except ConfigError as error:  # a bad RESILIENT_* variable, found as the policy was made
        print(f"resilient demo: invalid configuration\n{error}", file=sys.stderr)
        return 1
    sim = Simulation(args, policies)
    out = sys.stderr if args.json else sys.stdout
    banner(sim, out)
    view = make_view(out, args.live)
    try:
        asyncio.run(sim.run(view))
    except KeyboardInterrupt:
        view.close()
        print("\nresilient demo: interrupted", file=sys.stderr)
        return 130
    view.close()
    summary = summarise(sim)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(summary_lines(summary)))
    return 0
