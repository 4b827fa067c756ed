"""What an admin changes from the dashboard: cancel, retry, purge a queue, re-queue a dead
letter. Each needs admin rights, as every route of the dashboard, and acts on every action
whatever the admin's own permissions (it acts as an operator)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from taskhub.errors import TaskNotFound
from taskhub.hub import writes
from taskhub.hub.dashboard.deployment import OPERATOR
from taskhub.hub.dashboard.sessions import ADMIN_ERRORS, AdminCaller
from taskhub.hub.dashboard.views import DeadLetterRow, Purged, Retried
from taskhub.hub.http.deps import HubDep, error_responses, read_task
from taskhub.hub.http.schedules import Requeued
from taskhub.hub.http.search import INTERNAL_PREFIX
from taskhub.hub.http.tasks import TaskEnded, TaskView
from taskhub.hub.hub import task_view
from taskhub.lifecycle import REQUEUE_OPTIONS, Credentials, StoredOptions
from taskhub.records import TaskRecord

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])


def _operator(creds: Credentials) -> Credentials:
    # An admin acts on every action: cancel, retry and purge whatever the dashboard shows.
    return Credentials(creds.name, sub_permissions=("*",), pub_permissions=("*",))


def _requeuer(creds: Credentials) -> Credentials:
    # An admin re-publishes any dead letter, also one whose action it may not publish itself.
    return Credentials(creds.name, pub_permissions=("*",))


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskView,
    summary="Cancel a waiting or running task",
    responses=error_responses(**ADMIN_ERRORS, _404="Unknown task.", _409="It has already ended."),
)
async def cancel(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    """The task fails with reason `cancelled` ("cancelled by <admin>"); its workers are told
    to stop. A chain or group cancelled this way cancels its running steps too."""
    try:
        rec = await writes.cancel(hub, _operator(creds), task_id)  # where it is led
    except TaskNotFound:
        rec = await read_task(hub, OPERATOR, task_id)  # 404 if it never existed
        raise TaskEnded(f"task {task_id} has already ended ({rec.state})", task=task_id) from None
    return task_view(rec)


@router.post(
    "/tasks/{task_id}/retry",
    response_model=Retried,
    summary="Publish a fresh copy of a failed task",
    responses=error_responses(
        **ADMIN_ERRORS, _404="Unknown task.", _409="The task has not failed (named state)."
    ),
)
async def retry(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    """Same action, payload and options as the failed task (without its `key`, `delay`, `at`
    and `once_every`, as a dead-letter re-queue), a new id, `options.retried_from` the failed
    one, published by the admin. Only a task in state `fail` can be retried; a chain or group
    cannot (publish it again)."""
    rec = await read_task(hub, OPERATOR, task_id)
    if rec.state != "fail":
        raise TaskEnded(
            f"task {task_id} is {rec.state}, not failed: only a failed task is retried",
            task=task_id,
        )
    if rec.action.startswith(INTERNAL_PREFIX):
        raise TaskEnded(f"task {task_id} is a {rec.action}: publish it again", task=task_id)
    kept = {k: rec.options[k] for k in REQUEUE_OPTIONS if k in rec.options}
    if kept.get("priority") is None:
        kept.pop("priority", None)
    # Published where its action's partition is led (over the link on another hub).
    [(task, _)] = await writes.publish(
        hub,
        _operator(creds),
        [(rec.action, rec.payload, StoredOptions(kept))],
        extra={"retried_from": rec.id},
    )
    assert isinstance(task, TaskRecord)  # no key, no once_every: always a new task
    return {"task": task.id, "retried_from": task_id}


@router.post(
    "/queues/{action}/{group}/purge",
    response_model=Purged,
    summary="Purge a group queue (its waiting deliveries)",
    responses=error_responses(**ADMIN_ERRORS, _404="No such queue."),
)
async def purge(action: str, group: str, creds: AdminCaller, hub: HubDep) -> Any:
    """As `DELETE /v1/queues/{action}/{group}`: the group's waiting deliveries fail with
    reason `purged`; deliveries a worker holds are left to it."""
    n = await hub.admin.purge(_operator(creds), action, group)
    return {"action": action, "group": group, "purged": n}


@router.get(
    "/dead-letters",
    response_model=list[DeadLetterRow],
    summary="Every dead letter, oldest first",
    responses=error_responses(**ADMIN_ERRORS),
)
async def dead_letters(creds: AdminCaller, hub: HubDep) -> Any:
    return await hub.admin.dead_letters(OPERATOR)


@router.post(
    "/dead-letters/{task_id}/requeue",
    response_model=Requeued,
    summary="Re-queue a dead letter",
    responses=error_responses(**ADMIN_ERRORS, _404="No such dead letter."),
)
async def requeue(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    """Publishes a fresh copy (a new id, `options.requeued_from` the dead one), published by
    the admin, and removes the dead letter."""
    return {"task": await hub.admin.requeue(_requeuer(creds), task_id), "requeued_from": task_id}
