"""Peers' warnings, and the ratios the targets are stated in, printed after the run.

pytest-benchmark's table shows absolute times, per round for the batched benchmarks; the
targets (docs/benchmarks.md) are ratios to a baseline measured in the same run. Each benchmark says
what it batches in ``extra_info``: ``ops`` (operations per round, default 1), ``baseline``
(the row its group is divided by) or, for thread scaling, ``subject`` and ``threads``;
``added`` asks for what each row adds to the baseline too, in microseconds and per cent
(for a target stated as a share of the baseline's time: the httpx transport's).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Third-party code we only measure: its deprecations are not ours to fix, and the repo's
# filterwarnings = ["error"] would otherwise turn them into failures.
PEERS = (
    "aiobreaker",
    "backoff",
    "circuitbreaker",
    "hyx",
    "limits",
    "pyresilience",
    "pybreaker",
    "stamina",
    "tenacity",
    "wrapt",
)


def pytest_configure(config: pytest.Config) -> None:
    for peer in PEERS:
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{peer}")


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    median: float  # seconds per operation
    min: float
    info: dict[str, Any]
    rounds: list[float]  # seconds per round, in the order they ran


ROWS: list[Row] = []


@pytest.fixture(autouse=True)
def _collect(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is None or bench.stats is None:  # not a benchmark, or --benchmark-disable
        return
    ops = bench.extra_info.get("ops", 1)
    stats = bench.stats.stats
    ROWS.append(
        Row(
            bench.group or "",
            bench.name,
            stats.median / ops,
            stats.min / ops,
            bench.extra_info,
            list(stats.data),
        )
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("ratios, from the medians (and mins) of this run")
    groups: dict[str, list[Row]] = {}
    for row in ROWS:
        groups.setdefault(row.group, []).append(row)
    for group, rows in groups.items():
        write(f"[{group}]")
        if any("threads" in row.info for row in rows):
            _threads(write, rows)
        else:
            _ratios(write, rows)


def _ratios(write: Any, rows: list[Row]) -> None:
    base = next((row for row in rows if row.info.get("baseline")), None)
    added = base is not None and base.info.get("added", False)
    width = max(len(row.name) for row in rows)
    head = f"  {'':{width}} {'median ns':>10} {'min ns':>9} {'x median':>9} {'x min':>7}"
    write(head + (f" {'added us':>9} {'added %':>8}  (paired rounds)" if added else ""))
    for row in rows:
        ratio = f"{row.median / base.median:8.2f}x {row.min / base.min:6.2f}x" if base else ""
        if added and row is not base and "paired" in row.info:
            more, plain = _paired(row)
            ratio += f" {more * 1e6:9.2f} {more / plain:8.1%}"
        write(f"  {row.name:{width}} {row.median * 1e9:10.1f} {row.min * 1e9:9.1f} {ratio}")


def _paired(row: Row) -> tuple[float, float]:
    """What a row adds to its baseline, per operation, from rounds of the baseline run
    before and after each of its own (``extra_info["paired"]``, one more than its rounds
    and warm-ups): the median of each round less the mean of its two neighbours, which
    takes out a drift of the machine's speed, and the median of those baseline rounds.
    Rows timed one after another on a shared machine can differ by more than the few
    per cent to be measured; interleaved rounds do not."""
    ops = row.info.get("ops", 1)
    plain: list[float] = row.info["paired"]
    timed = row.rounds
    first = len(plain) - 1 - len(timed)  # the warm-up rounds had their pairs too
    more = [t - (plain[first + i] + plain[first + i + 1]) / 2 for i, t in enumerate(timed)]
    return statistics.median(more) / ops, statistics.median(plain[first:]) / ops


def _threads(write: Any, rows: list[Row]) -> None:
    """Calls per second at 1 and at the most threads, and their ratio (from medians, mins)."""
    write(f"  {'':16} {'1 thread /s':>12} {'N threads /s':>13} {'N / 1':>7} {'(mins)':>7}")
    subjects: dict[str, dict[int, Row]] = {}
    for row in rows:
        subjects.setdefault(row.info["subject"], {})[row.info["threads"]] = row
    for subject, by_threads in subjects.items():
        one, most = by_threads.get(1), by_threads[max(by_threads)]
        if one is None or one is most:
            continue
        # Same calls in all, so the ratio of times is the ratio of throughputs.
        write(
            f"  {subject:16} {1 / one.median:12,.0f} {1 / most.median:13,.0f}"
            f" {one.median / most.median:6.2f}x {one.min / most.min:6.2f}x"
            f"  (N = {most.info['threads']})"
        )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One asyncio loop per benchmark module, driven with run_until_complete."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
