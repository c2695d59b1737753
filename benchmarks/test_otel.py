"""What OpenTelemetry metrics add to a call: the same policies with ``resilient.otel`` off
and on, side by side in one run.

On, every call goes to the SDK: a counter's ``add`` and a histogram's ``record`` (and for
a retry each attempt's ``record`` too), each with its attributes, into a MeterProvider
whose reader (in memory) only collects when asked, as a periodic exporter's does between
exports. So the "on" rows are what the SDK's recording costs a call, plus resilient's
own share (the meter's dispatch and the attributes), against a closed breaker's and a
first-attempt success's cost with metrics off (which is what they cost before any meter
existed: a policy compiles its plan without one).

The breaker's group also has ``sdk``: a bare call followed by the SDK's own ``add`` and
``record`` with the same attributes, made by hand; the "on" row less that one is
resilient's own share (its dispatch to the meter, the attributes it builds).

A round is ``CALLS`` direct calls ``fn(1)`` in a loop (as in test_sync.py): the table's
microseconds per round read as nanoseconds per call.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilient import CircuitBreaker, Retry, otel
from resilient._metrics import BUCKETS

from ._subjects import Loop, calls, f

CALLS = 1000

#: One provider for every "on" row, made once: what an application has.
PROVIDER = MeterProvider(metric_readers=[InMemoryMetricReader()])


def sdk_alone() -> Loop:
    """``n`` bare calls, each recorded by hand as resilient records a breaker's call."""
    meter = PROVIDER.get_meter("bench")
    counter = meter.create_counter("bench.calls", unit="{call}")
    histogram = meter.create_histogram(
        "bench.call.duration", unit="s", explicit_bucket_boundaries_advisory=BUCKETS
    )
    attributes = {"policy.name": "bench-otel", "policy.kind": "breaker", "outcome": "success"}

    def loop(n: int) -> int:
        result = 0
        for _ in repeat(None, n):
            result = f(1)
            counter.add(1, attributes)
            histogram.record(0.0, attributes)
        return result

    return loop


SUBJECTS = {
    "breaker": calls(CircuitBreaker("bench-otel")(f)),
    "retry": calls(Retry(attempts=3, name="bench-otel")(f)),
    "sdk": sdk_alone(),
}


def measure(benchmark: Any, subject: str, metrics: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=metrics == "off")
    if metrics == "sdk":
        subject = "sdk"
    if metrics == "on":
        otel.instrument(PROVIDER)
    try:
        assert benchmark(SUBJECTS[subject], CALLS) == 1
    finally:
        otel.uninstrument()


@pytest.mark.benchmark(group="otel: breaker closed path")
@pytest.mark.parametrize("metrics", ["off", "on", "sdk"])
def test_otel_breaker_closed_path(benchmark: Any, metrics: str) -> None:
    measure(benchmark, "breaker", metrics)


@pytest.mark.benchmark(group="otel: retry success path")
@pytest.mark.parametrize("metrics", ["off", "on"])
def test_otel_retry_success_path(benchmark: Any, metrics: str) -> None:
    measure(benchmark, "retry", metrics)
