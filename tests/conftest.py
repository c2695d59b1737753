"""Shared fixtures: every scenario is written once and run in every form and flavour.

A *flavour* is a way of making one guarded call: sync or async (on asyncio and trio), as a
decorator, a context manager, or a plain call. ``flavour.call(policy, outcome)`` runs one
call whose body returns ``outcome`` (or raises it, if it is an exception); ``before``
runs inside the guarded body first, e.g. to advance a ManualClock and make a call slow.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from resilient import CircuitBreaker, ConfigError, ResilienceError
from resilient._errors import shown
from tests.redis_server import redis_flushed, redis_server  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _fleet_backends_closed() -> Iterator[None]:
    """The Redis backends a test made (its own, or one per URL from a variable) are
    closed after it, so no worker thread of theirs runs into the next test (where its
    garbage, or an outage it finds as the test's server stops, would show)."""
    fleet = sys.modules.get("resilient.redis")
    before = set() if fleet is None else set(fleet._backends)
    yield
    fleet = sys.modules.get("resilient.redis")
    if fleet is None:
        return
    for url, backend in list(fleet._by_url.items()):
        if backend not in before:
            del fleet._by_url[url]
    for backend in list(fleet._backends):
        if backend not in before:
            backend.close()


MODES = ("sync", "asyncio", "trio")
FORMS = ("decorator", "with", "call")


@dataclass(frozen=True)
class Flavour:
    mode: str
    form: str

    def __str__(self) -> str:
        return f"{self.mode}-{self.form}"

    def call(
        self, policy: CircuitBreaker, outcome: Any = "ok", before: Callable[[], None] | None = None
    ) -> Any:
        def body() -> Any:
            if before is not None:
                before()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        if self.mode == "sync":
            if self.form == "decorator":
                return policy(body)()
            if self.form == "call":
                return policy.call(body)
            with policy:
                return body()
            return None  # the policy swallowed the exception (a Fallback does)

        async def abody() -> Any:
            await anyio.lowlevel.checkpoint()
            return body()

        async def main() -> Any:
            if self.form == "decorator":
                return await policy(abody)()
            if self.form == "call":
                return await policy.call_async(abody)
            async with policy:
                return await abody()

        return anyio.run(main, backend=self.mode)


ALL_FLAVOURS = [Flavour(m, f) for m, f in itertools.product(MODES, FORMS)]


@pytest.fixture(params=ALL_FLAVOURS, ids=str)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Preempt threads every microsecond (as far as the OS allows); restore afterwards."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.fixture
def lock_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulkhead's lock-free slot keeping, even where the locked one is in force: for
    the tests that stage an interleaving of the lock-free code (the locked code takes its
    lock for each step, so none of them can come about there)."""
    import resilient._bulkhead

    monkeypatch.setattr(resilient._bulkhead, "LOCK_FREE", True)


def assert_config_error(err: ConfigError, option: str, value: Any, expected: str) -> None:
    """A ConfigError that names the option, the value as given and what was expected."""
    assert isinstance(err, ValueError)
    assert isinstance(err, ResilienceError)
    assert err.option == option
    assert err.value is value
    message = str(err)
    assert f"{option}={shown(value)}" in message
    assert expected in message


def cancellations_asked(task: Any = None) -> int:
    """How many cancellations of the (current) asyncio task are still pending.

    ``Task.cancelling()`` arrived in 3.11; a 3.10 task does not count them, so there
    the question has no answer but 0 (the tests then rely on later awaits working).
    """
    import asyncio

    task = task if task is not None else asyncio.current_task()
    counter = getattr(task, "cancelling", None)
    return 0 if counter is None else int(counter())


_names = itertools.count(1)


def fresh(stem: str) -> str:
    """A policy name no other test uses: environment variables and registry lookups go
    by name, and a policy another test left alive may still carry one."""
    return f"{stem}-{next(_names)}"


@pytest.fixture
def env(resilient_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Set variables; afterwards the environment is restored and every live policy
    reloaded from it, so a reload made here changes no other test's policies (the
    plugin's ``resilient_env``, under the name the suite has always used)."""
    return resilient_env
