"""Calls per second from 8 threads against 1 thread, same calls in all, for us and pybreaker.

Under the GIL, 8 threads cannot beat 1 at pure-Python work; what they can do is lose time
to contention. A closed path that takes no lock should keep about the throughput of one
thread (target: at least 0.9x); so should the locked window a free-threaded build uses
("resilient-locked"), whose lock is held for a few bytecodes, never around the call.
pybreaker holds a lock around the user's call, so a thread switched out inside it holds
up every other. The bare call shows what the interpreter itself loses to switching threads.

``--io`` makes the call release the GIL (``time.sleep(0)``, as a socket read would): there
threads should overlap and 8 beat 1 many times over, unless a lock held around the call
serialises them.

Run:  .venv/bin/python -m benchmarks.throughput [--io]   (test_threads.py measures the
default case under pytest-benchmark, in the same run as the other benchmarks)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from collections.abc import Callable

import pybreaker

from benchmarks._subjects import locked_breaker
from resilient import CircuitBreaker

CALLS = 200_000
IO_CALLS = 8_000  # time.sleep(0) takes some 80 us on Linux (timer slack)
THREADS = (1, 8)


def f(x: int) -> int:
    return x


def f_io(x: int) -> int:
    time.sleep(0)
    return x


def subjects(fn: Callable[[int], int] = f) -> dict[str, Callable[[int], int]]:
    """Fresh guarded functions, so no state carries over from an earlier run."""
    return {
        "bare": fn,
        "resilient": CircuitBreaker()(fn),
        "resilient-locked": locked_breaker()(fn),
        "pybreaker": pybreaker.CircuitBreaker()(fn),
    }


class Run:
    """``threads`` threads, started and parked on a barrier, making ``calls`` calls in all.

    Starting threads is not what is measured, so it happens here; :meth:`go` is timed.
    """

    def __init__(self, fn: Callable[[int], int], threads: int, calls: int) -> None:
        self._start = threading.Barrier(threads + 1)
        each = calls // threads

        def work() -> None:
            self._start.wait()
            for _ in itertools.repeat(None, each):
                fn(1)

        self._threads = [threading.Thread(target=work) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def go(self) -> None:
        """Release the threads together and wait for the last to finish."""
        self._start.wait()
        for thread in self._threads:
            thread.join()


def seconds(fn: Callable[[int], int], threads: int, calls: int) -> float:
    run = Run(fn, threads, calls)
    start = time.perf_counter()
    run.go()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, help=f"calls in all ({CALLS}; {IO_CALLS} with --io)")
    parser.add_argument("--threads", type=int, default=THREADS[-1], help="the many-thread count")
    parser.add_argument("--rounds", type=int, default=5, help="measures per cell; median kept")
    parser.add_argument("--io", action="store_true", help="the call releases the GIL")
    args = parser.parse_args()
    calls = args.calls or (IO_CALLS if args.io else CALLS)
    counts = (1, args.threads)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits every cell
        for name, fn in subjects(f_io if args.io else f).items():
            for threads in counts:
                times.setdefault((name, threads), []).append(seconds(fn, threads, calls))
    many = args.threads
    what = "time.sleep(0)" if args.io else "return x"
    print(f"{calls:,} calls of f ({what}) in all; median of {args.rounds} rounds")
    print(f"{'':12} {'1 thread /s':>13} {f'{many} threads /s':>14} {f'{many}t / 1t':>8}")
    for name in subjects():
        one, most = (statistics.median(times[name, n]) for n in counts)
        rate = calls / one, calls / most
        print(f"{name:12} {rate[0]:13,.0f} {rate[1]:14,.0f} {one / most:7.2f}x")


if __name__ == "__main__":
    main()
