"""Pull consumers over the ``/v1`` HTTP API: start one, lease tasks (long poll), commit,
update, fail or drop them, stop it. The leases themselves are :mod:`taskhub.hub.consumers`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from taskhub.hub.consumers import MAX_LEASE, Consumer, Consumers
from taskhub.hub.http.deps import (
    ACTION_SCHEMA,
    MAX_WAIT,
    Boolean,
    Caller,
    Integer,
    Number,
    caller,
    error_responses,
)
from taskhub.hub.hub import Hub
from taskhub.intervals import parse_interval
from taskhub.lifecycle import Credentials
from taskhub.protocol import MAX_TRACEBACK
from taskhub.protocol import ErrorInfo as PError
from taskhub.records import TaskState


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
    durable: Boolean = Field(
        False,
        description="Store the group's subscription: its tasks accumulate while no consumer or "
        "worker of the group is connected (a durable queue, as `sub(..., durable=True)`).",
    )


class ConsumerView(BaseModel):
    consumer_id: str
    consumer_token: str = Field(description="Send as `X-Consumer-Token` on every consumer call.")
    group: str
    actions: list[str]
    concurrency: int
    lease: float
    durable: bool


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
    trace: dict[str, str] | None = Field(
        None, description="The task's trace context (W3C traceparent, tracestate), if it has one."
    )


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
    traceback: str | None = Field(
        default=None,
        description=f"Kept with the task's error, cut to its last {MAX_TRACEBACK} characters.",
    )


class ExtendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    duration: float | str = Field(
        description='Seconds, or an interval such as "10m": the task must now finish within '
        "this time from now (never earlier than before); the lease is kept at least as long."
    )


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    error: ErrorInfo = Field(default_factory=ErrorInfo)
    retry: Boolean = Field(
        True, description="false: fail the delivery now, even with retries left."
    )


class DropBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str


class StepDone(BaseModel):
    task_id: str
    state: TaskState = Field(description="The task's state after the step.")


class ConsumerStopped(BaseModel):
    consumer_id: str
    handed_back: int = Field(description="Leases given back to the group.")


_consumer_token = APIKeyHeader(name="X-Consumer-Token", auto_error=False)


def _consumers(request: Request) -> Consumers:
    consumers: Consumers = request.app.state.consumers
    return consumers


async def _consumer(
    consumer_id: str,
    creds: Annotated[Credentials, Depends(caller)],
    consumers: Annotated[Consumers, Depends(_consumers)],
    token: Annotated[str | None, Security(_consumer_token)],
) -> Consumer:
    return consumers.get(consumer_id, token, creds)


ConsumersDep = Annotated[Consumers, Depends(_consumers)]
ConsumerDep = Annotated[Consumer, Depends(_consumer)]

router = APIRouter(prefix="/v1")


@router.post(
    "/consumers",
    status_code=201,
    response_model=ConsumerView,
    tags=["consumers"],
    summary="Start a pull consumer",
    responses=error_responses(
        _403="No sub permission for an action (named).",
        _422="Bad action, concurrency or lease (named).",
        _429="The service's max_connections is reached.",
    ),
)
async def start_consumer(
    body: ConsumerCreate, creds: Caller, consumers: ConsumersDep, request: Request
) -> Any:
    agent = request.headers.get("user-agent")
    c = await consumers.start(
        creds,
        body.actions,
        group=body.group,
        concurrency=body.concurrency,
        lease=body.lease,
        durable=body.durable,
        # What the dashboard's workers view shows of it: where it calls from, its HTTP client.
        remote=request.client.host if request.client else None,
        client=agent[:255] if agent else None,
    )
    return {
        "consumer_id": c.id,
        "consumer_token": c.token,
        "group": c.group,
        "actions": list(c.actions),
        "concurrency": c.concurrency,
        "lease": c.lease,
        "durable": body.durable,
    }


_CONSUMER_ERRORS = {
    "_401": "Missing or wrong credentials or X-Consumer-Token.",
    "_403": "The consumer belongs to another service.",
    "_404": "Unknown or stopped consumer.",
}
_STEP_ERRORS = error_responses(
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
    await consumers.commit(consumer, body.task_id, body.result)
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/update",
    response_model=StepDone,
    tags=["consumers"],
    summary="Report progress on a leased task (renews the lease)",
    responses=_STEP_ERRORS,
)
async def update(body: UpdateBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    await consumers.update(consumer, body.task_id, body.data)
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/fail",
    response_model=StepDone,
    tags=["consumers"],
    summary="Fail a leased task (retried if it has retries left)",
    responses=_STEP_ERRORS,
)
async def fail(body: FailBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    info = PError(body.error.type, body.error.message, body.error.traceback)
    await consumers.fail(consumer, body.task_id, info, retry=body.retry)
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/extend",
    response_model=StepDone,
    tags=["consumers"],
    summary="Push a leased task's end timeout (and its lease)",
    responses=_STEP_ERRORS,
)
async def extend(body: ExtendBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    await consumers.extend(consumer, body.task_id, parse_interval(body.duration, option="duration"))
    return await _state(consumers.hub, body.task_id)


@router.post(
    "/consumers/{consumer_id}/drop",
    response_model=StepDone,
    tags=["consumers"],
    summary="Finish a leased task without a result",
    responses=_STEP_ERRORS,
)
async def drop(body: DropBody, consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    await consumers.drop(consumer, body.task_id)
    return await _state(consumers.hub, body.task_id)


@router.delete(
    "/consumers/{consumer_id}",
    response_model=ConsumerStopped,
    tags=["consumers"],
    summary="Stop a pull consumer; its leases go back to the group",
    responses=error_responses(**_CONSUMER_ERRORS),
)
async def stop_consumer(consumer: ConsumerDep, consumers: ConsumersDep) -> Any:
    handed_back = consumers.stop(consumer)
    await consumers.hub.flush()
    return {"consumer_id": consumer.id, "handed_back": handed_back}
