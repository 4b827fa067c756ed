"""What the route modules of the ``/v1`` HTTP API share: the hub and the caller's credentials
as FastAPI dependencies, the field shapes the OpenAPI states, the documented error answers, and
a task read on the caller's behalf."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema
from pydantic.config import JsonDict

from taskhub.errors import (
    AuthenticationFailed,
    PartitionUnavailable,
    PermissionDenied,
    StoreUnavailable,
    TaskHubError,
    TaskNotFound,
)
from taskhub.hub.auth import parse_bearer
from taskhub.hub.hub import Hub
from taskhub.lifecycle import Credentials
from taskhub.records import TASK_STATE_WORDS, TaskRecord, TaskState

log = logging.getLogger("taskhub.http")

MAX_WAIT = 300.0  # longest long poll a request may ask for; a hub may cap it lower (Limits)
# For the OpenAPI only: the hub's own checks enforce these and name the bad character (422).
ACTION_SCHEMA: JsonDict = {
    "pattern": r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?:[A-Za-z0-9_.\-]+$",
    "maxLength": 255,
}


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's number and integer: no `false` or "5" for a number, and 5.0 is an integer.
Number = Annotated[float, Field(strict=True)]
Boolean = Annotated[bool, Field(strict=True)]  # JSON true/false only, not "yes" or 1
Integer = Annotated[int, BeforeValidator(_whole), Field(strict=True)]


def _state_word(value: Any) -> Any:
    return TaskState.parse(value) if isinstance(value, str) else value


# A task state in a filter (`?state=`): the state (`init`) or the dashboard's label for it
# (`waiting`), one vocabulary (taskhub.records.TaskState). A bad word is a 400 naming them all.
StateFilter = Annotated[
    TaskState,
    BeforeValidator(_state_word),
    WithJsonSchema(
        {
            "type": "string",
            "enum": list(TASK_STATE_WORDS),
            "description": "A task state, or its label: waiting (init), running (start), "
            "failed (fail), ended (end).",
        }
    ),
]


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine code, as on the WebSocket (protocol.md §7).")
    message: str = Field(description="Human text naming the culprit.")
    details: dict[str, Any] | None = None


_ERR = {"model": ErrorBody}
_COMMON: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Malformed JSON or a field of the wrong shape (named)."},
    401: {**_ERR, "description": "Missing or wrong credentials."},
    413: {**_ERR, "description": "Body over the hub's max_frame."},
    429: {
        **_ERR,
        "description": "Too many failed authentications from the caller's address (or the "
        "hub busy checking keys): wait Retry-After seconds.",
    },
    "4XX": _ERR,
    500: {**_ERR, "description": "Unexpected error (logged by the hub)."},
    503: {**_ERR, "description": "The store could not be reached, or the hub is stopping."},
}


def error_responses(**extra: str) -> dict[int | str, dict[str, Any]]:
    """A route's documented error answers: the common ones, plus ``_404="Unknown task."``
    and the like (a status after ``_``, and what it means for that route)."""
    out = dict(_COMMON)
    for status, text in extra.items():
        out[int(status.lstrip("_"))] = {**_ERR, "description": text}
    return out


# --- dependencies ---------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="`Bearer <name>:<key>`")


def hub_of(request: Request) -> Hub:
    """The hub the app serves (FastAPI dependency: `HubDep`)."""
    hub: Hub = request.app.state.hub
    return hub


async def caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Credentials:
    """The caller's credentials from its Bearer header (FastAPI dependency: ``Caller``); a hub
    with open access needs no header. The unused second parameter puts the Bearer scheme in
    the OpenAPI."""
    hub = hub_of(request)
    header = request.headers.get("authorization")
    if not header and not hub.registry.open_access:
        raise AuthenticationFailed("missing 'Authorization: Bearer <name>:<key>'")
    name, key = parse_bearer(header)
    return await hub.registry.authenticate(
        name, key, request.client.host if request.client else None
    )


HubDep = Annotated[Hub, Depends(hub_of)]
Caller = Annotated[Credentials, Depends(caller)]


async def read_task(hub: Hub, creds: Credentials, task_id: str) -> TaskRecord:
    """The task, live or stored, if ``creds`` may read it: TaskNotFound, PermissionDenied,
    or StoreUnavailable when the store cannot be read."""
    try:
        rec = await hub.find(task_id)
    except PartitionUnavailable:  # no hub leads its partition now: retryable, said as is
        raise
    except TaskHubError as exc:  # e.g. the link to its partition's hub broke: one line
        log.warning("reading task %s failed: %s", task_id, exc.message)
        raise StoreUnavailable(f"could not read task {task_id} from the store") from exc
    except Exception as exc:
        log.exception("reading task %s failed", task_id)
        raise StoreUnavailable(f"could not read task {task_id} from the store") from exc
    if rec is None:
        raise TaskNotFound(f"no task {task_id}", task=task_id)
    if not hub.lc.may_read(creds, rec):
        raise PermissionDenied(
            f"{creds.name!r} may not read task {task_id} ({rec.action})", action=rec.action
        )
    return rec
