"""Bad options fail at construction with a ConfigError naming option, value and range."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest

from resilient import CircuitBreaker, ConfigError, State
from resilient.testing import ManualClock

from .conftest import assert_config_error

BAD = [
    ("failure_rate", 0, "0 < failure_rate <= 1"),
    ("failure_rate", 1.5, "0 < failure_rate <= 1"),
    ("failure_rate", -0.1, "0 < failure_rate <= 1"),
    ("failure_rate", math.nan, "0 < failure_rate <= 1"),
    ("failure_rate", "0.5", "0 < failure_rate <= 1"),
    ("failure_rate", True, "0 < failure_rate <= 1"),
    ("window_size", 0, "from 1 to 1,000,000"),
    ("window_size", -5, "from 1 to 1,000,000"),
    ("window_size", 10**40, "from 1 to 1,000,000"),
    ("window_size", 0.0, "seconds from 0.001 to 31,536,000 (time window)"),
    ("window_size", 5e-324, "seconds from 0.001 to 31,536,000 (time window)"),
    ("window_size", 1e10, "seconds from 0.001 to 31,536,000 (time window)"),
    ("window_size", math.inf, "seconds from 0.001"),
    ("window_type", "sliding", "'count' or 'time'"),
    ("min_calls", 0, "from 1 to 1,000,000"),
    ("min_calls", 10**40, "from 1 to 1,000,000"),
    ("open_for", -1, "seconds >= 0"),
    ("open_for", math.inf, "seconds >= 0"),
    ("open_for", "30 secs", "seconds >= 0"),
    ("half_open_calls", 0, "from 1 to 1,000,000"),
    ("half_open_calls", 1_000_001, "from 1 to 1,000,000"),
    ("half_open_max_wait", 0, "seconds > 0"),
    ("half_open_max_wait", -2.0, "seconds > 0"),
    ("slow_call_duration", -1, "seconds > 0"),
    ("slow_call_duration", 0, "seconds > 0"),
    ("slow_call_rate", 0, "0 < slow_call_rate <= 1"),
    ("slow_call_rate", 2, "0 < slow_call_rate <= 1"),
    ("record", "ValueError", "Exception subclass"),
    ("record", int, "Exception subclass"),
    ("record", (ValueError, "KeyError"), "Exception subclass"),
    ("ignore", [KeyError, "KeyError"], "Exception subclass"),
    ("failure_result", 503, "predicate"),
    ("clock", object(), "monotonic()"),
]


@pytest.mark.parametrize(("option", "value", "expected"), BAD, ids=lambda x: repr(x)[:20])
def test_bad_option_raises_config_error(option: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker("payments", **{option: value})
    assert_config_error(info.value, option, value, expected)
    assert "payments" in str(info.value)


def test_bad_name() -> None:
    with pytest.raises(ConfigError, match="name"):
        CircuitBreaker("")
    with pytest.raises(ConfigError, match="name"):
        CircuitBreaker(42)  # type: ignore[arg-type]


def test_open_for_callable_is_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="open_for") as info:
        CircuitBreaker(open_for=lambda n: -1.0)
    assert info.value.value == -1.0
    with pytest.raises(ConfigError, match="open_for"):
        CircuitBreaker(open_for=lambda n: "soon")


def test_open_for_callable_that_goes_bad_later_falls_back_to_its_last_good_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It goes bad while calls run: the probe still runs and keeps its own error, the
    breaker reopens for the last good duration, and the failure is logged (it used to
    raise ConfigError from every call, leaving the breaker OPEN for good)."""
    clock = ManualClock()
    b = CircuitBreaker(
        open_for=lambda n: 1.0 if n < 2 else math.nan,
        min_calls=1,
        window_size=1,
        half_open_calls=1,
        clock=clock,
    )

    def boom() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        b.call(boom)
    clock.advance(1)
    with pytest.raises(ConnectionError):
        b.call(boom)  # entering HALF_OPEN computes the next open time: nan
    assert b.state is State.OPEN
    clock.advance(1)  # the last good answer: 1 s
    assert b.call(lambda: "probe") == "probe"
    assert b.state is State.CLOSED
    assert any("open_for callable failed" in r.getMessage() for r in caplog.records)


def test_good_edge_values_are_accepted() -> None:
    CircuitBreaker(
        failure_rate=1,
        window_size=1,
        min_calls=1,
        open_for=0,
        half_open_calls=1,
        half_open_max_wait=0.001,
        slow_call_duration=0.001,
        slow_call_rate=1,
        record=(ConnectionError, TimeoutError),
        ignore=(),
        failure_result=lambda r: r is None,
        clock=ManualClock(),
    )


def test_config_error_pickles() -> None:
    err = ConfigError("window_size", 0, "a whole number >= 1", owner="CircuitBreaker('x')")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.option, copy.value, copy.expected, str(copy)) == (
        err.option,
        err.value,
        err.expected,
        str(err),
    )
