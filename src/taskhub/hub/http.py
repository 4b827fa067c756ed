"""The HTTP API under ``/v1`` (and seed 000's ``POST /add``): tasks, their results and events,
pull consumers, broadcast events.

Same hub, same rules as the WebSocket: every call runs the lifecycle and answers once what it
changed is stored. Errors are ``{"code", "message", "details"?}`` with the code of the
:class:`TaskHubError` behind them; the status codes are in ``docs/http.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from pydantic.config import JsonDict
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskhub.chains import MAX_STEPS
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
from taskhub.hub.auth import parse_bearer
from taskhub.hub.consumers import MAX_LEASE, Consumer, ConsumerNotFound, Consumers
from taskhub.hub.hub import Hub, task_view
from taskhub.lifecycle import Credentials, Task
from taskhub.names import allowed, reserved_action, validate_action
from taskhub.store.base import TERMINAL_STATES, EventRecord, TaskRecord

log = logging.getLogger("taskhub.http")

MAX_WAIT = 300.0  # longest long poll a request may ask for; a hub may cap it lower (Limits)
SSE_KEEPALIVE = 15.0  # a comment line this often keeps proxies from closing a quiet stream
_DRAIN = 8  # an oversized body is read and discarded up to this many max_frames, then closed
# For the OpenAPI only: the hub's own checks enforce these and name the bad character (422).
ACTION_SCHEMA: JsonDict = {
    "pattern": r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?:[A-Za-z0-9_.\-]+$",
    "maxLength": 255,
}
# The action alphabet as a regular expression, for a route that refuses a bad name as a shape
# error (400): POST /add, whose workload is refused whole.
ACTION_PATTERN = str(ACTION_SCHEMA["pattern"])
TOPIC_SCHEMA: JsonDict = {"pattern": r"^[A-Za-z0-9_\-]+([/:.][A-Za-z0-9_\-]+)*$", "maxLength": 255}


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's number and integer: no `false` or "5" for a number, and 5.0 is an integer.
Number = Annotated[float, Field(strict=True)]
Integer = Annotated[int, BeforeValidator(_whole), Field(strict=True)]
TaskState = Literal["init", "start", "success", "fail", "end"]
DeliveryState = Literal["pending", "offered", "started", "done", "dropped", "failed"]


class TaskEnded(TaskHubError):
    """The task has already ended, so it cannot be changed (for example, cancelled)."""

    code = "task_ended"


class NotImplementedYet(TaskHubError):
    code = "not_implemented"


# Most specific first: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[TaskHubError], int], ...] = (
    (FrameTooLarge, 413),
    (ProtocolError, 400),
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


# --- bodies and answers ---------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine code, as on the WebSocket (protocol.md §7).")
    message: str = Field(description="Human text naming the culprit.")
    details: dict[str, Any] | None = None


class TaskOptions(BaseModel):
    """Per-task options. A field left out takes the hub default; ``null`` timeouts mean
    "forever"."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    timeout: Number | None = Field(
        None, description="End timeout: seconds after start.", json_schema_extra={"minimum": 0}
    )
    start_timeout: Number | None = Field(
        None, description="Seconds to wait for a worker.", json_schema_extra={"minimum": 0}
    )
    priority: Integer = Field(0, ge=-(2**31), le=2**31)
    key: str | None = Field(None, description="Idempotency key: a repeat returns the task.")
    retries: Integer | None = Field(
        None,  # null or left out: the hub default
        le=2**31,
        description="Re-offers after a handler failure.",
        json_schema_extra={"minimum": 0, "maximum": 2**31},
    )
    max_attempts: Integer | None = Field(
        None, le=2**31, json_schema_extra={"minimum": 1, "maximum": 2**31}
    )
    delay: Number | str = Field(
        0.0,
        description='Before the task is offered: seconds, or an interval such as `"7 days"`, '
        '`"1h30m"` or `"PT1H30M"` (docs/scheduling.md).',
    )
    once_every: Number | str | None = Field(
        None,
        description="Debounce: while a task of this action and `key` is still waiting, return "
        "it; otherwise the new task is offered after this interval.",
    )
    backoff: Number | None = Field(
        None, description="First retry delay, seconds.", json_schema_extra={"minimum": 0}
    )
    backoff_max: Number | None = Field(
        None, description="Longest retry delay, seconds.", json_schema_extra={"minimum": 0}
    )
    at: Number | None = Field(None, description="Epoch seconds before which it is not offered.")
    partition_key: str | None = Field(
        None,
        description="Within each group, tasks of one partition key are worked one at a time, "
        "in publish order.",
    )


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(
        description="`<noun>:<verb>` or `<noun>/<sub.noun>:<verb>`.",
        json_schema_extra=ACTION_SCHEMA,
    )
    payload: Any = None
    options: TaskOptions | None = None


class DeliveryView(BaseModel):
    group: str
    state: DeliveryState
    attempt: int
    tries: int


class TaskView(BaseModel):
    id: str
    action: str
    state: TaskState
    publisher: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    options: dict[str, Any]
    updates: int
    last_update: Any
    result: Any
    error: dict[str, Any] | None
    deliveries: list[DeliveryView]


class TaskPage(BaseModel):
    tasks: list[TaskView]
    next: str | None = Field(description="Pass as `after` for the next page; null at the end.")


class TaskResult(BaseModel):
    id: str
    state: Literal["success"]
    result: Any


class EmitAccepted(BaseModel):
    topic: str
    delivered: int = Field(description="Connections it was queued for.")


class ConsumerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    group: str | None = Field(None, description="Named queue; default: the service name.")
    actions: list[Annotated[str, Field(json_schema_extra=ACTION_SCHEMA)]] = Field(min_length=1)
    concurrency: Integer = Field(
        1,
        le=2**31,
        description="Tasks leased at once (credit).",
        json_schema_extra={"minimum": 1, "maximum": 2**31},
    )
    lease: Number = Field(
        json_schema_extra={"exclusiveMinimum": 0, "maximum": MAX_LEASE},
        default=30.0,
        description=f"Seconds to commit a task (0 < lease <= {MAX_LEASE:g})",
    )


class ConsumerView(BaseModel):
    consumer_id: str
    consumer_token: str = Field(description="Send as `X-Consumer-Token` on every consumer call.")
    group: str
    actions: list[str]
    concurrency: int
    lease: float


class LeaseView(BaseModel):
    task_id: str
    attempt: int
    action: str
    group: str
    publisher: str
    created_at: float
    payload: Any
    lease_expires_at: float = Field(description="Epoch seconds; commit before this.")
    previous_result: Any = None


class CommitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    result: Any = None


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    data: Any = None


class ErrorInfo(BaseModel):
    type: str = "Error"
    message: str = ""


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    error: ErrorInfo = Field(default_factory=ErrorInfo)
    retry: bool = Field(True, description="false: fail the delivery now, even with retries left.")


class DropBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str


class StepDone(BaseModel):
    task_id: str
    state: TaskState = Field(description="The task's state after the step.")


class ConsumerStopped(BaseModel):
    consumer_id: str
    handed_back: int = Field(description="Leases given back to the group.")


class AddStep(BaseModel):
    """One step of a seed-000 chain."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(
        description="The step's action, `<noun>:<verb>`.",
        max_length=255,
        pattern=ACTION_PATTERN,
    )
    input: Any = Field(
        None,
        description="The declared input; the previous step's output (an object) is merged "
        "over it (null: the previous output as it is).",
    )


class AddChain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[AddStep] = Field(min_length=1, max_length=MAX_STEPS)


def _add_shape(value: Any) -> str:
    return "chains" if isinstance(value, list) else "chain"


# One chain, or a list of them: the tag names the branch, so an error names the bad step as
# `chain.tasks.1.task` or `chains.2.tasks.0.input` (and not both branches of a plain union).
AddWorkload = Annotated[
    Annotated[AddChain, Tag("chain")] | Annotated[list[AddChain], Tag("chains")],
    Discriminator(_add_shape),
]


class AddAccepted(BaseModel):
    accepted: int = Field(description="Tasks accepted: the steps of every chain.")
    chains: list[str] = Field(description="Each chain's id (a task: GET /v1/tasks/{id}).")


_ERR = {"model": ErrorBody}
_COMMON: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Malformed JSON or a field of the wrong shape (named)."},
    401: {**_ERR, "description": "Missing or wrong credentials."},
    413: {**_ERR, "description": "Body over the hub's max_frame."},
    "4XX": _ERR,
    500: {**_ERR, "description": "Unexpected error (logged by the hub)."},
    503: {**_ERR, "description": "The store could not be reached, or the hub is stopping."},
}


def _responses(**extra: str) -> dict[int | str, dict[str, Any]]:
    out = dict(_COMMON)
    for status, text in extra.items():
        out[int(status.lstrip("_"))] = {**_ERR, "description": text}
    return out


# --- dependencies ---------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="`Bearer <name>:<key>`")
_consumer_token = APIKeyHeader(name="X-Consumer-Token", auto_error=False)


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def _caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Credentials:
    hub = _hub(request)
    header = request.headers.get("authorization")
    if not header and not hub.registry.open_access:
        raise AuthenticationFailed("missing 'Authorization: Bearer <name>:<key>'")
    name, key = parse_bearer(header)
    # scrypt takes tens of ms the first time: keep it off the event loop
    return await asyncio.to_thread(hub.registry.authenticate, name, key)


def _consumers(request: Request) -> Consumers:
    consumers: Consumers = request.app.state.consumers
    return consumers


def _events(request: Request) -> TaskEvents:
    events: TaskEvents = request.app.state.task_events
    return events


async def _consumer(
    consumer_id: str,
    creds: Annotated[Credentials, Depends(_caller)],
    consumers: Annotated[Consumers, Depends(_consumers)],
    token: Annotated[str | None, Security(_consumer_token)],
) -> Consumer:
    return consumers.get(consumer_id, token, creds)


HubDep = Annotated[Hub, Depends(_hub)]
Caller = Annotated[Credentials, Depends(_caller)]
ConsumersDep = Annotated[Consumers, Depends(_consumers)]
ConsumerDep = Annotated[Consumer, Depends(_consumer)]


class TaskEvents:
    """Hands the lifecycle's task events to the HTTP requests waiting on that task."""

    def __init__(self, hub: Hub) -> None:
        self._waiting: dict[str, set[Callable[[EventRecord], None]]] = {}
        hub.lc.listeners.append(self._on_event)

    def _on_event(self, task: Task, ev: EventRecord) -> None:
        fns = self._waiting.get(ev.task_id)
        if fns:  # nearly always None: one lookup per event on the hot path
            for fn in tuple(fns):
                fn(ev)

    @contextlib.contextmanager
    def watch(self, task_id: str, fn: Callable[[EventRecord], None]) -> Iterator[None]:
        fns = self._waiting.setdefault(task_id, set())
        fns.add(fn)
        try:
            yield
        finally:
            fns.discard(fn)
            if not fns:
                self._waiting.pop(task_id, None)


async def _readable(hub: Hub, creds: Credentials, task_id: str) -> TaskRecord:
    try:
        rec = await hub.find(task_id)
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


def _storable(field: str, value: Any) -> None:
    """Refuse what the store could not write (MessagePack keeps 64-bit integers): accepted, such
    a value would stall the commit pipeline for everyone."""
    try:
        msgspec.msgpack.encode(value)
    except (OverflowError, TypeError) as exc:
        raise ProtocolError(f"field {field!r} cannot be stored: {exc}", field=field) from None


def _options(options: TaskOptions | None) -> SimpleNamespace | None:
    # The lifecycle reads options with getattr: a field left out must be absent, not None.
    if options is None:
        return None
    fields = options.model_dump(exclude_unset=True)
    for name in ("retries", "max_attempts", "backoff", "backoff_max", "once_every"):
        # null: the hub default (no "forever" here)
        if name in fields and fields[name] is None:
            del fields[name]
    return SimpleNamespace(**fields)


def _failure(rec: TaskRecord) -> JSONResponse:
    """A task that ended without a result, as the error the Python client would raise."""
    error = rec.error or {}
    reason = str(error.get("reason", ""))
    if rec.state == "end":
        code, message = "no_result", f"task {rec.id} ended without a result (all dropped)"
    else:
        code = {
            "timeout": "task_timeout",
            "start_timeout": "task_timeout",
            "cancelled": "task_cancelled",
        }.get(reason, "task_failed")
        message = str(error.get("message") or f"task {rec.id} failed ({reason})")
    details = {"task": rec.id, "state": rec.state, **({"error": error} if error else {})}
    return JSONResponse({"code": code, "message": message, "details": details}, status_code=409)


def _sse(ev: EventRecord) -> bytes:
    data = msgspec.json.encode(
        {
            "task": ev.task_id,
            "seq": ev.seq,
            "type": ev.type,
            "at": ev.at,
            "group": ev.group,
            "service": ev.service,
            "data": ev.data,
        }
    )
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (ev.seq, ev.type.encode(), data)


async def _event_stream(
    hub: Hub, events: TaskEvents, task_id: str, after: int
) -> AsyncIterator[bytes]:
    live: asyncio.Queue[EventRecord] = asyncio.Queue()
    seq = after
    with events.watch(task_id, live.put_nowait):
        # Listening first, then reading the store after a flush: no event falls in between;
        # the live ones already stored are skipped by seq.
        await hub.flush()
        for ev in await hub.store.get_events(task_id):
            if ev.seq > seq:
                seq = ev.seq
                yield _sse(ev)
            if ev.type in TERMINAL_STATES:
                return
        if hub.lc.get(task_id) is None:
            return  # ended, and its terminal event is not stored (removed by retention)
        while True:
            try:
                first = await asyncio.wait_for(live.get(), SSE_KEEPALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            batch = [first]
            while not live.empty():
                batch.append(live.get_nowait())
            await hub.flush()  # like the WebSocket: nothing is streamed before it is stored
            for ev in batch:
                if ev.seq <= seq:
                    continue
                seq = ev.seq
                yield _sse(ev)
                if ev.type in TERMINAL_STATES:
                    return


_SSE_EVENT: JsonDict = {
    "type": "object",
    "description": "One event: `id` is its seq, `event` its type, `data` a JSON object "
    "{task, seq, type, at, group, service, data}.",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string"},
    },
}

# --- routes ---------------------------------------------------------------------------------
router = APIRouter(prefix="/v1")


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskView,
    tags=["tasks"],
    summary="Publish a task",
    responses={
        200: {"model": TaskView, "description": "A repeated `key`: the task published before."},
        **_responses(
            _403="No pub permission for the action (named).",
            _422="Bad action name or option (named).",
        ),
    },
)
async def create_task(body: TaskCreate, hub: HubDep, creds: Caller, response: Response) -> Any:
    """Answers once the task is stored (durable): 201, or 200 for a repeated `options.key`."""
    _storable("payload", body.payload)
    task, created = hub.lc.publish(creds, body.action, body.payload, _options(body.options))
    hub.kick()
    await hub.flush()
    rec = task.rec if isinstance(task, Task) else await _readable(hub, creds, task)
    if not created:
        response.status_code = 200
    return task_view(rec)


@router.get(
    "/tasks",
    response_model=TaskPage,
    tags=["tasks"],
    summary="List tasks, oldest first",
    responses=_responses(),
)
async def list_tasks(
    hub: HubDep,
    creds: Caller,
    action: str | None = None,
    state: TaskState | None = None,
    after: Annotated[str | None, Query(description="The `next` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Tasks by id (creation order) that the caller may read. A page may hold fewer than
    `limit` tasks and still have a `next`: keep going until `next` is null."""
    rows = await hub.store.list_tasks(action=action, state=state, after=after, limit=limit + 1)
    # The store may lag the hub by a batch: overlay the fresher in-memory records, then filter
    # again. Only ids up to the store page's last one are complete, so stop there.
    bound = rows[-1].id if len(rows) > limit else None
    merged = {rec.id: rec for rec in rows}
    for rec in hub.unwritten().values():
        if (
            (after is None or rec.id > after)
            and (bound is None or rec.id <= bound)
            and (action is None or rec.action == action)
        ):
            merged[rec.id] = rec
    found = sorted(
        (
            rec
            for rec in merged.values()
            if (state is None or rec.state == state) and hub.lc.may_read(creds, rec)
        ),
        key=lambda rec: rec.id,
    )
    page = found[:limit]
    next_id = page[-1].id if len(found) > limit else bound
    return {"tasks": [task_view(rec) for rec in page], "next": next_id}


@router.get(
    "/tasks/{task_id}",
    response_model=TaskView,
    tags=["tasks"],
    summary="Get a task",
    responses=_responses(_403="May not read the task's action.", _404="Unknown task."),
)
async def get_task(task_id: str, hub: HubDep, creds: Caller) -> Any:
    return task_view(await _readable(hub, creds, task_id))


@router.get(
    "/tasks/{task_id}/result",
    response_model=TaskResult,
    tags=["tasks"],
    summary="Wait for a task's result (long poll)",
    responses={
        202: {"model": TaskView, "description": "Still running after `wait`: the task so far."},
        **_responses(
            _403="May not read the task's action.",
            _404="Unknown task.",
            _409="The task failed (`task_failed`, `task_timeout`, `task_cancelled`) or ended "
            "without a result (`no_result`).",
        ),
    },
)
async def get_result(
    task_id: str,
    hub: HubDep,
    creds: Caller,
    events: Annotated[TaskEvents, Depends(_events)],
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait.")] = 0.0,
) -> Any:
    """200 with the result once the task succeeded; 409 with its error once it failed or
    ended without a result; 202 with the task if it is still running after `wait` seconds."""
    wait = min(wait, hub.limits.max_wait)
    rec = await _readable(hub, creds, task_id)
    if rec.state not in TERMINAL_STATES and wait > 0:
        ended = asyncio.Event()

        def on_event(ev: EventRecord) -> None:
            if ev.type in TERMINAL_STATES:
                ended.set()

        with events.watch(task_id, on_event):
            if hub.lc.get(task_id) is None:
                ended.set()  # it ended while we looked it up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), wait)
        rec = await _readable(hub, creds, task_id)
    if rec.state not in TERMINAL_STATES:
        return JSONResponse(task_view(rec), status_code=202)
    await hub.flush()  # answer only once the outcome is stored
    if rec.state == "success":
        return {"id": rec.id, "state": "success", "result": rec.result}
    return _failure(rec)


@router.delete(
    "/tasks/{task_id}",
    response_model=TaskView,
    tags=["tasks"],
    summary="Cancel a task",
    responses=_responses(
        _403="Neither the publisher nor allowed to publish the action.",
        _404="Unknown task.",
        _409="The task has already ended.",
    ),
)
async def cancel_task(task_id: str, hub: HubDep, creds: Caller) -> Any:
    """The task fails with reason `cancelled`; its workers are told to stop."""
    try:
        task = hub.lc.cancel(creds, task_id)
    except TaskNotFound:
        rec = await _readable(hub, creds, task_id)  # 404 if it never existed
        raise TaskEnded(f"task {task_id} has already ended ({rec.state})", task=task_id) from None
    hub.kick()
    await hub.flush()
    return task_view(task.rec)


@router.get(
    "/tasks/{task_id}/events",
    tags=["tasks"],
    summary="Stream a task's events (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: the stored events, then live ones, ending "
            "after the terminal event (`success`, `fail` or `end`).",
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **_responses(_403="May not read the task's action.", _404="Unknown task."),
    },
)
async def task_events(
    task_id: str,
    request: Request,
    hub: HubDep,
    creds: Caller,
    events: Annotated[TaskEvents, Depends(_events)],
) -> StreamingResponse:
    await _readable(hub, creds, task_id)
    last = request.headers.get("last-event-id", "")
    after = int(last) if last.isdigit() else 0
    return StreamingResponse(
        _event_stream(hub, events, task_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/events/{topic}",
    status_code=202,
    response_model=EmitAccepted,
    tags=["events"],
    summary="Emit a broadcast event",
    responses=_responses(
        _403="No permission for the topic.",
        _422="Bad topic name.",
        _501="This hub has no broadcast events yet.",
    ),
)
async def emit_event(
    topic: Annotated[str, Path(json_schema_extra=TOPIC_SCHEMA)],
    hub: HubDep,
    creds: Caller,
    data: Annotated[Any, Body()] = None,
) -> Any:
    """The JSON body is the event's data; it goes to every connection subscribed to the topic."""
    # Broadcast events are being added to the Hub separately: use them when they are there.
    emit = getattr(hub, "emit", None)
    if emit is None:
        raise NotImplementedYet("broadcast events are not available on this hub yet")
    outcome = emit(creds, topic, data)
    if inspect.isawaitable(outcome):
        outcome = await outcome
    hub.kick()
    return {"topic": topic, "delivered": outcome if isinstance(outcome, int) else 0}


@router.post(
    "/consumers",
    status_code=201,
    response_model=ConsumerView,
    tags=["consumers"],
    summary="Start a pull consumer",
    responses=_responses(
        _403="No sub permission for an action (named).",
        _422="Bad action, concurrency or lease (named).",
        _429="The service's max_connections is reached.",
    ),
)
async def start_consumer(body: ConsumerCreate, creds: Caller, consumers: ConsumersDep) -> Any:
    c = consumers.start(
        creds, body.actions, group=body.group, concurrency=body.concurrency, lease=body.lease
    )
    return {
        "consumer_id": c.id,
        "consumer_token": c.token,
        "group": c.group,
        "actions": list(c.actions),
        "concurrency": c.concurrency,
        "lease": c.lease,
    }


_CONSUMER_ERRORS = {
    "_401": "Missing or wrong credentials or X-Consumer-Token.",
    "_403": "The consumer belongs to another service.",
    "_404": "Unknown or stopped consumer.",
}
_STEP_ERRORS = _responses(
    **_CONSUMER_ERRORS,
    _409="Not leased by this consumer, or leased again since (`not_holding`, `stale_attempt`).",
)


@router.post(
    "/consumers/{consumer_id}/fetch",
    response_model=LeaseView,
    tags=["consumers"],
    summary="Lease one task (long poll)",
    responses={204: {"description": "Nothing to lease within `wait`."}, **_STEP_ERRORS},
)
async def fetch(
    consumer: ConsumerDep,
    consumers: ConsumersDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait.")] = 0.0,
) -> Any:
    """At most `concurrency` tasks are leased at once; commit (or drop, or fail) one before
    `lease_expires_at`, or it is offered again (at-least-once)."""
    got = await consumers.fetch(consumer, min(wait, consumers.hub.limits.max_wait))
    if got is None:
        return Response(status_code=204)
    return got[1]


async def _state(hub: Hub, task_id: str) -> dict[str, Any]:
    await hub.flush()  # the step is stored before it is confirmed
    rec = await hub.find(task_id)
    return {"task_id": task_id, "state": rec.state if rec else "end"}


@router.post(
    "/consumers/{consumer_id}/commit",
    response_model=StepDone,
    tags=["consumers"],
    summary="Return a leased task's result",
    responses=_STEP_ERRORS,
)
async def commit(body: CommitBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    """The first result wins; a commit after the lease ran out still counts if the task has
    not ended."""
    _storable("result", body.result)
    consumers.commit(consumer, body.task_id, body.result)
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/update",
    response_model=StepDone,
    tags=["consumers"],
    summary="Report progress on a leased task (renews the lease)",
    responses=_STEP_ERRORS,
)
async def update(body: UpdateBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    _storable("data", body.data)
    consumers.update(consumer, body.task_id, body.data)
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/fail",
    response_model=StepDone,
    tags=["consumers"],
    summary="Fail a leased task (retried if it has retries left)",
    responses=_STEP_ERRORS,
)
async def fail(body: FailBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    error = {"type": body.error.type, "message": body.error.message}
    consumers.fail(consumer, body.task_id, error, retry=body.retry)
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/drop",
    response_model=StepDone,
    tags=["consumers"],
    summary="Finish a leased task without a result",
    responses=_STEP_ERRORS,
)
async def drop(body: DropBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    consumers.drop(consumer, body.task_id)
    return await _state(consumers.hub, body.task_id)


@router.delete(
    "/consumers/{consumer_id}",
    response_model=ConsumerStopped,
    tags=["consumers"],
    summary="Stop a pull consumer; its leases go back to the group",
    responses=_responses(**_CONSUMER_ERRORS),
)
async def stop_consumer(consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    handed_back = consumers.stop(consumer)
    await consumers.hub.flush()
    return {"consumer_id": consumer.id, "handed_back": handed_back}


# --- seed 000's batch form ------------------------------------------------------------------
batch_router = APIRouter()


@batch_router.post(
    "/add",
    status_code=201,
    response_model=AddAccepted,
    tags=["tasks"],
    summary="Start chains of tasks (seed 000's batch form)",
    responses=_responses(
        _400="A malformed workload (the bad step is named); nothing is started.",
        _403="No pub permission for a step's action (the step is named); nothing is started.",
    ),
)
async def add(body: Annotated[AddWorkload, Body()], hub: HubDep, creds: Caller) -> Any:
    """One `{tasks: [{task, input}, ...]}` chain or a list of them. The steps of a chain run
    one after another; each step's input is its declared input with the previous step's
    output merged over it. Every step of every chain is checked before any chain starts, so a
    bad workload is refused whole. Answers once the chains are stored."""
    chains = body if isinstance(body, list) else [body]
    for c, chain in enumerate(chains):
        for i, step in enumerate(chain.tasks):
            where = f"chains.{c}.tasks.{i}" if isinstance(body, list) else f"chain.tasks.{i}"
            _storable(f"{where}.input", step.input)
            try:
                validate_action(step.task)
            except InvalidAction as exc:  # the schema's pattern says as much: a shape error
                raise ProtocolError(f"{where}.task: {exc.message}", field=where) from None
            if reserved_action(step.task) or not allowed(creds.pub_permissions, step.task):
                raise PermissionDenied(
                    f"{where}: {creds.name!r} may not publish {step.task!r}", action=step.task
                )
    ids = [
        hub.add_chain(
            creds, [{"action": s.task, "payload": s.input} for s in chain.tasks], merge_input=True
        )
        for chain in chains
    ]
    await hub.flush()
    return {"accepted": sum(len(chain.tasks) for chain in chains), "chains": ids}


# --- errors and limits ----------------------------------------------------------------------
def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


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
        methods: set[str] = set()
        for route in request.app.routes:
            if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
                methods |= route.methods or set()
        response.headers["Allow"] = ", ".join(sorted(methods))
    return response


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
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
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
    app.include_router(router)
    app.include_router(batch_router)
    app.openapi = _openapi_without_fastapi_422(app)  # type: ignore[method-assign]
    app.add_exception_handler(TaskHubError, _on_taskhub_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(BodyLimit, hub=hub)
