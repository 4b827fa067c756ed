"""The HTTP API under ``/v1`` (and seed 000's ``POST /add``), put together by :func:`install`:
its routes, its error model and its body limit.

Same hub, same rules as the WebSocket: every call runs the lifecycle and answers once what it
changed is stored. Errors are ``{"code", "message", "details"?}`` with the code of the
:class:`TaskHubError` behind them; the status codes are in ``docs/http.md``. The routes are in
``tasks`` (tasks and their results), ``events`` (event streams, broadcast events),
``consumers`` (pull consumers) and ``add`` (``POST /add``); what they share is in ``deps``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from taskhub.hub.consumers import ConsumerNotFound, Consumers
from taskhub.hub.http import add, consumers, events, tasks
from taskhub.hub.http.deps import ACTION_SCHEMA, Caller, _caller, _readable, _responses
from taskhub.hub.http.events import _SSE_EVENT, NotImplementedYet, TaskEvents, _event_stream
from taskhub.hub.http.tasks import TaskEnded, TaskOptions, TaskView, _options
from taskhub.hub.hub import Hub

# install() and the error model, and the names the dashboard and the schedules routes import.
__all__ = [
    "ACTION_SCHEMA",
    "_SSE_EVENT",
    "BodyLimit",
    "Caller",
    "TaskEvents",
    "TaskOptions",
    "TaskView",
    "_event_stream",
    "_options",
    "_readable",
    "_responses",
    "install",
    "status_of",
]

log = logging.getLogger("taskhub.http")
_DRAIN = 8  # an oversized body is read and discarded up to this many max_frames, then closed


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


# --- errors and limits ----------------------------------------------------------------------
def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
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
    return _error(status_of(exc), exc.code, exc.message, **exc.details)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    try:  # credentials first: a caller who may not call learns nothing about the body
        await _caller(request, None)
    except TaskHubError as auth_error:
        return await _on_taskhub_error(request, auth_error)
    problems = []
    fields = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return _error(400, "bad_message", f"body is not valid JSON: {ctx.get('error', '')}")
        where, name = (loc[0], ".".join(loc[1:])) if loc else ("body", "")
        label = {"query": "query parameter", "path": "path parameter", "header": "header"}
        field = f"{label.get(where, 'field')} {name!r}" if name else "the request body"
        problems.append(f"{field}: {err.get('msg', 'invalid')}")
        fields.append(name or where)
    return _error(400, "bad_message", "; ".join(problems), fields=fields)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = _error(exc.status_code, code, str(exc.detail))
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
    return _error(500, "internal", "internal error; the hub logged it")


class BodyLimit:
    """Refuses a ``/v1`` (or ``/add``) request body over the hub's ``max_frame`` with 413, by its
    Content-Length or, without one, by what actually arrives (so at most ``max_frame`` bytes
    are ever buffered for one request)."""

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/v1/") or path == "/add"):
            await self.app(scope, receive, send)
            return
        limit = self.hub.limits.max_frame
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, int(length), limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                more = message.get("more_body", False)
                await self._refuse(scope, receive, send, size, limit, more=more)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        if data and not _is_json(headers.get(b"content-type", b"")):
            # A body is JSON here; a web page's cross-site form or text/plain post is not.
            sent = headers.get(b"content-type", b"").decode("latin-1") or "none"
            err = UnsupportedMediaType(
                f"the body must be JSON sent with 'Content-Type: application/json' "
                f"(the request said {sent!r})"
            )
            await _error(415, err.code, err.message)(scope, receive, send)
            return
        if data and (culprit := _not_plain_json(data)) is not None:
            bad = ProtocolError(
                f"the body holds {culprit}, which JSON cannot carry: it would be stored as "
                "null; send a number or a string instead"
            )
            await _error(400, bad.code, bad.message)(scope, receive, send)
            return
        body = {"type": "http.request", "body": data, "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, size: int, limit: int, *, more: bool = True
    ) -> None:
        err = FrameTooLarge(
            f"request body of at least {size} bytes is over the hub's max_frame of {limit} bytes",
            limit=limit,
        )
        response = _error(413, err.code, err.message, **err.details)
        # Read (and discard) the rest first: a server that closes with unread data makes the
        # client's TCP stack reset the connection, and the client never sees this answer.
        # Past a bound it is cheaper to close than to read.
        budget = _DRAIN * limit
        while more and budget > 0:
            message = await receive()
            budget -= len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        if more:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _not_plain_json(data: bytes) -> str | None:
    """``NaN`` or ``Infinity`` where the body is otherwise JSON: Python's parser (FastAPI's)
    takes them, the hub's encoder writes ``null``, so the user's number would change silently.
    The strict C decoder answers first; only a body it refuses is read again."""
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        pass
    else:
        return None
    found: list[str] = []

    def constant(name: str) -> float:
        found.append(name)
        return math.nan

    try:
        json.loads(data, parse_constant=constant)
    except ValueError:
        return None  # malformed JSON: the route answers it as before
    return found[0] if found else None


def _is_json(content_type: bytes) -> bool:
    """``application/json`` or a ``+json`` type such as ``application/merge-patch+json``."""
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


def _openapi_without_fastapi_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
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


def install(app: FastAPI, hub: Hub) -> None:
    """Add the ``/v1`` HTTP API, its error model and its body limit to ``app``."""
    app.state.consumers = Consumers(hub)
    app.state.task_events = TaskEvents(hub)
    # In this order, so the OpenAPI lists the paths as the API reference does.
    app.include_router(tasks.router)
    app.include_router(events.router)
    app.include_router(consumers.router)
    app.include_router(add.router)
    app.openapi = _openapi_without_fastapi_422(app)  # type: ignore[method-assign]
    app.add_exception_handler(TaskHubError, _on_taskhub_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(BodyLimit, hub=hub)
