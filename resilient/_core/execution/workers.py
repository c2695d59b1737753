"""Daemon worker threads that run sync calls a caller can stop waiting for.

Python cannot stop a thread, so a sync timeout runs the call on a worker and waits for it
at most so long; past that the caller raises and the worker is *abandoned*: it finishes
the call in the background and its result is dropped. Abandoned workers are counted per
owner (a :class:`Tally`), and an owner at its cap refuses new calls at once rather than
pile up threads behind a downstream that hangs.

Workers are daemon threads, so they never hold up interpreter exit (a
``ThreadPoolExecutor`` joins its threads at exit, which a hung call would block forever).
An idle worker waits for the next call on its own lock, most recently idle first, and
exits after :data:`IDLE_SECONDS` without one; the pool has as many threads as there are
calls in flight plus abandoned ones, and no more.

The call runs in a copy of the caller's :mod:`contextvars` context, and the values of any
``threading.local`` objects the owner names are copied into the worker for the call's
duration: a thread-local cannot be found without being named.
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Callable, Iterable
from contextvars import Context
from typing import Any

from resilient._core.configuration.config import (
    MAX_WORKERS,
    MAX_WORKERS_VARIABLE,
    parse_max_workers,
)
from resilient._core.state import forking
from resilient._errors import logger

__all__ = [
    "IDLE_SECONDS",
    "Abandoned",
    "Tally",
    "max_workers",
    "reset",
    "run",
]

#: How long an idle worker waits for another call before its thread exits.
IDLE_SECONDS = 30.0


_lock = threading.Lock()  # guards the idle list, the thread count, job states, tallies
_idle: list[_Worker] = []
_threads = 0  # worker threads alive, idle or busy


def max_workers() -> int:
    """The cap in force: ``RESILIENT_MAX_WORKERS`` if set (read whenever a thread would
    be started, so it can change without a restart), else :data:`MAX_WORKERS`."""
    raw = os.environ.get(MAX_WORKERS_VARIABLE)
    return MAX_WORKERS if raw is None else parse_max_workers(raw)


@forking.after_fork_in_child
def _forget_the_parents_threads() -> None:
    """In a forked child none of the parent's workers exist: start with none."""
    global _lock, _idle, _threads
    _lock = threading.Lock()
    _idle = []
    _threads = 0


class Tally:
    """One owner's abandoned workers: how many are still running, how many refused."""

    __slots__ = ("abandoned", "generation", "rejected")

    def __init__(self) -> None:
        self.abandoned = 0  # still running, their callers gone
        self.rejected = 0  # calls refused because ``abandoned`` was at the cap
        self.generation = forking.generation  # a forked child counts its own only


def reset(tally: Tally) -> None:
    """Count refusals from zero again (abandoned calls are still running: they stay)."""
    with _lock:
        tally.rejected = 0


class Abandoned(Exception):
    """``run`` refused the call: the owner's abandoned workers are at its cap."""


class _Job:
    __slots__ = (
        "abandoned",
        "args",
        "context",
        "done",
        "error",
        "finished",
        "fn",
        "kwargs",
        "locals",
        "result",
        "tally",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: Context,
        thread_locals: Iterable[threading.local],
        tally: Tally,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context = context
        self.locals = [(local, dict(vars(local))) for local in thread_locals]
        self.tally = tally
        self.done = _thread.allocate_lock()
        self.done.acquire()  # released by the worker when the call has ended
        self.finished = False
        self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for local, values in self.locals:
                vars(local).update(values)
            self.result = self.context.run(self.fn, *self.args, **self.kwargs)
        except BaseException as exc:  # handed to the caller, whatever it is
            self.error = exc
        finally:
            for local, _ in self.locals:
                vars(local).clear()
        with _lock:
            self.finished = True
            abandoned = self.abandoned
            if abandoned:
                self.tally.abandoned -= 1
        self.done.release()
        if abandoned:  # (the function by name, an error by type: never their contents)
            how = "returned" if self.error is None else f"raised {type(self.error).__name__}"
            name = getattr(self.fn, "__qualname__", type(self.fn).__qualname__)
            logger().info("%s finished after its caller had timed out: it %s", name, how)
        self.fn = self.args = self.kwargs = self.context = None  # type: ignore[assignment]


class _Worker:
    __slots__ = ("job", "wake")

    def __init__(self, job: _Job) -> None:
        self.job: _Job | None = job
        self.wake = _thread.allocate_lock()
        self.wake.acquire()  # released to hand this worker a job

    def loop(self) -> None:
        while True:
            job, self.job = self.job, None
            assert job is not None
            job.run()
            del job
            with _lock:
                _idle.append(self)
            if not self.wake.acquire(timeout=IDLE_SECONDS):
                with _lock:
                    if self.job is None:  # still idle: nobody can hand us a job now
                        _idle.remove(self)
                        _gone()
                        return
                self.wake.acquire()  # a job was handed over as we timed out


def _gone() -> None:
    """Under the lock: one worker thread fewer."""
    global _threads
    _threads -= 1


def run(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    seconds: float,
    context: Context,
    thread_locals: Iterable[threading.local],
    tally: Tally,
    cap: int,
) -> tuple[bool, Any]:
    """Run ``fn`` on a worker and wait at most ``seconds``: (True, result) if it returned.

    Its exception is re-raised here. (False, None) means the time ran out and the worker
    is now abandoned; :class:`Abandoned` means the call was refused before it started.
    """
    global _threads
    job = _Job(fn, args, kwargs, context, thread_locals, tally)
    most = None if _idle else max_workers()  # (read outside the lock: it may raise)
    with _lock:
        if tally.generation != forking.generation:  # forked: the parent's workers are gone
            tally.generation, tally.abandoned = forking.generation, 0
        if tally.abandoned >= cap:
            tally.rejected += 1
            raise Abandoned
        worker = _idle.pop() if _idle else None
        if worker is not None:
            worker.job = job
        elif _threads >= (most or max_workers()):
            tally.rejected += 1
            raise Abandoned  # the process's cap on worker threads
        else:
            _threads += 1
    if worker is None:
        thread = threading.Thread(
            target=_Worker(job).loop, name="resilient-timeout-worker", daemon=True
        )
        try:
            thread.start()
        except BaseException:  # no thread (or interrupted while starting one)
            if thread.ident is not None:  # it started after all: the call runs on, alone
                _abandon(job)
            else:
                with _lock:
                    _gone()
            raise
    else:
        worker.wake.release()
    try:
        finished = job.done.acquire(timeout=min(seconds, threading.TIMEOUT_MAX))
    except BaseException:  # interrupted while waiting (KeyboardInterrupt): let the call go
        _abandon(job)
        raise
    if not finished and _abandon(job):
        return False, None
    if job.error is not None:
        # The error's traceback holds the worker's frame, which holds the job: the job
        # lets go of it, and so does this frame, so no cycle waits for the collector.
        error, job.error = job.error, None
        try:
            raise error
        finally:
            error = job = None  # type: ignore[assignment]
    return True, job.result


def _abandon(job: _Job) -> bool:
    """Give up on ``job`` unless it finished meanwhile; True if it was abandoned."""
    with _lock:
        if job.finished:
            return False
        job.abandoned = True
        job.tally.abandoned += 1
        return True
