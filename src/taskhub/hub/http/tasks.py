"""Task routes of the ``/v1`` HTTP API: publish, list, get and cancel a task, and wait for its
result (long poll). A task's event stream is in :mod:`taskhub.hub.http.events`."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from taskhub.errors import TaskHubError, TaskNotFound
from taskhub.hub import writes
from taskhub.hub.http.deps import (
    ACTION_SCHEMA,
    MAX_WAIT,
    Caller,
    HubDep,
    Integer,
    Number,
    StateFilter,
    error_responses,
    read_task,
)
from taskhub.hub.http.events import TaskEvents, TaskEventsDep
from taskhub.hub.http.search import TaskFilter, search
from taskhub.hub.hub import Hub, task_view
from taskhub.protocol import plain
from taskhub.records import TERMINAL_STATES, DeliveryState, EventRecord, TaskRecord, TaskState


class TaskEnded(TaskHubError):
    """The task has already ended, so it cannot be changed (for example, cancelled)."""

    code = "task_ended"


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
    trace: dict[str, str] | None = Field(
        None,
        description="Trace context for the worker's span (W3C `traceparent`, `tracestate`); "
        "when left out, the request's `traceparent` and `tracestate` headers (docs/tracing.md).",
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


def publish_options(
    options: TaskOptions | None, trace: dict[str, str] | None = None
) -> SimpleNamespace | None:
    # The lifecycle reads options with getattr: a field left out must be absent, not None.
    if options is None:
        return SimpleNamespace(trace=trace) if trace else None
    fields = options.model_dump(exclude_unset=True)
    if trace and fields.get("trace") is None:
        fields["trace"] = trace
    for name in ("retries", "max_attempts", "backoff", "backoff_max", "once_every"):
        # null: the hub default (no "forever" here)
        if name in fields and fields[name] is None:
            del fields[name]
    return SimpleNamespace(**fields)


def header_trace(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The request's trace headers as a task's ``options.trace``. They stand for it when it is
    left out (an instrumented HTTP client sends them by itself); tracestate means nothing
    without a traceparent."""
    trace = {"traceparent": traceparent} if traceparent else {}
    if trace and tracestate:
        trace["tracestate"] = tracestate
    return trace


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


router = APIRouter(prefix="/v1")


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskView,
    tags=["tasks"],
    summary="Publish a task",
    responses={
        200: {"model": TaskView, "description": "A repeated `key`: the task published before."},
        **error_responses(
            _403="No pub permission for the action (named).",
            _422="Bad action name or option (named).",
        ),
    },
)
async def create_task(
    body: TaskCreate,
    hub: HubDep,
    creds: Caller,
    response: Response,
    traceparent: Annotated[str | None, Header(description="W3C trace context")] = None,
    tracestate: Annotated[str | None, Header(description="W3C trace context")] = None,
) -> Any:
    """Answers once the task is stored (durable): 201, or 200 for a repeated `options.key`.

    An instrumented HTTP client's `traceparent` header makes the worker's span its child."""
    options = publish_options(body.options, header_trace(traceparent, tracestate))
    [(got, created)] = await writes.publish(hub, creds, [(body.action, body.payload, options)])
    rec = got if isinstance(got, TaskRecord) else await read_task(hub, creds, got)
    if not created:
        response.status_code = 200
    return task_view(rec)


@router.get(
    "/tasks",
    response_model=TaskPage,
    tags=["tasks"],
    summary="List tasks, oldest first",
    responses=error_responses(),
)
async def list_tasks(
    hub: HubDep,
    creds: Caller,
    action: str | None = None,
    state: StateFilter | None = None,
    publisher: Annotated[str | None, Query(description="Published by this service.")] = None,
    since: Annotated[float | None, Query(description="Created at or after (Unix seconds).")] = None,
    until: Annotated[
        float | None, Query(description="Created at or before (Unix seconds).")
    ] = None,
    error: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=1000,
            description="Text in the task's error or a try's error (type, message, reason, "
            "traceback), in any case.",
        ),
    ] = None,
    after: Annotated[str | None, Query(description="The `next` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Tasks by id (creation order) that the caller may read. A page may hold fewer than
    `limit` tasks and still have a `next`: keep going until `next` is null. A call reads at
    most 5,000 stored tasks: with `publisher` or `error`, a page can be short or empty."""
    f = TaskFilter(
        action=action, state=state, publisher=publisher, since=since, until=until, error=error
    )
    found, next_id = await search(hub, creds, f, after=after, limit=limit)
    return {"tasks": [task_view(rec) for rec in found], "next": next_id}


@router.get(
    "/tasks/{task_id}",
    response_model=TaskView,
    tags=["tasks"],
    summary="Get a task",
    responses=error_responses(_403="May not read the task's action.", _404="Unknown task."),
)
async def get_task(task_id: str, hub: HubDep, creds: Caller) -> Any:
    return task_view(await read_task(hub, creds, task_id))


@router.get(
    "/tasks/{task_id}/result",
    response_model=TaskResult,
    tags=["tasks"],
    summary="Wait for a task's result (long poll)",
    responses={
        202: {"model": TaskView, "description": "Still running after `wait`: the task so far."},
        **error_responses(
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
    events: TaskEventsDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait.")] = 0.0,
) -> Any:
    """200 with the result once the task succeeded; 409 with its error once it failed or
    ended without a result; 202 with the task if it is still running after `wait` seconds."""
    wait = min(wait, hub.limits.max_wait)
    rec = await read_task(hub, creds, task_id)
    if rec.state not in TERMINAL_STATES and wait > 0:
        if hub.router.slot_of_task(task_id).local is None:  # another hub leads it: it waits
            await writes.wait(hub, task_id, wait)
        else:
            await _wait_here(hub, events, task_id, wait)
        rec = await read_task(hub, creds, task_id)
    if rec.state not in TERMINAL_STATES:
        return JSONResponse(task_view(rec), status_code=202)
    await hub.flush()  # answer only once the outcome is stored
    if rec.state == "success":
        return {"id": rec.id, "state": "success", "result": plain(rec.result)}
    return _failure(rec)


async def _wait_here(hub: Hub, events: TaskEvents, task_id: str, wait: float) -> None:
    """Until the task (of a partition led here) ends, at most ``wait`` seconds."""
    ended = asyncio.Event()

    def on_event(ev: EventRecord) -> None:
        if ev.type in TERMINAL_STATES:
            ended.set()

    # Woken early by the hub shutting down too: then 202 with the task so far.
    with events.watch(task_id, on_event), hub.long_wait(ended.set):
        if hub.lc_of(task_id).get(task_id) is None:
            ended.set()  # it ended while we looked it up
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), wait)


@router.delete(
    "/tasks/{task_id}",
    response_model=TaskView,
    tags=["tasks"],
    summary="Cancel a task",
    responses=error_responses(
        _403="Neither the publisher nor allowed to publish the action.",
        _404="Unknown task.",
        _409="The task has already ended.",
    ),
)
async def cancel_task(task_id: str, hub: HubDep, creds: Caller) -> Any:
    """The task fails with reason `cancelled`; its workers are told to stop."""
    try:
        rec = await writes.cancel(hub, creds, task_id)  # over the link where led elsewhere
    except TaskNotFound:
        rec = await read_task(hub, creds, task_id)  # 404 if it never existed
        raise TaskEnded(f"task {task_id} has already ended ({rec.state})", task=task_id) from None
    return task_view(rec)
