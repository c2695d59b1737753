"""What a resilient.prometheus Collector adds to a call through a closed breaker.

Side by side, in one group: the bare call; the breaker with no meter on (the baseline:
the fast closed path); with a meter that does nothing (what the core's metered path
costs any exporter: the call timed, the slow closed path, the meters' fan-out); and with
a Collector open, which also counts the call into its counter and histogram (one lock,
a few dict operations). A meter is on only inside its own row: it switches counting on
for every policy of the process, so it must not outlive the row. A round is ``CALLS``
calls; the summary reports per call (``extra_info["ops"]``).
"""

from __future__ import annotations

from typing import Any

import pytest

from resilient import CircuitBreaker
from resilient._core.configuration import events
from resilient.prometheus import Collector

from ._subjects import calls, f

CALLS = 1000


def counted(collector: Collector) -> float:
    return sum(
        s.value
        for family in collector.collect()
        if family.name == "resilient_calls"
        for s in family.samples
    )


@pytest.mark.benchmark(group="sync closed path, metered")
@pytest.mark.parametrize("name", ["bare", "no meter", "no-op meter", "collector"])
def test_collector_cost(benchmark: Any, name: str) -> None:
    benchmark.extra_info.update(ops=CALLS, baseline=name == "no meter")
    if name == "bare":
        assert benchmark(calls(f), CALLS) == 1
        return
    loop = calls(CircuitBreaker(name="bench-metered")(f))
    noop = events.Meter()
    collector = None
    if name == "no-op meter":
        events.meters.add(noop)
    elif name == "collector":
        collector = Collector()
    try:
        assert benchmark(loop, CALLS) == 1
        if collector is not None:
            assert counted(collector) >= CALLS  # it did count every call
    finally:
        events.meters.remove(noop)
        if collector is not None:
            collector.close()
