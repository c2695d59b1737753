"""resilient.starlette: a rejection reaching a Starlette app is answered 503 with Retry-After.

Requests go through httpx's ASGI transport, in process: the app, its middleware and the
exception handling are Starlette's own, only the socket is missing (no ASGI server is a
test dependency). WebSocket sessions are driven with the ASGI messages themselves, which
shows exactly what a server would be told to send.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket

import resilient.starlette
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    RejectedError,
    State,
    UsageError,
    WorkersExhaustedError,
)
from resilient.starlette import install, rejected, rejection_handler
from resilient.testing import ManualClock

BACKENDS = ("asyncio", "trio")


def app_raising(exc: Exception, **install_options: Any) -> Starlette:
    """An app whose one route raises ``exc``, with the handler installed."""

    async def endpoint(request: Request) -> Response:
        raise exc

    app = Starlette(routes=[Route("/", endpoint)])
    install(app, **install_options)
    return app


def get(app: Starlette, path: str = "/", backend: str = "asyncio") -> httpx.Response:
    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(path)

    return anyio.run(fetch, backend=backend)


def opened_breaker(clock: ManualClock) -> CircuitBreaker:
    """'payments', opened for 30 s by a failure whose text names an internal host."""
    breaker = CircuitBreaker("payments", min_calls=1, window_size=1, open_for=30, clock=clock)

    def charge() -> None:
        raise ConnectionError("db-7.internal.example:5432 refused the connection")

    with pytest.raises(ConnectionError):
        breaker.call(charge)
    assert breaker.state is State.OPEN
    return breaker


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_open_breaker_answers_503_with_retry_after_rounded_up(backend: str) -> None:
    clock = ManualClock()
    breaker = opened_breaker(clock)

    @breaker
    async def charge() -> str:
        return "charged"

    async def pay(request: Request) -> Response:
        return PlainTextResponse(await charge())

    app = Starlette(routes=[Route("/pay", pay)])
    install(app)

    clock.advance(10.25)  # 19.75 s left: a client told 19 would be refused again
    response = get(app, "/pay", backend)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "20"
    assert response.json() == {"detail": "service unavailable: circuit breaker is open"}

    clock.advance(19.75)  # the spell is over: the probe goes in
    response = get(app, "/pay", backend)
    assert (response.status_code, response.text) == (200, "charged")


def test_the_downstreams_failure_text_does_not_reach_the_client_by_default() -> None:
    breaker = opened_breaker(ManualClock())

    async def pay(request: Request) -> Response:
        return PlainTextResponse(breaker.call(lambda: "charged"))

    app = Starlette(routes=[Route("/", pay)])
    install(app)
    response = get(app)
    assert response.status_code == 503
    assert "internal" not in response.text
    assert "ConnectionError" not in response.text
    assert "refused" not in response.text
    with pytest.raises(CircuitOpenError) as caught:  # while the error's own text names it
        breaker.call(lambda: "charged")
    assert "opened by ConnectionError: db-7.internal.example:5432" in str(caught.value)


def test_a_forced_open_breaker_answers_503_without_retry_after() -> None:
    breaker = CircuitBreaker("payments", clock=ManualClock())
    breaker.force_open()

    async def pay(request: Request) -> Response:
        async with breaker:
            return PlainTextResponse("charged")

    app = Starlette(routes=[Route("/", pay)])
    install(app)
    response = get(app)
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.json() == {"detail": "service unavailable: circuit breaker is forced open"}


def test_a_full_bulkhead_answers_503_without_retry_after() -> None:
    pool = Bulkhead(1, name="db")

    async def query(request: Request) -> Response:
        async with pool:
            return PlainTextResponse("rows")

    app = Starlette(routes=[Route("/", query)])
    install(app)
    with pool:  # the one slot is taken
        response = get(app)
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.json() == {"detail": "service unavailable: bulkhead is full"}
    assert get(app).status_code == 200  # the slot is free again


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (0.0, "0"),  # a probe may go in now
        (1e-9, "1"),  # never 0 while any time is left
        (0.5, "1"),
        (1.0, "1"),
        (1.000001, "2"),
        (19.75, "20"),
        (-1.0, "0"),
        (None, None),  # nobody knows when
        (math.inf, None),
        (math.nan, None),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up(retry_after: float | None, header: str) -> None:
    response = get(app_raising(BulkheadFullError("db", retry_after)))
    assert response.status_code == 503
    assert response.headers.get("Retry-After") == header


def test_every_rejection_is_handled_the_timeouts_too() -> None:
    response = get(app_raising(WorkersExhaustedError("report", 2.0)))
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
    assert response.json()["detail"].startswith("service unavailable: timeout refused the call")
    response = get(app_raising(RejectedError(None, None)))
    assert response.json()["detail"] == "service unavailable: the call was rejected"


class TransportRejected(CircuitOpenError, httpx.TransportError):
    """Like resilient.httpx's rejections: a resilient error and an httpx one at once."""


def test_a_subclass_with_another_base_is_answered_by_the_rejection_handler() -> None:
    """Starlette looks handlers up along the exception's MRO: the rejection's bases come
    first here, so a handler the app has for the other base does not take it."""

    async def bad_gateway(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("upstream failed", status_code=502)

    exc = TransportRejected("api", 4.2, State.OPEN)
    app = app_raising(exc)
    app.add_exception_handler(httpx.TransportError, bad_gateway)
    response = get(app)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
    assert response.json() == {"detail": "service unavailable: circuit breaker is open"}

    app = app_raising(httpx.ConnectError("refused"))
    app.add_exception_handler(httpx.TransportError, bad_gateway)
    assert get(app).status_code == 502


def test_the_handler_given_at_construction_as_fastapi_takes_it() -> None:
    async def endpoint(request: Request) -> Response:
        raise CircuitOpenError("payments", 1.5, State.OPEN)

    app = Starlette(routes=[Route("/", endpoint)], exception_handlers={RejectedError: rejected})
    response = get(app)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
    assert response.json() == {"detail": "service unavailable: circuit breaker is open"}


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("try again later", "try again later"),
        (str, "circuit breaker 'payments' is open; retry after 3.000s; opened by OSError: boom"),
        (lambda exc: f"{exc.name} is resting", "payments is resting"),
    ],
)
def test_the_detail_can_be_fixed_text_or_made_from_the_error(
    detail: str | Callable[[RejectedError], str], expected: str
) -> None:
    exc = CircuitOpenError("payments", 3.0, State.OPEN, OSError("boom"))
    response = get(app_raising(exc, detail=detail))
    assert response.json() == {"detail": expected}
    assert response.headers["Retry-After"] == "3"


def test_one_kind_can_be_answered_with_another_status() -> None:
    async def full(request: Request) -> Response:
        raise BulkheadFullError("db")

    async def open_(request: Request) -> Response:
        raise CircuitOpenError("payments", 1.0, State.OPEN)

    app = Starlette(routes=[Route("/full", full), Route("/open", open_)])
    install(app)
    app.add_exception_handler(BulkheadFullError, rejection_handler(status_code=429))
    response = get(app, "/full")
    assert response.status_code == 429
    assert response.json() == {"detail": "too many requests: bulkhead is full"}
    assert get(app, "/open").status_code == 503


@pytest.mark.parametrize("status_code", [200, 302, 600, 503.0, "503", True])
def test_a_status_that_is_no_http_error_is_refused_at_once(status_code: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        rejection_handler(status_code=status_code)
    assert caught.value.option == "status_code"
    assert caught.value.value == status_code
    assert "400 to 599" in str(caught.value)
    with pytest.raises(ConfigError):
        install(Starlette(), status_code=status_code)


def test_a_detail_that_is_neither_text_nor_callable_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match=r"detail=5 is invalid: expected None .*a str"):
        install(Starlette(), detail=5)  # type: ignore[arg-type]


def test_an_unnamed_status_says_rejected() -> None:
    response = get(app_raising(BulkheadFullError("db"), status_code=599))
    assert response.status_code == 599
    assert response.json() == {"detail": "rejected: bulkhead is full"}


def test_install_after_the_app_started_serving_is_refused() -> None:
    """Starlette builds its handlers on the first request: a later one would be ignored."""
    app = app_raising(BulkheadFullError("db"))
    assert get(app).status_code == 503
    late = Starlette(routes=app.routes)
    assert get(late, "/not-there").status_code == 404
    with pytest.raises(UsageError, match="started serving"):
        install(late)


def test_a_handler_registered_for_another_error_says_so() -> None:
    async def endpoint(request: Request) -> Response:
        raise KeyError("sku")

    app = Starlette(routes=[Route("/", endpoint)], exception_handlers={KeyError: rejected})
    with pytest.raises(UsageError, match=r"got KeyError: register it for resilient\.Rej"):
        get(app)


async def websocket_session(
    app: Starlette, accept: bool, close: bool = False, denial: bool = True
) -> list[Message]:
    """The messages ``app`` sends in a WebSocket session whose endpoint raises a rejection
    (after accepting the socket, and closing it, or before), on a server that has the
    denial response extension (or not)."""

    async def endpoint(websocket: WebSocket) -> None:
        if accept:
            await websocket.accept()
        if close:
            await websocket.close()
        raise CircuitOpenError("feed", 2.5, State.OPEN)

    app.router.routes.append(WebSocketRoute("/ws", endpoint))
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if denial else {},
    }
    incoming: list[Message] = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_websocket_refused_before_accept_gets_the_503_as_its_answer() -> None:
    app = Starlette()
    install(app)
    sent = anyio.run(websocket_session, app, False)
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"3") in sent[0]["headers"]


def test_a_websocket_refused_before_accept_on_a_server_without_denials_is_closed() -> None:
    """The server then answers the handshake with 403 (ASGI's rule for a close before
    accept): not a 503, but a refusal the client sees at once."""
    app = Starlette()
    install(app)
    sent = anyio.run(websocket_session, app, False, False, False)
    assert sent == [
        {
            "type": "websocket.close",
            "code": 1013,
            "reason": "service unavailable: circuit breaker is open",
        }
    ]


def test_an_accepted_websocket_is_closed_with_try_again_later() -> None:
    app = Starlette()
    install(app)
    sent = anyio.run(websocket_session, app, True)
    assert sent[1:] == [
        {
            "type": "websocket.close",
            "code": 1013,
            "reason": "service unavailable: circuit breaker is open",
        }
    ]


def test_a_websocket_closed_already_is_sent_nothing_more() -> None:
    app = Starlette()
    install(app)
    sent = anyio.run(websocket_session, app, True, True)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[-1]["code"] == 1000  # the endpoint's own close


def test_a_long_close_reason_is_cut_to_what_a_close_frame_holds() -> None:
    app = Starlette()
    install(app, detail="é" * 100)  # 200 bytes of UTF-8
    sent = anyio.run(websocket_session, app, True)
    assert sent[-1]["reason"] == "é" * 61  # 122 bytes: the 123rd would split a character


def test_the_public_names() -> None:
    """Its own names, that is: what it imports is public too, as in any module."""
    assert resilient.starlette.__all__ == ["install", "rejected", "rejection_handler"]
    own = {
        name
        for name, value in vars(resilient.starlette).items()
        if not name.startswith("_") and getattr(value, "__module__", "") == "resilient.starlette"
    }
    assert own == set(resilient.starlette.__all__)


def test_a_rejection_inside_a_task_group_is_not_matched_as_the_docs_warn() -> None:
    """docs/clients.md says so: the group wraps it, and no handler for RejectedError
    matches an ExceptionGroup (Starlette looks the handler up by the raised class)."""

    async def refuse() -> None:
        raise BulkheadFullError("db")

    async def endpoint(request: Request) -> Response:
        async with anyio.create_task_group() as group:
            group.start_soon(refuse)
        return PlainTextResponse("never")

    app = Starlette(routes=[Route("/", endpoint)])
    install(app)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - an ExceptionGroup
        get(app)
    assert type(caught.value).__name__ == "ExceptionGroup"
    assert caught.group_contains(BulkheadFullError)


def test_a_per_host_rejection_of_the_httpx_transport_names_no_internal_host() -> None:
    import resilient
    import resilient.httpx

    response = get(
        app_raising(
            resilient.httpx.CircuitOpenError("api.10.0.3.7:8443", 4.5, resilient.State.OPEN)
        )
    )
    assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
    assert response.json() == {"detail": "service unavailable: circuit breaker is open"}
