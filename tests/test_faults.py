"""Fault injection: InjectFault, InjectLatency and InjectResult, off unless switched on.

Every scenario runs in every flavour (sync, asyncio, trio; decorator, with, call). Time
is a ManualClock wherever a wait is measured; the only real waits are ones a Timeout or
a cancellation cuts short, never asserted on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
from typing import Any

import anyio
import pytest

import resilient
from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    InjectFault,
    InjectLatency,
    InjectResult,
    Pipeline,
    Retry,
    State,
    Timeout,
    TimeoutExpired,
    UsageError,
)
from resilient._core.configuration import events as core
from resilient.events import FaultInjected
from resilient.testing import ManualClock

from .conftest import Flavour, assert_config_error, fresh
from .test_env import assert_env_error, var, wide
from .test_events import Recorder

ASYNC_MODES = ["asyncio", "trio"]
KINDS = {"fault": InjectFault, "latency": InjectLatency, "result": InjectResult}


def injector(kind: str, **options: Any) -> Any:
    """One policy of ``kind``, with what it injects: ConnectionError, 2 s, "substitute"."""
    if kind == "fault":
        return InjectFault(ConnectionError("injected"), **options)
    if kind == "latency":
        options.setdefault("clock", ManualClock())
        return InjectLatency(2.0, **options)
    return InjectResult("substitute", **options)


def sequence(seed: int, rate: float, n: int) -> list[bool]:
    """Which of ``n`` calls a policy seeded ``seed`` injects into, by the reference."""
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(n)]


def injected_calls(policy: Any, n: int) -> list[bool]:
    """Make ``n`` sync calls through ``policy``; which were injected into."""
    out = []
    for _ in range(n):
        before = policy.injected
        try:
            policy.call(lambda: "ok")
        except ConnectionError:
            pass
        out.append(policy.injected == before + 1)
    return out


# -- off unless switched on -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_off_by_default_every_form_calls_straight_through(flavour: Flavour, kind: str) -> None:
    policy = injector(kind)
    assert not policy.enabled
    assert policy._state.fast
    if kind == "result" and flavour.form == "with":
        with pytest.raises(UsageError, match="with-block has none"):
            flavour.call(policy, "ok")
        return
    ran: list[int] = []
    assert flavour.call(policy, "ok", before=lambda: ran.append(1)) == "ok"
    with pytest.raises(KeyError):
        flavour.call(policy, KeyError("its own"))
    assert ran == [1]
    assert policy.injected == 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_rate_zero_is_as_switched_off(flavour: Flavour, kind: str) -> None:
    policy = injector(kind, enabled=True, rate=0)
    assert policy.enabled
    assert policy._state.fast
    if not (kind == "result" and flavour.form == "with"):
        assert flavour.call(policy, "ok") == "ok"
    assert policy.injected == 0


def test_a_fault_is_raised_instead_of_the_call(flavour: Flavour) -> None:
    policy = InjectFault(ConnectionError("injected"), enabled=True, name=fresh("fault"))
    ran: list[int] = []
    with pytest.raises(ConnectionError, match="injected") as info:
        flavour.call(policy, "ok", before=lambda: ran.append(1))
    assert ran == []
    assert policy.injected == 1
    assert getattr(info.value, "__notes__", []) == [
        f"injected by resilient's InjectFault({policy.name!r}): not a real failure"
    ]


def test_latency_waits_on_the_clock_then_calls(flavour: Flavour) -> None:
    clock = ManualClock()
    policy = InjectLatency(2.5, enabled=True, clock=clock)
    seen: list[float] = []
    assert flavour.call(policy, "ok", before=lambda: seen.append(clock.monotonic())) == "ok"
    assert seen == [2.5]
    assert policy.injected == 1


def test_a_substitute_result_is_returned_instead_of_the_call(flavour: Flavour) -> None:
    policy = InjectResult("substitute", enabled=True)
    ran: list[int] = []
    if flavour.form == "with":  # switched on or off, a block's result cannot be replaced
        with pytest.raises(UsageError, match=r"decorate the function, or use call\(\)"):
            flavour.call(policy, "ok", before=lambda: ran.append(1))
        assert ran == []
        assert policy.injected == 0
        return
    assert flavour.call(policy, "ok", before=lambda: ran.append(1)) == "substitute"
    assert ran == []
    assert policy.injected == 1


def test_rate_one_injects_into_every_call_and_a_rate_between_into_its_share() -> None:
    always = InjectFault(ConnectionError, enabled=True, rate=1.0)
    assert injected_calls(always, 50) == [True] * 50
    some = InjectFault(ConnectionError, enabled=True, rate=0.25, seed=3)
    assert injected_calls(some, 400) == sequence(3, 0.25, 400)
    assert 50 < some.injected < 150


def test_async_calls_get_the_value_itself_and_a_factory_makes_one_per_call() -> None:
    made = iter(range(100))
    policy = InjectResult(factory=lambda: next(made), enabled=True)

    @policy
    async def fetch() -> int:
        raise AssertionError("never called")

    async def main() -> list[int]:
        return [await fetch(), await fetch(), await policy.call_async(fetch)]

    assert anyio.run(main, backend="trio") == [0, 1, 2]
    assert policy.call(lambda: -1) == 3


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_an_async_factory_is_awaited_in_async_code_only(mode: str) -> None:
    async def make() -> str:
        await anyio.lowlevel.checkpoint()
        return "made"

    policy = InjectResult(factory=make, enabled=True)

    async def fetch() -> str:
        return "real"

    assert anyio.run(policy(fetch), backend=mode) == "made"
    with pytest.raises(UsageError, match="is async, and a sync call cannot await it"):
        policy.call(lambda: "real")


def test_a_factory_that_fails_fails_the_call() -> None:
    def broken() -> Any:
        raise LookupError("no value")

    with pytest.raises(LookupError):
        InjectResult(factory=broken, enabled=True).call(lambda: "ok")


def test_an_exception_class_makes_a_fresh_error_each_call_and_a_factory_too() -> None:
    by_class = InjectFault(ConnectionError, enabled=True)
    errors = []
    for _ in range(2):
        with pytest.raises(ConnectionError) as info:
            by_class.call(lambda: "ok")
        errors.append(info.value)
    assert errors[0] is not errors[1]
    by_factory = InjectFault(factory=lambda: TimeoutError("slow"), enabled=True)
    with pytest.raises(TimeoutError, match="slow"):
        by_factory.call(lambda: "ok")


def test_an_instance_is_raised_again_with_a_fresh_traceback_and_one_note() -> None:
    error = ConnectionError("the same")
    policy = InjectFault(error, enabled=True)
    depths = []
    for _ in range(3):
        with pytest.raises(ConnectionError) as info:
            policy.call(lambda: "ok")
        assert info.value is error
        tb, depth = info.value.__traceback__, 0
        while tb is not None:
            tb, depth = tb.tb_next, depth + 1
        depths.append(depth)
    assert depths[0] == depths[1] == depths[2]  # the traceback does not grow
    assert len(error.__notes__) == 1


def test_a_factory_that_returns_no_exception_is_a_usage_error() -> None:
    policy = InjectFault(factory=lambda: "oops", enabled=True)  # type: ignore[arg-type,return-value]
    with pytest.raises(UsageError, match="returned 'oops', not an exception"):
        policy.call(lambda: "ok")


def test_a_fault_in_a_with_block_is_raised_on_entry(mode: str) -> None:
    policy = InjectFault(ConnectionError, enabled=True)
    ran: list[int] = []

    def block() -> None:
        with policy:
            ran.append(1)

    async def async_block() -> None:
        async with policy:
            ran.append(1)

    with pytest.raises(ConnectionError):
        block() if mode == "sync" else anyio.run(async_block, backend=mode)
    assert ran == []


def test_inject_result_in_a_pipelines_with_block_is_refused() -> None:
    pipeline = Pipeline(Retry(2), InjectResult(0))
    with pytest.raises(UsageError, match="with-block"), pipeline:  # type: ignore[attr-defined]
        pass


# -- seeded: repeatable ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_same_seed_injects_into_the_same_calls(kind: str) -> None:
    """Told by what the caller sees (an error, a later start, another answer), not by
    the policy's own count."""
    clock = ManualClock()
    first, second, other = (
        injector(kind, enabled=True, rate=0.3, seed=seed, clock=clock)
        if kind == "latency"
        else injector(kind, enabled=True, rate=0.3, seed=seed)
        for seed in (42, 42, 43)
    )

    def indices(policy: Any) -> list[int]:
        hits = []
        for i in range(300):
            started = clock.monotonic()
            try:
                answer = policy.call(lambda: "ok")
            except ConnectionError:
                answer = None
            if answer != "ok" or clock.monotonic() != started:
                hits.append(i)
        return hits

    a, b = indices(first), indices(second)
    assert a == b == [i for i, hit in enumerate(sequence(42, 0.3, 300)) if hit]
    assert indices(other) != a


def test_a_reload_keeps_the_sequence_going_and_a_new_seed_starts_another(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("sequence")
    policy = InjectFault(ConnectionError, enabled=True, rate=0.5, seed=9, name=name)
    reference = sequence(9, 0.5, 40)
    assert injected_calls(policy, 20) == reference[:20]
    env.setenv(var(name, "fault", "rate"), "0.5")  # a reload that keeps the seed
    resilient.reload()
    assert injected_calls(policy, 20) == reference[20:]
    env.setenv(var(name, "fault", "seed"), "10")
    resilient.reload()
    assert policy.seed == 10
    assert injected_calls(policy, 20) == sequence(10, 0.5, 20)


# -- configuration: code, environment, reload --------------------------------------------------

BAD_CODE = [
    ("rate", -0.1, "a number from 0 to 1"),
    ("rate", 1.5, "a number from 0 to 1"),
    ("rate", "half", "a number from 0 to 1"),
    ("rate", True, "a number from 0 to 1"),
    ("rate", float("nan"), "a number from 0 to 1"),
    ("enabled", 1, "True or False"),
    ("enabled", "yes", "True or False"),
    ("seed", -1, "None, or a whole number >= 0"),
    ("seed", 1.5, "None, or a whole number >= 0"),
    ("seed", True, "None, or a whole number >= 0"),
]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("option", "value", "expected"), BAD_CODE)
def test_a_bad_option_in_code_is_a_config_error(
    kind: str, option: str, value: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        injector(kind, **{option: value})
    assert_config_error(info.value, option, value, expected)


@pytest.mark.parametrize("seconds", [0, -1, "2x", float("inf"), 400 * 24 * 3600.0])
def test_bad_latency_seconds_are_a_config_error(seconds: Any) -> None:
    with pytest.raises(ConfigError) as info:
        InjectLatency(seconds)
    assert_config_error(info.value, "seconds", seconds, "seconds > 0, at most a year")


def test_what_is_injected_is_checked_when_the_policy_is_made() -> None:
    with pytest.raises(ConfigError, match="exactly one of error"):
        InjectFault()
    with pytest.raises(ConfigError, match="exactly one of error"):
        InjectFault(ValueError, factory=ValueError)
    with pytest.raises(ConfigError, match="an exception instance or class"):
        InjectFault(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="factory=42"):
        InjectFault(factory=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"made with no arguments \(TypeError"):
        InjectFault(UnicodeDecodeError)
    with pytest.raises(ConfigError, match="exactly one of value and factory="):
        InjectResult()
    with pytest.raises(ConfigError, match="exactly one of value and factory="):
        InjectResult(1, factory=list)
    with pytest.raises(ConfigError, match="a callable with no arguments"):
        InjectResult(factory=3)
    with pytest.raises(UsageError, match=r"write InjectFault\(factory=.*<lambda>\) to call"):
        InjectFault(lambda: ValueError())  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"@InjectLatency\(0.5\)"):

        @InjectLatency  # type: ignore[arg-type]
        def f() -> None: ...


@pytest.mark.parametrize("kind", list(KINDS))
def test_switched_on_and_off_by_its_variables_and_reload(
    env: pytest.MonkeyPatch, kind: str
) -> None:
    name = fresh(f"staging-{kind}")
    policy = injector(kind, name=name)
    assert injected_calls(policy, 5) == [False] * 5
    env.setenv(var(name, kind, "enabled"), "1")
    resilient.reload()
    assert policy.enabled
    assert injected_calls(policy, 5) == [True] * 5
    env.setenv(var(name, kind, "rate"), "0")
    resilient.reload()
    assert policy._state.fast
    assert injected_calls(policy, 5) == [False] * 5
    env.setenv(var(name, kind, "rate"), "0.5")
    env.setenv(var(name, kind, "seed"), "5")
    resilient.reload()
    assert injected_calls(policy, 30) == sequence(5, 0.5, 30)
    env.setenv(var(name, kind, "enabled"), "off")
    resilient.reload()
    assert not policy.enabled
    assert injected_calls(policy, 5) == [False] * 5


def test_switched_off_in_code_by_its_variable_and_on_by_the_kind_wide_one(
    env: pytest.MonkeyPatch,
) -> None:
    name = fresh("on-in-code")
    policy = InjectFault(ConnectionError, enabled=True, name=name)
    unnamed = InjectFault(ConnectionError)
    env.setenv(var(name, "fault", "enabled"), "false")
    env.setenv(wide("fault", "enabled"), "true")
    resilient.reload()
    assert not policy.enabled  # its own variable wins over the kind-wide one
    assert unnamed.enabled
    assert injected_calls(unnamed, 2) == [True, True]


def test_resilient_enabled_0_switches_injection_off(env: pytest.MonkeyPatch) -> None:
    policies = [injector(kind, enabled=True) for kind in KINDS]
    env.setenv("RESILIENT_ENABLED", "0")
    resilient.reload()
    for policy in policies:
        assert not policy.enabled
        assert policy._state.fast
        assert injected_calls(policy, 3) == [False] * 3


def test_latency_seconds_and_clock_from_the_environment(env: pytest.MonkeyPatch) -> None:
    name = fresh("slow")
    clock = ManualClock()
    policy = InjectLatency(1.0, enabled=True, clock=clock, name=name)
    env.setenv(var(name, "latency", "seconds"), "250ms")
    resilient.reload()
    assert policy.seconds == 0.25
    policy.call(lambda: None)
    assert clock.monotonic() == 0.25


BAD_ENV = [
    ("enabled", "maybe"),
    ("enabled", "2"),
    ("rate", "1.5"),
    ("rate", "-0.5"),
    ("rate", "half"),
    ("seed", "-1"),
    ("seed", "1.5"),
    ("seed", "x"),
]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("option", "raw"), BAD_ENV)
def test_a_bad_variable_is_a_config_error_naming_it(
    env: pytest.MonkeyPatch, kind: str, option: str, raw: str
) -> None:
    name = fresh(f"bad-{kind}")
    variable = var(name, kind, option)
    env.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        injector(kind, name=name)
    assert_env_error(info.value, variable, raw)


@pytest.mark.parametrize("raw", ["0", "2x", "none", "2 years"])
def test_a_bad_latency_seconds_variable_fails_a_reload_which_changes_nothing(
    env: pytest.MonkeyPatch, raw: str
) -> None:
    name = fresh("bad-seconds")
    policy = InjectLatency(1.0, name=name)
    variable = var(name, "latency", "seconds")
    env.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        resilient.reload()
    assert_env_error(info.value.errors[0], variable, raw)
    assert policy.seconds == 1.0


def test_every_variable_is_known_and_spells_its_kind() -> None:
    from resilient._core.configuration import config

    for kind in KINDS:
        for option in config.KINDS[kind]:
            parts = config.parts_of(var("pay", kind, option.name))
            assert parts is not None
            assert (parts.kind, parts.option) == (kind, option)
    breaker = config.parts_of("RESILIENT_PAY_BREAKER_FAILURE_RATE")
    assert breaker is not None
    assert breaker.kind == "breaker"


# -- events, logs, meters ----------------------------------------------------------------------


def test_each_injection_is_an_event_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(100.0)
    fault = InjectFault(ConnectionError, enabled=True, name=fresh("ev"))
    latency = InjectLatency(0.5, enabled=True, clock=clock, name=fresh("ev"))
    result = InjectResult(0, enabled=True)
    heard: list[Any] = []
    for policy in (fault, latency, result):
        policy.add_listener(heard.append)
    with caplog.at_level(logging.INFO, logger="resilient"):
        with pytest.raises(ConnectionError) as info:
            fault.call(lambda: None)
        latency.call(lambda: None)
        result.call(lambda: None)
    assert [type(e) for e in heard] == [FaultInjected] * 3
    assert [e.kind for e in heard] == ["fault", "latency", "result"]
    assert heard[0].error is info.value
    assert heard[0].policy is fault
    assert (heard[1].at, heard[1].seconds) == (100.0, 0.5)
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            "resilient.fault",
            logging.INFO,
            f"fault {fault.name!r} injected a fault (ConnectionError)",
        ),
        ("resilient.latency", logging.INFO, f"latency {latency.name!r} injected 0.5s of latency"),
        ("resilient.result", logging.INFO, "result injected a substitute result"),
    ]
    assert caplog.records[0].injected == "fault"  # type: ignore[attr-defined]
    assert caplog.records[0].error_type == "ConnectionError"  # type: ignore[attr-defined]


def test_a_meter_hears_the_calls_while_injection_is_on(flavour: Flavour) -> None:
    policies = [injector(kind, enabled=True, rate=1.0) for kind in KINDS]
    off = InjectFault(ConnectionError)
    meter = Recorder()
    core.meters.add(meter)
    try:
        with pytest.raises(ConnectionError):
            flavour.call(policies[0], "ok")
        flavour.call(policies[1], "ok")
        if flavour.form != "with":
            assert flavour.call(policies[2], "ok") == "substitute"
        flavour.call(off, "ok")  # off: straight through, told nothing
    finally:
        core.meters.remove(meter)
    expected = [("fault", "failure", "ConnectionError"), ("latency", "success", "NoneType")]
    if flavour.form != "with":
        expected.append(("result", "success", "NoneType"))
    assert meter.calls == expected
    assert meter.events == ["FaultInjected"] * len(expected)


# -- exact under threads and tasks -------------------------------------------------------------


@pytest.mark.usefixtures("switch_often")
def test_a_hammer_of_threads_injects_exactly_what_the_seed_says() -> None:
    threads, calls, seed, rate = 8, 400, 2024, 0.3
    policy = InjectFault(ConnectionError, enabled=True, rate=rate, seed=seed)
    made = [0] * threads
    failed = [0] * threads
    barrier = threading.Barrier(threads)

    @policy
    def work(i: int) -> None:
        made[i] += 1

    def run(i: int) -> None:
        barrier.wait(10)
        for _ in range(calls):
            try:
                work(i)
            except ConnectionError:
                failed[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(30)
    total = threads * calls
    expected = sum(sequence(seed, rate, total))
    assert sum(failed) == policy.injected == expected
    assert sum(made) + sum(failed) == total


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_many_tasks_inject_exactly_what_the_seed_says(mode: str) -> None:
    tasks, seed, rate = 500, 7, 0.4
    clock = ManualClock()
    policy = InjectLatency(1.0, enabled=True, rate=rate, seed=seed, clock=clock)
    done: list[int] = []

    @policy
    async def work() -> None:
        await anyio.lowlevel.checkpoint()
        done.append(1)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(work)

    anyio.run(main, backend=mode)
    assert len(done) == tasks
    assert policy.injected == sum(sequence(seed, rate, tasks)) == clock.monotonic()


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_cancelled_injected_wait_leaves_nothing_behind(mode: str) -> None:
    policy = InjectLatency(60.0, enabled=True)  # the system clock: only a cancel ends it
    ran: list[int] = []

    @policy
    async def work() -> None:
        ran.append(1)

    async def main() -> None:
        with anyio.move_on_after(0.05) as scope:
            await work()
        assert scope.cancelled_caught
        if mode == "asyncio":
            assert asyncio.all_tasks() == {asyncio.current_task()}

    anyio.run(main, backend=mode)
    assert ran == []
    assert policy.injected == 1
    gc.collect()


# -- composition -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", *ASYNC_MODES])
def test_a_retry_around_injected_faults_retries_them(mode: str) -> None:
    clock = ManualClock()
    flaky = InjectFault(ConnectionError, enabled=True, rate=0.5, seed=1)
    pipeline = Pipeline(Retry(5, clock=clock), flaky)
    always = Pipeline(Retry(3, clock=clock), InjectFault(ConnectionError, enabled=True))
    ran: list[int] = []
    flavour = Flavour(mode, "call")
    assert flavour.call(pipeline, "ok", before=lambda: ran.append(1)) == "ok"
    first_success = sequence(1, 0.5, 10).index(False)
    assert flaky.injected == first_success
    assert ran == [1]
    with pytest.raises(ConnectionError) as info:
        flavour.call(always, "ok", before=lambda: ran.append(1))
    assert ran == [1]  # never reached
    assert any("gave up after 3 attempts" in n for n in info.value.__notes__)


@pytest.mark.parametrize("mode", ["sync", *ASYNC_MODES])
def test_a_breaker_counts_injected_faults_as_failures(mode: str) -> None:
    breaker = CircuitBreaker(min_calls=4, window_size=4, failure_rate=0.5)
    pipeline = Pipeline(breaker, InjectFault(ConnectionError, enabled=True))
    flavour = Flavour(mode, "decorator")
    for _ in range(4):
        with pytest.raises(ConnectionError):
            flavour.call(pipeline, "ok")
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        flavour.call(pipeline, "ok")


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_timeout_around_injected_latency_expires(mode: str) -> None:
    pipeline = Pipeline(Timeout(0.05), InjectLatency(60.0, enabled=True))
    ran: list[int] = []
    with pytest.raises(TimeoutExpired):
        Flavour(mode, "decorator").call(pipeline, "ok", before=lambda: ran.append(1))
    assert ran == []


def test_a_sync_timeout_around_injected_latency_expires() -> None:
    pipeline = Pipeline(Timeout(0.05), InjectLatency(0.3, enabled=True))
    with pytest.raises(TimeoutExpired):
        pipeline.call(lambda: "ok")


def test_a_pipeline_names_its_injectors_by_role(env: pytest.MonkeyPatch) -> None:
    name = fresh("chaos")
    fault = InjectFault(ConnectionError)
    Pipeline(Retry(2), fault, InjectLatency(1.0), name=name)
    env.setenv(var(name, "fault", "enabled"), "1")
    resilient.reload()
    assert fault.name == name
    assert fault.enabled


# -- the rest ----------------------------------------------------------------------------


def test_repr_health_and_reset() -> None:
    name = fresh("shown")
    fault = InjectFault(ConnectionError, rate=0.5, name=name)
    assert repr(fault) == f"InjectFault(ConnectionError, rate=0.5, enabled=False, name={name!r})"
    assert repr(InjectLatency(2)) == "InjectLatency(2.0, rate=1.0, enabled=False)"
    assert repr(InjectResult(factory=list)).startswith("InjectResult(factory=<class 'list'>")
    on = InjectFault(ConnectionError, enabled=True, name=name)
    injected_calls(on, 3)
    found = [p for p in resilient.health(names=[name])["policies"] if p["kind"] == "fault"]
    assert found == [
        {"kind": "fault", "name": name, "enabled": False, "rate": 0.5, "injected": 0},
        {"kind": "fault", "name": name, "enabled": True, "rate": 1.0, "injected": 3},
    ]
    on.reset()
    assert on.injected == 0


def test_the_decorated_function_keeps_its_identity() -> None:
    policy = InjectLatency(1.0)

    def plain() -> int:
        return 1

    async def coro() -> int:
        return 1

    import inspect

    assert policy(plain).__wrapped__ is plain  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(policy(coro))
    assert not inspect.iscoroutinefunction(policy(plain))


def test_test_mode_does_not_skip_injected_latency() -> None:
    """Test mode zeroes the waits policies make of their own accord; an injected latency
    is the fault the test asked for."""
    from resilient.testing import set_testing

    clock = ManualClock()
    slow = InjectLatency(5, enabled=True, clock=clock)
    with set_testing():
        slow.call(int)
    assert clock.monotonic() == 5.0
