"""What a run did, as the plain data ``--json`` prints. The types are TypedDicts: the
summary is that JSON document, so what ``json.loads`` reads back is a ``Summary`` too and
the report renders either alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TypedDict

from resilient import State
from resilient._demo.policies import Described, describe_policies, environment
from resilient._demo.scenario import Timeline
from resilient._demo.simulation import CLIENT_TIMEOUT, Answer, Group, Outcome, Simulation


class Tally(TypedDict):
    """Outcomes and answer times of some requests."""

    requests: int
    succeeded: int
    errors: int
    timeouts: int
    refused_breaker: int
    refused_bulkhead: int
    unanswered: int
    p50: float | None
    p99: float | None
    # true when the percentile is a request still waiting at the end: "more than"
    p50_unfinished: bool
    p99_unfinished: bool


class PhaseTally(Tally):
    """One group's requests sent in one phase, and its service's calls in it."""

    service_calls: int
    service_overloaded: int


class GroupSummary(Tally):
    retries: int
    peak_in_flight: int
    service_calls: int
    service_workers: int
    service_peak_busy: int
    service_overloaded: int
    service_last_overloaded: float | None  # seconds into the run
    phases: dict[str, PhaseTally]  # by phase key


class Groups(TypedDict):
    unguarded: GroupSummary
    resilient: GroupSummary


# "from" is a keyword, hence the functional form
Change = TypedDict("Change", {"at": float, "from": str, "to": str})


class BreakerSummary(TypedDict):
    initial_state: str
    final_state: str
    changes: list[Change]
    opened_in: list[str]  # the phases in which it went from CLOSED to OPEN
    state_at_outage_start: str
    state_at_recovery_start: str
    opened_after_outage_start: float | None  # seconds
    closed_after_recovery: float | None


class PhaseSpan(TypedDict):
    key: str
    label: str
    start: float  # seconds into the run
    end: float


class Summary(TypedDict):
    duration: float
    clients: int
    intensity: str
    seed: int
    elapsed: float
    client_timeout: float
    enabled: bool
    environment: dict[str, str]  # the RESILIENT_* variables set
    unknown_variables: list[str]
    policies: list[Described]
    phases: list[PhaseSpan]
    groups: Groups
    breaker: BreakerSummary


def percentile(waits: Sequence[tuple[float, bool]], share: float) -> tuple[float | None, bool]:
    """The nearest-rank percentile of sorted (seconds, unanswered) pairs, and whether it
    is only a lower bound (an unanswered request's wait, cut short by the end); None for
    no values."""
    if not waits:
        return None, False
    rank = max(1, -(-int(share * 1000) * len(waits) // 1000))  # ceil, in integers
    return waits[min(rank, len(waits)) - 1]


def tally(answers: Sequence[Answer]) -> Tally:
    """An unanswered request counts with the time it had waited when the demo ended."""
    outcomes = Counter(answer.outcome for answer in answers)
    waits = sorted((a.seconds, a.outcome is Outcome.UNANSWERED) for a in answers)
    p50, p50_more = percentile(waits, 0.5)
    p99, p99_more = percentile(waits, 0.99)
    p50, p99 = (None if p is None else round(p, 6) for p in (p50, p99))
    return {
        "requests": len(answers),
        "succeeded": outcomes[Outcome.OK],
        "errors": outcomes[Outcome.ERROR],
        "timeouts": outcomes[Outcome.TIMEOUT],
        "refused_breaker": outcomes[Outcome.BREAKER],
        "refused_bulkhead": outcomes[Outcome.BULKHEAD],
        "unanswered": outcomes[Outcome.UNANSWERED],
        "p50": p50,
        "p99": p99,
        "p50_unfinished": p50_more,
        "p99_unfinished": p99_more,
    }


def group_summary(group: Group, timeline: Timeline) -> GroupSummary:
    service = group.service
    last_overloaded = service.last_overloaded
    return {
        **tally(group.answers),
        "retries": group.retries,
        "peak_in_flight": group.peak_in_flight,
        "service_calls": service.calls,
        "service_workers": service.workers,
        "service_peak_busy": service.peak_busy,
        "service_overloaded": sum(service.overloaded_by_phase),
        "service_last_overloaded": None if last_overloaded is None else round(last_overloaded, 4),
        "phases": {
            phase.key: {
                **tally([a for a in group.answers if a.phase == index]),
                "service_calls": service.calls_by_phase[index],
                "service_overloaded": service.overloaded_by_phase[index],
            }
            for index, phase in enumerate(timeline.phases)
        },
    }


def breaker_summary(sim: Simulation) -> BreakerSummary:
    timeline, changes = sim.timeline, sim.changes
    outage, recovery = timeline.phase("outage"), timeline.phase("recovery")
    opened = [at for at, _, new in changes if new is State.OPEN and at >= outage.start]
    opened_in = sorted(
        {
            timeline.phases[timeline.index_at(timeline.t0 + at)].key
            for at, old, new in changes
            if old is State.CLOSED and new is State.OPEN
        }
    )
    closed = [at for at, _, new in changes if new is State.CLOSED and at >= recovery.start]
    return {
        "initial_state": sim.first_state.value,
        "final_state": sim.policies.breaker.state.value,
        "changes": [
            {"at": round(at, 4), "from": old.value, "to": new.value} for at, old, new in changes
        ],
        "opened_in": opened_in,
        "state_at_outage_start": sim.breaker_state_at(outage.start).value,
        "state_at_recovery_start": sim.breaker_state_at(recovery.start).value,
        "opened_after_outage_start": round(opened[0] - outage.start, 4) if opened else None,
        "closed_after_recovery": round(closed[0] - recovery.start, 4) if closed else None,
    }


def summarise(sim: Simulation) -> Summary:
    settings, timeline = sim.settings, sim.timeline
    variables, unknown = environment(sim.policies)
    return {
        "duration": settings.duration,
        "clients": settings.clients,
        "intensity": settings.intensity,
        "seed": settings.seed,
        "elapsed": round(sim.finished_at or sim.elapsed(), 3),
        "client_timeout": CLIENT_TIMEOUT,
        "enabled": sim.policies.enabled,
        "environment": variables,
        "unknown_variables": [v for v, _ in unknown],
        "policies": describe_policies(sim.policies),
        "phases": [
            {"key": p.key, "label": p.label, "start": p.start, "end": p.end}
            for p in timeline.phases
        ],
        "groups": {
            "unguarded": group_summary(sim.groups.unguarded, timeline),
            "resilient": group_summary(sim.groups.resilient, timeline),
        },
        "breaker": breaker_summary(sim),
    }
