"""Pull consumers over the ``/v1`` HTTP API: start one, lease tasks (long poll), commit,
update, fail or drop them, stop it. The leases themselves are :mod:`taskhub.hub.consumers`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from taskhub.hub.consumers import MAX_LEASE, Consumers
from taskhub.hub.http.deps import (
    ACTION_SCHEMA,
    MAX_WAIT,
    Boolean,
    Caller,
    Integer,
    Number,
    error_responses,
)
from taskhub.intervals import parse_interval
from taskhub.lifecycle import Credentials
from taskhub.protocol import MAX_TRACEBACK
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


ConsumersDep = Annotated[Consumers, Depends(_consumers)]
TokenDep = Annotated[str | None, Security(_consumer_token)]


async def _call(
    consumers: Consumers,
    consumer_id: str,
    token: str | None,
    creds: Credentials,
    step: str,
    args: dict[str, Any],
) -> Any:
    """One call of the consumer, on the hub that started it (over the link when that is
    another hub of the deployment); 204 for a fetch with nothing to lease."""
    answer = await consumers.call(consumer_id, token, creds, step, args)
    return Response(status_code=204) if answer is None else answer


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
    consumer_id: str,
    creds: Caller,
    token: TokenDep,
    consumers: ConsumersDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Seconds to wait.")] = 0.0,
) -> Any:
    """At most `concurrency` tasks are leased at once; commit (or drop, or fail) one before
    `lease_expires_at`, or it is offered again (at-least-once)."""
    return await _call(consumers, consumer_id, token, creds, "fetch", {"wait": wait})


@router.post(
    "/consumers/{consumer_id}/commit",
    response_model=StepDone,
    tags=["consumers"],
    summary="Return a leased task's result",
    responses=_STEP_ERRORS,
)
async def commit(
    consumer_id: str, body: CommitBody, creds: Caller, token: TokenDep, consumers: ConsumersDep
) -> Any:
    """The first result wins; a commit after the lease ran out still counts if the task has
    not ended."""
    return await _call(consumers, consumer_id, token, creds, "commit", body.model_dump())


@router.post(
    "/consumers/{consumer_id}/update",
    response_model=StepDone,
    tags=["consumers"],
    summary="Report progress on a leased task (renews the lease)",
    responses=_STEP_ERRORS,
)
async def update(
    consumer_id: str, body: UpdateBody, creds: Caller, token: TokenDep, consumers: ConsumersDep
) -> Any:
    return await _call(consumers, consumer_id, token, creds, "update", body.model_dump())


@router.post(
    "/consumers/{consumer_id}/fail",
    response_model=StepDone,
    tags=["consumers"],
    summary="Fail a leased task (retried if it has retries left)",
    responses=_STEP_ERRORS,
)
async def fail(
    consumer_id: str, body: FailBody, creds: Caller, token: TokenDep, consumers: ConsumersDep
) -> Any:
    return await _call(consumers, consumer_id, token, creds, "fail", body.model_dump())


@router.post(
    "/consumers/{consumer_id}/extend",
    response_model=StepDone,
    tags=["consumers"],
    summary="Push a leased task's end timeout (and its lease)",
    responses=_STEP_ERRORS,
)
async def extend(
    consumer_id: str, body: ExtendBody, creds: Caller, token: TokenDep, consumers: ConsumersDep
) -> Any:
    seconds = parse_interval(body.duration, option="duration")
    args = {"task_id": body.task_id, "seconds": seconds}
    return await _call(consumers, consumer_id, token, creds, "extend", args)


@router.post(
    "/consumers/{consumer_id}/drop",
    response_model=StepDone,
    tags=["consumers"],
    summary="Finish a leased task without a result",
    responses=_STEP_ERRORS,
)
async def drop(
    consumer_id: str, body: DropBody, creds: Caller, token: TokenDep, consumers: ConsumersDep
) -> Any:
    return await _call(consumers, consumer_id, token, creds, "drop", body.model_dump())


@router.delete(
    "/consumers/{consumer_id}",
    response_model=ConsumerStopped,
    tags=["consumers"],
    summary="Stop a pull consumer; its leases go back to the group",
    responses=error_responses(**_CONSUMER_ERRORS),
)
async def stop_consumer(
    consumer_id: str, creds: Caller, token: TokenDep, consumers: ConsumersDep
) -> Any:
    return await _call(consumers, consumer_id, token, creds, "stop", {})
