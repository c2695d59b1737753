"""Starlette and FastAPI: a rejection answered as 503 Service Unavailable with Retry-After.

An open breaker or a full bulkhead raises a :class:`resilient.RejectedError` that nothing
in a web app catches: unhandled, it becomes a 500, which tells clients and load balancers
that the app is broken, not that it sheds load on purpose. ``install(app)`` registers a
handler for ``RejectedError`` (or give :func:`rejected`, the handler itself), which covers
``CircuitOpenError``, ``BulkheadFullError``, ``WorkersExhaustedError`` and every subclass
(Starlette finds a handler by the exception's MRO)::

    install(app)                                             # at startup
    FastAPI(exception_handlers={RejectedError: rejected})    # or at construction

The body is ``{"detail": "service unavailable: circuit breaker is open"}``: the kind of
policy, never its name nor the root cause (a per-host breaker of ``resilient.httpx`` is
named after an internal host, and ``str(exc)`` of an open breaker names the downstream's
failure: neither is for an outside client).
``rejection_handler(status_code=..., detail=...)`` makes a handler with other choices.

This module imports starlette (the ``starlette`` extra installs it); ``import resilient``
never does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from resilient._errors import ConfigError, RejectedError, UsageError

__all__ = ["install", "rejected", "rejection_handler"]

#: What Starlette and FastAPI take as an exception handler (FastAPI wants a coroutine).
_Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

#: Who a bad option is reported for.
_OWNER = "resilient.starlette"

#: WebSocket close code 1013, "Try Again Later" (IANA's WebSocket close code registry).
_TRY_AGAIN_LATER = 1013

#: The ASGI extension with which a server can send an HTTP answer to a WebSocket handshake.
_DENIAL = "websocket.http.response"


def rejection_handler(
    *, status_code: int = 503, detail: str | Callable[[RejectedError], str] | None = None
) -> _Handler:
    """A handler that answers a rejection with ``status_code`` and a ``Retry-After`` header.

    ``status_code`` is 503 by default for every rejection: the app is fine and sheds load,
    which is what 503 says to clients, proxies and load balancers. Register a second handler
    for one kind to answer it otherwise (Starlette picks the most specific class)::

        app.add_exception_handler(BulkheadFullError, rejection_handler(status_code=429))

    ``detail`` is the body's ``{"detail": ...}``: by default the status's phrase and the kind
    of policy, without its name or the root cause; a string to say the same thing for
    every rejection; or a callable of the error (``detail=str``: its whole text, with the
    retry hint and the failure that opened the breaker, for internal APIs only).

    ``Retry-After`` is the error's ``retry_after`` in whole seconds rounded up (RFC 9110
    wants an integer, and a client told 0 while 0.2 s are left would be refused again);
    left out when the policy cannot know (a forced-open breaker, probes in flight, a
    bulkhead). A WebSocket refused before it is accepted gets the same answer to its
    handshake, if the server can send one; else, and once accepted, it is closed with code
    1013, Try Again Later, and the detail as the reason.
    """
    if (
        isinstance(status_code, bool)
        or not isinstance(status_code, int)
        or not 400 <= status_code <= 599
    ):
        raise ConfigError(
            "status_code",
            status_code,
            "an HTTP error status, an int from 400 to 599",
            owner=_OWNER,
        )
    if detail is not None and not isinstance(detail, str) and not callable(detail):
        raise ConfigError(
            "detail",
            detail,
            "None (the kind of policy), a str, or a callable(RejectedError) -> str",
            owner=_OWNER,
        )
    try:
        phrase = HTTPStatus(status_code).phrase.lower()
    except ValueError:  # a status with no name in the registry
        phrase = "rejected"

    def text(exc: RejectedError) -> str:
        if detail is None:
            return f"{phrase}: {_anonymous(exc)}"
        return detail if isinstance(detail, str) else detail(exc)

    async def handle(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RejectedError):
            raise UsageError(
                f"a resilient.starlette handler got {type(exc).__name__}: register it for"
                " resilient.RejectedError (or a subclass) only"
            ) from exc
        seconds = _whole_seconds(exc.retry_after)  # read once: an open breaker's shrinks
        headers = {} if seconds is None else {"Retry-After": str(seconds)}
        message = text(exc)
        answer = JSONResponse({"detail": message}, status_code, headers)
        if isinstance(request, WebSocket):
            await _refuse(request, answer, message)
            return _Answered()
        return answer

    return handle


_default = rejection_handler()


async def rejected(request: Request, exc: Exception) -> Response:
    """The default handler: 503, ``Retry-After`` rounded up, and the kind of policy as
    the detail, never its name nor the root cause (see :func:`rejection_handler`)."""
    return await _default(request, exc)


def install(
    app: Starlette,
    *,
    status_code: int = 503,
    detail: str | Callable[[RejectedError], str] | None = None,
) -> None:
    """Answer every :class:`resilient.RejectedError` that reaches ``app`` with a
    :func:`rejection_handler` (503 and ``Retry-After`` by default): a Starlette or FastAPI
    app, at startup. The handler sees what routes and their dependencies raise; a
    rejection raised in a middleware goes past exception handlers, as in Starlette.

    Raises :class:`resilient.UsageError` if ``app`` already serves: Starlette builds its
    handlers once, on the first request, and would ignore this one without a word.
    """
    handler = rejection_handler(status_code=status_code, detail=detail)
    if getattr(app, "middleware_stack", None) is not None:
        raise UsageError(
            "install(app) after the app started serving: Starlette reads its exception"
            " handlers on the first request; install at startup, before it"
        )
    app.add_exception_handler(RejectedError, handler)


def _anonymous(exc: RejectedError) -> str:
    """What refused, without the policy's name: "circuit breaker is open"."""
    if type(exc) is RejectedError:
        return "the call was rejected"
    return exc._what(named=False).replace(" is forced_open", " is forced open")  # words


def _whole_seconds(retry_after: float | None) -> int | None:
    """``retry_after`` as Retry-After's delta-seconds: an integer, rounded up, so that a
    client that waits as told finds the policy admitting; None if unknown (or infinite)."""
    if retry_after is None or not math.isfinite(retry_after):
        return None
    return max(0, math.ceil(retry_after))


async def _refuse(websocket: WebSocket, answer: Response, reason: str) -> None:
    """Refuse a WebSocket session in the handler itself: older Starlette (0.37) ignores what
    a handler returns for one. Before it is accepted, the HTTP answer goes back as the
    handshake's response (if the server has the denial extension; else it is closed, and
    the server answers 403). Once accepted, it can only be closed: with 1013, Try Again
    Later."""
    state = websocket.application_state
    if state is WebSocketState.CONNECTING and _DENIAL in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(answer)
    elif state in (WebSocketState.CONNECTING, WebSocketState.CONNECTED):
        # A close frame's reason is at most 123 bytes of UTF-8.
        await websocket.close(_TRY_AGAIN_LATER, reason.encode()[:123].decode(errors="ignore"))
    # Closed or answered already: nothing is left to send.


class _Answered(Response):
    """What a handler returns for a WebSocket it answered itself: newer Starlette sends what
    the handler returns, and there is nothing more to send."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pass
