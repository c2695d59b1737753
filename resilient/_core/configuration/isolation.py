"""What a test may change of the process-wide state, and how it is put back.

The pytest plugin (``resilient/pytest_plugin.py``) runs each test between a snapshot and
its restore; the snapshots are here, apart from pytest, so that they know the registry's
and the environment's insides and the plugin knows only when to take them.

- :class:`Registered`: policies made after the snapshot are forgotten by the registry
  (no longer found, listed, reloaded or measured); the global listeners, the meters and
  the test mode are put back as they were.
- :class:`Environment`: the outer ``RESILIENT_*`` variables (all, or those named: the
  ones the session began with, from the shell or CI) are taken out of ``os.environ``
  until the restore, which puts the environment back as it was; each step that changes
  what the live policies would read reloads them, so a policy never keeps a setting
  that its environment no longer holds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection

from resilient._core.configuration import config, events, registry, testmode
from resilient._errors import ConfigWarning

__all__ = ["Environment", "Registered"]


class Registered:
    """The registry and its global companions as they are now; ``restore()`` puts them back."""

    def __init__(self) -> None:
        #: born after this: made since the snapshot (a number is skipped, harmlessly)
        self._last = next(registry.registry._births)
        self._listeners = events.GLOBAL._entries
        self._meters = events.meters._all
        self._mode = testmode.current()

    def restore(self) -> None:
        live = registry.registry
        with live._lock:
            for policy in [p for p in live._all if p._born > self._last]:
                live._all.discard(policy)
        meters = events.meters
        if meters._all != self._meters:  # (recompiles every policy still registered)
            with meters._lock:
                meters._all = self._meters
                meters.current = meters if self._meters else None
            meters.changed()
        listeners = events.GLOBAL
        if listeners._entries != self._listeners:
            with listeners._lock:
                listeners._entries = self._listeners
            registry.listening_changed()
        testmode.replace(self._mode)


class Environment:
    """The outer ``RESILIENT_*`` variables, taken out of ``os.environ`` until ``restore()``:
    all of them, or only those called one of ``hidden`` (the shell's: a variable a test
    module sets as it is imported is the suite's own, and stays).

    Taking them out reloads the live policies only if there were any (the common case,
    none, costs a scan of the environment). ``restore()`` puts the variables back as they
    were, and reloads if the test changed any, if some were taken out, or if it reloaded
    (it may have set a variable, reloaded, and deleted it again); set ``changed`` to make
    it reload anyway."""

    def __init__(self, hidden: Collection[str] | None = None) -> None:
        self.changed = False
        present = _ours()
        self._outer = {
            var: value for var, value in present.items() if hidden is None or var in hidden
        }
        self._kept = {var: value for var, value in present.items() if var not in self._outer}
        for var in self._outer:
            os.environ.pop(var, None)
        if self._outer:
            try:
                _reload()
            except BaseException:  # a live policy valid only with them: put them back
                os.environ.update(self._outer)
                raise
        self._reloads = registry.reloads

    def restore(self) -> None:
        inner = _ours()
        for var in inner:
            os.environ.pop(var, None)
        os.environ.update(self._kept)
        os.environ.update(self._outer)
        changed = inner != self._kept
        if self.changed or changed or self._outer or registry.reloads != self._reloads:
            _reload()


def _ours() -> dict[str, str]:
    return {var: value for var, value in os.environ.items() if var.startswith(config.PREFIX)}


def _reload() -> None:
    """Reload every live policy; a variable no live policy reads is no test's concern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        registry.reload()
