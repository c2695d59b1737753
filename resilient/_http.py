"""HTTP's own rules for resilience, apart from any client library: which answers are
failures, which requests may be sent again, and what a ``Retry-After`` asks.

``resilient.httpx`` applies them to httpx; a transport for another client would read
the same tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = [
    "FAILURE_STATUSES",
    "HINTED_STATUSES",
    "IDEMPOTENT_METHODS",
    "UNPROCESSED_STATUSES",
    "hint_seconds",
]

#: Answers that say the server is in trouble, so a breaker counts them and a retry may
#: try again: request timeout, too many requests, and the 5xx family but for 501 (not
#: implemented) and 505 (version not supported), which no retry will ever change.
FAILURE_STATUSES = frozenset({408, 429, *range(500, 600)} - {501, 505})

#: Answers whose request the server did not act on (RFC 9110 15.5.9, RFC 6585 4): safe
#: to send again whatever the method. Any other failure (a 5xx) may come after the work
#: was done, and is retried only for an idempotent method or an Idempotency-Key.
UNPROCESSED_STATUSES = frozenset({408, 429})

#: Answers whose ``Retry-After`` says when to come back (on a 3xx it means a redirect's delay).
HINTED_STATUSES = frozenset({429, 503})

#: RFC 9110 9.2.2: sending one of these twice has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: Seconds written as digits, with a fraction or not ("2", "0.5"); longer runs than this
#: overflow what a wait can mean (and a float's exact digits), and count as no hint.
_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def hint_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The wait a response's headers ask for: ``retry-after-ms`` (milliseconds, as Azure
    and OpenAI send), else ``Retry-After`` in seconds (whole or fractional) or as an
    HTTP-date. A date is read against the response's own ``Date`` when it has one (the
    server's clock, immune to skew between the two), else ``now`` (POSIX seconds); a
    date in the past asks for 0. Anything unreadable (``1m0s``), negative, overflowing
    or out of the calendar is no hint: None, never an exception."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        ms = ms.strip()  # (str.strip knows more spaces than float() does: strip once)
        if _SECONDS.fullmatch(ms):
            return float(ms) / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    at = _http_date(value)
    if at is None:
        return None
    date = headers.get("date")
    server_now = _http_date(date) if date is not None else None
    return max(0.0, at - (now if server_now is None else server_now))


def _http_date(value: str) -> float | None:
    """An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms) as POSIX
    seconds; a date without a zone is UTC, as HTTP dates always are."""
    if not value or not any(c.isalpha() for c in value):
        return None
    from email.utils import parsedate_tz  # (the date form is rare: import it only then)

    try:
        parts = parsedate_tz(value)
    except Exception:  # malformed beyond what the parser checks
        return None
    if parts is None:
        return None
    from calendar import timegm

    year, month, day, hour, minute, second = parts[:6]
    offset = parts[9] or 0
    if not (
        1 <= year <= 9999
        and 1 <= month <= 12
        and 1 <= day <= 31
        and 0 <= hour <= 23
        and 0 <= minute <= 59
        and 0 <= second <= 60  # a leap second
        and abs(offset) < 24 * 3600
    ):
        return None
    try:
        seconds = float(timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    except (OverflowError, ValueError):
        return None
    seconds -= offset
    return seconds if math.isfinite(seconds) else None
