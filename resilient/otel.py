"""OpenTelemetry metrics: every policy's calls, retries, rejections and states.

``instrument()`` switches them on for every policy, those alive now and those made
later; ``uninstrument()`` switches them off. Until then a policy pays nothing for them
(its plan is compiled without a meter)::

    from resilient import otel

    otel.instrument()                  # the global MeterProvider
    otel.instrument(meter_provider)    # or one of yours

The metrics are declared in ``resilient/_metrics.py`` (shared with the Prometheus
exporter): counters of calls by outcome, retries, give-ups, rejections by reason and
breaker transitions; histograms of call and attempt durations in seconds, with bucket
advice (``BUCKETS``) that SDKs from 1.30 honour; gauges of each named breaker's state
and each named bulkhead's calls inside and queued, read when the reader collects. All
come from one instrumentation scope, ``resilient``, with the package's version.

This module imports ``opentelemetry-api`` (the ``otel`` extra installs it); the SDK and
its exporters are the application's choice. ``import resilient`` never loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, CallbackT, MeterProvider, Observation

from resilient._core.configuration import events
from resilient._metrics import (
    ATTEMPT_DURATION,
    BUCKETS,
    CALL_DURATION,
    CALLS,
    GAVE_UP,
    IN_USE,
    QUEUED,
    REJECTIONS,
    RETRIES,
    STATE,
    TRANSITIONS,
    Metric,
    call_attributes,
    event_counts,
    gauge,
)

__all__ = ["instrument", "uninstrument"]

#: The instrumentation scope every instrument belongs to.
SCOPE = "resilient"


class _Exporter(events.Meter):
    """A provider's instruments, fed by every policy while this exporter is the one on.

    One is made by each ``instrument()`` that switches providers. Made again for a
    provider, it gets the same instruments (an SDK hands back the one it made first for
    a scope and a name), the gauges with their first callbacks: so those ask whether
    their provider is the one on, not their exporter."""

    def __init__(self, provider: MeterProvider) -> None:
        import resilient

        self.provider = provider
        meter = provider.get_meter(SCOPE, resilient.__version__)
        self.counters = {
            m: meter.create_counter(m.name, unit=m.unit, description=m.description)
            for m in (CALLS, RETRIES, GAVE_UP, REJECTIONS, TRANSITIONS)
        }
        self.calls = self.counters[CALLS]
        self.call_duration, self.attempt_duration = (
            meter.create_histogram(
                m.name,
                unit=m.unit,
                description=m.description,
                explicit_bucket_boundaries_advisory=BUCKETS,
            )
            for m in (CALL_DURATION, ATTEMPT_DURATION)
        )
        for metric in (STATE, IN_USE, QUEUED):
            meter.create_observable_gauge(
                metric.name,
                callbacks=[_observed(provider, metric)],
                unit=metric.unit,
                description=metric.description,
            )

    # The Meter protocol: on the caller's thread, quick, never raising on a normal path.
    # Each records only while this exporter is the one on: while instrument() switches
    # providers both are among the meters for a moment, and exactly one of them counts.

    def event(self, event: Any) -> None:
        if _on is self:
            for metric, attributes in event_counts(event):
                self.counters[metric].add(1, attributes)

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        if _on is self:
            attributes = call_attributes(policy, outcome, error)
            self.calls.add(1, attributes)
            self.call_duration.record(seconds, attributes)

    def attempt(
        self, policy: Any, outcome: str, seconds: float, error: BaseException | None
    ) -> None:
        if _on is self:
            self.attempt_duration.record(seconds, call_attributes(policy, outcome, error))


# -- the gauges: read from the registry of live policies when the reader collects ------


def _observed(provider: MeterProvider, metric: Metric) -> CallbackT:
    """A gauge's callback: its readings while ``provider`` is the one on, none
    otherwise (after ``uninstrument()``, or once another provider replaced it)."""

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        on = _on
        if on is None or on.provider is not provider:
            return ()
        return [Observation(value, attributes) for attributes, value in gauge(metric)]

    return callback


# -- on and off ------------------------------------------------------------------------

#: The exporter switched on (None: off); the lock makes switches one at a time.
_on: _Exporter | None = None
_lock = threading.Lock()


def instrument(meter_provider: MeterProvider | None = None) -> None:
    """Switch OpenTelemetry metrics on for every policy, live and future.

    ``meter_provider``: where the metrics go; None for the global one
    (``opentelemetry.metrics.get_meter_provider()``, which forwards to the provider an
    application sets later with ``set_meter_provider``). Calling it again with the same
    provider changes nothing; with another provider, that one replaces the first, from
    one call to the next (each call is counted once, by one of them): the first keeps
    what it counted but counts nothing more, and its gauges report nothing.
    """
    global _on
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        old = _on
        if old is not None and old.provider is provider:
            return
        new = _Exporter(provider)
        events.meters.add(new)  # every live policy recompiles its plan
        _on = new  # the switch: from here on the new one counts, the old one does not
        if old is not None:
            events.meters.remove(old)


def uninstrument() -> None:
    """Switch OpenTelemetry metrics off: nothing more is counted, the gauges report
    nothing, and policies go back to paying nothing for them. Harmless when off."""
    global _on
    with _lock:
        old, _on = _on, None  # the switch; then every live policy recompiles its plan
        if old is not None:
            events.meters.remove(old)
