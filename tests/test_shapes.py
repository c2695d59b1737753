"""A newcomer's mistakes in calling a constructor get an error that shows the right call.

A value that reached an option is a ConfigError (a ValueError); a call of the wrong form
(too many positional arguments, a keyword we do not have, the decorator without
parentheses) is a UsageError (a TypeError). Durations in code are written as the
environment writes them, or as a timedelta.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import inspect
import math
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

import resilient
from resilient import (
    Bulkhead,
    CircuitBreaker,
    ConfigError,
    Fallback,
    Retry,
    RetryBudget,
    State,
    Timeout,
    UsageError,
    backoff,
    deadline,
)
from resilient._core.configuration.shapes import PEERS
from resilient.testing import ManualClock

from .conftest import fresh
from .test_env import var

NAMESPACE = vars(resilient) | {"backoff": backoff, "datetime": datetime}


def right_call(message: str, who: str) -> str:
    """The last call of ``who`` that ``message`` shows."""
    starts = [m.start() for m in re.finditer(rf"\b{who}\(", message)]
    assert starts, message
    text, depth = message[starts[-1] :], 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ")" and depth == 0:
            return text[: i + 1]
    raise AssertionError(message)  # pragma: no cover


def works(message: str, who: str) -> Any:
    """Make the call the message shows: it must be a call that works."""
    return eval(right_call(message, who), dict(NAMESPACE))


# -- 1. shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "who", "shown"),
    [
        (lambda: Retry("payments"), "Retry", 'Retry(3, name="payments")'),
        (lambda: Timeout("payments"), "Timeout", 'Timeout(2, name="payments")'),
        (lambda: Bulkhead("payments"), "Bulkhead", 'Bulkhead(10, name="payments")'),
    ],
    ids=["Retry", "Timeout", "Bulkhead"],
)
def test_a_name_in_the_number_slot_is_a_config_error_showing_the_name_keyword(
    make: Callable[[], Any], who: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert isinstance(info.value, ValueError)
    assert info.value.value == "payments"
    assert shown in str(info.value)
    assert works(str(info.value), who).name == "payments"


def test_a_number_in_the_breakers_name_slot_shows_the_name_and_the_count_in_a_row() -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker(5)  # type: ignore[arg-type]
    message = str(info.value)
    assert info.value.option == "name"
    assert 'CircuitBreaker("payments")' in message
    assert "fail_max" in message
    assert "CircuitBreaker(failure_rate=1.0, min_calls=5, window_size=5)" in message
    works(message, "CircuitBreaker")


def test_the_breaker_suggested_for_fail_max_opens_after_that_many_failures_in_a_row() -> None:
    with pytest.raises(UsageError) as info:
        CircuitBreaker(fail_max=3)  # type: ignore[call-arg]
    breaker = works(str(info.value), "CircuitBreaker")

    def fail() -> None:
        raise OSError

    def outcomes(*calls: Callable[[], None]) -> None:
        for call in calls:
            with contextlib.suppress(OSError):
                breaker.call(call)

    outcomes(fail, fail, lambda: None, fail, fail)
    assert breaker.state is State.CLOSED  # never three in a row
    outcomes(fail)
    assert breaker.state is State.OPEN


@pytest.mark.parametrize(
    ("make", "who", "shown"),
    [
        (lambda: Timeout(2, "payments"), "Timeout", 'Timeout(2, name="payments")'),
        (lambda: Retry(3, "payments"), "Retry", 'Retry(3, name="payments")'),
        (lambda: Bulkhead(10, "payments"), "Bulkhead", 'Bulkhead(10, name="payments")'),
    ],
    ids=["Timeout", "Retry", "Bulkhead"],
)
def test_a_second_positional_argument_is_a_usage_error_showing_the_keyword(
    make: Callable[[], Any], who: str, shown: str
) -> None:
    with pytest.raises(UsageError) as info:
        make()
    assert isinstance(info.value, TypeError)
    assert "one positional argument" in str(info.value)
    assert shown in str(info.value)
    assert works(str(info.value), who).name == "payments"


def test_a_second_positional_argument_that_is_no_name_lists_the_keywords() -> None:
    with pytest.raises(UsageError, match=r"by keyword \(wait, max_wait, .*\): Retry\(3, option"):
        Retry(3, 2)  # type: ignore[misc]
    with pytest.raises(UsageError, match=r'CircuitBreaker\("a", option=\.\.\.\)'):
        CircuitBreaker("a", "b")  # type: ignore[misc]


def test_a_missing_or_doubled_argument_is_a_usage_error_that_says_so() -> None:
    with pytest.raises(UsageError, match=r"Timeout needs seconds: e.g. Timeout\(2\)"):
        Timeout()  # type: ignore[call-arg]
    with pytest.raises(UsageError, match=r"Bulkhead needs max_concurrent: e.g. Bulkhead\(10\)"):
        Bulkhead()  # type: ignore[call-arg]
    with pytest.raises(UsageError, match=r"got attempts twice, by position \(3\) and by keyword"):
        Retry(3, attempts=4)  # type: ignore[misc]


def test_an_error_raised_inside_a_constructor_is_left_as_it_is() -> None:
    with pytest.raises(ConfigError) as info:
        Retry(0)
    assert "name" not in str(info.value)  # a number out of range: no hint about names
    with pytest.raises(ConfigError, match="exactly one of value= and handler="):
        Fallback()


def test_the_signatures_stay_the_ones_written() -> None:
    for cls, first in [
        (Retry, "attempts"),
        (Timeout, "seconds"),
        (Bulkhead, "max_concurrent"),
        (CircuitBreaker, "name"),
        (Fallback, "value"),
        (RetryBudget, "ratio"),
    ]:
        parameters = inspect.signature(cls).parameters
        assert next(iter(parameters)) == first
        assert all(p.kind is not p.VAR_POSITIONAL for p in parameters.values())
    assert "max_abandoned" in inspect.signature(Timeout).parameters


# -- 2. keywords of other libraries, and typos ----------------------------------------------


@pytest.mark.parametrize(
    ("make", "who", "words"),
    [
        (lambda: CircuitBreaker(fail_max=5), "CircuitBreaker", ["pybreaker", "min_calls=5"]),
        (lambda: CircuitBreaker(reset_timeout=30), "CircuitBreaker", ["open_for=30"]),
        (
            lambda: CircuitBreaker(failure_threshold=5),
            "CircuitBreaker",
            ["circuitbreaker package", "window_size=5"],
        ),
        (lambda: CircuitBreaker(recovery_timeout=60), "CircuitBreaker", ["open_for=60"]),
        (lambda: CircuitBreaker(exclude=[KeyError]), "CircuitBreaker", ["ignore=[KeyError]"]),
        (lambda: Retry(timeout=10), "Retry", ["stamina", "deadline=10"]),
        (lambda: Retry(stop_max_attempt_number=5), "Retry", ["retrying", "attempts=5"]),
        (lambda: Retry(stop_max_delay=2000), "Retry", ["milliseconds", "deadline=2.0"]),
        (
            lambda: Retry(wait_exponential_multiplier=1000),
            "Retry",
            ["wait=backoff.exponential(base=2.0, jitter=None)"],
        ),
        (lambda: Retry(tries=4), "Retry", ["attempts=4"]),
        (lambda: Retry(max_tries=4), "Retry", ["backoff's max_tries", "attempts=4"]),
        (lambda: Retry(retries=2), "Retry", ["attempts=3"]),
        (lambda: Timeout(timeout=2), "Timeout", ["Timeout(seconds=2)"]),
        (lambda: Fallback(default=0), "Fallback", ["Fallback(value=0)"]),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_another_librarys_keyword_names_ours(
    make: Callable[[], Any], who: str, words: list[str]
) -> None:
    with pytest.raises(UsageError) as info:
        make()
    message = str(info.value)
    assert message.startswith(f"{who} has no option ")
    for word in words:
        assert word in message
    works(message, who)


def test_the_other_positional_and_keyword_arguments_stay_in_the_call_shown() -> None:
    with pytest.raises(UsageError) as info:
        CircuitBreaker("payments", min_calls=10, reset_timeout=datetime.timedelta(seconds=5))  # type: ignore[call-arg]
    shown = right_call(str(info.value), "CircuitBreaker")
    assert shown.startswith('CircuitBreaker("payments", min_calls=10, open_for=')
    assert works(str(info.value), "CircuitBreaker").settings["open_for"] == 5.0


def test_a_hint_without_a_keyword_says_what_to_do_instead() -> None:
    with pytest.raises(UsageError, match="always re-raised"):
        Retry(reraise=True)  # type: ignore[call-arg]
    with pytest.raises(UsageError, match=r"Pipeline\(Fallback\(handler=\.\.\.\), breaker\)"):
        CircuitBreaker(fallback_function=print)  # type: ignore[call-arg]


@pytest.mark.parametrize(("who", "keyword"), sorted(PEERS))
def test_every_hint_names_options_that_exist(who: str, keyword: str) -> None:
    hint = PEERS[(who, keyword)]
    if not hint.keywords:
        return
    call = ast.parse(f"f({hint.keywords.format('1')})").body[0].value  # type: ignore[attr-defined]
    ours = inspect.signature(getattr(resilient, who)).parameters
    assert keyword not in ours  # a hint never hides one of our own options
    assert {k.arg for k in call.keywords} <= set(ours)


def test_a_typo_gets_a_did_you_mean_and_an_unknown_word_the_options() -> None:
    with pytest.raises(UsageError) as info:
        Retry(atempts=3)  # type: ignore[call-arg]
    assert "did you mean attempts? Retry(attempts=3)" in str(info.value)
    with pytest.raises(UsageError, match="did you mean max_concurrent"):
        Bulkhead(max_concurrent_calls=5)  # type: ignore[call-arg]
    with pytest.raises(UsageError, match="did you mean window"):
        RetryBudget(windows=5)  # type: ignore[call-arg]
    with pytest.raises(
        UsageError, match="its options are seconds, name, max_abandoned, thread_locals"
    ):
        Timeout(2, colour="blue")  # type: ignore[call-arg]


# -- 3. durations --------------------------------------------------------------------


DURATIONS: dict[str, Callable[[Any], float]] = {
    "Timeout.seconds": lambda v: Timeout(v).seconds,
    "Retry.max_wait": lambda v: Retry(max_wait=v).settings["max_wait"],
    "Retry.deadline": lambda v: Retry(deadline=v).settings["deadline"],
    "Retry.wait": lambda v: Retry(wait=v).settings["wait"],
    "CircuitBreaker.open_for": lambda v: CircuitBreaker(open_for=v).settings["open_for"],
    "CircuitBreaker.half_open_max_wait": lambda v: CircuitBreaker(half_open_max_wait=v).settings[
        "half_open_max_wait"
    ],
    "CircuitBreaker.slow_call_duration": lambda v: CircuitBreaker(slow_call_duration=v).settings[
        "slow_call_duration"
    ],
    "Bulkhead.max_wait": lambda v: Bulkhead(1, max_wait=v).settings["max_wait"],
    "RetryBudget.window": lambda v: RetryBudget(window=v).window,
    "backoff.constant": lambda v: backoff.constant(v).seconds,  # type: ignore[attr-defined]
    "backoff.linear": lambda v: backoff.linear(v, v).step,  # type: ignore[attr-defined]
    "backoff.exponential.base": lambda v: backoff.exponential(v, cap=7200).base,  # type: ignore[attr-defined]
    "backoff.exponential.cap": lambda v: backoff.exponential(cap=v).cap,  # type: ignore[attr-defined]
    "deadline": lambda v: deadline(v)._seconds,
}


@pytest.mark.parametrize("where", sorted(DURATIONS))
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5m", 90.0),
        (" 1h ", 3600.0),
        ("3", 3.0),
        (datetime.timedelta(milliseconds=1500), 1.5),
        (2, 2.0),
    ],
    ids=str,
)
def test_every_duration_takes_what_the_environment_takes_and_a_timedelta(
    where: str, value: Any, seconds: float
) -> None:
    stored = DURATIONS[where](value)
    assert stored == seconds
    assert type(stored) is float


@pytest.mark.parametrize("where", sorted(DURATIONS))
@pytest.mark.parametrize("value", ["soon", "2 sec", "-1s", "1e999s", "", "nan"])
def test_a_bad_duration_string_names_the_option_the_value_and_the_forms(
    where: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        DURATIONS[where](value)
    message = str(info.value)
    assert f"={value!r}" in message
    assert "250ms, 2s, 1.5m, 1h" in message
    assert "timedelta" in message


def test_a_duration_stays_a_float_in_repr_and_metrics() -> None:
    assert repr(Timeout("250ms")) == "Timeout(0.25)"
    assert (
        repr(RetryBudget(window="1m"))
        == "RetryBudget(ratio=0.2, min_per_second=10.0, window=60.0)"
    )
    assert repr(deadline(datetime.timedelta(seconds=2))) == "deadline(2.0)"


def test_a_window_size_in_text_reads_as_the_environment_reads_it() -> None:
    assert CircuitBreaker(window_size="50").settings["window_size"] == 50  # calls
    for size in ["50s", datetime.timedelta(seconds=50), "50000ms"]:
        breaker = CircuitBreaker(window_type="time", window_size=size)
        assert breaker.settings["window_size"] == 50.0
    with pytest.raises(ConfigError, match="a whole number of calls, or a number of seconds"):
        CircuitBreaker(window_size="fifty")


def test_a_growth_factor_is_no_duration() -> None:
    with pytest.raises(ConfigError, match="factor='2s'"):
        backoff.exponential(factor="2s")  # type: ignore[arg-type]


def test_a_negative_timedelta_is_refused_like_a_negative_number() -> None:
    with pytest.raises(ConfigError, match=r"seconds=datetime\.timedelta"):
        Timeout(datetime.timedelta(seconds=-1))


@given(st.integers(min_value=1, max_value=10**9))
def test_milliseconds_round_trip(ms: int) -> None:
    assert math.isclose(Timeout(f"{ms}ms").seconds, ms / 1000)


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_seconds_round_trip(seconds: float) -> None:
    assert Timeout(f"{seconds!r}s").seconds == seconds
    assert Timeout(repr(seconds)).seconds == seconds


@given(st.timedeltas(min_value=datetime.timedelta(microseconds=1)))
def test_timedeltas_round_trip(delta: datetime.timedelta) -> None:
    assert deadline(delta)._seconds == delta.total_seconds()


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_code_and_environment_read_a_duration_alike(n: int, unit: str) -> None:
    option = next(o for o in resilient._timeout.OPTIONS if o.name == "seconds")
    assert Timeout(f"{n}{unit}").seconds == option.from_text(f"{n}{unit}")


def test_import_resilient_does_not_import_datetime() -> None:
    code = "import sys, resilient; print('datetime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- 4. decorators without parentheses, makers not called, lists of exceptions ---------


def plain() -> int:
    return 1


async def coroutine() -> int:
    return 1


@pytest.mark.parametrize("fn", [plain, coroutine, staticmethod(plain)], ids=str)
@pytest.mark.parametrize(
    ("cls", "write"),
    [
        (Retry, "@Retry()"),
        (Timeout, "@Timeout(2)"),
        (Bulkhead, "@Bulkhead(10)"),
        (CircuitBreaker, "@CircuitBreaker()"),
        (Fallback, "@Fallback(value) or @Fallback(handler=...)"),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_a_decorator_without_parentheses_is_a_usage_error(cls: Any, write: str, fn: Any) -> None:
    with pytest.raises(UsageError) as info:
        cls(fn)
    assert f"write {write}, with parentheses" in str(info.value)
    assert "plain" in str(info.value) or "coroutine" in str(info.value)


def test_a_function_as_a_fallbacks_value_points_to_handler() -> None:
    with pytest.raises(UsageError, match=r"Fallback\(handler=plain\) to call it"):
        Fallback(plain, on=KeyError)
    assert Fallback(value=plain).call(lambda: 1 / 0) is plain  # said so: returned as is


@pytest.mark.parametrize(
    ("maker", "shown"),
    [
        (backoff.exponential, "wait=backoff.exponential()"),
        (backoff.linear, "wait=backoff.linear()"),
        (backoff.constant, "wait=backoff.constant()"),
        (tenacity.wait_exponential, "wait=wait_exponential()"),
    ],
    ids=str,
)
def test_a_wait_maker_not_called_is_refused_at_construction(maker: Any, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        Retry(wait=maker)
    assert info.value.option == "wait"
    assert shown in str(info.value)


def test_a_stop_class_not_called_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"stop=stop_after_attempt\(\)"):
        Retry(stop=tenacity.stop_after_attempt)


def test_a_wait_maker_named_by_a_variable_is_refused_too(env: pytest.MonkeyPatch) -> None:
    name = fresh("maker")
    env.setenv(var(name, "retry", "wait"), "resilient.backoff:exponential")
    with pytest.raises(ConfigError) as info:
        Retry(name=name)
    assert info.value.option == var(name, "retry", "wait")
    assert "backoff.exponential()" in str(info.value)


def test_a_list_of_exception_types_filters_like_a_tuple_and_shows_as_written() -> None:
    breaker = CircuitBreaker(record=[KeyError, ValueError], ignore=[LookupError])
    assert repr(breaker.settings["record"]) == "[KeyError, ValueError]"
    assert repr(breaker.settings["ignore"]) == "[LookupError]"
    retry = Retry(2, on=[KeyError], clock=ManualClock())
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError
        return len(calls)

    assert retry.call(flaky) == 2
    assert repr(retry.settings["on"]) == "[KeyError]"
    assert Fallback(0, on=[KeyError, ValueError]).call(lambda: int("x")) == 0
    with pytest.raises(ConfigError, match="a tuple or list of them"):
        Fallback(0, on=[KeyError, "ValueError"])  # type: ignore[list-item]
