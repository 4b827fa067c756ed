"""``POST /v1/tasks:batch``: publish a list of tasks in one call and one store commit.

All or nothing: every item is checked (shape, action name, options, permission, storable
payload) before any is published, so a refused batch publishes nothing and its error names
the item (docs/decisions.md, "Batch publish over HTTP")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ConfigDict, Field

from taskhub.errors import PermissionDenied, TaskHubError
from taskhub.hub import writes
from taskhub.hub.http.deps import Caller, HubDep, error_responses, read_task
from taskhub.hub.http.tasks import TaskCreate, TaskView, header_trace, publish_options
from taskhub.hub.hub import Hub, task_view
from taskhub.lifecycle import Credentials
from taskhub.lifecycle.options import resolve_options
from taskhub.names import allowed, reserved_action, validate_action
from taskhub.records import TaskRecord

MAX_BATCH = 1000  # items per call; the body limit (max_frame) applies as well


class TaskBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[TaskCreate] = Field(
        max_length=MAX_BATCH,
        description=f"The tasks, each as the body of `POST /v1/tasks`; at most {MAX_BATCH}.",
    )


class TaskBatchView(BaseModel):
    tasks: list[TaskView] = Field(description="One task per item, in the order given.")
    created: list[bool] = Field(
        description="Per item: false when its `options.key` (or debounce) found an earlier "
        "task, which `tasks` then holds."
    )


def _check(hub: Hub, creds: Credentials, index: int, item: TaskCreate, options: Any) -> None:
    """Every refusal ``publish`` could raise for ``item``, raised before anything is
    published, naming the item: its message starts with ``tasks.<index>`` and its details
    carry ``index``."""
    try:
        validate_action(item.action)
        if not allowed(creds.pub_permissions, item.action) or reserved_action(item.action):
            raise PermissionDenied(
                f"{creds.name!r} may not publish {item.action!r}", action=item.action
            )
        resolve_options(options, hub.lc.defaults, hub.lc.clock(), item.action)
    except TaskHubError as exc:
        # The same class keeps the status and code a single publish would get.
        raise type(exc)(f"tasks.{index}: {exc.message}", **exc.details, index=index) from None


router = APIRouter(prefix="/v1")


@router.post(
    "/tasks:batch",
    status_code=201,
    response_model=TaskBatchView,
    tags=["tasks"],
    summary="Publish a list of tasks",
    responses={
        200: {
            "model": TaskBatchView,
            "description": "Nothing new: every item repeated a `key` (or the list is empty).",
        },
        **error_responses(
            _400=f"A malformed item (named: `tasks.<i>.<field>`), or over {MAX_BATCH} items; "
            "nothing is published.",
            _403="No pub permission for an item's action (the item is named); nothing is "
            "published.",
            _422="An item's bad action name or option (the item is named); nothing is published.",
        ),
    },
)
async def create_tasks(
    body: TaskBatch,
    hub: HubDep,
    creds: Caller,
    response: Response,
    traceparent: Annotated[str | None, Header(description="W3C trace context")] = None,
    tracestate: Annotated[str | None, Header(description="W3C trace context")] = None,
) -> Any:
    """Publishes every item as `POST /v1/tasks` would, in order, and answers once all are
    stored, which is one store write: 201 with the tasks in the order given. Every item is
    checked first, so a bad one refuses the whole batch and publishes nothing."""
    trace = header_trace(traceparent, tracestate)
    options = [publish_options(item.options, trace) for item in body.tasks]
    for index, item in enumerate(body.tasks):
        _check(hub, creds, index, item, options[index])
    # No await between the checks and the last publish here: nothing else runs in between, and
    # the commit pipeline takes every task of the batch in one write (one per partition; the
    # items of another hub's partitions cross the link, checked here first all the same).
    items = [(it.action, it.payload, opts) for it, opts in zip(body.tasks, options, strict=True)]
    published = await writes.publish(hub, creds, items)
    views = []
    for got, _ in published:
        rec = got if isinstance(got, TaskRecord) else await read_task(hub, creds, got)
        views.append(task_view(rec))
    created = [was_created for _, was_created in published]
    if not any(created):
        response.status_code = 200
    return {"tasks": views, "created": created}
