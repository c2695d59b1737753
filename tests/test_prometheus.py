"""resilient.prometheus: scraped over HTTP from a real registry on 127.0.0.1, and parsed.

Every test closes its collectors and unregisters them (the suite runs in random order,
and an open collector would count for every later test). The multiprocess tests run real
worker processes with ``PROMETHEUS_MULTIPROC_DIR`` set, as gunicorn's workers would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import anyio
import pytest
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    Fallback,
    RateLimitedError,
    RateLimiter,
    Retry,
    Timeout,
    TimeoutExpired,
    _metrics,
)
from resilient._core.configuration import events
from resilient.prometheus import Collector, instrument_multiprocess
from resilient.testing import ManualClock

from .conftest import Flavour, fresh

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds: the bound of every wait; none is expected to come near it


class Scrape:
    """One scrape's text and its parsed families."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list[Any]:
        return [
            s
            for family in self.families.values()
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` that carry these labels (0: none)."""
        return sum(s.value for s in self.samples(name, **labels))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def served(registry: CollectorRegistry) -> Iterator[Callable[[], Scrape]]:
    """``registry`` served by prometheus_client's WSGI app on a free port of 127.0.0.1
    (start_http_server's own loop would take half a second to stop)."""
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def scrape() -> Scrape:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            assert response.status == 200
            return Scrape(response.read().decode())

    try:
        yield scrape
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


@pytest.fixture
def scrape() -> Iterator[Callable[[], Scrape]]:
    """A Collector registered with a registry served over HTTP; closed and unregistered
    afterwards."""
    registry = CollectorRegistry()
    with Collector() as collector:
        registry.register(collector)
        try:
            with served(registry) as scraping:
                yield scraping
        finally:
            registry.unregister(collector)


def fail(exc: BaseException) -> Callable[[], Any]:
    def raises() -> Any:
        raise exc

    return raises


# -- the policies ------------------------------------------------------------------------


def test_a_breaker_counts_calls_rejections_transitions_and_shows_its_state(
    flavour: Flavour, scrape: Callable[[], Scrape]
) -> None:
    clock = ManualClock()
    name = fresh("pay")
    breaker = CircuitBreaker(
        name,
        failure_rate=0.5,
        window_size=4,
        min_calls=4,
        open_for=10,
        half_open_calls=1,
        clock=clock,
    )
    for outcome in ("ok", "ok", ValueError("no"), ValueError("no")):
        try:
            flavour.call(breaker, outcome)
        except ValueError:
            pass
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            flavour.call(breaker)

    opened = scrape()
    calls = "resilient_calls_total"
    assert opened.value(calls, policy_name=name, policy_kind="breaker", outcome="success") == 2
    assert opened.value(calls, policy_name=name, outcome="failure", error_type="ValueError") == 2
    assert opened.value(calls, policy_name=name, outcome="rejected", error_type="") == 3
    assert opened.value("resilient_rejections_total", policy_name=name, reason="open") == 3
    assert opened.value("resilient_breaker_transitions_total", policy_name=name) == 1
    state = "resilient_breaker_state"
    assert opened.value(state, policy_name=name, state="open") == 1
    assert opened.value(state, policy_name=name) == 1  # one state of five is current
    assert len(opened.samples(state, policy_name=name)) == len(_metrics.STATES)
    # A rejected call never ran: it has no duration.
    duration = "resilient_call_duration_seconds_count"
    assert opened.value(duration, policy_name=name, outcome="success") == 2
    assert opened.value(duration, policy_name=name, outcome="failure") == 2
    assert opened.value(duration, policy_name=name, outcome="rejected") == 0

    clock.advance(10)
    assert flavour.call(breaker) == "ok"  # the probe closes it
    closed = scrape()
    transitions = "resilient_breaker_transitions_total"
    for moved_to in ("open", "half_open", "closed"):
        assert closed.value(transitions, policy_name=name, state=moved_to) == 1
    assert closed.value(state, policy_name=name, state="closed") == 1
    assert closed.value(calls, policy_name=name, outcome="success") == 3


def test_a_retry_counts_retries_give_ups_and_each_attempts_duration(
    mode: str, scrape: Callable[[], Scrape]
) -> None:
    name = fresh("fetch")
    retry = Retry(3, wait=1, clock=ManualClock(), name=name)
    flavour = Flavour(mode, "call")
    outcomes = iter([ConnectionError(), ConnectionError(), "ok"])

    def body() -> None:
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome

    flavour.call(retry, before=body)  # fails twice, then answers
    with pytest.raises(KeyError):
        flavour.call(retry, KeyError("gone"))  # three failures: gives up

    got = scrape()
    retries = "resilient_retry_retries_total"
    assert got.value(retries, policy_name=name, error_type="ConnectionError") == 2
    assert got.value(retries, policy_name=name, error_type="KeyError") == 2
    give_ups = "resilient_retry_give_ups_total"
    assert got.value(give_ups, policy_name=name) == 1
    assert got.value(give_ups, policy_name=name, reason="attempts", error_type="KeyError") == 1
    attempts = "resilient_retry_attempt_duration_seconds_count"
    assert got.value(attempts, policy_name=name, policy_kind="retry", outcome="failure") == 5
    assert got.value(attempts, policy_name=name, outcome="success") == 1
    calls = "resilient_calls_total"
    assert got.value(calls, policy_name=name, outcome="success") == 1
    assert got.value(calls, policy_name=name, outcome="failure", error_type="KeyError") == 1


def test_a_retried_http_answer_is_counted_by_its_status(scrape: Callable[[], Scrape]) -> None:
    """As OpenTelemetry's (the same declarations): a failing result's error type is its
    HTTP status, where it has one."""

    class Answer:
        status_code = 503

    name = fresh("http")
    retry = Retry(
        2, on_result=lambda answer: answer.status_code >= 500, clock=ManualClock(), name=name
    )
    assert isinstance(retry.call(Answer), Answer)  # given up: the last answer returned
    got = scrape()
    assert got.value("resilient_retry_retries_total", policy_name=name, error_type="503") == 1
    give_ups = "resilient_retry_give_ups_total"
    assert got.value(give_ups, policy_name=name, reason="attempts", error_type="503") == 1


def test_a_bulkhead_shows_its_calls_inside_and_queued_and_counts_its_rejections(
    scrape: Callable[[], Scrape],
) -> None:
    name = fresh("db")
    bulkhead = Bulkhead(1, max_wait=WAIT, max_waiting=1, name=name)
    inside, release = threading.Event(), threading.Event()

    def held() -> None:
        inside.set()
        assert release.wait(WAIT)

    threads = [threading.Thread(target=bulkhead.call, args=(held,)) for _ in range(2)]
    threads[0].start()
    try:
        assert inside.wait(WAIT)
        threads[1].start()
        deadline = time.monotonic() + WAIT
        while bulkhead.metrics.waiting < 1:  # the second has queued (bounded)
            assert time.monotonic() < deadline, "the second call never queued"
            time.sleep(0.001)
        with pytest.raises(BulkheadFullError):
            bulkhead.call(int)  # one inside, one waiting: the queue is full

        busy = scrape()
        assert busy.value("resilient_bulkhead_in_use", policy_name=name) == 1
        assert busy.value("resilient_bulkhead_queued", policy_name=name) == 1
        (rejection,) = busy.samples("resilient_rejections_total", policy_name=name)
        assert "full" in rejection.labels["reason"]
        assert rejection.value == 1
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)

    idle = scrape()
    assert idle.value("resilient_bulkhead_in_use", policy_name=name) == 0
    assert idle.value("resilient_bulkhead_queued", policy_name=name) == 0
    calls = "resilient_calls_total"
    assert idle.value(calls, policy_name=name, policy_kind="bulkhead", outcome="success") == 2
    assert idle.value(calls, policy_name=name, outcome="rejected") == 1


def test_a_timeout_counts_a_timed_out_call_as_a_failure(
    mode: str, scrape: Callable[[], Scrape]
) -> None:
    name = fresh("slow")
    timeout = Timeout(0.01, name=name)
    stuck = threading.Event()
    try:
        if mode == "sync":
            with pytest.raises(TimeoutExpired):
                timeout.call(stuck.wait, WAIT)  # abandoned, on a worker thread
        else:

            async def main() -> None:
                await timeout.call_async(anyio.sleep, WAIT)

            with pytest.raises(TimeoutExpired):
                anyio.run(main, backend=mode)
    finally:
        stuck.set()  # the abandoned worker ends
    got = scrape()
    (sample,) = got.samples("resilient_calls_total", policy_name=name, outcome="failure")
    assert sample.labels["error_type"] == "resilient.TimeoutExpired"
    assert sample.value == 1


def test_a_fallback_counts_the_calls_it_answered(mode: str, scrape: Callable[[], Scrape]) -> None:
    """A Fallback has no name (not even in a named Pipeline): it is counted by kind."""
    fallback = Fallback(0)
    flavour = Flavour(mode, "call")
    calls, mine = "resilient_calls_total", {"policy_name": "", "policy_kind": "fallback"}
    before = scrape()
    assert flavour.call(fallback, ValueError()) == 0
    assert flavour.call(fallback, 1) == 1
    after = scrape()
    for outcome in ("fallback", "success"):
        more = after.value(calls, outcome=outcome, error_type="", **mine)
        assert more - before.value(calls, outcome=outcome, **mine) == 1
    assert after.value(calls, **mine) - before.value(calls, **mine) == 2


def test_an_unnamed_policy_is_counted_and_has_no_gauge(scrape: Callable[[], Scrape]) -> None:
    before = scrape()
    breaker = CircuitBreaker()
    breaker.call(int)
    after = scrape()
    calls = "resilient_calls_total"
    assert after.value(calls, policy_name="", policy_kind="breaker") == (
        before.value(calls, policy_name="", policy_kind="breaker") + 1
    )
    assert not after.samples("resilient_breaker_state", policy_name="")


def test_two_live_breakers_of_one_name_show_one_state_the_newest(
    scrape: Callable[[], Scrape],
) -> None:
    name = fresh("twin")
    old = CircuitBreaker(name)
    new = CircuitBreaker(name)
    new.force_open()
    got = scrape()
    assert len(got.samples("resilient_breaker_state", policy_name=name)) == len(_metrics.STATES)
    assert got.value("resilient_breaker_state", policy_name=name, state="forced_open") == 1
    assert old.state.value == "closed"


# -- switching counting on and off ---------------------------------------------------------


def calls_of(collector: Collector, name: str) -> float:
    """What ``collector`` counted of ``name``'s calls (read in-process, no HTTP)."""
    return sum(
        s.value
        for family in collector.collect()
        for s in family.samples
        if s.name == "resilient_calls_total" and s.labels["policy_name"] == name
    )


def test_a_policy_made_before_the_collector_is_counted_from_then_on() -> None:
    name = fresh("early")
    breaker = CircuitBreaker(name)
    breaker.call(int)  # nothing counts this one
    assert breaker._state.fast  # no meter: the closed path is the fast one
    with Collector() as collector:
        assert not breaker._state.fast
        breaker.call(int)
        breaker.call(int)
        assert calls_of(collector, name) == 2


def test_counting_stops_when_the_last_collector_closes() -> None:
    name = fresh("switch")
    breaker = CircuitBreaker(name)
    first, second = Collector(), Collector()
    try:
        breaker.call(int)
        first.close()
        assert first.closed
        assert list(first.collect()) == []  # a closed collector reports nothing
        breaker.call(int)
        assert calls_of(second, name) == 2  # the other one still counts
        assert events.meters.current is not None
    finally:
        second.close()
    first.close()  # closing again does nothing
    assert events.meters.current is None
    assert breaker._state.fast  # back on the fast path: no meter pays
    breaker.call(int)
    with Collector() as third:
        assert calls_of(third, name) == 0


def test_two_collectors_in_one_registry_are_refused() -> None:
    registry = CollectorRegistry(auto_describe=True)
    with Collector() as one, Collector() as two:
        registry.register(one)
        try:
            with pytest.raises(ValueError, match="Duplicated"):
                registry.register(two)
        finally:
            registry.unregister(one)


def test_counts_are_exact_under_a_hammer(switch_often: None, scrape: Callable[[], Scrape]) -> None:
    """8 threads at once, preempted every microsecond: no count is lost."""
    name, threads, each = fresh("hammer"), 8, 2000
    breaker = CircuitBreaker(name, ignore=ValueError)  # failures that never open it
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait(WAIT)
        for i in range(each):
            try:
                breaker.call(fail(ValueError()) if i % 2 else int)
            except ValueError:
                pass

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT * 4)
    assert not any(worker.is_alive() for worker in workers)
    got = scrape()
    calls, half = "resilient_calls_total", threads * each // 2
    assert got.value(calls, policy_name=name, outcome="success") == half
    assert got.value(calls, policy_name=name, outcome="failure", error_type="ValueError") == half
    count = "resilient_call_duration_seconds_count"
    assert got.value(count, policy_name=name) == threads * each
    inf = got.value("resilient_call_duration_seconds_bucket", policy_name=name, le="+Inf")
    assert inf == threads * each


# -- the exposition ------------------------------------------------------------------------


def test_every_family_has_its_declared_name_type_and_help(scrape: Callable[[], Scrape]) -> None:
    breaker = CircuitBreaker(fresh("shown"))
    breaker.call(int)
    text = scrape().text
    families = {m.prometheus: m for m in _metrics.METRICS}
    helps = {
        line.split(" ", 3)[2]: line.split(" ", 3)[3]
        for line in text.splitlines()
        if line.startswith("# HELP ")
    }
    types = {
        line.split(" ")[2]: line.split(" ")[3]
        for line in text.splitlines()
        if line.startswith("# TYPE ")
    }
    suffix = {"counter": "_total"}  # the text format names a counter's family with it
    assert set(types) == {n + suffix.get(m.kind, "") for n, m in families.items()}
    assert helps.keys() == types.keys()
    for name, metric in families.items():
        shown = name + suffix.get(metric.kind, "")
        assert types[shown] == metric.kind
        assert helps[shown] == metric.description
    for line in text.splitlines():  # every sample belongs to a declared family
        if line and not line.startswith("#"):
            sample = line.split("{")[0].split(" ")[0]
            assert any(sample.startswith(family) for family in types), sample


def test_histogram_buckets_are_the_declared_bounds_cumulative(
    scrape: Callable[[], Scrape],
) -> None:
    name = fresh("buckets")
    clock = ManualClock()
    retry = Retry(2, wait=0, clock=clock, name=name)
    retry.call(int)
    got = scrape()
    buckets = got.samples("resilient_call_duration_seconds_bucket", policy_name=name)
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds == [*_metrics.BUCKETS, float("inf")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)  # cumulative
    assert counts[-1] == got.value("resilient_call_duration_seconds_count", policy_name=name)


# -- several processes ---------------------------------------------------------------------


def test_instrument_multiprocess_refuses_a_process_not_in_multiprocess_mode() -> None:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
        pytest.skip("this process is in multiprocess mode")
    with pytest.raises(ConfigError) as caught:
        instrument_multiprocess()
    assert caught.value.option == "PROMETHEUS_MULTIPROC_DIR"
    assert "before prometheus_client is imported" in str(caught.value)
    assert events.meters.current is None


WORKER = """
import sys, threading
from resilient import Bulkhead, CircuitBreaker, CircuitOpenError
from resilient.prometheus import instrument_multiprocess
from resilient.testing import ManualClock

index, calls = int(sys.argv[1]), int(sys.argv[2])
breaker = CircuitBreaker(
    "mp-breaker", failure_rate=0.5, window_size=2, min_calls=2, clock=ManualClock()
)
bulkhead = Bulkhead(2, name="mp-bulkhead")
# Made after the policies, its first refresh creates the gauges' files before the parent
# scrapes: prometheus_client's reader fails on a file it catches being created (its
# issue #1199), and the parent's first scrape may come at any time after "ready".
metrics = instrument_multiprocess(interval=0.01)
assert instrument_multiprocess() is metrics  # once per process
for _ in range(calls):
    breaker.call(int)
if index == 0:  # this worker's breaker opens (1 of the last 2 failed), and refuses a call
    try:
        breaker.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    try:
        breaker.call(int)
    except CircuitOpenError:
        pass
    assert breaker.state.value == "open"

inside, release = threading.Event(), threading.Event()

def held():
    inside.set()
    release.wait(60)

thread = threading.Thread(target=bulkhead.call, args=(held,))
thread.start()
assert inside.wait(60)
print("ready", flush=True)
sys.stdin.readline()  # the parent has scraped
release.set()
thread.join(60)
metrics.close()
"""


def test_workers_in_multiprocess_mode_are_summed_exactly(tmp_path: Path) -> None:
    """Three worker processes write prometheus_client's files; the parent serves them
    through MultiProcessCollector: counts add up, the open breaker is seen per worker,
    and a dead worker's gauges go with mark_process_dead."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    environ = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    workers, calls = 3, 7
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(calls)],
            env=environ,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()  # bounded: each wait of a worker is
            assert line == "ready\n", process.communicate(timeout=WAIT)
        with served(registry) as scrape:
            deadline = time.monotonic() + WAIT
            while True:  # each worker's refresh thread sets its gauges (bounded)
                live = scrape()
                if live.value("resilient_bulkhead_in_use", policy_name="mp-bulkhead") == workers:
                    break
                assert time.monotonic() < deadline, live.text
                time.sleep(0.01)
            name = "mp-breaker"
            calls_total = "resilient_calls_total"
            assert live.value(calls_total, policy_name=name, outcome="success") == workers * calls
            assert live.value(calls_total, policy_name=name, outcome="failure") == 1
            assert live.value(calls_total, policy_name=name, outcome="rejected") == 1
            assert live.value("resilient_rejections_total", policy_name=name) == 1
            transitions = "resilient_breaker_transitions_total"
            assert live.value(transitions, policy_name=name, state="open") == 1
            duration = "resilient_call_duration_seconds_count"
            assert live.value(duration, policy_name=name) == workers * calls + 1
            # Which worker's breaker is open: one series per live worker (its pid).
            opened = [
                s
                for s in live.samples("resilient_breaker_state", policy_name=name, state="open")
                if s.value == 1
            ]
            assert [s.labels["pid"] for s in opened] == [str(processes[0].pid)]
            closed = live.samples("resilient_breaker_state", policy_name=name, state="closed")
            assert sorted(s.labels["pid"] for s in closed if s.value == 1) == sorted(
                str(p.pid) for p in processes[1:]
            )

            for process in processes:
                _, errors = process.communicate("go\n", timeout=WAIT)
                assert process.returncode == 0, errors
                mark_process_dead(process.pid, str(directory))
            after = scrape()
            assert not after.samples("resilient_breaker_state")  # the workers are gone
            assert not after.samples("resilient_bulkhead_in_use")
            assert after.value(calls_total, policy_name=name) == workers * calls + 1 + 1
            bulkhead_calls = after.value(calls_total, policy_name="mp-bulkhead")
            assert bulkhead_calls == workers
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=WAIT)


def test_the_docs_name_every_family_with_its_type() -> None:
    """The docs' table of what is published (docs/*.md, wherever it stands) is complete."""
    docs = "\n".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    suffix = {"counter": "_total"}
    for metric in _metrics.METRICS:
        shown = metric.prometheus + suffix.get(metric.kind, "")
        assert f"| `{shown}` | {metric.kind} |" in docs, shown


def test_a_rate_limiter_counts_its_calls_and_its_refusals(
    scrape: Callable[[], Scrape],
) -> None:
    name = fresh("quota")
    limiter = RateLimiter(1, burst=2, name=name, clock=ManualClock())
    for _ in range(2):
        limiter.call(int)
    for _ in range(3):
        with pytest.raises(RateLimitedError):
            limiter.call(int)
    got = scrape()
    assert got.value("resilient_calls_total", policy_name=name, outcome="success") == 2
    assert got.value("resilient_calls_total", policy_name=name, outcome="rejected") == 3
    (rejection,) = got.samples("resilient_rejections_total", policy_name=name)
    assert rejection.labels["reason"] == "rate_limited"
    assert rejection.labels["policy_kind"] == "rate_limiter"
    assert rejection.value == 3
