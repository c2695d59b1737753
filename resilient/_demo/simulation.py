"""The clients and the run: two groups send the same traffic, each to its own service,
one group through the policies; what every request got back is kept for the summary."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from resilient import BulkheadFullError, CircuitOpenError, State, StateChange
from resilient._demo.policies import Policies
from resilient._demo.scenario import INTENSITIES, Service, Timeline
from resilient._demo.settings import Settings

REQUEST_INTERVAL = 0.1  # seconds between a client's requests, on average
CLIENT_TIMEOUT = 5.0  # the plain client's own timeout, like an HTTP client's default
WORKERS_PER_CLIENT = 5  # the service's workers: 150 for 30 clients
GRACE = 0.3  # after the last request, how long answers may still come in
TICK = 0.1  # how often the view is refreshed

GROUPS = ("unguarded", "resilient")

T = TypeVar("T")


class Outcome(Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    BREAKER = "breaker"
    BULKHEAD = "bulkhead"
    UNANSWERED = "unanswered"


@dataclass
class Request:
    phase: int
    started: float
    attempts: int = 0  # how many times the service was called for it


class Answer(NamedTuple):
    phase: int  # the index of the phase the request was sent in
    outcome: Outcome
    seconds: float  # from sending to the answer (or to the end, if unanswered)
    sent: float  # seconds into the run


class Seen(NamedTuple):
    at: float  # seconds into the run
    state: State


class Transition(NamedTuple):
    at: float  # seconds into the run
    old: State
    new: State


@dataclass
class Group:
    """One group of clients: what they sent and what they got back."""

    label: str
    service: Service
    requests: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    retries: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    answers: list[Answer] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def begin(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def end(self, request: Request, outcome: Outcome, now: float) -> None:
        self.in_flight -= 1
        self.outcomes[outcome] += 1
        sent = request.started - self.service.timeline.t0
        self.answers.append(Answer(request.phase, outcome, now - request.started, sent))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def failed(self) -> int:
        return self.outcomes[Outcome.ERROR] + self.outcomes[Outcome.TIMEOUT]

    @property
    def refused(self) -> int:
        return self.outcomes[Outcome.BREAKER] + self.outcomes[Outcome.BULKHEAD]


@dataclass(frozen=True)
class Both(Generic[T]):
    """One thing for each group, in the order the view and the summary show them."""

    unguarded: T
    resilient: T

    def __iter__(self) -> Iterator[T]:
        return iter((self.unguarded, self.resilient))


Call = Callable[[Request], Awaitable[str]]


class ClientTimeout(TimeoutError):
    """The plain client's own timeout ran out (a read timeout, in HTTP terms)."""


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
    outcome = Outcome.UNANSWERED  # unless an answer comes before the demo ends
    try:
        await call(request)
        outcome = Outcome.OK
    except CircuitOpenError:
        outcome = Outcome.BREAKER
        if request.attempts:  # a retry that the breaker refused
            group.retries += 1
    except BulkheadFullError:
        outcome = Outcome.BULKHEAD
    except TimeoutError:
        outcome = Outcome.TIMEOUT
    except Exception:
        outcome = Outcome.ERROR
    finally:
        group.end(request, outcome, time.monotonic())


async def client(index: int, group: Group, call: Call, sim: Simulation) -> None:
    """A client sends a request every ~100 ms until the end, whether or not the previous
    ones have been answered. Client ``index`` keeps the same schedule in both groups."""
    rng = random.Random(f"{sim.settings.seed}:{index}")
    at = sim.timeline.t0 + rng.uniform(0, REQUEST_INTERVAL)
    for _ in range(sim.max_requests):
        if at >= sim.end:
            return
        await asyncio.sleep(at - time.monotonic())
        sim.look_at_breaker()
        group.spawn(send(group, call, sim.timeline))
        at += REQUEST_INTERVAL * rng.uniform(0.5, 1.5)


class View(Protocol):
    """What the run tells of its progress, about every TICK and once when it is over."""

    def update(self, sim: Simulation, now: float) -> None: ...

    def close(self) -> None: ...


class Simulation:
    """Both groups, both services, the policies and what the breaker did."""

    def __init__(self, settings: Settings, policies: Policies) -> None:
        self.settings = settings
        self.intensity = INTENSITIES[settings.intensity]
        self.policies = policies
        self.timeline = Timeline(time.monotonic(), settings.duration)
        self.end = self.timeline.t0 + settings.duration
        self.workers = WORKERS_PER_CLIENT * settings.clients
        self.max_requests = int(settings.duration / (REQUEST_INTERVAL * 0.5)) + 1
        self.groups = Both(
            *(
                Group(label, Service(self.timeline, self.intensity, settings.seed, self.workers))
                for label in GROUPS
            )
        )
        self.first_state = policies.breaker.state
        self.changes: list[Transition] = []
        policies.breaker.add_listener(self._changed, StateChange)
        self.over = False  # the clients have stopped and the grace period is past
        self.finished_at: float | None = None
        self.seen = [Seen(0.0, self.first_state)]  # the breaker's state as requests met it

    def _changed(self, change: StateChange) -> None:
        self.changes.append(Transition(change.at - self.timeline.t0, change.old, change.new))

    def look_at_breaker(self) -> None:
        """Note the breaker's state if it changed: polled as each request is sent, so the
        chart's band shows the state that requests met, a property read per request."""
        state = self.policies.breaker.state
        if state is not self.seen[-1].state:
            self.seen.append(Seen(self.elapsed(), state))

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
        calls = Both(
            unguarded=plain_call(self.groups.unguarded),
            resilient=guarded(plain_call(self.groups.resilient)),
        )
        loops = [
            asyncio.create_task(client(i, group, call, self))
            for i in range(self.settings.clients)
            for group, call in zip(self.groups, calls, strict=True)
        ]
        while (now := time.monotonic()) < self.end:
            view.update(self, now)
            await asyncio.sleep(min(TICK, self.end - now))
        await asyncio.gather(*loops)
        pending = {task for group in self.groups for task in group.tasks}
        if pending:  # answers already on their way may still come in, briefly
            _, pending = await asyncio.wait(pending, timeout=GRACE)
        self.over = True
        view.update(self, time.monotonic())
        for task in pending:  # still waiting: abandoned (counted as unanswered)
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.finished_at = self.elapsed()
