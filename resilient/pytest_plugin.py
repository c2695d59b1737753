"""resilient's pytest plugin: fixtures and a marker for testing code that uses resilient.

pytest loads it in every session of a Python that has resilient installed (the
``pytest11`` entry point ``resilient``); ``import resilient`` never does. Disable it
with ``-p no:resilient``. docs/testing.md shows it in use.

Fixtures:

- ``manual_clock``: a fresh :class:`resilient.testing.ManualClock` at 0.
- ``resilient_testing``: test mode for the test (retries wait zero seconds and stop after
  the marker's ``attempts``, if given); the previous mode is back afterwards.
- ``resilient_env``: no ``RESILIENT_*`` variable from outside during the test; returns a
  ``pytest.MonkeyPatch`` to set some, all undone afterwards, every live policy reloaded.
- ``resilient_registry``: policies made during the test are forgotten by the registry
  afterwards; global listeners, meters and the test mode are put back.

Markers: ``resilient_testing(attempts=None)`` switches test mode on for a test, class or
module; ``resilient_isolate(True|False)`` overrides the ini option ``resilient_isolate``
(default false), which gives every test ``resilient_env``'s clean environment and
``resilient_registry``'s clean registry.

Loaded before every user's tests, it imports nothing of resilient until a test asks:
each fixture imports what it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from resilient._core.configuration.isolation import Environment
    from resilient._core.configuration.registry import Registry
    from resilient._core.configuration.testmode import TestMode
    from resilient.testing import ManualClock

__all__ = [
    "manual_clock",
    "resilient_env",
    "resilient_registry",
    "resilient_testing",
]

ISOLATE = "resilient_isolate"
TESTING = "resilient_testing"
#: The RESILIENT_* variables the session began with (the shell's, CI's): what isolation
#: hides. One a test module sets as it is imported is the suite's own, and is left be.
_SHELL = pytest.StashKey[frozenset[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        ISOLATE,
        "give every test a clean resilient environment and registry (no RESILIENT_*"
        " variable from outside; policies made in a test forgotten after it)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    import os

    config.stash[_SHELL] = frozenset(var for var in os.environ if var.startswith("RESILIENT_"))
    config.addinivalue_line(
        "markers",
        f"{TESTING}(attempts=None): resilient's test mode for the test, class or module:"
        " retries wait zero seconds and make at most `attempts` attempts",
    )
    config.addinivalue_line(
        "markers",
        f"{ISOLATE}(on=True): a clean resilient environment and registry for the test,"
        f" class or module (False: not), whatever the ini option {ISOLATE} says",
    )


def _isolated(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker(ISOLATE)
    if marker is None:
        return bool(request.config.getini(ISOLATE))
    on = marker.kwargs.get("on", marker.args[0] if marker.args else True)
    if not isinstance(on, bool) or len(marker.args) + len(marker.kwargs) > 1:
        pytest.fail(
            f"@pytest.mark.{ISOLATE} takes one bool (True or False), not"
            f" args={marker.args!r} kwargs={marker.kwargs!r}",
            pytrace=False,
        )
    return on


@pytest.fixture(autouse=True)
def _resilient_autouse(request: pytest.FixtureRequest) -> None:
    """Isolation where the ini option or a marker asks for it; test mode where marked."""
    if _isolated(request):
        request.getfixturevalue("_resilient_shell")  # restored last
        request.getfixturevalue("resilient_registry")
    if request.node.get_closest_marker(TESTING) is not None:
        request.getfixturevalue(TESTING)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A fresh ``resilient.testing.ManualClock`` at 0: pass it as ``clock=`` to a policy,
    move it with ``advance(seconds)``; its sleeps move it instead of waiting."""
    from resilient.testing import ManualClock

    return ManualClock()


@pytest.fixture
def resilient_testing(request: pytest.FixtureRequest) -> Iterator[TestMode]:
    """resilient's test mode for this test (``resilient.testing.set_testing``): every
    wait a policy would make is zero seconds, and a retry makes at most ``attempts``
    attempts, as given by ``@pytest.mark.resilient_testing(attempts=N)`` (no cap
    without it). The mode in force before is back afterwards. Gives the mode
    (``.enabled``, ``.attempts``)."""
    from resilient._core.configuration import testmode
    from resilient.testing import set_testing

    marker = request.node.get_closest_marker(TESTING)
    attempts = None
    if marker is not None:
        if marker.args or set(marker.kwargs) - {"attempts"}:
            pytest.fail(
                f"@pytest.mark.{TESTING} takes attempts=N only, not args={marker.args!r}"
                f" kwargs={marker.kwargs!r}",
                pytrace=False,
            )
        attempts = marker.kwargs.get("attempts")
    with set_testing(attempts=attempts):
        yield testmode.current()


def _hiding(hidden: frozenset[str] | None) -> Iterator[Environment]:
    """The RESILIENT_* variables called one of ``hidden`` (None: all of them) out of the
    environment for the test, and the environment as it was afterwards."""
    from resilient._core.configuration.isolation import Environment

    clean = Environment(hidden)
    try:
        yield clean
    finally:
        clean.restore()


@pytest.fixture
def _resilient_shell(request: pytest.FixtureRequest) -> Iterator[Environment]:
    """The shell's RESILIENT_* variables out of the environment for the test."""
    yield from _hiding(request.config.stash[_SHELL])


@pytest.fixture
def _resilient_environment() -> Iterator[Environment]:
    """Every RESILIENT_* variable out of the environment for the test."""
    yield from _hiding(None)


@pytest.fixture
def resilient_env(_resilient_environment: Environment) -> Iterator[pytest.MonkeyPatch]:
    """No ``RESILIENT_*`` variable at all during this test (none from the shell, CI or
    the suite): gives a
    ``pytest.MonkeyPatch`` to set variables (``resilient_env.setenv(...)``) that are
    removed afterwards, when the outer ones come back and every live policy is reloaded
    from them. A policy reads variables as it is made and on ``resilient.reload()``."""
    patch = pytest.MonkeyPatch()
    try:
        yield patch
    finally:
        patch.undo()
        _resilient_environment.changed = True


@pytest.fixture
def resilient_registry() -> Iterator[Registry]:
    """A clean registry for this test: the policies it makes are forgotten afterwards
    (``resilient.registry`` no longer finds or lists them, ``reload()`` and the meters
    leave them be); those made before are still there. Global listeners
    (``resilient.add_listener``), meters and the test mode are put back as they were.
    Gives ``resilient.registry``."""
    from resilient._core.configuration.isolation import Registered
    from resilient._core.configuration.registry import registry

    before = Registered()
    try:
        yield registry
    finally:
        before.restore()
