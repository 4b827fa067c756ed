"""HTTP routes for schedules, group queues and dead letters (docs/scheduling.md).

Thin: every route calls :class:`taskhub.hub.admin.Admin`, as the WebSocket ops do. Errors use
the API's error model (installed by ``http.install``): 403 without permission, 404 for an
unknown name, 422 for a bad cron, time zone, interval or option, each naming the culprit.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from taskhub.hub.admin import Admin
from taskhub.hub.http.deps import ACTION_SCHEMA, Caller, error_responses
from taskhub.hub.http.tasks import TaskOptions, publish_options

router = APIRouter(prefix="/v1")


def _admin(request: Request) -> Admin:
    admin: Admin = request.app.state.hub.admin
    return admin


AdminDep = Annotated[Admin, Depends(_admin)]
# For the OpenAPI only, as ACTION_SCHEMA: the scheduler checks the name and names it (422).
SCHEDULE_NAME_SCHEMA: JsonDict = {"pattern": r"^[A-Za-z0-9_.:/\-]{1,200}$", "maxLength": 200}
# A group in a queue's path is its last segment: it cannot hold a '/'.
GROUP_SCHEMA: JsonDict = {"pattern": r"^[^/]+$"}
ScheduleName = Annotated[str, Path(json_schema_extra=SCHEDULE_NAME_SCHEMA)]
QueueAction = Annotated[str, Path(json_schema_extra=ACTION_SCHEMA)]
QueueGroup = Annotated[str, Path(json_schema_extra=GROUP_SCHEMA)]


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str = Field(
        min_length=1,
        max_length=255,
        description="Five fields: minute hour day-of-month month day-of-week (a cron the "
        "scheduler cannot read gets 422).",
    )
    action: str = Field(json_schema_extra=ACTION_SCHEMA)
    payload: Any = None
    options: TaskOptions | None = Field(
        None,
        description="`pub` options for every task (timeout, priority, retries, ...); "
        "`delay`/`once_every` may be interval strings; not `key` or `at` (422).",
    )
    timezone: str = Field(
        "UTC",
        min_length=1,
        max_length=255,
        description="IANA time zone the cron is read in (an unknown one gets 422).",
    )


class ScheduleView(BaseModel):
    name: str
    cron: str
    action: str
    payload: Any
    options: dict[str, Any]
    timezone: str
    owner: str
    source: str = Field(description="`api`, or `config` for the config file's schedules.")
    created_at: float
    last_slot: float | None = Field(None, description="The slot last fired, epoch seconds.")
    next_at: float | None = Field(description="The next slot, epoch seconds.")


class QueueView(BaseModel):
    action: str
    group: str
    durable: bool
    workers: int
    credit: int
    waiting: int = Field(description="Deliveries waiting for a worker (or a retry backoff).")
    in_flight: int = Field(description="Deliveries offered or started.")


class Purged(BaseModel):
    purged: int
    forgotten: bool


class DeadLetter(BaseModel):
    id: str
    action: str
    publisher: str
    options: dict[str, Any]
    error: dict[str, Any] | None
    created_at: float
    ended_at: float | None
    payload: Any = None
    deliveries: list[dict[str, Any]] | None = None


class Requeued(BaseModel):
    task: str = Field(description="The id of the fresh copy.")
    requeued_from: str


# --- schedules ------------------------------------------------------------------------------
@router.get(
    "/schedules", response_model=list[ScheduleView], tags=["schedules"], responses=error_responses()
)
async def list_schedules(admin: AdminDep, creds: Caller) -> Any:
    """The schedules whose action the caller may publish or subscribe to, or that it made."""
    return admin.schedules(creds)


@router.get(
    "/schedules/{name:path}",
    response_model=ScheduleView,
    tags=["schedules"],
    responses=error_responses(_404="No such schedule."),
)
async def get_schedule(name: ScheduleName, admin: AdminDep, creds: Caller) -> Any:
    return admin.schedule(creds, name)


@router.put(
    "/schedules/{name:path}",
    response_model=ScheduleView,
    tags=["schedules"],
    responses=error_responses(
        _403="No pub permission for the action, or the schedule is another's.",
        _422="Bad name, cron, time zone, action or option (named).",
    ),
)
async def put_schedule(
    name: ScheduleName, body: ScheduleBody, admin: AdminDep, creds: Caller
) -> Any:
    """Create or replace a schedule; answers once it is stored."""
    options = publish_options(body.options)
    return await admin.put_schedule(
        creds,
        name,
        body.cron,
        body.action,
        body.payload,
        vars(options) if options is not None else None,
        body.timezone,
    )


@router.delete(
    "/schedules/{name:path}",
    response_model=ScheduleView,
    tags=["schedules"],
    responses=error_responses(
        _403="The schedule is another's, and no pub permission for its action.",
        _404="No such schedule.",
    ),
)
async def delete_schedule(name: ScheduleName, admin: AdminDep, creds: Caller) -> Any:
    return await admin.remove_schedule(creds, name)


# --- group queues ---------------------------------------------------------------------------
@router.get("/queues", response_model=list[QueueView], tags=["queues"], responses=error_responses())
async def list_queues(admin: AdminDep, creds: Caller) -> Any:
    """Every group queue of an action the caller may publish or subscribe to."""
    return await admin.queues(creds)


@router.get(
    "/queues/{action:path}/{group}",
    response_model=QueueView,
    tags=["queues"],
    responses=error_responses(_403="May not see the action.", _404="No such queue."),
)
async def get_queue(action: QueueAction, group: QueueGroup, admin: AdminDep, creds: Caller) -> Any:
    return await admin.queue(creds, action, group)


@router.delete(
    "/queues/{action:path}/{group}",
    response_model=Purged,
    tags=["queues"],
    responses=error_responses(
        _403="No sub permission for the action.",
        _404="No such queue.",
        _422="Bad action name (the bad character is named).",
    ),
)
async def purge_queue(
    action: QueueAction,
    group: QueueGroup,
    admin: AdminDep,
    creds: Caller,
    forget: Annotated[
        bool, Query(description="Also remove the group's durable subscription.")
    ] = False,
) -> Any:
    """Purge: the group's waiting deliveries fail with reason `purged`. Deliveries a worker
    holds are left to it. With `forget=true` the group also stops being durable."""
    n = await admin.purge(creds, action, group, forget=forget)
    return {"purged": n, "forgotten": forget}


# --- dead letters ---------------------------------------------------------------------------
@router.get(
    "/dead-letters",
    response_model=list[DeadLetter],
    tags=["dead letters"],
    responses=error_responses(),
)
async def list_dead_letters(admin: AdminDep, creds: Caller, action: str | None = None) -> Any:
    """Tasks that ran out of attempts or failed after their retries, oldest first (no
    payloads)."""
    return await admin.dead_letters(creds, action)


@router.get(
    "/dead-letters/{task_id}",
    response_model=DeadLetter,
    tags=["dead letters"],
    responses=error_responses(_403="May not see the action.", _404="No such dead letter."),
)
async def get_dead_letter(task_id: str, admin: AdminDep, creds: Caller) -> Any:
    return await admin.dead_letter(creds, task_id)


@router.post(
    "/dead-letters/{task_id}/requeue",
    response_model=Requeued,
    status_code=201,
    tags=["dead letters"],
    responses=error_responses(
        _403="May not see the dead letter, or no pub permission for its action.",
        _404="No such dead letter.",
    ),
)
async def requeue_dead_letter(task_id: str, admin: AdminDep, creds: Caller) -> Any:
    """Publish a fresh copy (a new task id, `options.requeued_from` the dead one) and remove
    the dead letter."""
    return {"task": await admin.requeue(creds, task_id), "requeued_from": task_id}
