"""Operators retune or switch off named policies through RESILIENT_* environment variables.

RESILIENT_<NAME>_<KIND>_<OPTION> for one policy, RESILIENT_DEFAULT_<KIND>_<OPTION> for
every policy of a kind, RESILIENT_ENABLED=0 for all. Read when a policy is made and by
``resilient.reload()``, never at import; precedence, low to high: the option's default,
the code's keyword, the kind-wide variable, the policy's own variable.

Every test sets variables through the ``env`` fixture (a MonkeyPatch that, on the way
out, restores the environment and reloads every live policy from it, so nothing leaks
into other tests) and uses policy names no other test uses.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import resilient
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    ConfigWarning,
    Fallback,
    Retry,
    State,
    Timeout,
    TimeoutExpired,
    _breaker,
    _bulkhead,
    _retry,
    _timeout,
)
from resilient._core.configuration import config
from resilient._core.configuration import parse as p
from resilient._core.configuration.options import Option
from resilient.testing import ManualClock

from . import _envtargets as targets
from .conftest import fresh

T = "tests._envtargets"
ROOT = Path(__file__).resolve().parent.parent

# -- helpers ---------------------------------------------------------------------------


def spell(name: str) -> str:
    """The issue's rule, written independently of the library: upper-cased, every run of
    characters other than ASCII letters and digits turned into one '_'."""
    out: list[str] = []
    for ch in name:
        if ch.isascii() and ch.isalnum():
            out.append(ch.upper())
        elif not out or out[-1] != "_":  # only a gap ever writes '_'
            out.append("_")
    return "".join(out)


def var(name: str, kind: str, option: str) -> str:
    return f"RESILIENT_{spell(name)}_{kind.upper()}_{option.upper()}"


def wide(kind: str, option: str) -> str:
    return f"RESILIENT_DEFAULT_{kind.upper()}_{option.upper()}"


def make(kind: str, name: str | None = None, **code: Any) -> Any:
    if kind == "breaker":
        return CircuitBreaker(name, **code)
    if kind == "retry":
        return Retry(name=name, **code)
    if kind == "timeout":
        return Timeout(code.pop("seconds", 10.0), name=name, **code)
    assert kind == "bulkhead"
    return Bulkhead(code.pop("max_concurrent", 4), name=name, **code)


def declared(kind: str, option: str) -> Option:
    return next(o for o in config.KINDS[kind] if o.name == option)


def assert_env_error(err: ConfigError, variable: str, raw: str) -> None:
    """A ConfigError naming the variable, its raw text and what was expected."""
    assert isinstance(err, ConfigError)
    assert isinstance(err, ValueError)
    assert err.option == variable
    assert err.value == raw
    assert isinstance(err.value, str)
    text = str(err)
    assert variable in text
    assert repr(raw) in text
    assert err.expected
    assert err.expected in text


def apply(env: pytest.MonkeyPatch, name: str, kind: str, conf: dict[str, str]) -> None:
    for option, raw in conf.items():
        env.setenv(var(name, kind, option), raw)


def fail(exc: BaseException) -> Callable[[], Any]:
    def raiser() -> Any:
        raise exc

    return raiser


def ok() -> str:
    return "ok"


def boom() -> None:
    raise ConnectionError("down")


def all_options() -> set[tuple[str, str]]:
    pairs = {("breaker", o.name) for o in (*_breaker.OPTIONS, _breaker.PINNED)}
    pairs |= {("retry", o.name) for o in _retry.OPTIONS}
    pairs |= {("timeout", o.name) for o in _timeout.OPTIONS}
    pairs |= {("bulkhead", o.name) for o in _bulkhead.OPTIONS}
    return pairs


def test_spell_is_the_issue_rule() -> None:
    assert spell("payments") == "PAYMENTS"
    assert spell("payments-api.v2") == "PAYMENTS_API_V2"
    assert spell("a  --b") == "A_B"
    assert spell("-x-") == "_X_"
    assert spell("zürich") == "Z_RICH"


# -- 1. every option of every kind is overridable --------------------------------------


def eq(expected: Any) -> Callable[[Any], bool]:
    return lambda value: bool(value == expected and type(value) is type(expected))


def same(attr: str) -> Callable[[Any], bool]:
    return lambda value: value is getattr(targets, attr)


def is_none(value: Any) -> bool:
    return value is None


def catches(yes: list[BaseException], no: list[BaseException]) -> Callable[[Any], bool]:
    return lambda pred: all(pred(e) for e in yes) and not any(pred(e) for e in no)


VALID: list[tuple[str, str, str, Callable[[Any], bool]]] = [
    ("breaker", "failure_rate", "0.25", eq(0.25)),
    ("breaker", "failure_rate", "1", eq(1.0)),
    ("breaker", "window_size", "50", eq(50)),
    ("breaker", "window_type", "time", eq("time")),
    ("breaker", "window_type", " COUNT ", eq("count")),
    ("breaker", "min_calls", "7", eq(7)),
    ("breaker", "open_for", "1.5m", eq(90.0)),
    ("breaker", "open_for", "0", eq(0.0)),
    ("breaker", "open_for", f"{T}:open_for", same("open_for")),
    ("breaker", "half_open_calls", "3", eq(3)),
    ("breaker", "half_open_max_wait", "250ms", eq(0.25)),
    ("breaker", "half_open_max_wait", "NONE", is_none),
    ("breaker", "slow_call_duration", "2s", eq(2.0)),
    ("breaker", "slow_call_duration", "none", is_none),
    ("breaker", "slow_call_rate", "0.75", eq(0.75)),
    (
        "breaker",
        "record",
        "ConnectionError,builtins.TimeoutError",
        catches([ConnectionRefusedError(), TimeoutError()], [ValueError()]),
    ),
    ("breaker", "ignore", "socket:timeout", catches([TimeoutError()], [ConnectionError()])),
    ("breaker", "failure_result", f"{T}:is_error_result", same("is_error_result")),
    ("breaker", "failure_result", "None", is_none),
    ("breaker", "clock", f"{T}.clock", same("clock")),
    ("breaker", "clock", "none", is_none),
    ("breaker", "state", "forced_open", eq("forced_open")),
    ("breaker", "state", "DISABLED", eq("disabled")),
    ("breaker", "state", "auto", eq("auto")),
    ("breaker", "backend", "none", is_none),
    ("breaker", "backend", " redis://127.0.0.1:6379/0 ", eq("redis://127.0.0.1:6379/0")),
    ("retry", "attempts", "5", eq(5)),
    ("retry", "attempts", " +5 ", eq(5)),
    ("retry", "max_wait", "2m", eq(120.0)),
    ("retry", "max_wait", "0.5", eq(0.5)),
    ("retry", "wait", "250ms", eq(0.25)),
    ("retry", "wait", "0", eq(0.0)),
    ("retry", "wait", f"{T}:quarter_second", same("quarter_second")),
    ("retry", "wait", f"{T}:wait_none", same("wait_none")),
    ("retry", "on", "ConnectionError", catches([ConnectionResetError()], [ValueError()])),
    ("retry", "on_result", f"{T}:is_none", same("is_none")),
    ("retry", "retry_after", f"{T}:is_none", same("is_none")),
    ("retry", "retry_after", "none", is_none),
    ("retry", "deadline", "1h", eq(3600.0)),
    ("retry", "deadline", "none", is_none),
    ("retry", "stop", f"{T}:stop_after_two", same("stop_after_two")),
    ("retry", "stop", "none", is_none),
    ("retry", "clock", f"{T}:clock", same("clock")),
    ("retry", "budget", f"{T}:budget", same("budget")),
    ("timeout", "seconds", "2.5", eq(2.5)),
    ("timeout", "seconds", "250ms", eq(0.25)),
    ("timeout", "max_abandoned", "4", eq(4)),
    (
        "timeout",
        "thread_locals",
        f"{T}:local_a, {T}:local_b",
        lambda v: v == (targets.local_a, targets.local_b),
    ),
    ("timeout", "thread_locals", f"{T}:local_a", lambda v: v == (targets.local_a,)),
    ("bulkhead", "max_concurrent", "20", eq(20)),
    ("bulkhead", "max_wait", "1.5m", eq(90.0)),
    ("bulkhead", "max_wait", "0", eq(0.0)),
    ("bulkhead", "max_waiting", "0", eq(0)),
    ("bulkhead", "max_waiting", "None", is_none),
]


def test_the_valid_table_covers_every_option_of_every_kind() -> None:
    assert {(kind, option) for kind, option, _, _ in VALID} == all_options()
    assert set(config.KINDS) >= {"breaker", "retry", "timeout", "bulkhead"}


@pytest.mark.parametrize(
    ("kind", "option", "raw", "check"), VALID, ids=[f"{k}-{o}-{r!r}" for k, o, r, _ in VALID]
)
def test_every_option_is_overridden_by_its_variable(
    env: pytest.MonkeyPatch, kind: str, option: str, raw: str, check: Callable[[Any], bool]
) -> None:
    name = fresh(f"every.{option}")
    variable = var(name, kind, option)
    env.setenv(variable, raw)
    policy = make(kind, name)
    assert check(policy.settings.values[option])
    assert policy.settings[option] is policy.settings.values[option]
    assert policy.settings.sources[option] == variable
    assert policy.settings.texts[option] == raw
    others = set(policy.settings.sources) - {option}
    assert all(policy.settings.sources[o] in ("default", "code") for o in others)


def test_sources_say_default_and_code_without_variables(env: pytest.MonkeyPatch) -> None:
    b = CircuitBreaker(fresh("plain"), min_calls=4)
    assert b.settings.sources["min_calls"] == "code"
    assert b.settings.sources["failure_rate"] == "default"
    assert b.settings.values["failure_rate"] == 0.5
    assert b.settings.texts == {}
    assert b.settings.enabled is True


# Observable effects of overrides, one or more per kind.


def test_failure_rate_min_calls_and_window_from_env_decide_when_a_breaker_opens(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("payments")
    apply(env, name, "breaker", {"FAILURE_RATE": "0.25", "MIN_CALLS": "4", "WINDOW_SIZE": "4"})
    b = CircuitBreaker(name, failure_rate=0.9, min_calls=50)
    for _ in range(3):
        assert b.call(ok) == "ok"
    with pytest.raises(ConnectionError):
        b.call(boom)  # 1 of 4 = 0.25 >= 0.25: opens (the code said 0.9 of 50 calls)
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)


def test_open_for_from_env_with_a_clock_given_by_import_path(
    env: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    env.setattr(targets, "clock", clock)
    name = fresh("payments")
    apply(
        env,
        name,
        "breaker",
        {"OPEN_FOR": "1.5m", "CLOCK": f"{T}:clock", "MIN_CALLS": "1", "WINDOW_SIZE": "1"},
    )
    b = CircuitBreaker(name, open_for=1.0)
    with pytest.raises(ConnectionError):
        b.call(boom)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.retry_after == pytest.approx(90.0)
    clock.advance(89.9)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(0.1)
    assert b.call(ok) == "ok"  # the probe
    assert b.state is State.HALF_OPEN


def test_open_for_callable_by_import_path_is_asked_with_times_opened(
    env: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    name = fresh("of-callable")
    apply(env, name, "breaker", {"OPEN_FOR": f"{T}:open_for", "HALF_OPEN_CALLS": "1"})
    b = CircuitBreaker(name, min_calls=1, window_size=1, clock=clock)
    with pytest.raises(ConnectionError):
        b.call(boom)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.retry_after == pytest.approx(7.0)  # open_for(1)
    clock.advance(7.0)
    with pytest.raises(ConnectionError):
        b.call(boom)  # the one probe (HALF_OPEN_CALLS=1) fails: open again, for open_for(2)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.retry_after == pytest.approx(14.0)


def test_record_ignore_and_failure_result_from_env_decide_what_counts(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("counts")
    apply(
        env,
        name,
        "breaker",
        {
            "RECORD": "ConnectionError,builtins.TimeoutError",
            "IGNORE": "KeyError",
            "FAILURE_RESULT": f"{T}:is_error_result",
        },
    )
    b = CircuitBreaker(name, min_calls=100, window_size=100)
    for exc in (ValueError(), KeyError("k"), TimeoutError(), ConnectionResetError()):
        with pytest.raises(type(exc)):
            b.call(fail(exc))
    assert b.call(lambda: "error") == "error"
    m = b.metrics
    assert (m.calls, m.failures) == (4, 3)  # KeyError ignored; ValueError a success


def test_half_open_calls_and_slow_call_duration_from_env(env: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    name = fresh("slowness")
    apply(
        env,
        name,
        "breaker",
        {"SLOW_CALL_DURATION": "2s", "SLOW_CALL_RATE": "0.5", "HALF_OPEN_CALLS": "1"},
    )
    b = CircuitBreaker(name, min_calls=2, window_size=2, clock=clock, open_for=1)
    b.call(ok)
    b.call(lambda: clock.advance(2.0))  # slow: 1 of 2 >= 0.5
    assert b.state is State.OPEN
    clock.advance(1)
    b.call(ok)  # one probe is enough to close
    assert b.state is State.CLOSED


def test_retry_attempts_from_env(env: pytest.MonkeyPatch) -> None:
    name = fresh("payments")
    env.setenv(var(name, "retry", "attempts"), "5")
    retry = Retry(2, name=name)
    calls = []
    with pytest.raises(ConnectionError):
        retry.call(lambda: calls.append(1) or boom())
    assert len(calls) == 5
    assert retry.attempts == 5


def test_retry_wait_and_clock_from_env(env: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    env.setattr(targets, "clock", clock)
    name = fresh("waits")
    apply(env, name, "retry", {"ATTEMPTS": "5", "WAIT": "250ms", "CLOCK": f"{T}:clock"})
    retry = Retry(name=name)
    with pytest.raises(ConnectionError):
        retry.call(boom)
    assert clock.monotonic() == pytest.approx(1.0)  # 4 waits of 0.25 s, on the clock given


def test_retry_on_and_on_result_from_env(env: pytest.MonkeyPatch) -> None:
    name = fresh("on")
    apply(env, name, "retry", {"ON": "socket:timeout", "ON_RESULT": f"{T}:is_none"})
    retry = Retry(4, name=name, on=ValueError)
    calls: list[int] = []

    def flaky(exc: BaseException) -> Callable[[], None]:
        def run() -> None:
            calls.append(1)
            raise exc

        return run

    with pytest.raises(ValueError, match="not retried"):
        retry.call(flaky(ValueError("not retried")))
    assert len(calls) == 1  # the code's on=ValueError is overridden
    calls.clear()
    with pytest.raises(TimeoutError):
        retry.call(flaky(TimeoutError()))
    assert len(calls) == 4
    results = iter([None, None, "done"])
    assert retry.call(lambda: next(results)) == "done"


def test_retry_stop_budget_and_deadline_from_env(env: pytest.MonkeyPatch) -> None:
    name = fresh("limits")
    env.setenv(var(name, "retry", "stop"), f"{T}:stop_after_two")
    calls: list[int] = []
    retry = Retry(9, name=name)
    with pytest.raises(ConnectionError):
        retry.call(lambda: calls.append(1) or boom())
    assert len(calls) == 2

    name = fresh("limits")
    env.setenv(var(name, "retry", "budget"), f"{T}:stingy_budget")
    calls.clear()
    with pytest.raises(ConnectionError):
        Retry(9, name=name).call(lambda: calls.append(1) or boom())
    assert len(calls) == 1  # the budget allows no retry

    clock = ManualClock()
    env.setattr(targets, "clock", clock)
    name = fresh("limits")
    apply(env, name, "retry", {"DEADLINE": "1s", "WAIT": "400ms", "CLOCK": f"{T}:clock"})
    calls.clear()
    with pytest.raises(ConnectionError):
        Retry(9, name=name).call(lambda: calls.append(1) or boom())
    assert len(calls) == 3  # waits at 0.4 and 0.8; a third would end past 1 s


def test_timeout_seconds_from_env_sync_and_async(env: pytest.MonkeyPatch) -> None:
    name = fresh("payments")
    env.setenv(var(name, "timeout", "seconds"), "50ms")
    t = Timeout(30, name=name)
    assert t.seconds == 0.05
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutExpired):
        t.call(release.wait, 5)
    release.set()
    assert time.monotonic() - started < 2.0

    async def main() -> None:
        await t.call_async(anyio.sleep, 5)

    started = time.monotonic()
    with pytest.raises(TimeoutExpired):
        anyio.run(main, backend="asyncio")
    assert time.monotonic() - started < 2.0


def test_timeout_thread_locals_from_env(env: pytest.MonkeyPatch) -> None:
    name = fresh("locals")
    env.setenv(var(name, "timeout", "thread_locals"), f"{T}:local_a")
    targets.local_a.value = "mine"
    try:
        t = Timeout(5, name=name)
        assert t.call(lambda: getattr(targets.local_a, "value", None)) == "mine"
    finally:
        del targets.local_a.value


def test_bulkhead_size_wait_and_waiting_from_env(env: pytest.MonkeyPatch) -> None:
    name = fresh("payments")
    apply(env, name, "bulkhead", {"MAX_CONCURRENT": "2", "MAX_WAIT": "1h", "MAX_WAITING": "0"})
    b = Bulkhead(9, name=name, max_waiting=5)
    b.__enter__()
    b.__enter__()
    try:
        started = time.monotonic()
        # Full; max_waiting=0 means nobody may wait (a falsy value is never "unbounded"),
        # so the call is refused at once although max_wait is an hour.
        with pytest.raises(BulkheadFullError):
            b.call(ok)
        assert time.monotonic() - started < 1.0
        assert b.metrics.in_use == 2
    finally:
        b.__exit__(None, None, None)
        b.__exit__(None, None, None)
    assert b.call(ok) == "ok"


# -- 2. bad values -----------------------------------------------------------------------

COMMON_BAD = ["-1", "abc", "1e309", "nan", "inf", "", "   "]
SPECIFIC_BAD: dict[tuple[str, str], list[str]] = {
    ("breaker", "failure_rate"): ["0", "1.5", "-0.5", "2x", "50%", "0x10", "none"],
    ("breaker", "window_size"): ["0", "0s", "5 minutes", "2x", "none"],
    ("breaker", "window_type"): ["sliding", "none"],
    ("breaker", "min_calls"): ["0", "2.5", "2x", "none", "1_000"],
    ("breaker", "open_for"): ["2x", "5 minutes", "1e309s", "-5s", f"{T}:not_there", "none"],
    ("breaker", "half_open_calls"): ["0", "1.5"],
    ("breaker", "backend"): ["http://127.0.0.1:6379", "redis://h:1/0?socket_timeout=5"],
    ("breaker", "half_open_max_wait"): ["0", "0ms", "2x", "5 minutes", "1.5.2"],
    ("breaker", "slow_call_duration"): ["0", "0s", "2x"],
    ("breaker", "slow_call_rate"): ["0", "1.5"],
    ("breaker", "record"): [
        "builtins.int",
        "no_such_module_xyz:Error",
        "ConnectionError,",
        "ConnectionError,,ValueError",
        "builtins:NoSuchError",
        f"{T}:not_there",
    ],
    ("breaker", "ignore"): ["builtins:int", "ConnectionError ValueError"],
    ("breaker", "failure_result"): ["builtins:ValueError", "no_such_module_xyz:f", "0"],
    ("breaker", "clock"): ["builtins:object", f"{T}:not_a_clock", "builtins:len"],
    ("breaker", "state"): ["open", "closed", "half_open", "none"],
    ("retry", "attempts"): ["0", "2.5", "2x", "none"],
    ("retry", "wait"): ["2x", "5 minutes", "builtins:int", "none"],
    ("retry", "max_wait"): ["0", "-1", "2 years", "1e10", "none", "nan"],
    ("retry", "on"): ["KeyboardInterrupt", "builtins.int", "ConnectionError,"],
    ("retry", "on_result"): ["builtins:bool", "no_such_module_xyz:f"],
    ("retry", "retry_after"): ["builtins:float", "no_such_module_xyz:f", "2s"],
    ("retry", "deadline"): ["0", "0s", "2x"],
    ("retry", "stop"): ["builtins:ValueError", "0"],
    ("retry", "clock"): [f"{T}:monotonic_only", "builtins:object"],
    ("retry", "budget"): [f"{T}:clock", "builtins:len"],
    ("timeout", "seconds"): ["0", "0ms", "2x", "5 minutes", "none"],
    ("timeout", "max_abandoned"): ["0", "1.5", "none"],
    ("timeout", "thread_locals"): ["builtins:len", f"{T}:local_a,builtins:len", "none"],
    ("bulkhead", "max_concurrent"): ["0", "1.5", "none"],
    ("bulkhead", "max_wait"): ["2x", "5 minutes", "none"],
    ("bulkhead", "max_waiting"): ["1.5", "2x"],
}
BAD = [
    (kind, option, raw)
    for (kind, option), specific in SPECIFIC_BAD.items()
    for raw in (*COMMON_BAD, *specific)
]


def test_the_bad_table_covers_every_option_of_every_kind() -> None:
    assert set(SPECIFIC_BAD) == all_options()


@pytest.mark.parametrize(("kind", "option", "raw"), BAD, ids=[f"{k}-{o}-{r!r}" for k, o, r in BAD])
def test_bad_value_is_a_config_error_naming_variable_value_and_expectation(
    env: pytest.MonkeyPatch, kind: str, option: str, raw: str
) -> None:
    name = fresh(f"bad-{option}")
    variable = var(name, kind, option)
    env.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        make(kind, name)
    assert_env_error(info.value, variable, raw)
    assert declared(kind, option).expected in info.value.expected
    assert declared(kind, option).syntax in info.value.expected
    assert info.value.errors == (info.value,)
    assert name in str(info.value)  # the owner: Kind('name')
    with pytest.raises(KeyError):
        resilient.registry.get(name)  # never made, so never registered


@pytest.mark.parametrize(
    ("kind", "option"), sorted(all_options()), ids=[f"{k}-{o}" for k, o in sorted(all_options())]
)
def test_an_option_whose_syntax_offers_none_accepts_none(
    env: pytest.MonkeyPatch, kind: str, option: str
) -> None:
    """BUG: record, ignore (breaker) and on (retry) say they are 'written as ..., or none',
    yet 'none' is refused with that very sentence in the error."""
    syntax = declared(kind, option).syntax
    if not re.search(r"\bnone\b", syntax):
        assert syntax  # every option says how it is written
        return
    name = fresh(f"none-{option}")
    env.setenv(var(name, kind, option), "none")
    try:
        make(kind, name)
    except ConfigError as err:
        pytest.fail(f"'none' refused although the syntax offers it: {err}")


def test_several_bad_variables_are_reported_together(env: pytest.MonkeyPatch) -> None:
    name = fresh("many-bad")
    bad = {
        var(name, "breaker", "failure_rate"): "abc",
        var(name, "breaker", "min_calls"): "0",
        var(name, "breaker", "open_for"): "2x",
        "RESILIENT_ENABLED": "maybe",
    }
    for variable, raw in bad.items():
        env.setenv(variable, raw)
    env.setenv(var(name, "breaker", "window_size"), "10")  # a good one among them
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(name)
    err = info.value
    assert {(e.option, e.value) for e in err.errors} == set(bad.items())
    assert len(err.errors) == 4
    text = str(err)
    assert text.startswith("4 invalid settings")
    for variable, raw in bad.items():
        assert variable in text
        assert repr(raw) in text
    assert (err.option, err.value) == (err.errors[0].option, err.errors[0].value)


def test_a_bad_own_variable_never_falls_back_to_the_kind_wide_one(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("no-fallback")
    env.setenv(wide("retry", "attempts"), "4")
    env.setenv(var(name, "retry", "attempts"), "-1")
    with pytest.raises(ConfigError) as info:
        Retry(name=name)
    assert_env_error(info.value, var(name, "retry", "attempts"), "-1")
    assert len(info.value.errors) == 1


def test_a_good_own_variable_wins_over_a_bad_kind_wide_one(env: pytest.MonkeyPatch) -> None:
    """Design: the policy's own variable is the one read; the kind-wide one is not."""
    name = fresh("own-wins")
    env.setenv(wide("retry", "attempts"), "abc")
    env.setenv(var(name, "retry", "attempts"), "4")
    assert Retry(name=name).attempts == 4
    with pytest.raises(ConfigError) as info:
        Retry(name=fresh("no-own"))
    assert_env_error(info.value, wide("retry", "attempts"), "abc")


def test_a_bad_kind_wide_variable_fails_unnamed_policies_too(env: pytest.MonkeyPatch) -> None:
    env.setenv(wide("bulkhead", "max_concurrent"), "0")
    with pytest.raises(ConfigError) as info:
        Bulkhead(3)
    assert_env_error(info.value, wide("bulkhead", "max_concurrent"), "0")
    assert "Bulkhead" in str(info.value)


def test_a_value_checked_with_other_options_blames_the_variable(env: pytest.MonkeyPatch) -> None:
    """A fractional window_size is a time window's: with a count window it is an error
    naming the variable and its text, found after every option parsed on its own."""
    name = fresh("window")
    env.setenv(var(name, "breaker", "window_size"), "2.5s")
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(name)
    assert_env_error(info.value, var(name, "breaker", "window_size"), "2.5s")
    env.setenv(var(name, "breaker", "window_type"), "time")
    b = CircuitBreaker(name)
    assert b.settings["window_size"] == 2.5


@pytest.mark.parametrize("raw", ["..ConnectionError", ".:ConnectionError"])
def test_a_relative_import_path_is_a_config_error(env: pytest.MonkeyPatch, raw: str) -> None:
    """BUG: importlib raises TypeError for a relative module name, which parse_import does
    not catch, so construction fails with a bare TypeError naming no variable."""
    name = fresh("relative")
    variable = var(name, "breaker", "record")
    env.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(name)
    assert_env_error(info.value, variable, raw)


def test_an_overlong_number_is_a_config_error(env: pytest.MonkeyPatch) -> None:
    """BUG: int() refuses strings of more than 4300 digits with ValueError, which
    parse_int does not catch: a plain ValueError instead of a ConfigError."""
    name = fresh("digits")
    variable = var(name, "retry", "attempts")
    raw = "9" * 5000
    env.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        Retry(name=name)
    assert info.value.option == variable
    assert info.value.value == raw


# -- 3. precedence, when the environment is read, names ---------------------------------

# kind, option, code value, kind-wide text and value, own text and value, default
PRECEDENCE = [
    ("breaker", "failure_rate", 0.3, ("0.2", 0.2), ("0.1", 0.1), 0.5),
    ("retry", "attempts", 4, ("5", 5), ("6", 6), 3),
    ("timeout", "max_abandoned", 3, ("4", 4), ("5", 5), 10),
    ("bulkhead", "max_waiting", 2, ("3", 3), ("0", 0), None),
]


@pytest.mark.parametrize("code", [False, True], ids=["-", "code"])
@pytest.mark.parametrize("kind_wide", [False, True], ids=["-", "wide"])
@pytest.mark.parametrize("own", [False, True], ids=["-", "own"])
@pytest.mark.parametrize("case", PRECEDENCE, ids=[c[0] for c in PRECEDENCE])
def test_precedence_default_code_kind_wide_own(
    env: pytest.MonkeyPatch, case: tuple[Any, ...], code: bool, kind_wide: bool, own: bool
) -> None:
    kind, option, code_value, (wide_text, wide_value), (own_text, own_value), default = case
    name = fresh("prec")
    own_var, wide_var = var(name, kind, option), wide(kind, option)
    if kind_wide:
        env.setenv(wide_var, wide_text)
    if own:
        env.setenv(own_var, own_text)
    policy = make(kind, name, **({option: code_value} if code else {}))
    if own:
        expected = (own_value, own_var, own_text)
    elif kind_wide:
        expected = (wide_value, wide_var, wide_text)
    elif code:
        expected = (code_value, "code", None)
    else:
        expected = (default, "default", None)
    s = policy.settings
    assert (s[option], s.sources[option], s.texts.get(option)) == expected


def test_reload_recomputes_precedence_from_what_the_code_gave(env: pytest.MonkeyPatch) -> None:
    name = fresh("prec-reload")
    env.setenv(var(name, "breaker", "failure_rate"), "0.1")
    env.setenv(wide("breaker", "failure_rate"), "0.2")
    b = CircuitBreaker(name, failure_rate=0.3)
    assert b.settings["failure_rate"] == 0.1
    env.delenv(var(name, "breaker", "failure_rate"))
    resilient.reload()
    assert (b.settings["failure_rate"], b.settings.sources["failure_rate"]) == (
        0.2,
        wide("breaker", "failure_rate"),
    )
    env.delenv(wide("breaker", "failure_rate"))
    resilient.reload()
    assert (b.settings["failure_rate"], b.settings.sources["failure_rate"]) == (0.3, "code")


def test_environment_is_read_at_construction_then_only_by_reload(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("when")
    retry = Retry(name=name)  # made before the variable exists
    env.setenv(var(name, "retry", "attempts"), "6")
    assert retry.attempts == 3
    later = Retry(name=name)  # made after: reads it
    assert later.attempts == 6
    env.setenv(var(name, "retry", "attempts"), "2")
    assert (retry.attempts, later.attempts) == (3, 6)  # no effect until reload
    resilient.reload()
    assert (retry.attempts, later.attempts) == (2, 2)


def test_environment_is_not_read_at_import() -> None:
    script = (
        "import os, resilient\n"
        "del os.environ['RESILIENT_IMPORTPROBE_RETRY_ATTEMPTS']\n"
        "before = resilient.Retry(name='importprobe').attempts\n"
        "os.environ['RESILIENT_IMPORTPROBE_RETRY_ATTEMPTS'] = '7'\n"
        "print(before, resilient.Retry(name='importprobe').attempts)\n"
    )
    child_env = {**os.environ, "RESILIENT_IMPORTPROBE_RETRY_ATTEMPTS": "9"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["3", "7"]


@pytest.mark.parametrize(
    ("name", "spelt"),
    [
        ("payments-api.v2", "PAYMENTS_API_V2"),
        ("Payments", "PAYMENTS"),
        ("a  --b", "A_B"),
        ("svc/eu-west-1", "SVC_EU_WEST_1"),
        ("zürich", "Z_RICH"),
        ("__x__", "_X_"),
    ],
)
def test_name_normalisation(env: pytest.MonkeyPatch, name: str, spelt: str) -> None:
    assert config.env_name(name) == spelt
    name_var = f"RESILIENT_{spelt}_BREAKER_MIN_CALLS"
    env.setenv(name_var, "3")
    b = CircuitBreaker(name)
    assert b.settings["min_calls"] == 3
    assert b.settings.sources["min_calls"] == name_var


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(min_size=1, max_size=16).filter(
        lambda n: any(c.isascii() and c.isalnum() for c in n)  # else refused: hardening
    )
)
def test_any_name_reads_the_variable_the_rule_spells(name: str) -> None:
    expected = f"RESILIENT_{spell(name)}_RETRY_ATTEMPTS"
    assert config.variable("retry", "attempts", name) == expected
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(expected, "7")
        retry = Retry(name=name)
    assert retry.attempts == 7
    assert retry.settings.sources["attempts"] == expected


def test_kind_wide_defaults_apply_to_named_and_unnamed_policies(env: pytest.MonkeyPatch) -> None:
    env.setenv(wide("retry", "attempts"), "4")
    env.setenv(wide("timeout", "seconds"), "2s")
    env.setenv(wide("bulkhead", "max_concurrent"), "6")
    env.setenv(wide("breaker", "min_calls"), "8")
    for policy in (Retry(), Retry(name=fresh("kw"))):
        assert policy.attempts == 4
        assert policy.settings.sources["attempts"] == wide("retry", "attempts")
    assert Timeout(30).seconds == 2.0  # the variable beats the code's 30
    assert Bulkhead(1).max_concurrent == 6
    assert CircuitBreaker(min_calls=2).settings["min_calls"] == 8


# -- 4. the emergency switch and pinned breakers ----------------------------------------


@pytest.mark.parametrize("off", ["0", "false", "no", "off", "FALSE", " Off "])
def test_enabled_off_spellings_make_a_breaker_a_pass_through(
    env: pytest.MonkeyPatch, off: str
) -> None:
    env.setenv("RESILIENT_ENABLED", off)
    b = CircuitBreaker(fresh("off"), min_calls=1, window_size=1)
    assert b.settings.enabled is False
    for _ in range(5):
        with pytest.raises(ConnectionError):
            b.call(boom)
    assert b.call(ok) == "ok"
    assert b.state is State.DISABLED


@pytest.mark.parametrize("on", ["1", "true", "yes", "on", "TRUE"])
def test_enabled_on_spellings_change_nothing(env: pytest.MonkeyPatch, on: str) -> None:
    env.setenv("RESILIENT_ENABLED", on)
    b = CircuitBreaker(fresh("on"), min_calls=1, window_size=1)
    assert b.settings.enabled is True
    with pytest.raises(ConnectionError):
        b.call(boom)
    assert b.state is State.OPEN


def test_enabled_0_makes_retry_timeout_bulkhead_and_fallback_pass_throughs(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("RESILIENT_ENABLED", "0")
    calls: list[int] = []
    with pytest.raises(ConnectionError):
        Retry(5, name=fresh("off")).call(lambda: calls.append(1) or boom())
    assert calls == [1]

    t = Timeout(0.01, name=fresh("off"))
    assert t.call(lambda: time.sleep(0.05) or "late") == "late"

    async def slow() -> str:
        await anyio.sleep(0.05)
        return "late"

    for backend in ("asyncio", "trio"):
        assert anyio.run(t.call_async, slow, backend=backend) == "late"
    assert t.metrics.expired == 0

    b = Bulkhead(1, name=fresh("off"))
    for _ in range(3):
        b.__enter__()  # three inside a bulkhead of one
    for _ in range(3):
        b.__exit__(None, None, None)
    assert b.metrics.rejected == 0

    fb = Fallback("fallback value")
    with pytest.raises(ConnectionError):
        fb.call(boom)


def test_enabled_0_by_reload_and_back(env: pytest.MonkeyPatch) -> None:
    retry = Retry(3, name=fresh("flip"))
    fb = Fallback("fallback value")
    b = Bulkhead(1, name=fresh("flip"))
    env.setenv("RESILIENT_ENABLED", "off")
    resilient.reload()
    calls: list[int] = []
    with pytest.raises(ConnectionError):
        retry.call(lambda: calls.append(1) or boom())
    with pytest.raises(ConnectionError):
        fb.call(boom)
    b.__enter__()
    assert b.call(ok) == "ok"
    b.__exit__(None, None, None)
    env.delenv("RESILIENT_ENABLED")
    resilient.reload()
    with pytest.raises(ConnectionError):
        retry.call(lambda: calls.append(1) or boom())
    assert len(calls) == 1 + 3
    assert fb.call(boom) == "fallback value"
    b.__enter__()
    with pytest.raises(BulkheadFullError):
        b.call(ok)
    b.__exit__(None, None, None)
    assert b.metrics.in_use == 0


@pytest.mark.parametrize("raw", ["maybe", "", "2", "-1", "nan"])
def test_a_bad_enabled_value_is_a_config_error(env: pytest.MonkeyPatch, raw: str) -> None:
    env.setenv("RESILIENT_ENABLED", raw)
    with pytest.raises(ConfigError) as info:
        Retry()
    assert_env_error(info.value, "RESILIENT_ENABLED", raw)
    with pytest.raises(ConfigError) as info:
        Fallback(1)
    assert info.value.option == "RESILIENT_ENABLED"


def test_state_forced_open_rejects_every_call(env: pytest.MonkeyPatch) -> None:
    name = fresh("pinned")
    env.setenv(var(name, "breaker", "state"), "forced_open")
    b = CircuitBreaker(name)
    calls: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        b.call(lambda: calls.append(1))
    assert calls == []
    assert info.value.state is State.FORCED_OPEN
    assert info.value.retry_after is None
    assert b.state is State.FORCED_OPEN


def test_state_disabled_never_opens(env: pytest.MonkeyPatch) -> None:
    name = fresh("pinned")
    env.setenv(var(name, "breaker", "state"), "disabled")
    b = CircuitBreaker(name, min_calls=1, window_size=1)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            b.call(boom)
    assert b.state is State.DISABLED
    assert b.metrics.failures == 0  # nothing recorded


def test_state_auto_leaves_the_breaker_to_itself(env: pytest.MonkeyPatch) -> None:
    name = fresh("pinned")
    env.setenv(var(name, "breaker", "state"), "auto")
    b = CircuitBreaker(name, min_calls=1, window_size=1)
    assert b.state is State.CLOSED
    with pytest.raises(ConnectionError):
        b.call(boom)
    assert b.state is State.OPEN


def test_enabled_0_wins_over_a_forced_open_pin(env: pytest.MonkeyPatch) -> None:
    name = fresh("pinned")
    env.setenv(var(name, "breaker", "state"), "forced_open")
    env.setenv("RESILIENT_ENABLED", "0")
    b = CircuitBreaker(name)
    assert b.state is State.DISABLED
    assert b.call(ok) == "ok"


@pytest.mark.parametrize("lift", ["auto", "unset"])
def test_an_env_pin_lifted_by_reload_returns_to_closed_keeping_the_window(
    env: pytest.MonkeyPatch, lift: str
) -> None:
    name = fresh("pin-lift")
    b = CircuitBreaker(name, min_calls=50, window_size=50)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            b.call(boom)
    b.call(ok)
    env.setenv(var(name, "breaker", "state"), "forced_open")
    resilient.reload()
    assert b.state is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    if lift == "auto":
        env.setenv(var(name, "breaker", "state"), "auto")
    else:
        env.delenv(var(name, "breaker", "state"))
    resilient.reload()
    assert b.state is State.CLOSED
    m = b.metrics
    assert (m.calls, m.failures) == (4, 3)
    assert b.call(ok) == "ok"


@pytest.mark.parametrize("pin", ["force_open", "disable"])
def test_a_pin_made_in_code_is_left_alone_by_reload(env: pytest.MonkeyPatch, pin: str) -> None:
    name = fresh("code-pin")
    b = CircuitBreaker(name)
    getattr(b, pin)()
    pinned = b.state
    resilient.reload()
    assert b.state is pinned
    env.setenv(var(name, "breaker", "state"), "auto")
    env.setenv(var(name, "breaker", "failure_rate"), "0.3")
    resilient.reload()
    assert b.state is pinned
    assert b.settings["failure_rate"] == 0.3


def test_a_pin_made_in_code_after_an_env_pin_is_left_alone_by_reload(
    env: pytest.MonkeyPatch,
) -> None:
    """force_open() under an environment pin is remembered, not lost: the environment's
    pin holds until it is lifted, and then the code's pin applies (it used to beat the
    environment at once, and lifting the env pin then lifted the code pin too)."""
    name = fresh("code-after-env")
    env.setenv(var(name, "breaker", "state"), "disabled")
    b = CircuitBreaker(name)
    assert b.state is State.DISABLED
    b.force_open()
    assert b.state is State.DISABLED  # the environment wins over code
    env.delenv(var(name, "breaker", "state"))
    resilient.reload()
    assert b.state is State.FORCED_OPEN


# -- 5. reload keeps state --------------------------------------------------------------


def test_reload_keeps_a_closed_breakers_window_when_failure_rate_changes(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("keep-window")
    b = CircuitBreaker(name, min_calls=10, window_size=20)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            b.call(boom)
    for _ in range(5):
        b.call(ok)
    env.setenv(var(name, "breaker", "failure_rate"), "0.4")
    resilient.reload()
    assert b.settings["failure_rate"] == 0.4
    assert b.state is State.CLOSED
    assert (b.metrics.calls, b.metrics.failures) == (8, 3)
    b.call(ok)
    with pytest.raises(ConnectionError):
        b.call(boom)  # 4 of 10 >= 0.4: the kept records count under the new rate
    assert b.state is State.OPEN


def test_reload_shrinking_a_count_window_keeps_its_latest_records(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("shrink-window")
    b = CircuitBreaker(name, min_calls=50, window_size=50)
    for _ in range(6):
        b.call(ok)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            b.call(boom)
    env.setenv(var(name, "breaker", "window_size"), "4")
    with pytest.warns(
        ConfigWarning, match=r"^CircuitBreaker\('shrink-window-\d+'\): min_calls=50"
    ):
        resilient.reload()
    assert (b.metrics.calls, b.metrics.failures) == (4, 2)


def test_min_calls_above_the_window_from_the_environment_is_a_warning_not_a_silent_cap(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("above")
    env.setenv(var(name, "breaker", "min_calls"), "50")
    with pytest.warns(ConfigWarning) as caught:
        b = CircuitBreaker(name, window_size=10)
    assert [str(w.message) for w in caught] == [
        f"CircuitBreaker({name!r}): {var(name, 'breaker', 'min_calls')}='50' is above"
        " window_size=10: a count window never holds more than 10 calls, so min_calls=10"
        " is used; set min_calls to at most window_size"
    ]
    assert caught[0].filename == __file__
    assert (b.settings["min_calls"], b._plan.min_calls) == (50, 10)
    with warnings.catch_warnings():  # the same cap again: said once, not at every reload
        warnings.simplefilter("error")
        resilient.reload()
    env.setenv(wide("breaker", "window_size"), "5")
    with pytest.warns(ConfigWarning, match=r"is above RESILIENT_DEFAULT_BREAKER_WINDOW_SIZE='5'"):
        resilient.reload()
    assert b._plan.min_calls == 5


def test_a_default_min_calls_above_a_window_from_the_environment_fits_it_silently(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("small")
    env.setenv(var(name, "breaker", "window_size"), "4")
    assert CircuitBreaker(name)._plan.min_calls == 4  # the default 20: no warning


def test_reload_leaves_an_open_breaker_open(env: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    name = fresh("stay-open")
    b = CircuitBreaker(name, min_calls=2, window_size=2, open_for=60, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            b.call(boom)
    assert b.state is State.OPEN
    apply(env, name, "breaker", {"FAILURE_RATE": "0.9", "MIN_CALLS": "9", "WINDOW_SIZE": "9"})
    resilient.reload()
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(60)
    assert b.call(ok) == "ok"  # a probe, after the spell that began before the reload
    assert b.state is State.HALF_OPEN


def test_reload_resizing_a_bulkhead_up_admits_its_waiters_at_once(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("grow")
    b = Bulkhead(1, max_wait=10, name=name)
    inside, release = threading.Event(), threading.Event()
    entered: list[float] = []

    def holder() -> None:
        with b:
            inside.set()
            release.wait(10)

    def waiter() -> None:
        with b:
            entered.append(time.monotonic())

    threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    threads[0].start()
    assert inside.wait(5)
    threads[1].start()
    for _ in range(500):
        if b.metrics.waiting == 1:
            break
        time.sleep(0.01)
    assert b.metrics.waiting == 1
    env.setenv(var(name, "bulkhead", "max_concurrent"), "2")
    reloaded = time.monotonic()
    resilient.reload()
    threads[1].join(5)
    assert entered  # admitted while the holder is still inside
    assert entered[0] - reloaded < 2.0
    assert b.metrics.max_concurrent == 2
    release.set()
    threads[0].join(5)
    assert not any(t.is_alive() for t in threads)
    assert b.metrics.in_use == 0
    assert b.metrics.rejected == 0


def test_reload_resizing_a_bulkhead_down_drops_no_call_and_retires_slots_exactly(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("shrink")
    b = Bulkhead(3, name=name)
    for _ in range(3):
        b.__enter__()
    env.setenv(var(name, "bulkhead", "max_concurrent"), "1")
    resilient.reload()
    assert b.metrics == (1, 3, 0, 0)  # over the limit for now: nobody is thrown out
    rejected = 0
    for inside in (3, 2, 1):
        assert b.metrics.in_use == inside
        with pytest.raises(BulkheadFullError):
            b.call(ok)
        rejected += 1
        b.__exit__(None, None, None)  # a slot comes back: retired while over the limit
    assert b.metrics == (1, 0, 0, rejected)
    b.__enter__()
    with pytest.raises(BulkheadFullError):
        b.call(ok)  # exactly one slot now
    b.__exit__(None, None, None)
    assert b.call(ok) == "ok"
    assert b.metrics == (1, 0, 0, rejected + 1)


def test_reload_changes_retry_attempts_for_calls_started_after(env: pytest.MonkeyPatch) -> None:
    name = fresh("mid-call")
    variable = var(name, "retry", "attempts")

    def wait(attempt: int, exc: BaseException | None) -> float:
        if attempt == 1:
            env.setenv(variable, "6")
            resilient.reload()  # mid-call: this call keeps its configuration
        return 0.0

    retry = Retry(3, wait=wait, name=name)
    calls: list[int] = []
    with pytest.raises(ConnectionError):
        retry.call(lambda: calls.append(1) or boom())
    assert len(calls) == 3
    assert retry.attempts == 6
    calls.clear()
    with pytest.raises(ConnectionError):
        retry.call(lambda: calls.append(1) or boom())
    assert len(calls) == 6


def test_reload_changes_timeout_seconds(env: pytest.MonkeyPatch) -> None:
    name = fresh("shorter")
    t = Timeout(30, name=name)
    assert t.seconds == 30
    env.setenv(var(name, "timeout", "seconds"), "20ms")
    resilient.reload()
    assert t.seconds == 0.02
    started = time.monotonic()
    with pytest.raises(TimeoutExpired):
        anyio.run(t.call_async, anyio.sleep, 5, backend="asyncio")
    assert time.monotonic() - started < 2.0
    assert t.metrics.expired == 1


def test_reload_is_all_or_nothing(env: pytest.MonkeyPatch) -> None:
    nb, nr, nh = fresh("aon-b"), fresh("aon-r"), fresh("aon-h")
    b, r, h = CircuitBreaker(nb), Retry(name=nr), Bulkhead(2, name=nh)
    env.setenv(var(nb, "breaker", "failure_rate"), "0.9")
    env.setenv(var(nh, "bulkhead", "max_concurrent"), "7")
    env.setenv(var(nr, "retry", "attempts"), "abc")
    with pytest.raises(ConfigError) as info:
        resilient.reload()
    assert_env_error(info.value, var(nr, "retry", "attempts"), "abc")
    assert (b.settings["failure_rate"], r.attempts, h.max_concurrent) == (0.5, 3, 2)
    assert h.metrics.max_concurrent == 2

    env.setenv(var(nh, "bulkhead", "max_concurrent"), "0")
    env.setenv(var(nb, "breaker", "window_size"), "2.5s")  # bad only with the others
    with pytest.raises(ConfigError) as info:
        resilient.reload()
    assert {(e.option, e.value) for e in info.value.errors} == {
        (var(nr, "retry", "attempts"), "abc"),
        (var(nh, "bulkhead", "max_concurrent"), "0"),
        (var(nb, "breaker", "window_size"), "2.5s"),
    }
    assert all(v in str(info.value) for v in (nb, nr, nh))
    assert (b.settings["failure_rate"], r.attempts, h.max_concurrent) == (0.5, 3, 2)

    env.setenv(var(nr, "retry", "attempts"), "4")
    env.setenv(var(nh, "bulkhead", "max_concurrent"), "7")
    env.delenv(var(nb, "breaker", "window_size"))
    resilient.reload()
    assert (b.settings["failure_rate"], r.attempts, h.max_concurrent) == (0.9, 4, 7)


def test_reload_of_a_half_open_breaker_does_not_call_open_for_under_its_lock() -> None:
    """BUG: reload() of a HALF_OPEN breaker asks its open_for callable while holding the
    breaker's lock (``_switch`` -> ``_probing``), although every other path asks it
    outside the lock. A callable that reads ``breaker.metrics`` then deadlocks reload().
    Run in a child process: a deadlock there fails this test instead of hanging it."""
    script = (
        "import resilient\n"
        "from resilient.testing import ManualClock\n"
        "clock, box = ManualClock(), []\n"
        "def open_for(n):\n"
        "    for b in box: b.metrics\n"
        "    return 1.0\n"
        "b = resilient.CircuitBreaker('hoprobe', open_for=open_for, min_calls=1,\n"
        "    window_size=1, half_open_calls=2, clock=clock)\n"
        "box.append(b)\n"
        "try: b.call(lambda: 1 / 0)\n"
        "except ZeroDivisionError: pass\n"
        "clock.advance(1)\n"
        "b.call(lambda: 1)\n"
        "assert b.state == 'half_open', b.state\n"
        "resilient.reload()\n"
        "print('reloaded', b.state)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=4
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reload() deadlocked on a HALF_OPEN breaker whose open_for reads metrics")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["reloaded", "half_open"]


# Reload under concurrent calls: every call sees one whole configuration.

RETRY_CONFS = (
    {"ATTEMPTS": "2", "WAIT": f"{T}:wait_a", "ON": f"{T}:retry_on_a"},
    {"ATTEMPTS": "4", "WAIT": f"{T}:wait_b", "ON": f"{T}:retry_on_b"},
)
# attempts, and the tags of on (after every attempt) and wait (between attempts)
RETRY_WHOLE = {(2, ("a",) * 3), (4, ("b",) * 7)}
BREAKER_CONFS = (
    {
        "IGNORE": f"{T}:ignore_a",
        "RECORD": f"{T}:record_a",
        "FAILURE_RATE": "0.5",
        "MIN_CALLS": "10",
    },
    {
        "IGNORE": f"{T}:ignore_b",
        "RECORD": f"{T}:record_b",
        "FAILURE_RATE": "0.25",
        "MIN_CALLS": "20",
    },
)
BREAKER_WHOLE = {("a", "a"), ("b", "b")}


def one_retry_call(retry: Retry) -> tuple[int, tuple[str, ...]]:
    seen: list[str] = []
    calls = [0]

    def fn() -> None:
        calls[0] += 1
        raise targets.Tagged(seen)

    with pytest.raises(targets.Tagged):
        retry.call(fn)
    return calls[0], tuple(seen)


def one_breaker_call(breaker: CircuitBreaker) -> tuple[str, ...]:
    seen: list[str] = []
    with pytest.raises(targets.Tagged):
        breaker.call(fail(targets.Tagged(seen)))
    return tuple(seen)


MIN_FLIPS, MAX_CALLS_FACTOR = 6, 40


def run_flipping(
    env: pytest.MonkeyPatch,
    name: str,
    kind: str,
    confs: tuple[dict[str, str], ...],
    work: Callable[[], Any],
    workers: int,
    per_worker: int,
) -> tuple[list[Any], int]:
    results: list[list[Any]] = [[] for _ in range(workers)]
    stop = threading.Event()
    start = threading.Barrier(workers + 1)
    flips = [0]

    def worker(i: int) -> None:
        start.wait(10)
        # At least per_worker calls, and on until a few reloads have happened (a reload
        # takes longer when other tests left many policies alive); never past the cap.
        for k in range(per_worker * MAX_CALLS_FACTOR):
            if k >= per_worker and flips[0] >= MIN_FLIPS:
                break
            results[i].append(work())
            if k >= per_worker:  # wait for the flipper: a reload of many live policies is slow
                time.sleep(0.001)

    def flipper() -> None:
        start.wait(10)
        for n in range(1, 2000):
            if stop.is_set():
                break
            apply(env, name, kind, confs[n % 2])
            resilient.reload()
            flips[0] = n
            time.sleep(0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    flip_thread = threading.Thread(target=flipper)
    flip_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    flip_thread.join(30)
    assert not any(t.is_alive() for t in (*threads, flip_thread))
    return [r for rs in results for r in rs], flips[0]


def test_reload_under_threads_every_retry_call_sees_one_whole_configuration(
    env: pytest.MonkeyPatch, switch_often: None
) -> None:
    gc.collect()
    name = fresh("flip-retry")
    apply(env, name, "retry", RETRY_CONFS[0])
    retry = Retry(name=name)
    seen, flips = run_flipping(
        env, name, "retry", RETRY_CONFS, lambda: one_retry_call(retry), 4, 100
    )
    assert 400 <= len(seen) <= 400 * MAX_CALLS_FACTOR
    assert set(seen) <= RETRY_WHOLE, set(seen) - RETRY_WHOLE
    assert set(seen) == RETRY_WHOLE  # both were seen: the flips overlapped the calls
    assert flips >= 2
    assert retry.attempts == (2 if flips % 2 == 0 else 4)


def test_reload_under_threads_every_breaker_call_sees_one_whole_configuration(
    env: pytest.MonkeyPatch, switch_often: None
) -> None:
    gc.collect()
    name = fresh("flip-breaker")
    apply(env, name, "breaker", BREAKER_CONFS[0])
    breaker = CircuitBreaker(name, window_size=16384)
    seen, flips = run_flipping(
        env, name, "breaker", BREAKER_CONFS, lambda: one_breaker_call(breaker), 4, 100
    )
    assert 400 <= len(seen) <= 400 * MAX_CALLS_FACTOR < 16384
    assert set(seen) <= BREAKER_WHOLE, set(seen) - BREAKER_WHOLE
    assert set(seen) == BREAKER_WHOLE
    assert flips >= 2
    m = breaker.metrics
    assert (m.state, m.calls, m.failures) == (State.CLOSED, len(seen), 0)  # none lost
    rules = breaker.settings
    assert (rules["failure_rate"], rules["min_calls"]) in {(0.5, 10), (0.25, 20)}


def test_reload_between_asyncio_tasks_every_call_sees_one_whole_configuration(
    env: pytest.MonkeyPatch,
) -> None:
    gc.collect()
    rname, bname = fresh("flip-async-retry"), fresh("flip-async-breaker")
    apply(env, rname, "retry", RETRY_CONFS[0])
    apply(env, bname, "breaker", BREAKER_CONFS[0])
    retry = Retry(name=rname)
    breaker = CircuitBreaker(bname, window_size=4096)
    retry_seen: list[tuple[int, tuple[str, ...]]] = []
    breaker_seen: list[tuple[str, ...]] = []

    async def retry_task() -> None:
        for i in range(40):
            seen: list[str] = []
            calls = [0]

            async def fn(seen: list[str] = seen, calls: list[int] = calls) -> None:
                calls[0] += 1
                await asyncio.sleep(0)  # the flipper may reload between attempts
                raise targets.Tagged(seen)

            with pytest.raises(targets.Tagged):
                await retry.call_async(fn)
            retry_seen.append((calls[0], tuple(seen)))
            for _ in range(i % 3):  # vary the phase of calls against the flips
                await asyncio.sleep(0)

    async def guarded_block(seen: list[str]) -> None:
        async with breaker:
            await asyncio.sleep(0)
            raise targets.Tagged(seen)

    async def breaker_task() -> None:
        for i in range(40):
            seen: list[str] = []
            with pytest.raises(targets.Tagged):
                await guarded_block(seen)
            breaker_seen.append(tuple(seen))
            for _ in range(i % 3):
                await asyncio.sleep(0)

    async def main() -> int:
        tasks = [asyncio.create_task(retry_task()) for _ in range(4)]
        tasks += [asyncio.create_task(breaker_task()) for _ in range(4)]
        flips = 0
        for n in range(1, 2000):
            if all(t.done() for t in tasks):
                break
            apply(env, rname, "retry", RETRY_CONFS[n % 2])
            apply(env, bname, "breaker", BREAKER_CONFS[n % 2])
            resilient.reload()
            flips = n
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return flips

    flips = asyncio.run(main())
    assert flips >= 2
    assert len(retry_seen) == 160
    assert len(breaker_seen) == 160
    assert set(retry_seen) == RETRY_WHOLE
    assert set(breaker_seen) == BREAKER_WHOLE
    assert breaker.metrics.calls == 160


# -- 6. warnings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "wrong", "right"),
    [
        ("breaker", "BREAKER_FAILURE_RAT", "BREAKER_FAILURE_RATE"),
        ("breaker", "BREAKR_MIN_CALLS", "BREAKER_MIN_CALLS"),
        ("retry", "RETRY_ATTEMTPS", "RETRY_ATTEMPTS"),
        ("timeout", "TIMEOUT_SECOND", "TIMEOUT_SECONDS"),
        ("bulkhead", "BULKHEAD_MAX_CONCURENT", "BULKHEAD_MAX_CONCURRENT"),
    ],
)
def test_a_misspelt_variable_of_a_policy_warns_at_construction_with_did_you_mean(
    env: pytest.MonkeyPatch, kind: str, wrong: str, right: str
) -> None:
    name = fresh("typo")
    misspelt = f"RESILIENT_{spell(name)}_{wrong}"
    env.setenv(misspelt, "5")
    with pytest.warns(ConfigWarning) as record:
        policy = make(kind, name)
    messages = [str(w.message) for w in record if issubclass(w.category, ConfigWarning)]
    assert len(messages) == 1
    assert misspelt in messages[0]
    assert f"did you mean RESILIENT_{spell(name)}_{right}?" in messages[0]
    assert all(source in ("default", "code") for source in policy.settings.sources.values())


def test_well_formed_variables_for_policies_not_made_yet_do_not_warn_at_construction(
    env: pytest.MonkeyPatch,
) -> None:
    later, now = fresh("later"), fresh("now")
    env.setenv(var(later, "breaker", "failure_rate"), "0.3")
    env.setenv(var(later, "retry", "attempts"), "4")
    env.setenv(wide("bulkhead", "max_wait"), "1s")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        CircuitBreaker(now)
        Retry(name=now)
        Timeout(1, name=now)
        CircuitBreaker()
    assert [w for w in record if issubclass(w.category, ConfigWarning)] == []
    assert CircuitBreaker(later).settings["failure_rate"] == 0.3


def test_reload_warns_about_variables_that_match_no_live_policy(env: pytest.MonkeyPatch) -> None:
    live = fresh("live")
    b = CircuitBreaker(live)
    ghost = var(fresh("ghost"), "breaker", "failure_rate")
    near = f"RESILIENT_{spell(live)}_BREAKER_FAILURE_RAT"
    junk = "RESILIENT_TOTALLY_UNRELATED_THING"
    env.setenv(var(live, "breaker", "failure_rate"), "0.3")
    env.setenv(ghost, "0.3")
    env.setenv(near, "0.3")
    env.setenv(junk, "1")
    with pytest.warns(ConfigWarning) as record:
        resilient.reload()
    messages = [str(w.message) for w in record if issubclass(w.category, ConfigWarning)]
    assert len(messages) == 3
    assert any(ghost in m for m in messages)
    assert any(junk in m for m in messages)
    assert any(
        near in m and f"did you mean {var(live, 'breaker', 'failure_rate')}?" in m
        for m in messages
    )
    assert not any(f"{var(live, 'breaker', 'failure_rate')} matches" in m for m in messages)
    assert b.settings["failure_rate"] == 0.3  # the matching one was applied


# -- 8. the parsers ---------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
JUNK = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.eE+-_ msh\t,:xnaifNAIF%", max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(
    number=st.one_of(
        st.integers(0, 10**9).map(str),
        st.floats(0, 1e9).map(repr),
        st.floats(0, 1e6).map(lambda x: f"{x:.3f}"),
        st.floats(0, 1e6).map(lambda x: f"{x:e}"),
    ),
    unit=st.sampled_from(sorted(UNITS)),
    gap=st.sampled_from(["", " "]),
    pad=st.sampled_from(["", " ", "\t"]),
)
def test_parse_duration_round_trips_numbers_in_each_unit(
    number: str, unit: str, gap: str, pad: str
) -> None:
    text = f"{pad}{number}{gap if unit else ''}{unit}{pad}"
    assert p.parse_duration(text) == float(number) * UNITS[unit]


@settings(max_examples=500, deadline=None)
@given(text=JUNK)
@example("1e309")
@example("1e308h")
@example("-1")
@example("nan")
@example("inf")
@example("")
@example("5 minutes")
def test_parse_duration_never_returns_negative_or_non_finite_nor_raises_else(text: str) -> None:
    try:
        seconds = p.parse_duration(text)
    except p.Invalid:
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert seconds >= 0


@pytest.mark.parametrize(
    "text", ["-1", "abc", "1e309", "nan", "inf", "", "   ", "2x", "5 minutes", "1.5.2", "s", "-0"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(p.Invalid):
        p.parse_duration(text)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 10**40), plus=st.booleans(), pad=st.sampled_from(["", " ", "\t\n"]))
def test_parse_int_round_trips(n: int, plus: bool, pad: str) -> None:
    assert p.parse_int(f"{pad}{'+' if plus else ''}{n}{pad}") == n


@settings(max_examples=500, deadline=None)
@given(text=JUNK)
@example("-1")
@example("1.0")
@example("٣")
@example("1_000")
def test_parse_int_returns_a_whole_number_or_raises_invalid(text: str) -> None:
    try:
        n = p.parse_int(text)
    except p.Invalid:
        return
    assert isinstance(n, int)
    assert n >= 0


def test_parse_int_of_more_digits_than_int_converts_raises_invalid() -> None:
    """BUG: int() refuses more than 4300 digits (sys.get_int_max_str_digits) with a
    ValueError that escapes parse_int."""
    with pytest.raises(p.Invalid):
        p.parse_int("9" * 5000)


@settings(max_examples=200, deadline=None)
@given(x=st.floats(0, 1e300), form=st.sampled_from([repr, "{:e}".format, "{:.6f}".format]))
def test_parse_float_round_trips(x: float, form: Callable[[float], str]) -> None:
    text = form(x)
    assert p.parse_float(text) == float(text)


@settings(max_examples=500, deadline=None)
@given(text=JUNK)
@example("1e309")
@example("nan")
@example("-0.5")
@example("0x10")
def test_parse_float_returns_a_finite_non_negative_number_or_raises_invalid(text: str) -> None:
    try:
        x = p.parse_float(text)
    except p.Invalid:
        return
    assert isinstance(x, float)
    assert math.isfinite(x)
    assert x >= 0


@settings(max_examples=200, deadline=None)
@given(
    word=st.sampled_from(sorted(p.BOOLEANS)),
    upper=st.lists(st.booleans(), min_size=5, max_size=5),
    pad=st.sampled_from(["", " ", "\t"]),
)
def test_parse_bool_accepts_every_spelling_in_any_case(
    word: str, upper: list[bool], pad: str
) -> None:
    mixed = "".join(c.upper() if u else c for c, u in zip(word, upper + [False] * 5, strict=False))
    assert p.parse_bool(f"{pad}{mixed}{pad}") is p.BOOLEANS[word]


@settings(max_examples=300, deadline=None)
@given(text=st.text())
@example("")
@example("2")
@example("y")
@example("enabled")
def test_parse_bool_rejects_everything_else(text: str) -> None:
    if text.strip().lower() in p.BOOLEANS:
        assert isinstance(p.parse_bool(text), bool)
    else:
        with pytest.raises(p.Invalid):
            p.parse_bool(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ValueError", ValueError),
        ("builtins.ValueError", ValueError),
        ("builtins:ValueError", ValueError),
        (" socket:timeout ", socket.timeout),
        ("os.path:join", os.path.join),
        ("os.path.join", os.path.join),
        (f"{T}:clock", targets.clock),
    ],
)
def test_parse_import_finds_objects(text: str, expected: Any) -> None:
    assert p.parse_import(text) is expected


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=".:,qxz0 ", max_size=8))
@example("..x")
@example(".:x")
def test_parse_import_raises_only_invalid_for_junk(text: str) -> None:
    """Junk from an alphabet that names no real module. '..x' fails: TypeError (BUG)."""
    try:
        p.parse_import(text)
    except p.Invalid:
        return
    pytest.fail(f"{text!r} imported something")


def test_switching_a_bulkhead_off_lets_its_waiting_calls_in_holding_no_slot(
    env: pytest.MonkeyPatch,
) -> None:
    """RESILIENT_ENABLED=0 applied by reload() must not leave calls queued behind it."""
    bulkhead = resilient.Bulkhead(1, max_wait=30, name=fresh("switch"))
    holding, release = threading.Event(), threading.Event()
    got_in: list[str] = []

    def hold() -> None:
        with bulkhead:
            holding.set()
            release.wait(10)

    def wait() -> None:
        with bulkhead:
            got_in.append(threading.current_thread().name)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    waiters = [threading.Thread(target=wait, name=f"w{i}") for i in range(3)]
    for thread in waiters:
        thread.start()
    deadline = time.monotonic() + 10
    while bulkhead.metrics.waiting < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert bulkhead.metrics.waiting == 3
    env.setenv("RESILIENT_ENABLED", "0")
    resilient.reload()
    for thread in waiters:
        thread.join(10)
    assert sorted(got_in) == ["w0", "w1", "w2"]  # in at once, the holder still inside
    assert bulkhead.metrics == resilient.BulkheadMetrics(1, 1, 0, 0)
    release.set()
    holder.join(10)
    env.delenv("RESILIENT_ENABLED")
    resilient.reload()
    assert bulkhead.metrics == resilient.BulkheadMetrics(1, 0, 0, 0)  # no slot gained or lost


# -- found in review ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "option", "text"),
    [
        ("bulkhead", "max_concurrent", str(10**12)),
        ("bulkhead", "max_concurrent", "99999999999999999999"),
        ("breaker", "window_size", str(2**63)),
    ],
)
def test_a_size_too_large_to_build_is_a_config_error_and_reload_changes_nothing(
    env: pytest.MonkeyPatch, kind: str, option: str, text: str
) -> None:
    name = fresh("huge")
    made = {"bulkhead": lambda: resilient.Bulkhead(2, name=name)}
    policy = made.get(kind, lambda: CircuitBreaker(name, window_size=10))()
    timeout = resilient.Timeout(1.0, name=name)
    var = config.variable(kind, option, name)
    env.setenv(var, text)
    env.setenv(config.variable("timeout", "seconds", name), "5")
    with pytest.raises(ConfigError) as info:
        resilient.reload()
    assert info.value.option == var
    assert timeout.seconds == 1.0  # all or nothing: the good change waited too
    assert policy.settings.sources[option] != var
    with pytest.raises(ConfigError):
        made.get(kind, lambda: CircuitBreaker(name))()


def test_an_env_pin_lifted_returns_to_a_pin_made_in_code(env: pytest.MonkeyPatch) -> None:
    name = fresh("pinned")
    breaker = CircuitBreaker(name)
    breaker.force_open()
    for var, text in [
        (f"RESILIENT_{spell(name)}_BREAKER_STATE", "disabled"),
        ("RESILIENT_ENABLED", "0"),
    ]:
        env.setenv(var, text)
        resilient.reload()
        assert breaker.state is State.DISABLED
        env.delenv(var)
        resilient.reload()
        assert breaker.state is State.FORCED_OPEN  # the code's pin, not CLOSED
    breaker.reset()
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize("target", ["time:time", "builtins:repr", "os:getcwd"])
def test_an_open_for_callable_that_cannot_answer_is_a_config_error_naming_it(
    env: pytest.MonkeyPatch, target: str
) -> None:
    name = fresh("openfor")
    var = f"RESILIENT_{spell(name)}_BREAKER_OPEN_FOR"
    env.setenv(var, target)
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(name)
    assert (info.value.option, info.value.value) == (var, target)


def test_a_bulkhead_shrunk_as_a_call_leaves_admits_no_more_than_its_size(
    env: pytest.MonkeyPatch, lock_free: None
) -> None:
    """The shrink lands between a leaving call's look at the queue and its giving the
    slot back (a deque whose append runs the reload first, made deterministic)."""
    name = fresh("shrink")
    b = resilient.Bulkhead(2, name=name)
    b.__enter__()
    b.__enter__()
    var = config.variable("bulkhead", "max_concurrent", name)

    class Permits(collections.deque):  # type: ignore[type-arg]
        armed = True

        def append(self, item: object) -> None:
            if Permits.armed:
                Permits.armed = False
                env.setenv(var, "1")
                resilient.reload()
            super().append(item)

    b._permits = Permits(b._permits)
    b.__exit__(None, None, None)  # one call leaves as the bulkhead shrinks to 1
    assert b.metrics.in_use == 1
    assert b.metrics.max_concurrent == 1
    with pytest.raises(resilient.BulkheadFullError):
        b.call(lambda: None)  # one still inside: full
    b.__exit__(None, None, None)
    assert b.call(lambda: "in") == "in"
    assert b.metrics == resilient.BulkheadMetrics(1, 0, 0, 1)
