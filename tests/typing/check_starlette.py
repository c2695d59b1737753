"""Checked by mypy --strict, never run: the handlers fit where Starlette and FastAPI take
one (FastAPI types a handler as a coroutine function of a Request and any exception)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from resilient import BulkheadFullError, RejectedError
from resilient.starlette import install, rejected, rejection_handler

app = Starlette(exception_handlers={RejectedError: rejected})
app.add_exception_handler(RejectedError, rejected)
app.add_exception_handler(BulkheadFullError, rejection_handler(status_code=429, detail=str))
install(app)
install(app, detail="try again later")
install(app, detail=lambda exc: f"{exc.name} is resting")

# FastAPI(exception_handlers=...) takes this type.
fastapi_handlers: dict[
    int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]
] = {RejectedError: rejected, BulkheadFullError: rejection_handler(status_code=429)}
