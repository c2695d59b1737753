"""HTTP's own rules (resilient._http): Retry-After in every form, and the tables."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from resilient import _http

NOW = 1_700_000_000.0  # POSIX seconds: Tue, 14 Nov 2023 22:13:20 GMT


def hint(**headers: str) -> float | None:
    return _http.hint_seconds({k.replace("_", "-"): v for k, v in headers.items()}, NOW)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        ("0", 0.0),
        (" 120 ", 120.0),
        ("0.5", 0.5),
        ("1.25", 1.25),
        ("999999999999", 999999999999.0),  # long, but a number of seconds: max_wait decides
    ],
)
def test_seconds_whole_and_fractional(value: str, seconds: float) -> None:
    assert hint(retry_after=value) == seconds


def test_an_http_date_in_the_future_is_the_seconds_until_it() -> None:
    assert hint(retry_after=email.utils.formatdate(NOW + 90, usegmt=True)) == 90.0


@pytest.mark.parametrize(
    "value",
    [
        "Tue, 14 Nov 2023 22:14:50 GMT",  # IMF-fixdate
        "Tuesday, 14-Nov-23 22:14:50 GMT",  # RFC 850
        "Tue Nov 14 22:14:50 2023",  # asctime: no zone, which HTTP means as UTC
        "Tue, 14 Nov 2023 22:14:50",  # a naive date: UTC
        "Tue, 14 Nov 2023 23:14:50 +0100",  # an offset is honoured
    ],
)
def test_every_http_date_form_and_naive_dates_as_utc(value: str) -> None:
    assert hint(retry_after=value) == 90.0


def test_a_date_in_the_past_asks_for_zero() -> None:
    assert hint(retry_after="Mon, 13 Nov 2023 00:00:00 GMT") == 0.0


def test_a_date_is_read_against_the_servers_own_clock_when_it_says_it() -> None:
    """The server's Date and its Retry-After come from one clock: their difference is
    immune to skew between the server's clock and ours."""
    headers = {
        "retry-after": "Wed, 01 Jan 2020 00:01:00 GMT",
        "date": "Wed, 01 Jan 2020 00:00:00 GMT",
    }
    assert _http.hint_seconds(headers, NOW) == 60.0
    headers["date"] = "not a date"
    assert _http.hint_seconds(headers, NOW) == 0.0  # against ours: long past


def test_retry_after_ms_wins_and_is_milliseconds() -> None:
    assert hint(retry_after_ms="1500", retry_after="30") == 1.5
    assert hint(retry_after_ms="0\x1f", retry_after="30") == 0.0  # (found by hypothesis)
    assert hint(retry_after="2\x1c") == 2.0
    assert hint(retry_after_ms="soon", retry_after="30") == 30.0  # unreadable: the other


@pytest.mark.parametrize(
    "value",
    [
        "1m0s",
        "-5",
        "+5",
        "5s",
        "",
        "  ",
        "nan",
        "inf",
        "1e3",
        "9" * 400,  # a digit run that overflows
        "1" * 13,
        "Tue, 14 Nov 99999 22:14:50 GMT",  # a year out of the calendar
        "Tue, 99 Nov 2023 22:14:50 GMT",
        "Tue, 14 Nov 2023 99:99:99 GMT",
        "Fri, 31 Dec 9999 23:59:60 +2400",
        "today",
        "0x10",
        "١٢",  # other scripts' digits
    ],
)
def test_anything_unreadable_is_no_hint_never_an_exception(value: str) -> None:
    assert hint(retry_after=value) is None


@example("0\x1f")  # str.strip() takes the unit separator, float() does not
@given(st.text(max_size=60))
def test_no_text_makes_it_raise_or_answer_a_negative_or_unbounded_wait(value: str) -> None:
    for headers in (
        {"retry-after": value},
        {"retry-after-ms": value},
        {"retry-after": value, "date": value},
    ):
        seconds = _http.hint_seconds(headers, NOW)
        assert seconds is None or 0.0 <= seconds < 1e13


def test_the_tables() -> None:
    assert {408, 429, 500, 502, 503, 504, 599} <= _http.FAILURE_STATUSES
    assert not {200, 301, 400, 401, 404, 409, 501, 505} & _http.FAILURE_STATUSES
    assert {408, 429} == _http.UNPROCESSED_STATUSES
    assert {429, 503} == _http.HINTED_STATUSES
    assert {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} == _http.IDEMPOTENT_METHODS
