"""The ``/v1`` API's error model: every refusal is ``{"code", "message", "details"?}`` with
the code of the :class:`TaskHubError` behind it and the status of its class (docs/http.md);
malformed requests are 400 (FastAPI's own 422 is kept for the rules the routes document)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope

from taskhub.errors import (
    AuthenticationFailed,
    FrameTooLarge,
    InvalidAction,
    InvalidOption,
    NotHolding,
    PermissionDenied,
    ProtocolError,
    StaleAttempt,
    StoreUnavailable,
    TaskHubError,
    TaskNotFound,
    TooManyConnections,
)
from taskhub.hub.auth import AuthThrottled
from taskhub.hub.consumers import ConsumerNotFound
from taskhub.hub.http.deps import caller
from taskhub.hub.http.events import NotImplementedYet
from taskhub.hub.http.tasks import TaskEnded

log = logging.getLogger("taskhub.http")


class UnsupportedMediaType(ProtocolError):
    """A body that is not declared JSON (415)."""

    code = "unsupported_media_type"


# Most specific first: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[TaskHubError], int], ...] = (
    (FrameTooLarge, 413),
    (UnsupportedMediaType, 415),
    (ProtocolError, 400),
    (AuthThrottled, 429),
    (AuthenticationFailed, 401),
    (PermissionDenied, 403),
    (TaskNotFound, 404),
    (ConsumerNotFound, 404),
    (NotHolding, 409),
    (StaleAttempt, 409),
    (TaskEnded, 409),
    (InvalidAction, 422),
    (InvalidOption, 422),
    (TooManyConnections, 429),
    (NotImplementedYet, 501),
    (StoreUnavailable, 503),
)


def status_of(exc: TaskHubError) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 400)


def error_answer(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    """The error body, with the headers its status calls for (``WWW-Authenticate`` on 401,
    ``Retry-After`` when the details say how long to wait)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = details.get("retry_after")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(math.ceil(retry_after))
    return JSONResponse(body, status_code=status, headers=headers or None)


async def _on_taskhub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TaskHubError)
    return error_answer(status_of(exc), exc.code, exc.message, **exc.details)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    try:  # credentials first: a caller who may not call learns nothing about the body
        await caller(request, None)
    except TaskHubError as auth_error:
        return await _on_taskhub_error(request, auth_error)
    problems = []
    fields = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return error_answer(
                400, "bad_message", f"body is not valid JSON: {ctx.get('error', '')}"
            )
        where, name = (loc[0], ".".join(loc[1:])) if loc else ("body", "")
        label = {"query": "query parameter", "path": "path parameter", "header": "header"}
        field = f"{label.get(where, 'field')} {name!r}" if name else "the request body"
        problems.append(f"{field}: {err.get('msg', 'invalid')}")
        fields.append(name or where)
    return error_answer(400, "bad_message", "; ".join(problems), fields=fields)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = error_answer(exc.status_code, code, str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    if exc.status_code == 405:  # every method of the path, not just those of one route
        response.headers["Allow"] = ", ".join(_methods(request.app, request.scope))
    return response


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods some route answers on the request's path. Asks each route whether it
    matches (Starlette's public ``matches``), which also sees routes that included routers
    keep inside themselves rather than in ``app.routes``."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_answer(500, "internal", "internal error; the hub logged it")


def openapi_without_fastapi_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 ``HTTPValidationError`` on every route with parameters, but
    the hub answers a malformed request with a 400 :class:`ErrorBody` (``_on_validation_error``)
    and keeps 422 for the rules the routes document themselves: drop FastAPI's."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    answers = operation.get("responses", {})
                    if "HTTPValidationError" in str(answers.get("422", "")):
                        del answers["422"]
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        return app.openapi_schema or {}

    return openapi


def install_error_model(app: FastAPI) -> None:
    """Answer every error of ``app`` in the API's error model, and keep FastAPI's 422 out of
    its OpenAPI."""
    app.openapi = openapi_without_fastapi_422(app)  # type: ignore[method-assign]
    app.add_exception_handler(TaskHubError, _on_taskhub_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
