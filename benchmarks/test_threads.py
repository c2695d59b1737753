"""8 threads against 1 thread, same calls in all: see throughput.py for why and what."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.throughput import CALLS, THREADS, Run, subjects

# --benchmark-disable runs each body once, as a smoke test: keep that to milliseconds.
SMOKE_CALLS = 2_000


@pytest.mark.benchmark(group=f"threads: {CALLS:,} calls in all")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", list(subjects()))
def test_threads(benchmark: Any, name: str, threads: int) -> None:
    calls = CALLS if benchmark.enabled else SMOKE_CALLS
    fn = subjects()[name]
    benchmark.extra_info.update(ops=calls, subject=name, threads=threads)
    benchmark.pedantic(Run.go, setup=lambda: ((Run(fn, threads, calls),), {}), rounds=9)
