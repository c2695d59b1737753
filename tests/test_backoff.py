"""Wait strategies: exact sequences, jitter bounds, no overflow at any attempt, bad options."""

from __future__ import annotations

import math
import os
import pickle
import random
import sys
import warnings
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from resilient import ConfigError
from resilient.backoff import Backoff, constant, exponential, linear

from .conftest import assert_config_error

MAX = sys.float_info.max
HUGE_ATTEMPTS = [10**6, 10**9, 10**18, 10**100, 10**400]


def waits(backoff: Backoff, attempts: int) -> list[float]:
    return [backoff.delay(n, None) for n in range(1, attempts + 1)]


# Exact sequences, no randomness.


def test_constant_waits_the_same_every_time() -> None:
    assert waits(constant(1.5), 4) == [1.5, 1.5, 1.5, 1.5]
    assert waits(constant(0), 2) == [0.0, 0.0]


def test_linear_adds_step_each_attempt_up_to_cap() -> None:
    assert waits(linear(0.5, 1), 4) == [0.5, 1.5, 2.5, 3.5]
    assert waits(linear(1, 2, cap=4), 5) == [1.0, 3.0, 4.0, 4.0, 4.0]
    assert waits(linear(2, 0), 3) == [2.0, 2.0, 2.0]


def test_exponential_without_jitter_multiplies_up_to_cap() -> None:
    assert waits(exponential(jitter=None), 11) == [
        0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0,
    ]  # fmt: skip
    assert waits(exponential(1, 3, cap=100, jitter=None), 6) == [1, 3, 9, 27, 81, 100]
    assert waits(exponential(1, 2, cap=8, jitter=None), 5) == [1, 2, 4, 8, 8]


def test_exponential_edge_parameters() -> None:
    assert waits(exponential(0.5, 1, jitter=None), 3) == [0.5, 0.5, 0.5]  # factor 1: flat
    assert waits(exponential(0, 2, jitter=None), 3) == [0.0, 0.0, 0.0]  # base 0: no wait
    assert waits(exponential(2, 2, cap=2, jitter=None), 3) == [2.0, 2.0, 2.0]  # base == cap


# Huge attempt numbers: the cap, at once, never an OverflowError.


@pytest.mark.parametrize("attempt", HUGE_ATTEMPTS)
def test_huge_attempts_give_the_cap(attempt: int) -> None:
    assert exponential(jitter=None).delay(attempt, None) == 30.0
    assert exponential(1, 1.0001, cap=5, jitter=None).delay(attempt, None) == 5.0
    assert exponential(0.5, 1, jitter=None).delay(attempt, None) == 0.5
    assert exponential(0, 2, jitter=None).delay(attempt, None) == 0.0
    assert linear(1, 2, cap=10).delay(attempt, None) == 10.0
    assert linear(1, 0).delay(attempt, None) == 1.0
    for jitter in ("full", "equal", "decorrelated"):
        assert 0 <= exponential(jitter=jitter).delay(attempt, 20.0) <= 30.0


def test_uncapped_linear_stays_finite() -> None:
    assert linear(1, 1e300).delay(10**400, None) == MAX
    assert math.isfinite(linear(0, 1e-300).delay(10**400, None))


def test_power_past_the_largest_float_under_the_cap_is_computed_in_logs() -> None:
    """10.0 ** 599 overflows a float, yet 1e-300 * 10 ** 599 = 1e299 is under the cap."""
    backoff = exponential(1e-300, 10, cap=1e300, jitter=None)
    assert math.isclose(backoff.delay(600, None), 1e299, rel_tol=1e-9)
    assert backoff.delay(602, None) == 1e300


# Jitter: bounds and distribution, with a seeded source.


def test_full_jitter_is_uniform_between_zero_and_the_exponential_delay() -> None:
    backoff = exponential(1, 2, cap=1000, rng=random.Random(1))
    for attempt in range(1, 13):
        d = min(1000, 2 ** (attempt - 1))
        assert all(0 <= backoff.delay(attempt, None) <= d for _ in range(50))
    draws = [backoff.delay(1, None) for _ in range(4000)]  # d = 1
    assert min(draws) < 0.01
    assert max(draws) > 0.99
    assert sum(draws) / len(draws) == pytest.approx(0.5, abs=0.02)
    assert sum(d < 0.5 for d in draws) / len(draws) == pytest.approx(0.5, abs=0.03)


def test_equal_jitter_keeps_half_the_delay_and_randomises_the_rest() -> None:
    backoff = exponential(1, 2, cap=1000, jitter="equal", rng=random.Random(2))
    for attempt in range(1, 13):
        d = min(1000, 2 ** (attempt - 1))
        assert all(d / 2 <= backoff.delay(attempt, None) <= d for _ in range(50))
    draws = [backoff.delay(3, None) for _ in range(4000)]  # d = 4
    assert min(draws) < 2.02
    assert max(draws) > 3.98
    assert sum(draws) / len(draws) == pytest.approx(3.0, abs=0.04)


def test_decorrelated_jitter_grows_from_the_previous_wait() -> None:
    base, cap = 1.0, 50.0
    backoff = exponential(base, cap=cap, jitter="decorrelated", rng=random.Random(3))
    first = [backoff.delay(1, None) for _ in range(1000)]  # previous defaults to base
    assert all(base <= d <= 3 * base for d in first)
    assert sum(first) / len(first) == pytest.approx(2.0, abs=0.06)
    previous: float | None = None
    chain = []
    for attempt in range(1, 300):
        wait = backoff.delay(attempt, previous)
        assert base <= wait <= min(cap, 3 * (base if previous is None else previous))
        chain.append(wait)
        previous = wait
    assert cap in chain  # min(cap, ...) leaves a point mass at the cap
    assert min(chain[1:]) < 3 * base  # and it can fall back towards base


def test_decorrelated_clamps_a_previous_outside_base_to_cap() -> None:
    backoff = exponential(1, cap=10, jitter="decorrelated", rng=random.Random(4))
    assert all(1 <= backoff.delay(2, 0.0) <= 3 for _ in range(100))
    assert all(1 <= backoff.delay(2, math.inf) <= 10 for _ in range(100))


@pytest.mark.parametrize("previous", [-1.0, math.nan])
def test_decorrelated_rejects_a_previous_that_is_no_wait(previous: float) -> None:
    with pytest.raises(ValueError, match="previous"):
        exponential(jitter="decorrelated").delay(2, previous)


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_a_seeded_source_repeats_its_waits(jitter: Any) -> None:
    one, two = (exponential(jitter=jitter, rng=random.Random(7)) for _ in range(2))
    assert waits(one, 10) == waits(two, 10)
    assert len(set(waits(one, 10) + waits(one, 10))) == 20


def test_strategies_without_rng_do_not_repeat_each_other() -> None:
    assert waits(exponential(), 8) != waits(exponential(), 8)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_children_draw_different_waits_from_the_parent() -> None:
    """Prefork servers fork after import: without a reseed every worker jitters alike."""
    backoff = exponential()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads around
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: never return into pytest
        try:
            os.write(write, repr(waits(backoff, 5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    assert child != repr(waits(backoff, 5))


# Properties: any attempt, any valid parameters.

seconds = st.floats(min_value=0, max_value=MAX)
attempts = st.integers(min_value=1, max_value=10**9) | st.sampled_from(HUGE_ATTEMPTS)
previous_waits = st.none() | st.floats(min_value=0, allow_nan=False)


@st.composite
def exponentials(draw: st.DrawFn, jitter: st.SearchStrategy[Any]) -> Backoff:
    base = draw(seconds)
    cap = draw(st.floats(min_value=max(base, 5e-324), max_value=MAX))
    chosen = draw(jitter)
    assume(not (chosen == "decorrelated" and base == 0))
    factor = draw(st.floats(min_value=1, max_value=MAX))
    return exponential(base, factor, cap=cap, jitter=chosen, rng=random.Random(0))


@given(exponentials(st.sampled_from([None, "full", "equal", "decorrelated"])), attempts)
def test_exponential_is_finite_and_within_cap_for_any_attempt(backoff: Any, attempt: int) -> None:
    wait = backoff.delay(attempt, None)
    assert math.isfinite(wait)
    assert 0 <= wait <= backoff.cap


@given(exponentials(st.just("decorrelated")), attempts, previous_waits)
def test_decorrelated_stays_between_base_and_cap(
    backoff: Any, attempt: int, previous: float | None
) -> None:
    wait = backoff.delay(attempt, previous)
    assert backoff.base <= wait <= backoff.cap


@given(exponentials(st.none()), st.integers(min_value=1, max_value=10**9))
def test_exponential_without_jitter_never_shrinks(backoff: Backoff, attempt: int) -> None:
    assert backoff.delay(attempt, None) <= backoff.delay(attempt + 1, None)


@given(seconds, seconds, st.none() | seconds, attempts)
def test_linear_is_finite_and_between_start_and_cap(
    start: float, step: float, cap: float | None, attempt: int
) -> None:
    assume(cap is None or cap >= max(start, 5e-324))
    wait = linear(start, step, cap=cap).delay(attempt, None)
    assert math.isfinite(wait)
    assert start <= wait <= (MAX if cap is None else cap)


@given(seconds, attempts)
def test_constant_is_constant(value: float, attempt: int) -> None:
    assert constant(value).delay(attempt, None) == value


# The plain callable form.

DETERMINISTIC = [constant(2), linear(1, 0.5, cap=3), exponential(jitter=None)]


@pytest.mark.parametrize("backoff", DETERMINISTIC, ids=repr)
def test_call_form_equals_delay_without_previous(backoff: Backoff) -> None:
    for attempt in [1, 2, 5, 40, 10**9]:
        assert backoff(attempt, ConnectionError()) == backoff.delay(attempt, None)
        assert backoff(attempt, None) == backoff.delay(attempt, None)


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_call_form_of_jitter_draws_like_delay(jitter: Any) -> None:
    one, two = (exponential(jitter=jitter, rng=random.Random(5)) for _ in range(2))
    assert [one(n, OSError()) for n in range(1, 9)] == waits(two, 8)


@pytest.mark.parametrize("backoff", [*DETERMINISTIC, exponential()], ids=repr)
@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_count_from_one(backoff: Backoff, attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff.delay(attempt, None)
    with pytest.raises(ValueError, match="attempt"):
        backoff(attempt, None)


def test_backoff_is_an_abstract_base_for_custom_strategies() -> None:
    with pytest.raises(TypeError):
        Backoff()  # type: ignore[abstract]

    class Fibonacci(Backoff):
        def delay(self, attempt: int, previous: float | None) -> float:
            a, b = 0, 1
            for _ in range(attempt):
                a, b = b, a + b
            return float(a)

    assert [Fibonacci()(n, None) for n in range(1, 7)] == [1, 1, 2, 3, 5, 8]


# Bad options.

EXPECT_SECONDS = "a finite number of seconds >= 0"
BAD: list[tuple[Any, dict[str, Any], str, Any, str]] = [
    (constant, {"seconds": -1}, "seconds", -1, EXPECT_SECONDS),
    (constant, {"seconds": math.inf}, "seconds", math.inf, EXPECT_SECONDS),
    (constant, {"seconds": math.nan}, "seconds", math.nan, EXPECT_SECONDS),
    (constant, {"seconds": "1 sec"}, "seconds", "1 sec", EXPECT_SECONDS),
    (constant, {"seconds": True}, "seconds", True, EXPECT_SECONDS),
    (constant, {"seconds": None}, "seconds", None, EXPECT_SECONDS),
    (linear, {"start": -0.5, "step": 1}, "start", -0.5, EXPECT_SECONDS),
    (linear, {"start": 0, "step": -1}, "step", -1, EXPECT_SECONDS),
    (linear, {"start": 0, "step": math.inf}, "step", math.inf, EXPECT_SECONDS),
    (linear, {"start": 0, "step": 1, "cap": 0}, "cap", 0, "seconds > 0"),
    (linear, {"start": 0, "step": 1, "cap": math.inf}, "cap", math.inf, "seconds > 0"),
    (linear, {"start": 2, "step": 1, "cap": 1}, "cap", 1, ">= start (2)"),
    (exponential, {"base": -0.1}, "base", -0.1, EXPECT_SECONDS),
    (exponential, {"base": math.inf}, "base", math.inf, EXPECT_SECONDS),
    (exponential, {"base": "0.1 s s"}, "base", "0.1 s s", EXPECT_SECONDS),
    (exponential, {"factor": 0.5}, "factor", 0.5, "a finite number >= 1"),
    (exponential, {"factor": 0}, "factor", 0, "a finite number >= 1"),
    (exponential, {"factor": math.inf}, "factor", math.inf, "a finite number >= 1"),
    (exponential, {"factor": False}, "factor", False, "a finite number >= 1"),
    (exponential, {"cap": 0}, "cap", 0, "seconds > 0"),
    (exponential, {"cap": -3}, "cap", -3, "seconds > 0"),
    (exponential, {"cap": math.inf}, "cap", math.inf, "seconds > 0"),
    (exponential, {"cap": 0.05}, "cap", 0.05, ">= base (0.1)"),
    (exponential, {"base": 2, "cap": 1}, "cap", 1, ">= base (2)"),
    (exponential, {"jitter": "none"}, "jitter", "none", "'full', 'equal', 'decorrelated' or None"),
    (exponential, {"jitter": True}, "jitter", True, "'full', 'equal', 'decorrelated' or None"),
    (exponential, {"base": 0, "jitter": "decorrelated"}, "base", 0, "> 0 with jitter="),
    (exponential, {"rng": 42}, "rng", 42, "None or a random.Random instance"),
    (exponential, {"rng": random}, "rng", random, "None or a random.Random instance"),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "option", "value", "expected"),
    BAD,
    ids=lambda x: getattr(x, "__name__", None) or repr(x)[:24],
)
def test_bad_option_raises_config_error(
    factory: Any, kwargs: dict[str, Any], option: str, value: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        factory(**kwargs)
    assert_config_error(info.value, option, value, expected)
    assert info.value.owner == f"resilient.backoff.{factory.__name__}"


def test_good_edge_values_are_accepted_and_normalised_to_float() -> None:
    assert repr(constant(0)) == "constant(seconds=0.0)"
    assert repr(linear(0, 0, cap=1e-9)) == "linear(start=0.0, step=0.0, cap=1e-09)"
    assert repr(exponential(0, 1, cap=1, jitter="equal")) == (
        "exponential(base=0.0, factor=1.0, cap=1.0, jitter='equal')"
    )
    assert repr(exponential(5, cap=5)).startswith("exponential(base=5.0, factor=2.0, cap=5.0")
    exponential(rng=random.SystemRandom())


# Reprs, immutability, equality, pickling.


def test_reprs_read_like_the_call_that_made_them() -> None:
    assert repr(constant(1.5)) == "constant(seconds=1.5)"
    assert repr(linear(0.5, 1, cap=10)) == "linear(start=0.5, step=1.0, cap=10.0)"
    assert repr(linear(1, 2)) == "linear(start=1.0, step=2.0, cap=None)"
    assert repr(exponential()) == "exponential(base=0.1, factor=2.0, cap=30.0, jitter='full')"
    assert repr(exponential(1, 3, cap=60, jitter=None)) == (
        "exponential(base=1.0, factor=3.0, cap=60.0, jitter=None)"
    )
    rng = random.Random(0)
    assert repr(exponential(jitter="decorrelated", rng=rng)) == (
        f"exponential(base=0.1, factor=2.0, cap=30.0, jitter='decorrelated', rng={rng!r})"
    )


@pytest.mark.parametrize("backoff", [*DETERMINISTIC, exponential()], ids=repr)
def test_strategies_are_immutable(backoff: Backoff) -> None:
    with pytest.raises(AttributeError):
        backoff.cap = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        backoff.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(backoff, "__dict__")


def test_equal_options_make_equal_strategies() -> None:
    assert exponential() == exponential()
    assert hash(exponential()) == hash(exponential())
    assert exponential() != exponential(jitter="equal")
    assert linear(1, 1) == linear(1.0, 1.0)
    assert constant(1) != linear(1, 0)


@pytest.mark.parametrize("backoff", [*DETERMINISTIC, exponential()], ids=repr)
def test_strategies_pickle(backoff: Backoff) -> None:
    """A default strategy travels without its random state: the receiver uses its own."""
    data = pickle.dumps(backoff)
    assert b"Random" not in data
    assert pickle.loads(data) == backoff


def test_a_seeded_strategy_pickles_with_its_source() -> None:
    data = pickle.dumps(exponential(jitter="decorrelated", rng=random.Random(9)))
    one, two = pickle.loads(data), pickle.loads(data)
    assert waits(one, 6) == waits(two, 6)
