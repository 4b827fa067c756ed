"""The dashboard's JSON under ``/v1/dashboard``: login and session, live stats, charts, the
task list and search, a task with its events (docs/dashboard.md). Changes are in
:mod:`.actions`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from taskhub.hub.dashboard import deployment
from taskhub.hub.dashboard.deployment import OPERATOR
from taskhub.hub.dashboard.monitor import RATE_WINDOW, RECENT_TASKS, Monitor
from taskhub.hub.dashboard.rows import summary
from taskhub.hub.dashboard.sessions import (
    ADMIN_ERRORS,
    COOKIE,
    AdminCaller,
    address,
    refuse_non_admin,
    sessions_of,
)
from taskhub.hub.dashboard.views import (
    ConnectionView,
    Login,
    SeriesView,
    SessionView,
    Stats,
    TaskDetail,
    TaskPage,
)
from taskhub.hub.http.deps import HubDep, StateFilter, error_responses, read_task
from taskhub.hub.http.events import (
    SSE_EVENT_SCHEMA,
    TaskEventsDep,
    event_stream,
    last_event_id,
    sse_response,
)
from taskhub.hub.http.search import TaskFilter, search
from taskhub.hub.hub import task_view

SPANS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}


def _monitor(request: Request) -> Monitor:
    monitor: Monitor = request.app.state.dashboard_monitor
    return monitor


MonitorDep = Annotated[Monitor, Depends(_monitor)]
router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])


@router.post(
    "/login",
    response_model=SessionView,
    summary="Log in to the dashboard (sets the session cookie)",
    responses=error_responses(_403="The credential has no admin rights."),
)
async def login(body: Login, request: Request, response: Response, hub: HubDep) -> Any:
    """Checks name and key like a Bearer header; only an admin gets the cookie (HttpOnly,
    SameSite=Strict, signed with a per-process secret, valid for 8 hours)."""
    if hub.registry.open_access:
        return {"name": "anonymous", "open_access": True, "expires_at": None}
    creds = await hub.registry.authenticate(body.name, body.key, address(request))
    refuse_non_admin(creds)
    sessions = sessions_of(request)
    response.set_cookie(
        COOKIE,
        sessions.issue(creds),
        max_age=int(sessions.ttl),
        path="/",
        httponly=True,  # no script can read it: an XSS cannot carry it away
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return {"name": creds.name, "open_access": False, "expires_at": hub.clock() + sessions.ttl}


@router.post(
    "/logout",
    status_code=204,
    summary="Log out (ends the session and clears its cookie)",
    responses={413: error_responses()[413], 500: error_responses()[500]},
)
async def logout(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if token is not None:
        sessions_of(request).revoke(token)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get(
    "/session",
    response_model=SessionView,
    summary="Who is logged in",
    responses=error_responses(**ADMIN_ERRORS),
)
async def session(creds: AdminCaller, hub: HubDep) -> Any:
    return {"name": creds.name, "open_access": hub.registry.open_access}


@router.get(
    "/stats",
    response_model=Stats,
    summary="Live counts, rates, queues and connections",
    responses=error_responses(**ADMIN_ERRORS),
)
async def stats(request: Request, creds: AdminCaller, hub: HubDep, monitor: MonitorDep) -> Any:
    """Cheap enough to poll every second: one pass over the live tasks, no store read; with
    several hubs, one request to each other hub (docs/dashboard.md, "Several hubs")."""
    numbers = await deployment.stats(hub, monitor, _pull(request))
    return {
        **numbers,
        "at": hub.clock(),
        "started_at": monitor.started_at,
        "window": RATE_WINDOW,
    }


def _pull(request: Request) -> dict[str, Any]:
    consumers = getattr(request.app.state, "consumers", None)
    return dict(consumers.by_id) if consumers is not None else {}


@router.get(
    "/connections",
    response_model=list[ConnectionView],
    summary="Connected workers and pull consumers, with their host, pid and credit",
    responses=error_responses(**ADMIN_ERRORS),
)
async def connections(
    request: Request, creds: AdminCaller, hub: HubDep, monitor: MonitorDep
) -> Any:
    """Every hub's connections, each with what it holds in every partition."""
    return (await deployment.stats(hub, monitor, _pull(request)))["connections"]


@router.get(
    "/series",
    response_model=SeriesView,
    summary="Tasks per second and wait/run percentiles over time (the charts)",
    responses=error_responses(**ADMIN_ERRORS),
)
async def series(
    creds: AdminCaller,
    monitor: MonitorDep,
    span: Literal["5m", "15m", "1h", "6h", "24h"] = "15m",
) -> Any:
    """User tasks (chains and groups are counted as their steps) published, succeeded and
    failed per second, and the 50th, 90th and 99th percentiles of the wait time (publish, or
    the delay's end, to start) and the run time (start to end) of the tasks that ended at each
    point. One point a second up to 15 minutes, one a minute up to 24 hours; kept in memory
    since the hub started."""
    return monitor.chart(SPANS[span])


@router.get(
    "/tasks",
    response_model=TaskPage,
    summary="Recent tasks, newest first; or a search of the stored tasks",
    responses=error_responses(**ADMIN_ERRORS),
)
async def recent_tasks(
    creds: AdminCaller,
    hub: HubDep,
    monitor: MonitorDep,
    id: Annotated[str | None, Query(description="One task, by id.")] = None,
    action: str | None = None,
    state: StateFilter | None = None,
    kind: Annotated[
        Literal["task", "chain", "all"],
        Query(description="task: user tasks; chain: chains and groups; all: both."),
    ] = "task",
    publisher: str | None = None,
    since: Annotated[float | None, Query(description="Created at or after (Unix s).")] = None,
    until: Annotated[float | None, Query(description="Created at or before (Unix s).")] = None,
    error: Annotated[str | None, Query(min_length=1, max_length=1000)] = None,
    after: Annotated[str | None, Query(description="Search: the `next` of the last page.")] = None,
    limit: Annotated[int, Query(ge=1, le=RECENT_TASKS)] = 100,
) -> Any:
    """With `id`: that task or chain (or nothing). Without `publisher`, `since`, `until`,
    `error` or `after`: the live tasks and the last tasks this hub saw end (at most 1000),
    newest first, from memory. With any of them: a search of the stored tasks, oldest first,
    paged like `GET /v1/tasks` (`next`)."""
    if id is not None:  # one task or chain, whatever the other filters say
        rec = await hub.find(id)
        return {"tasks": [summary(rec)] if rec is not None else [], "next": None}
    f = TaskFilter(
        action=action,
        state=state,
        publisher=publisher,
        since=since,
        until=until,
        error=error,
        kind=None if kind == "all" else kind,
    )
    if publisher is None and since is None and until is None and error is None and after is None:
        rows = await deployment.tasks(hub, monitor, action, state, kind, limit)
        return {"tasks": rows, "next": None}
    found, next_id = await search(hub, OPERATOR, f, after=after, limit=limit)
    return {"tasks": [summary(rec) for rec in found], "next": next_id}


@router.get(
    "/tasks/{task_id}",
    response_model=TaskDetail,
    summary="A task with its payload",
    responses=error_responses(**ADMIN_ERRORS, _404="Unknown task."),
)
async def task_detail(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    rec = await read_task(hub, OPERATOR, task_id)
    return task_view(rec, payload=True)


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    summary="Stream a task's events (Server-Sent Events)",
    responses={
        200: {
            "description": "As `GET /v1/tasks/{task_id}/events`, with the session cookie, "
            "and every event sent as a plain `message` (its type is in its data).",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **error_responses(**ADMIN_ERRORS, _404="Unknown task."),
    },
)
async def task_events(
    task_id: str, request: Request, creds: AdminCaller, hub: HubDep, events: TaskEventsDep
) -> StreamingResponse:
    # The same stream as the task API's (stored events, then live ones, ending after the
    # terminal event); only the credentials differ, as EventSource cannot send a header. A
    # task another hub leads: its events as that hub stores them, asked for over the link.
    await read_task(hub, OPERATOR, task_id)
    after = last_event_id(request)
    elsewhere = deployment.led_elsewhere(hub, task_id)
    stream = (
        _unnamed(event_stream(hub, events, task_id, after))
        if elsewhere is None
        else deployment.remote_events(hub, elsewhere, task_id, after)
    )
    return sse_response(stream)


async def _unnamed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream without its ``event:`` lines: an EventSource hears a named event only with
    a listener for that name, and the page must show every type, also ones added later."""
    async for chunk in stream:
        yield b"".join(line for line in chunk.splitlines(True) if not line.startswith(b"event:"))
