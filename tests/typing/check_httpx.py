"""Checked by mypy --strict, never run: the transports are httpx transports, their
errors httpx errors, and their options typed."""

from __future__ import annotations

import httpx
from typing_extensions import assert_type

from resilient import CircuitBreaker, Retry, State
from resilient.httpx import (
    AsyncResilientTransport,
    CircuitOpenError,
    ResilientTransport,
    TimeoutExpired,
    retry_after,
)

sync = ResilientTransport(name="payments", retry=Retry(4), breaker=CircuitBreaker())
plain: httpx.BaseTransport = ResilientTransport(httpx.HTTPTransport(), retry=None, breaker=None)
asynchronous: httpx.AsyncBaseTransport = AsyncResilientTransport(attempt_timeout="2s")
client = httpx.Client(transport=sync)
async_client = httpx.AsyncClient(transport=AsyncResilientTransport(total_timeout=None))

assert_type(sync.breaker_for("api.example.com:443"), CircuitBreaker)
assert_type(sync.breaker_for(httpx.URL("https://api.example.com")).state, State)
assert_type(sync.breakers, dict[str, CircuitBreaker])
assert_type(sync.retry, Retry | None)
assert_type(retry_after(httpx.Response(429)), float | None)

rejection: httpx.TransportError = CircuitOpenError("payments.api.example.com:443", 1.0)
timeout: httpx.TimeoutException = TimeoutExpired("payments", 30.0)
hint = Retry(on_result=lambda r: r.status_code == 503, retry_after=retry_after)
