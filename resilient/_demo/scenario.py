"""The simulated service and its scenario: the phases of a run, how bad each one is, and a
service whose answers depend on the phase and on its dice alone, so that two services
made with one seed answer two groups of clients alike."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass


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
