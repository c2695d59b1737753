"""The metrics every exporter publishes, declared once: names, units, kinds, buckets,
and how a call's outcome becomes attributes. ``resilient.otel`` and
``resilient.prometheus`` both read this; neither invents a name of its own.

Names follow OpenTelemetry's semantic-conventions style: dotted, durations in seconds
(never milliseconds) as histograms with explicit bucket advice, counters with singular
curly-brace units and no ``_total`` (Prometheus adds ``_total`` to its own counters),
``error.type`` only where something failed. A Prometheus name is the dotted name with
underscores, plus ``_seconds`` for a duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from resilient._core.configuration.registry import registry
from resilient.events import Rejected, RetryGaveUp, RetryScheduled, StateChange, _error_type

__all__ = [
    "BUCKETS",
    "METRICS",
    "STATES",
    "Metric",
    "call_attributes",
    "event_counts",
    "policy_attributes",
]

#: Seconds: from a cache hit (1 ms) to a long retry loop (60 s). The SDK's default
#: buckets assume milliseconds; these are OpenTelemetry's HTTP advice, widened.
BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)

#: A breaker's states, each one series of the state gauge (1 for the current, else 0).
STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class Metric(NamedTuple):
    name: str  # OpenTelemetry's
    kind: str  # "counter", "histogram" or "gauge"
    unit: str
    description: str
    attributes: tuple[str, ...]  # besides policy.name and policy.kind

    @property
    def prometheus(self) -> str:
        """The Prometheus name (a counter's ``_total`` is added by prometheus_client)."""
        base = self.name.replace(".", "_")
        return f"{base}_seconds" if self.unit == "s" else base


CALLS = Metric(
    "resilient.calls",
    "counter",
    "{call}",
    "Calls through a policy, by how they ended: outcome is success, failure, fallback"
    " (a Fallback answered), rejected (refused without running) or cancelled.",
    ("outcome", "error.type"),
)
CALL_DURATION = Metric(
    "resilient.call.duration",
    "histogram",
    "s",
    "How long a call through a policy took, waits and retries included.",
    ("outcome", "error.type"),
)
ATTEMPT_DURATION = Metric(
    "resilient.retry.attempt.duration",
    "histogram",
    "s",
    "How long each attempt of a Retry took.",
    ("outcome", "error.type"),
)
RETRIES = Metric(
    "resilient.retry.retries",
    "counter",
    "{retry}",
    "Retries scheduled: attempts that failed and will be tried again.",
    ("error.type",),
)
GAVE_UP = Metric(
    "resilient.retry.give_ups",
    "counter",
    "{call}",
    "Calls a Retry gave up on, by reason (attempts, deadline, budget, stop, retry_after).",
    ("reason", "error.type"),
)
REJECTIONS = Metric(
    "resilient.rejections",
    "counter",
    "{call}",
    "Calls a policy refused, by reason: open, forced_open, half_open_full (a breaker);"
    " full, queue_full, full_after_wait (a bulkhead); workers_exhausted (a Timeout);"
    " rate_limited (a RateLimiter).",
    ("reason",),
)
TRANSITIONS = Metric(
    "resilient.breaker.transitions",
    "counter",
    "{transition}",
    "A breaker's changes of state, by the state it moved to.",
    ("state",),
)
STATE = Metric(
    "resilient.breaker.state",
    "gauge",
    "1",
    "A breaker's state: one series per state, 1 for the current one, 0 for the others.",
    ("state",),
)
IN_USE = Metric(
    "resilient.bulkhead.in_use",
    "gauge",
    "{call}",
    "Calls inside a bulkhead now (its slots in use).",
    (),
)
QUEUED = Metric(
    "resilient.bulkhead.queued",
    "gauge",
    "{call}",
    "Calls waiting for a bulkhead's slot now.",
    (),
)

#: Every metric, in the order the docs table lists them.
METRICS = (
    CALLS,
    CALL_DURATION,
    ATTEMPT_DURATION,
    RETRIES,
    GAVE_UP,
    REJECTIONS,
    TRANSITIONS,
    STATE,
    IN_USE,
    QUEUED,
)


def policy_attributes(policy: Any) -> dict[str, str]:
    """Who: ``policy.name`` ("" for an unnamed policy) and ``policy.kind``."""
    return {"policy.name": policy.name or "", "policy.kind": policy.KIND}


def call_attributes(policy: Any, outcome: str, error: BaseException | None) -> dict[str, str]:
    """A call's or an attempt's attributes: ``error.type`` only on a failure."""
    attributes = {**policy_attributes(policy), "outcome": outcome}
    if outcome == "failure":
        attributes["error.type"] = _failure(error)
    return attributes


def event_counts(event: Any) -> tuple[tuple[Metric, dict[str, str]], ...]:
    """The counters an event adds one to, each with its attributes. A rejection is also
    a call (outcome ``rejected``: it ran nothing, so it has no duration); a timeout or a
    fallback is counted by its call's outcome, so counts in none here."""
    cls = event.__class__
    if cls is Rejected:
        who = policy_attributes(event.policy)
        return (
            (REJECTIONS, {**who, "reason": event.reason}),
            (CALLS, {**who, "outcome": "rejected"}),
        )
    if cls is RetryScheduled:
        failure = _failure(event.error, event.result)
        return ((RETRIES, {**policy_attributes(event.policy), "error.type": failure}),)
    if cls is RetryGaveUp:
        who = policy_attributes(event.policy)
        failure = _failure(event.error, event.result)
        return ((GAVE_UP, {**who, "reason": event.reason, "error.type": failure}),)
    if cls is StateChange:
        return ((TRANSITIONS, {**policy_attributes(event.policy), "state": event.new.value}),)
    return ()


def readings(
    policy: Any, state: str | None = None
) -> Iterator[tuple[Metric, dict[str, str], float]]:
    """What ``policy``'s gauges read now, as (metric, attributes, value): a breaker's
    state, one reading per state (1 for ``state``, its current one unless given, else
    0); a bulkhead's calls inside and queued."""
    who = policy_attributes(policy)
    if policy.KIND == "breaker":
        current = policy.state.value if state is None else state
        for each in STATES:
            yield STATE, {**who, "state": each}, float(each == current)
    elif policy.KIND == "bulkhead":
        m = policy.metrics
        yield IN_USE, who, m.in_use
        yield QUEUED, who, m.waiting


def newest(kind: str) -> list[Any]:
    """The live named policies of ``kind``, one per name (the newest, as
    ``registry.get`` finds it): a series per name, never two with the same attributes."""
    return list({policy.name: policy for policy in registry.policies(kind)}.values())


def gauge(metric: Metric) -> Iterator[tuple[dict[str, str], float]]:
    """A gauge's readings now, from the live named policies: (attributes, value)."""
    for policy in newest("breaker" if metric is STATE else "bulkhead"):
        for each, attributes, value in readings(policy):
            if each is metric:
                yield attributes, value


def _failure(error: BaseException | None, result: object = None) -> str:
    """``error.type`` of a failure: the error's, a failing result's HTTP status, or
    ``failure_result``."""
    return _error_type(error, result) or "failure_result"


def markdown_table() -> str:
    """The docs' table of metrics (docs/observability.md holds it; a test checks)."""
    rows = [
        "| OpenTelemetry | Prometheus | kind | unit | attributes | what it counts |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for metric in METRICS:
        prometheus = metric.prometheus + ("_total" if metric.kind == "counter" else "")
        attributes = ", ".join(
            f"`{a}`" for a in ("policy.name", "policy.kind", *metric.attributes)
        )
        rows.append(
            f"| `{metric.name}` | `{prometheus}` | {metric.kind} | `{metric.unit}` |"
            f" {attributes} | {metric.description} |"
        )
    return "\n".join(rows)
