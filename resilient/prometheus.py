"""Prometheus: every policy's calls, retries, rejections and states, for prometheus_client.

One process (the usual case)::

    collector = Collector()          # counting starts, for every policy, live and future
    REGISTRY.register(collector)     # or a CollectorRegistry of your own
    ...
    REGISTRY.unregister(collector)
    collector.close()                # counting stops (once no other meter is on)

A :class:`Collector` keeps its own counters and histograms, fed by every call of every
policy while it is open, and reads the gauges (a breaker's state, a bulkhead's slots in
use and queue) from the live policies when scraped. Making one switches counting on;
counting costs nothing while no collector (and no ``resilient.otel`` instrumentation) is
open. ``close()`` switches it off again, once the last one closes; a closed collector
reports nothing.

Several processes (gunicorn's workers, with ``PROMETHEUS_MULTIPROC_DIR``): a custom
collector sees only its own process, so prometheus_client's multiprocess mode cannot use
one. :func:`instrument_multiprocess` records through prometheus_client's own ``Counter``,
``Histogram`` and ``Gauge`` instead, which write the directory's files; the app's
``/metrics`` reads them with ``prometheus_client.multiprocess.MultiProcessCollector``.

The metrics are declared in ``resilient._metrics`` (names, units, buckets, descriptions),
the same for OpenTelemetry; a Prometheus label is the attribute's name with ``_`` for
``.``: ``policy_name``, ``policy_kind``, ``outcome``, ``error_type``, ``reason``,
``state``. Only named policies have gauges (an unnamed one has nothing to tell it apart).

This module imports prometheus_client (the ``prometheus`` extra installs it);
``import resilient`` never does.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from resilient import _metrics
from resilient._core.configuration import events
from resilient._errors import ConfigError
from resilient.events import Rejected, StateChange

__all__ = ["Collector", "MultiprocessMetrics", "instrument_multiprocess"]

_M = _metrics.Metric
_BOUNDS = _metrics.BUCKETS
#: The ``le`` labels of the buckets, +Inf last, as prometheus_client writes them.
_LE = (*(repr(float(b)) for b in _BOUNDS), "+Inf")


def _label_names(metric: _M) -> list[str]:
    return ["policy_name", "policy_kind", *(a.replace(".", "_") for a in metric.attributes)]


def _labels(metric: _M, attributes: Mapping[str, str]) -> tuple[str, ...]:
    """The label values of ``metric`` from attributes (``""`` for one not given: to
    Prometheus, a label with an empty value is no label)."""
    return (
        attributes["policy.name"],
        attributes["policy.kind"],
        *(attributes.get(a, "") for a in metric.attributes),
    )


#: A call's and an attempt's metrics have the same attributes: one label tuple serves all.
assert (
    _metrics.CALLS.attributes
    == _metrics.CALL_DURATION.attributes
    == _metrics.ATTEMPT_DURATION.attributes
)


class _Recorder(events.Meter):
    """Calls and events as counts and observations of the declared metrics, written once
    for both ways of keeping them (``count``, ``observe``, ``called``)."""

    def __init__(self) -> None:
        #: a call's labels by what decides them (its policy's name and kind, its outcome,
        #: its error's class): made once each, since a call is the hot path. As many as
        #: the series they label; a race makes one twice, alike.
        self._known: dict[tuple[Any, ...], tuple[str, ...]] = {}

    def count(self, metric: _M, labels: tuple[str, ...]) -> None:
        raise NotImplementedError

    def observe(self, metric: _M, labels: tuple[str, ...], seconds: float) -> None:
        raise NotImplementedError

    def called(self, labels: tuple[str, ...], seconds: float) -> None:
        """A call ended: counted, and its duration observed."""
        self.count(_metrics.CALLS, labels)
        self.observe(_metrics.CALL_DURATION, labels, seconds)

    def _call_labels(
        self, policy: Any, outcome: str, error: BaseException | None
    ) -> tuple[str, ...]:
        key = (policy.name, policy.KIND, outcome, error.__class__)
        labels = self._known.get(key)
        if labels is None:
            attributes = _metrics.call_attributes(policy, outcome, error)
            labels = self._known[key] = _labels(_metrics.CALLS, attributes)
        return labels

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        self.called(self._call_labels(policy, outcome, error), seconds)

    def attempt(
        self, policy: Any, outcome: str, seconds: float, error: BaseException | None
    ) -> None:
        labels = self._call_labels(policy, outcome, error)
        self.observe(_metrics.ATTEMPT_DURATION, labels, seconds)

    def event(self, event: Any) -> None:
        # (a refused call never ran, so no driver tells of it: it counts here, in calls
        # with outcome "rejected" and no duration, and in rejections)
        for metric, attributes in _metrics.event_counts(event):
            self.count(metric, _labels(metric, attributes))


# -- one process: a collector ---------------------------------------------------------------


class _Tally(_Recorder):
    """The counts and histograms of one collector, per label set.

    Called from every thread that makes a call: each record takes one lock for a few
    dict operations (no I/O, no user code under it), so counts are exact under any
    interleaving; a scrape copies them under the same lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.counts: dict[_M, dict[tuple[str, ...], int]] = {}
        #: per label set: each bucket's own count (not cumulative), +Inf's last, then the sum
        self.histograms: dict[_M, dict[tuple[str, ...], list[float]]] = {}
        for metric in _metrics.METRICS:
            if metric.kind == "counter":
                self.counts[metric] = {}
            elif metric.kind == "histogram":
                self.histograms[metric] = {}
        self._calls = self.counts[_metrics.CALLS]  # a call's own, bound: the hot path
        self._durations = self.histograms[_metrics.CALL_DURATION]

    def count(self, metric: _M, labels: tuple[str, ...]) -> None:
        counts = self.counts[metric]
        with self._lock:
            counts[labels] = counts.get(labels, 0) + 1

    def observe(self, metric: _M, labels: tuple[str, ...], seconds: float) -> None:
        histograms = self.histograms[metric]
        with self._lock:
            _observe(histograms, labels, seconds)

    def called(self, labels: tuple[str, ...], seconds: float) -> None:
        bucket = bisect_left(_BOUNDS, seconds)  # (_observe inlined: this is per call)
        calls, durations = self._calls, self._durations
        with self._lock:
            calls[labels] = calls.get(labels, 0) + 1
            histogram = durations.get(labels)
            if histogram is None:
                histogram = durations[labels] = [0.0] * (len(_BOUNDS) + 2)
            histogram[bucket] += 1
            histogram[-1] += seconds

    def snapshot(
        self,
    ) -> tuple[dict[_M, dict[tuple[str, ...], int]], dict[_M, dict[tuple[str, ...], list[float]]]]:
        with self._lock:
            counts = {metric: dict(each) for metric, each in self.counts.items()}
            histograms = {
                metric: {labels: list(h) for labels, h in each.items()}
                for metric, each in self.histograms.items()
            }
        return counts, histograms


def _observe(
    histograms: dict[tuple[str, ...], list[float]], labels: tuple[str, ...], seconds: float
) -> None:
    """Under the tally's lock: ``seconds`` into its bucket (``le``: a bound holds what
    equals it) and the sum."""
    histogram = histograms.get(labels)
    if histogram is None:
        histogram = histograms[labels] = [0.0] * (len(_BOUNDS) + 2)
    histogram[bisect_left(_BOUNDS, seconds)] += 1
    histogram[-1] += seconds


class Collector:
    """A prometheus_client collector of every policy: register it with a registry.

    Making one switches counting on for every policy, live and future; ``close()``
    switches it off, once no other collector (nor ``resilient.otel``) is open, and
    empties this one: a closed collector reports nothing, so unregister it too. A
    ``with Collector() as collector:`` block closes it at its end.

    Counters and histograms count from the collector's making; the gauges are read
    from the live named policies at each scrape. A rejected call counts in
    ``resilient_calls_total`` with ``outcome="rejected"`` (and no duration) and in
    ``resilient_rejections_total`` with its reason.
    """

    def __init__(self) -> None:
        self._tally: _Tally | None = _Tally()
        events.meters.add(self._tally)

    def close(self) -> None:
        """Stop counting (for every policy once no other meter is on); idempotent."""
        tally, self._tally = self._tally, None
        if tally is not None:
            events.meters.remove(tally)

    @property
    def closed(self) -> bool:
        return self._tally is None

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> list[Metric]:
        """The families, without samples: what a registry checks for duplicates."""
        return [_family(metric) for metric in _metrics.METRICS]

    def collect(self) -> Iterator[Metric]:
        tally = self._tally
        if tally is None:
            return
        counts, histograms = tally.snapshot()
        for metric in _metrics.METRICS:
            family = _family(metric)
            if isinstance(family, CounterMetricFamily):
                for labels, value in counts[metric].items():
                    family.add_metric(labels, value)
            elif isinstance(family, HistogramMetricFamily):
                for labels, histogram in histograms[metric].items():
                    family.add_metric(labels, _cumulative(histogram), histogram[-1])
            else:
                _gauge(metric, family)
            yield family

    def __repr__(self) -> str:
        return f"<resilient.prometheus.Collector{' (closed)' if self.closed else ''}>"


def _family(metric: _M) -> Metric:
    """An empty family of ``metric``, typed and documented as declared."""
    labels = _label_names(metric)
    if metric.kind == "counter":
        return CounterMetricFamily(metric.prometheus, metric.description, labels=labels)
    if metric.kind == "histogram":
        return HistogramMetricFamily(
            metric.prometheus, metric.description, labels=labels, unit="seconds"
        )
    return GaugeMetricFamily(metric.prometheus, metric.description, labels=labels)


def _cumulative(histogram: list[float]) -> list[tuple[str, float]]:
    """Each bucket's own count as Prometheus's cumulative ``le`` buckets, +Inf last."""
    buckets, running = [], 0.0
    for le, each in zip(_LE, histogram[:-1], strict=True):
        running += each
        buckets.append((le, running))
    return buckets


def _gauge(metric: _M, family: Metric) -> None:
    """A gauge's samples, read from the live policies now."""
    assert isinstance(family, GaugeMetricFamily)
    for attributes, value in _metrics.gauge(metric):
        family.add_metric(_labels(metric, attributes), value)


# -- several processes: prometheus_client's own metrics -------------------------------------

#: How each gauge adds up across processes: a breaker's state per live worker (a ``pid``
#: label: which worker's breaker is open; ``max by (policy_name, state)`` tells whether
#: any is), a bulkhead's slots and queue summed over the live workers.
_GAUGE_MODES = {
    _metrics.STATE: "liveall",
    _metrics.IN_USE: "livesum",
    _metrics.QUEUED: "livesum",
}


class MultiprocessMetrics(_Recorder):
    """What :func:`instrument_multiprocess` switched on in this process: the counters and
    histograms of every call, written by prometheus_client's own metrics to
    ``PROMETHEUS_MULTIPROC_DIR``, and the gauges, set at each transition, at each call
    of a bulkhead and every ``interval`` seconds by a daemon thread (``refresh``)."""

    def __init__(self, interval: float | None) -> None:
        self._counters: dict[_M, Counter] = {}
        self._histograms: dict[_M, Histogram] = {}
        self._gauges: dict[_M, Gauge] = {}
        for metric in _metrics.METRICS:
            # registry=None: the app's /metrics reads the files, never a registry of ours.
            args = (metric.prometheus, metric.description, _label_names(metric))
            if metric.kind == "counter":
                self._counters[metric] = Counter(*args, registry=None)
            elif metric.kind == "histogram":
                self._histograms[metric] = Histogram(*args, registry=None, buckets=_BOUNDS)
            else:
                mode = _GAUGE_MODES[metric]
                self._gauges[metric] = Gauge(*args, registry=None, multiprocess_mode=mode)  # type: ignore[arg-type]
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()
        events.meters.add(self)
        if interval is not None:
            self._thread = threading.Thread(
                target=self._sample,
                args=(interval,),
                name="resilient.prometheus refresh",
                daemon=True,
            )
            self._thread.start()

    def count(self, metric: _M, labels: tuple[str, ...]) -> None:
        self._counters[metric].labels(*labels).inc()

    def observe(self, metric: _M, labels: tuple[str, ...], seconds: float) -> None:
        self._histograms[metric].labels(*labels).observe(seconds)

    def call(self, policy: Any, outcome: str, seconds: float, error: BaseException | None) -> None:
        super().call(policy, outcome, seconds, error)
        if policy.KIND == "bulkhead" and policy.name is not None:
            self._set(policy)

    def event(self, event: Any) -> None:
        super().event(event)
        if event.__class__ is StateChange:
            if event.breaker.name is not None:
                self._set(event.breaker, event.new.value)
        elif event.__class__ is Rejected:
            policy = event.policy
            if policy.KIND == "bulkhead" and policy.name is not None:
                self._set(policy)

    def refresh(self) -> None:
        """Set the gauges from the live named policies now."""
        for kind in ("breaker", "bulkhead"):
            for policy in _metrics.newest(kind):
                self._set(policy)

    def _set(self, policy: Any, state: str | None = None) -> None:
        """``policy``'s gauges, from what it reads now (a breaker: in ``state``)."""
        for metric, attributes, value in _metrics.readings(policy, state):
            self._gauges[metric].labels(*_labels(metric, attributes)).set(value)

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception:  # a policy half made, a full disk: the next round tries again
                pass

    def close(self) -> None:
        """Stop recording (the files keep what was written) and the refresh thread."""
        global _instrumented
        with _INSTRUMENTING:
            if _instrumented is self:
                _instrumented = None
        events.meters.remove(self)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def __repr__(self) -> str:
        return "<resilient.prometheus.MultiprocessMetrics>"


_INSTRUMENTING = threading.Lock()
_instrumented: MultiprocessMetrics | None = None


def instrument_multiprocess(*, interval: float | None = 1.0) -> MultiprocessMetrics:
    """Record every policy's metrics into ``PROMETHEUS_MULTIPROC_DIR``, for a server
    whose workers are processes (gunicorn): call it in each worker (``post_fork``).

    The gauges are set as things happen (a breaker's transition, a bulkhead's call or
    rejection) and, to show calls that are inside a bulkhead and have not ended yet,
    every ``interval`` seconds (1 by default; None: no thread). Calling it again in the
    same process returns what the first call switched on.

    ConfigError if prometheus_client is not in multiprocess mode: the variable must be
    set before prometheus_client is first imported, or the values would stay in this
    process, where no scrape sees them. Never use :class:`Collector` in such a server.
    """
    global _instrumented
    if values.ValueClass is values.MutexValue:
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR",
            None,
            "a directory, set in the environment before prometheus_client is imported"
            " (prometheus_client is not in multiprocess mode; in a single process,"
            " register a resilient.prometheus.Collector() instead)",
            owner="resilient.prometheus.instrument_multiprocess()",
        )
    if interval is not None and not interval > 0:
        raise ConfigError(
            "interval", interval, "seconds > 0, or None", owner="instrument_multiprocess()"
        )
    with _INSTRUMENTING:
        if _instrumented is None:
            _instrumented = MultiprocessMetrics(interval)
        return _instrumented
