"""What a child process must not inherit from its parent: the parent's other threads.

``os.fork()`` copies the memory of every thread but starts only the one that forked. So
in the child, a worker thread that a sync Timeout would hand a call to does not exist; a
bulkhead slot or a half-open probe permit held by another parent thread is never given
back; and a lock one of them held is never released. Each module that keeps such state
registers a function here, run in the child right after a fork (``os.register_at_fork``),
which starts it afresh. :data:`generation` counts the forks this process descends from,
so that a token taken before a fork (a bulkhead slot of the parent's accounting) is known
for what it is when it comes back.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["after_fork_in_child", "generation"]

#: How many forks separate this process from the one that imported resilient.
generation = 0

_hooks: list[Callable[[], None]] = []


def after_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` in every child process right after it is forked (in order of
    registration); usable as a decorator."""
    _hooks.append(hook)
    return hook


def _child() -> None:
    global generation
    generation += 1
    for hook in _hooks:
        hook()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_child)
