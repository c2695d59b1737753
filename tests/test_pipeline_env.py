"""The environment and a Pipeline's members: no two read the same variables unseen.

Two members of one kind and one name would read the same ``RESILIENT_<NAME>_<KIND>_*``
variables and be configured alike (a Timeout(10) and a Timeout(2) both 5 s), so a
Pipeline refuses them; ``Pipeline(..., name=...)`` names its unnamed members by role
instead. A breaker outside a Retry draws a warning. ``Policy`` is what a Pipeline takes.
Variables are set through the ``env`` fixture (conftest); names come from ``fresh``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

import resilient
from resilient import (
    Bulkhead,
    CircuitBreaker,
    ConfigError,
    ConfigWarning,
    Fallback,
    Pipeline,
    Policy,
    Retry,
    Timeout,
    registry,
)
from resilient._core.configuration import config

from .conftest import fresh

P = ParamSpec("P")
R = TypeVar("R")


def spelt(name: str) -> str:
    return config.env_name(name)


# -- two members, one set of variables: refused ------------------------------------------


def test_two_members_of_one_kind_and_one_name_are_refused_with_the_fix() -> None:
    name = fresh("pay")
    outer, inner = Timeout(10, name=name), Timeout(2, name=name)
    with pytest.raises(ConfigError) as info:
        Pipeline(outer, Retry(3), CircuitBreaker(), inner)
    error = info.value
    assert (error.option, error.value, error.owner) == ("name", name, "Pipeline")
    assert str(error) == (
        f"Pipeline: name={name!r} is invalid: expected a name of its own for each timeout:"
        f" Timeout({name!r}) (policy 1) and Timeout({name!r}) (policy 4) would both read"
        f" RESILIENT_{spelt(name)}_TIMEOUT_* and be configured alike. Give them different"
        " names, or leave them unnamed and name the Pipeline: Pipeline(..., name=...)"
        " names each by its role"
    )


def test_names_that_spell_alike_share_their_variables_and_are_refused_too() -> None:
    stem = fresh("pay")
    with pytest.raises(ConfigError) as info:
        Pipeline(Fallback(0), Retry(2, name=f"{stem}-api"), Retry(3, name=f"{stem}.api"))
    assert info.value.value == f"{stem}.api"
    assert f"{stem}-api')" + " (policy 2) and" in str(info.value)  # counted as given
    assert f"RESILIENT_{spelt(stem)}_API_RETRY_*" in str(info.value)


def test_one_name_across_kinds_and_one_object_twice_are_no_conflict() -> None:
    name = fresh("pay")
    timeout = Timeout(2, name=name)
    pipeline = Pipeline(Retry(3, name=name), CircuitBreaker(name), timeout, timeout)
    assert [p.name for p in pipeline.policies] == [name] * 4  # type: ignore[attr-defined]


def test_unnamed_members_of_one_kind_all_read_the_kind_wide_variables(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("RESILIENT_DEFAULT_TIMEOUT_SECONDS", "5")
    pipeline = Pipeline(Timeout(10), Retry(3), Timeout(2))
    assert [p.seconds for p in pipeline.policies if isinstance(p, Timeout)] == [5.0, 5.0]


# -- Pipeline(..., name=...): every member its own variables -----------------------------


def test_a_named_pipeline_names_its_members_by_role(env: pytest.MonkeyPatch) -> None:
    name = fresh("pay")
    pay = spelt(name)
    env.setenv(f"RESILIENT_{pay}_TOTAL_TIMEOUT_SECONDS", "8")
    env.setenv(f"RESILIENT_{pay}_ATTEMPT_TIMEOUT_SECONDS", "1.5")
    env.setenv(f"RESILIENT_{pay}_RETRY_ATTEMPTS", "5")
    env.setenv(f"RESILIENT_{pay}_BREAKER_FAILURE_RATE", "0.25")
    env.setenv("RESILIENT_DEFAULT_BULKHEAD_MAX_CONCURRENT", "7")  # still for every bulkhead
    total, attempt = Timeout(10), Timeout(2)
    retry, breaker, bulkhead = Retry(3), CircuitBreaker(), Bulkhead(20)
    pipeline = Pipeline(bulkhead, total, retry, breaker, attempt, name=name)

    assert [(p.KIND, p.name) for p in (bulkhead, total, retry, breaker, attempt)] == [
        ("bulkhead", name),
        ("timeout", f"{name}.total"),
        ("retry", name),
        ("breaker", name),
        ("timeout", f"{name}.attempt"),
    ]
    assert (total.seconds, attempt.seconds) == (8.0, 1.5)
    assert total.settings.sources["seconds"] == f"RESILIENT_{pay}_TOTAL_TIMEOUT_SECONDS"
    assert (retry.attempts, breaker.settings["failure_rate"]) == (5, 0.25)
    assert bulkhead.max_concurrent == 7
    assert pipeline.name == name
    assert repr(pipeline).endswith(f", name={name!r})")
    assert registry.get(f"{name}.attempt") is attempt
    assert registry.get(name, kind="breaker") is breaker


def test_a_reload_reads_the_role_variables(env: pytest.MonkeyPatch) -> None:
    name = fresh("pay")
    total, attempt = Timeout(10), Timeout(2)
    Pipeline(total, Retry(3), attempt, name=name)
    env.setenv(f"RESILIENT_{spelt(name)}_ATTEMPT_TIMEOUT_SECONDS", "0.5")
    resilient.reload()
    assert (total.seconds, attempt.seconds) == (10.0, 0.5)


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (lambda: [Timeout(10), Timeout(5), Retry(), Timeout(2)], [".1", ".2", "", ".3"]),
        (lambda: [Timeout(10), Timeout(2)], [".1", ".2"]),
        (lambda: [Retry(2), CircuitBreaker(), Retry(3)], [".1", "", ".2"]),
        (lambda: [Fallback(0), Retry(), Timeout(1)], [None, "", ""]),
    ],
    ids=["three timeouts", "no retry", "two retries", "a fallback has no variables"],
)
def test_members_no_role_tells_apart_are_numbered_outermost_first(
    build: Callable[[], list[Any]], names: list[str | None]
) -> None:
    name = fresh("pay")
    policies = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # a breaker outside a Retry
        Pipeline(*policies, name=name)
    assert [p.name for p in policies] == [None if n is None else name + n for n in names]


def test_members_named_in_code_keep_their_names() -> None:
    name, own = fresh("pay"), fresh("own")
    total, attempt = Timeout(10, name=own), Timeout(2)
    Pipeline(total, Retry(3), attempt, name=name)
    assert (total.name, attempt.name) == (own, f"{name}.attempt")


def test_a_role_taken_by_a_named_member_is_refused_and_nothing_is_named() -> None:
    name = fresh("pay")
    total, retry, attempt = Timeout(10), Retry(3), Timeout(2, name=f"{name}.total")
    with pytest.raises(ConfigError, match=r"would both read RESILIENT_\w+_TOTAL_TIMEOUT_\*"):
        Pipeline(total, retry, attempt, name=name)
    assert (total.name, retry.name) == (None, None)


def test_a_bad_role_variable_is_a_config_error_and_nothing_is_named(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("pay")
    variable = f"RESILIENT_{spelt(name)}_ATTEMPT_TIMEOUT_SECONDS"
    env.setenv(variable, "soon")
    total, retry, attempt = Timeout(10), Retry(3), Timeout(2)
    with pytest.raises(ConfigError) as info:
        Pipeline(total, retry, attempt, name=name)
    assert (info.value.option, info.value.value) == (variable, "soon")
    assert info.value.owner == f"Timeout({name + '.attempt'!r})"
    assert [p.name for p in (total, retry, attempt)] == [None, None, None]
    assert attempt.seconds == 2.0


def test_a_warning_made_an_error_while_naming_leaves_nothing_named(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("pay")
    env.setenv(f"RESILIENT_{spelt(name)}_BREAKER_MIN_CALLS", "50")
    retry, breaker = Retry(3), CircuitBreaker(window_size=10)
    with pytest.raises(ConfigWarning, match=r"BREAKER_MIN_CALLS='50' is above window_size=10"):
        Pipeline(retry, breaker, name=name)
    assert (retry.name, breaker.name, breaker.settings["min_calls"]) == (None, None, 20)


def test_a_misspelt_role_variable_is_warned_about_when_named(env: pytest.MonkeyPatch) -> None:
    name = fresh("pay")
    env.setenv(f"RESILIENT_{spelt(name)}_ATTEMPT_TIMEOUT_SECOND", "1")
    with pytest.warns(ConfigWarning) as caught:
        Pipeline(Timeout(10), Retry(3), Timeout(2), name=name)
    assert [str(w.message) for w in caught] == [
        f"RESILIENT_{spelt(name)}_ATTEMPT_TIMEOUT_SECOND matches no option of any resilient"
        f" policy; did you mean RESILIENT_{spelt(name)}_ATTEMPT_TIMEOUT_SECONDS?"
    ]


def test_a_bad_pipeline_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"Pipeline: name='\.\.\.' is invalid"):
        Pipeline(Retry(), name="...")


def test_resilient_config_lists_the_role_names(tmp_path: Path) -> None:
    (tmp_path / "roles.py").write_text(
        textwrap.dedent(
            """
            from resilient import CircuitBreaker, Pipeline, Retry, Timeout

            pay = Pipeline(Timeout(10), Retry(3), CircuitBreaker(), Timeout(2), name="pay")
            """
        )
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    result = subprocess.run(
        [sys.executable, "-m", "resilient", "config", "roles:pay", "--check", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean, "RESILIENT_PAY_ATTEMPT_TIMEOUT_SECONDS": "1.5"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    policies = json.loads(result.stdout)["policies"]
    assert [(p["kind"], p["name"]) for p in policies] == [
        ("timeout", "pay.total"),
        ("retry", "pay"),
        ("breaker", "pay"),
        ("timeout", "pay.attempt"),
    ]
    assert policies[3]["options"]["seconds"] == {
        "value": 1.5,  # a number, as --json gives numbers
        "source": "RESILIENT_PAY_ATTEMPT_TIMEOUT_SECONDS=1.5",
    }


def test_resilient_env_tells_how_a_pipeline_names_its_policies() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resilient", "env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (
        "Pipeline(..., name='pay') names its unnamed policies by role: 'pay' for the only"
        " one of its kind, 'pay.total' and 'pay.attempt' for two around the Retry"
    ) in result.stdout


# -- a breaker outside a Retry -----------------------------------------------------------


def test_a_breaker_outside_a_retry_is_warned_about_with_the_fix() -> None:
    name = fresh("pay")
    with pytest.warns(ConfigWarning) as caught:
        Pipeline(Timeout(10), CircuitBreaker(name), Retry(3), Timeout(2))
    assert [str(w.message) for w in caught] == [
        f"a CircuitBreaker outside a Retry: CircuitBreaker({name!r}) is given before Retry,"
        " so it counts one outcome per retried call: it opens only after several times as"
        " many failed attempts, and until then every call sends all its attempts to a"
        " failing downstream. Give the breaker after the Retry, inside it; if this order is"
        " meant, silence this with warnings.filterwarnings('ignore', 'a CircuitBreaker"
        " outside a Retry', resilient.ConfigWarning)"
    ]
    assert caught[0].filename == __file__  # the line that made the Pipeline


def test_the_warning_can_be_silenced_as_it_says() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "a CircuitBreaker outside a Retry", ConfigWarning)
        Pipeline(CircuitBreaker(), Retry(3))


def test_a_breaker_inside_every_retry_draws_no_warning() -> None:
    Pipeline(Retry(3), CircuitBreaker(), Timeout(2))
    Pipeline(CircuitBreaker(), Timeout(2))
    with pytest.warns(ConfigWarning, match="^a CircuitBreaker outside a Retry: "):
        Pipeline(Retry(2), CircuitBreaker(), Retry(3))  # outside the inner one


# -- Policy ------------------------------------------------------------------------------


def test_every_policy_is_a_policy() -> None:
    for policy in (
        CircuitBreaker(),
        Retry(),
        Timeout(1),
        Bulkhead(1),
        Fallback(0),
        Pipeline(Retry()),
    ):
        assert isinstance(policy, Policy), policy
    assert not isinstance(lambda fn: fn, Policy)


class Counting:
    """A policy of the user's own: counts the calls it guards, sync or async."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if asyncio.iscoroutinefunction(fn):

            async def acounted(*args: P.args, **kwargs: P.kwargs) -> Any:
                self.calls += 1
                return await fn(*args, **kwargs)

            return acounted  # type: ignore[return-value]

        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            self.calls += 1
            return fn(*args, **kwargs)

        return counted

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self(fn)(*args, **kwargs)

    async def call_async(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        return await self(fn)(*args, **kwargs)


def test_a_policy_of_ones_own_guards_in_a_pipeline_sync_and_async() -> None:
    counting = Counting()
    attempts = 0

    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError
        return "ok"

    async def aflaky() -> str:
        return flaky()

    pipeline = Pipeline(Retry(3), counting, Timeout(5))
    assert pipeline.call(flaky) == "ok"
    assert (counting.calls, attempts) == (3, 3)
    attempts = 0
    assert asyncio.run(pipeline.call_async(aflaky)) == "ok"
    assert (counting.calls, attempts) == (6, 3)
