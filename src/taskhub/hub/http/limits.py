"""The ``/v1`` API's body limit: a request body over the hub's ``max_frame`` is refused with 413
before it is buffered, and a body must be JSON that the hub can store as sent."""

from __future__ import annotations

import json
import math

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskhub.errors import FrameTooLarge, ProtocolError
from taskhub.hub.http.errors import UnsupportedMediaType, error_answer
from taskhub.hub.hub import Hub

_DRAIN = 8  # an oversized body is read and discarded up to this many max_frames, then closed


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
            await error_answer(415, err.code, err.message)(scope, receive, send)
            return
        if data and (culprit := _not_plain_json(data)) is not None:
            bad = ProtocolError(
                f"the body holds {culprit}, which JSON cannot carry: it would be stored as "
                "null; send a number or a string instead"
            )
            await error_answer(400, bad.code, bad.message)(scope, receive, send)
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
        response = error_answer(413, err.code, err.message, **err.details)
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
