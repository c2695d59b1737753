"""resilient.otel against the real OpenTelemetry SDK, read back by an in-memory reader.

Each test feeds a fresh MeterProvider (so counts are exact: cumulative since it was
made) and switches the metrics off afterwards, whatever happens. Gauges list every live
named policy, including other tests' that are not yet collected: they are read here by
this test's own (fresh) names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import pytest
from opentelemetry.metrics import NoOpCounter, NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    Sum,
)

import resilient
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Retry,
    Timeout,
    TimeoutExpired,
    otel,
)
from resilient._core.configuration import events
from resilient._metrics import (
    ATTEMPT_DURATION,
    BUCKETS,
    CALL_DURATION,
    CALLS,
    GAVE_UP,
    IN_USE,
    METRICS,
    QUEUED,
    REJECTIONS,
    RETRIES,
    STATE,
    STATES,
    TRANSITIONS,
)
from resilient.testing import ManualClock

from .conftest import Flavour, fresh

#: Bounds every wait for another thread (never reached when all is well).
PATIENCE = 10.0


class Readout:
    """A provider with an in-memory reader, and what it collected, by metric name."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def collect(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "resilient"
                assert scope.scope.version == resilient.__version__
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str, policy: str | None = None, **where: str) -> list[Any]:
        """The data points of metric ``name`` (of the policy named ``policy``) whose
        attributes include ``where`` (``error_type`` for ``error.type``)."""
        metric = self.collect().get(name)
        if metric is None:
            return []
        wanted = {k.replace("_", ".") if k == "error_type" else k: v for k, v in where.items()}
        if policy is not None:
            wanted["policy.name"] = policy
        return [
            point
            for point in metric.data.data_points
            if all(point.attributes.get(k) == v for k, v in wanted.items())
        ]

    def count(self, name: str, policy: str | None = None, **where: str) -> int:
        """A counter's total (a histogram's count) over the matching points."""
        total = 0
        for point in self.points(name, policy, **where):
            total += point.count if isinstance(point, HistogramDataPoint) else point.value
        return int(total)


@pytest.fixture(autouse=True)
def _off_afterwards() -> Iterator[None]:
    """Whatever a test did, the metrics are off after it (the suite runs in any order)."""
    try:
        yield
    finally:
        otel.uninstrument()


@pytest.fixture
def readout() -> Iterator[Readout]:
    """Metrics switched on into a fresh provider, for this test only."""
    found = Readout()
    otel.instrument(found.provider)
    try:
        yield found
    finally:
        otel.uninstrument()
        found.provider.shutdown()


def attributes(point: Any) -> Mapping[str, Any]:
    return dict(point.attributes)


# -- what the metrics are ----------------------------------------------------------------


def test_every_metric_has_its_declared_name_kind_unit_and_description(
    readout: Readout,
) -> None:
    """Counters are monotonic sums named without ``_total``; durations are histograms in
    seconds over BUCKETS; the gauges are gauges; each says what _metrics declares."""
    clock = ManualClock()
    breaker = CircuitBreaker(fresh("all"), min_calls=1, window_size=1, clock=clock)
    bulkhead = Bulkhead(1, name=fresh("all"))
    retry = Retry(2, wait=1, clock=clock)

    @retry
    def flaky() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        flaky()  # a retry, a give-up, two attempts, a call
    with pytest.raises(ConnectionError):
        breaker.call(flaky)  # opens it: a transition
    with pytest.raises(CircuitOpenError):
        breaker.call(int)  # a rejection
    assert bulkhead.call(int) == 0

    collected = readout.collect()
    assert set(collected) == {m.name for m in METRICS}
    for declared in METRICS:
        metric = collected[declared.name]
        assert (metric.unit, metric.description) == (declared.unit, declared.description)
        assert not metric.name.endswith("_total")
        if declared.kind == "counter":
            assert isinstance(metric.data, Sum)
            assert metric.data.is_monotonic
        elif declared.kind == "histogram":
            assert isinstance(metric.data, Histogram)
            assert declared.unit == "s"
            for point in metric.data.data_points:
                assert tuple(point.explicit_bounds) == BUCKETS
        else:
            assert isinstance(metric.data, Gauge)
    assert collected[CALLS.name].unit == "{call}"


# -- calls through a breaker, in every mode and form ----------------------------------


def test_a_breakers_calls_are_counted_by_outcome_with_their_durations(
    readout: Readout, flavour: Flavour
) -> None:
    name = fresh("calls")
    breaker = CircuitBreaker(name)
    assert flavour.call(breaker, "ok") == "ok"
    assert flavour.call(breaker, "ok") == "ok"
    with pytest.raises(ValueError, match="bad"):
        flavour.call(breaker, ValueError("bad"))

    ok = readout.points(CALLS.name, name, outcome="success")
    assert [p.value for p in ok] == [2]
    assert attributes(ok[0]) == {
        "policy.name": name,
        "policy.kind": "breaker",
        "outcome": "success",
    }
    failed = readout.points(CALLS.name, name, outcome="failure")
    assert [attributes(p)["error.type"] for p in failed] == ["ValueError"]
    assert [p.value for p in failed] == [1]
    assert readout.count(CALL_DURATION.name, name, outcome="success") == 2
    assert readout.count(CALL_DURATION.name, name, outcome="failure", error_type="ValueError") == 1
    assert readout.points(REJECTIONS.name, name) == []


def test_error_type_is_only_on_failures_and_names_the_module(readout: Readout) -> None:
    class Custom(Exception):
        pass

    name = fresh("types")
    breaker = CircuitBreaker(name)
    breaker.call(int)
    with pytest.raises(Custom):
        breaker.call(lambda: (_ for _ in ()).throw(Custom()))
    for point in readout.points(CALLS.name, name):
        failed = point.attributes["outcome"] == "failure"
        assert ("error.type" in point.attributes) == failed
        if failed:
            assert point.attributes["error.type"] == f"{__name__}.{Custom.__qualname__}"


def test_durations_are_in_seconds(readout: Readout) -> None:
    """A call that sleeps 0.05 s lands in a bucket of at most 1 s, never near 50 (what
    milliseconds would give): only a lower bound and a generous upper one are timed."""
    name = fresh("slow")
    CircuitBreaker(name)(time.sleep)(0.05)
    [point] = readout.points(CALL_DURATION.name, name)
    assert point.count == 1
    assert 0.05 <= point.sum <= 1.0
    landed = next(i for i, n in enumerate(point.bucket_counts) if n)
    assert BUCKETS[landed] <= 1.0


# -- a retry: attempts, retries, give-ups ------------------------------------------------


def test_a_retrys_attempts_retries_and_give_up_are_counted(readout: Readout, mode: str) -> None:
    name = fresh("retry")
    retry = Retry(3, wait=1, clock=ManualClock(), name=name)
    outcomes: list[Any] = [ConnectionError(), TimeoutError(), "ok"]  # ok on the third
    outcomes += [ConnectionError()] * 3  # then a call that gives up

    def body() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def abody() -> Any:
        await anyio.lowlevel.checkpoint()
        return body()

    def call() -> Any:
        if mode == "sync":
            return retry(body)()
        return anyio.run(retry(abody), backend=mode)

    assert call() == "ok"
    with pytest.raises(ConnectionError):
        call()

    assert readout.count(CALLS.name, name, outcome="success") == 1
    assert readout.count(CALLS.name, name, outcome="failure", error_type="ConnectionError") == 1
    assert readout.count(CALL_DURATION.name, name) == 2
    assert readout.count(ATTEMPT_DURATION.name, name, outcome="success") == 1
    assert readout.count(ATTEMPT_DURATION.name, name, outcome="failure") == 5
    assert readout.count(ATTEMPT_DURATION.name, name, error_type="TimeoutError") == 1
    assert readout.count(RETRIES.name, name) == 4  # two per call
    assert readout.count(RETRIES.name, name, error_type="ConnectionError") == 3
    [gave_up] = readout.points(GAVE_UP.name, name)
    assert gave_up.value == 1
    assert attributes(gave_up) == {
        "policy.name": name,
        "policy.kind": "retry",
        "reason": "attempts",
        "error.type": "ConnectionError",
    }


def test_a_failing_result_is_a_failure_of_type_failure_result(readout: Readout) -> None:
    name = fresh("result")
    retry = Retry(2, on_result=lambda r: r is None, clock=ManualClock(), name=name)
    assert retry.call(lambda: None) is None
    assert readout.count(CALLS.name, name, outcome="failure", error_type="failure_result") == 1
    assert readout.count(RETRIES.name, name, error_type="failure_result") == 1


# -- a bulkhead: rejections and its gauges ----------------------------------------------


def wait_until(condition: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the other thread never got there"
        time.sleep(0.001)


def test_a_full_bulkhead_rejects_and_its_gauges_show_calls_inside_and_queued(
    readout: Readout,
) -> None:
    name = fresh("pool")
    bulkhead = Bulkhead(1, max_wait=PATIENCE, max_waiting=1, name=name)
    release = threading.Event()
    inside = threading.Event()

    def hold() -> None:
        inside.set()
        assert release.wait(PATIENCE)

    threads = [threading.Thread(target=bulkhead.call, args=(hold,)) for _ in range(2)]
    try:
        threads[0].start()
        assert inside.wait(PATIENCE)
        assert [p.value for p in readout.points(IN_USE.name, name)] == [1]
        assert [p.value for p in readout.points(QUEUED.name, name)] == [0]
        threads[1].start()
        wait_until(lambda: bulkhead.metrics.waiting == 1)
        assert [p.value for p in readout.points(QUEUED.name, name)] == [1]
        with pytest.raises(BulkheadFullError):
            bulkhead.call(int)  # the queue is full too
    finally:
        release.set()
        for thread in threads:
            thread.join(PATIENCE)
    [rejected] = readout.points(REJECTIONS.name, name)
    assert "full" in rejected.attributes["reason"]
    assert rejected.value == 1
    [call] = readout.points(CALLS.name, name, outcome="rejected")
    assert call.value == 1
    assert "error.type" not in call.attributes
    assert readout.points(CALL_DURATION.name, name, outcome="rejected") == []
    assert readout.count(CALLS.name, name, outcome="success") == 2
    assert [p.value for p in readout.points(IN_USE.name, name)] == [0]
    assert [p.value for p in readout.points(QUEUED.name, name)] == [0]


def test_a_bulkhead_without_a_queue_rejects_as_full(readout: Readout) -> None:
    name = fresh("nowait")
    bulkhead = Bulkhead(1, name=name)
    with bulkhead, pytest.raises(BulkheadFullError):
        bulkhead.call(int)
    assert [p.attributes["reason"] for p in readout.points(REJECTIONS.name, name)] == ["full"]


# -- a timeout, a fallback ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_expired_timeout_is_a_failure_of_type_timeout_expired(
    readout: Readout, backend: str
) -> None:
    name = fresh("slow")

    @Timeout(0.01, name=name)
    async def stuck() -> None:
        await anyio.sleep(PATIENCE)

    with pytest.raises(TimeoutExpired):
        anyio.run(stuck, backend=backend)
    [point] = readout.points(CALLS.name, name)
    assert point.attributes["outcome"] == "failure"
    assert point.attributes["error.type"].endswith("TimeoutExpired")
    assert point.value == 1


def test_an_expired_sync_timeout_is_a_failure_too(readout: Readout) -> None:
    name = fresh("slow")
    release = threading.Event()
    with pytest.raises(TimeoutExpired):
        Timeout(0.01, name=name).call(release.wait, PATIENCE)
    release.set()  # the abandoned worker ends
    assert readout.count(CALLS.name, name, outcome="failure") == 1
    [point] = readout.points(CALLS.name, name)
    assert point.attributes["error.type"].endswith("TimeoutExpired")


def test_a_fallbacks_answer_is_the_outcome_fallback(readout: Readout, flavour: Flavour) -> None:
    """A Fallback has no name: its series say policy.name "" and kind "fallback"."""
    fallback = Fallback(0)
    flavour.call(fallback, ValueError("bad"))
    flavour.call(fallback, "ok")
    assert readout.count(CALLS.name, "", outcome="fallback") == 1
    assert readout.count(CALLS.name, "", outcome="success") == 1
    [point] = readout.points(CALLS.name, "", outcome="fallback")
    assert attributes(point) == {
        "policy.name": "",
        "policy.kind": "fallback",
        "outcome": "fallback",
    }
    assert readout.count(CALL_DURATION.name, "", outcome="fallback") == 1


def test_a_retrys_attempts_as_blocks_are_each_timed(readout: Readout) -> None:
    name = fresh("block")
    for n, attempt in enumerate(Retry(2, clock=ManualClock(), name=name)):
        with attempt:
            if n == 0:
                raise ConnectionError
    assert readout.count(CALLS.name, name, outcome="success") == 1
    assert readout.count(ATTEMPT_DURATION.name, name, outcome="failure") == 1
    assert readout.count(ATTEMPT_DURATION.name, name, outcome="success") == 1


# -- an open breaker: rejections, transitions, the state gauge -------------------------


def state_gauge(readout: Readout, name: str) -> dict[str, int]:
    return {p.attributes["state"]: p.value for p in readout.points(STATE.name, name)}


def test_an_open_breaker_rejects_and_its_state_gauge_says_open(readout: Readout) -> None:
    name = fresh("open")
    breaker = CircuitBreaker(name, min_calls=2, window_size=2, clock=ManualClock())
    assert state_gauge(readout, name) == dict.fromkeys(STATES, 0) | {"closed": 1}
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid literal"):
            breaker.call(int, "x")
    with pytest.raises(CircuitOpenError):
        breaker.call(int)

    gauge = state_gauge(readout, name)
    assert set(gauge) == set(STATES)
    assert [state for state, value in gauge.items() if value] == ["open"]
    assert sum(gauge.values()) == 1
    [rejected] = readout.points(REJECTIONS.name, name)
    assert attributes(rejected) == {
        "policy.name": name,
        "policy.kind": "breaker",
        "reason": "open",
    }
    assert readout.count(CALLS.name, name, outcome="rejected") == 1
    assert readout.count(CALLS.name, name, outcome="failure") == 2
    assert readout.count(CALL_DURATION.name, name) == 2  # a rejection has none
    [moved] = readout.points(TRANSITIONS.name, name)
    assert (moved.attributes["state"], moved.value) == ("open", 1)


def test_the_state_gauge_shows_the_newest_breaker_of_a_name(readout: Readout) -> None:
    """Two live breakers of one name (the older not yet collected): one series per state,
    the newest's, as ``registry.get`` finds it."""
    name = fresh("twice")
    older = CircuitBreaker(name)
    older.force_open()
    newer = CircuitBreaker(name)
    assert (older.state.value, newer.state.value) == ("forced_open", "closed")
    assert state_gauge(readout, name) == dict.fromkeys(STATES, 0) | {"closed": 1}
    assert len(readout.points(STATE.name, name)) == len(STATES)


# -- on and off --------------------------------------------------------------------------


def test_policies_made_before_instrument_are_counted_after_it_and_not_after_off() -> None:
    name = fresh("live")
    breaker = CircuitBreaker(name)
    retry = Retry(2, clock=ManualClock(), name=fresh("live"))
    guarded = breaker(int)
    retried = retry(int)
    guarded()
    retried()

    found = Readout()
    otel.instrument(found.provider)
    guarded()
    retried()
    assert found.count(CALLS.name, name) == 1
    assert found.count(CALLS.name, retry.name) == 1
    assert found.count(ATTEMPT_DURATION.name, retry.name) == 1
    assert len(found.points(STATE.name, name)) == len(STATES)

    otel.uninstrument()
    assert not events.meters._all
    guarded()
    retried()
    assert found.count(CALLS.name, name) == 1
    assert found.count(CALLS.name, retry.name) == 1
    assert found.points(STATE.name, name) == []  # the gauges report nothing
    found.provider.shutdown()


def test_instrument_twice_counts_once_and_another_provider_replaces_the_first(
    readout: Readout,
) -> None:
    name = fresh("twice")
    guarded = CircuitBreaker(name)(int)
    otel.instrument(readout.provider)  # again: nothing changes
    guarded()
    assert readout.count(CALLS.name, name) == 1
    assert len(events.meters._all) == 1

    second = Readout()
    otel.instrument(second.provider)
    guarded()
    assert readout.count(CALLS.name, name) == 1  # the first keeps what it had
    assert second.count(CALLS.name, name) == 1
    assert readout.points(STATE.name, name) == []
    assert len(second.points(STATE.name, name)) == len(STATES)
    assert len(events.meters._all) == 1

    otel.instrument(readout.provider)  # back to the first: its instruments, once each
    guarded()
    assert readout.count(CALLS.name, name) == 2
    assert len(readout.points(STATE.name, name)) == len(STATES)
    assert second.count(CALLS.name, name) == 1
    second.provider.shutdown()


def test_uninstrument_when_off_is_harmless() -> None:
    otel.uninstrument()
    otel.uninstrument()
    assert not events.meters._all


def test_instrument_without_a_provider_uses_the_global_one() -> None:
    """The global provider is the API's proxy until the application sets one (never
    set here: the global can be set once per process)."""
    from opentelemetry import metrics

    otel.instrument()
    try:
        assert otel._on is not None
        assert otel._on.provider is metrics.get_meter_provider()
        assert CircuitBreaker(fresh("global")).call(int) == 0
    finally:
        otel.uninstrument()


# -- a meter's error never reaches the call ---------------------------------------------


class _Broken(NoOpCounter):
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the exporter broke")


class _BrokenMeter(NoOpMeter):
    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        return _Broken(name)


class _BrokenProvider(NoOpMeterProvider):
    """A provider whose counters raise: a third-party implementation's bug."""

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _BrokenMeter(name)


def test_a_meters_error_never_reaches_the_call() -> None:
    name = fresh("broken")
    breaker = CircuitBreaker(name, min_calls=1, window_size=1, clock=ManualClock())
    otel.instrument(_BrokenProvider())
    assert breaker.call(int) == 0
    with pytest.raises(ValueError, match="invalid literal"):
        breaker.call(int, "x")  # the user's own error, not the meter's
    with pytest.raises(CircuitOpenError):
        breaker.call(int)  # a rejection, told to the broken meter
    assert Retry(2, clock=ManualClock()).call(int) == 0
