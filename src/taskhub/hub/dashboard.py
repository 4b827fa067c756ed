"""The web dashboard: a static page at ``/`` and the JSON it reads under ``/v1/dashboard``.

The page (``hub/static``: plain HTML, CSS and JavaScript modules, no build step, uPlot
vendored for the charts) polls ``/v1/dashboard/stats`` and ``/series`` and streams a task's
events over Server-Sent Events; it can cancel, retry, re-queue and purge. What it shows of
the past is kept by ``hub/monitor.py``; its search is ``hub/search.py``.
Every data route needs *admin* rights (:func:`is_admin`): a Bearer header, or the session
cookie ``POST /v1/dashboard/login`` sets, because a browser's EventSource cannot send a header.
docs/dashboard.md describes the page and the routes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from taskhub.errors import AuthenticationFailed, PermissionDenied, TaskNotFound
from taskhub.hub.auth import parse_bearer
from taskhub.hub.http import (
    _SSE_EVENT,
    TaskEvents,
    TaskView,
    _event_stream,
    _readable,
    _responses,
)
from taskhub.hub.http_deps import StateFilter
from taskhub.hub.http_tasks import TaskEnded
from taskhub.hub.hub import Hub, task_view
from taskhub.hub.monitor import (
    INTERNAL_PREFIX,
    RATE_WINDOW,
    RECENT_TASKS,
    Monitor,
    summary,
)
from taskhub.hub.schedules_http import Requeued
from taskhub.hub.search import TaskFilter, search
from taskhub.lifecycle import REQUEUE_OPTIONS, Credentials, StoredOptions, Task

COOKIE = "taskhub_session"
SESSION_TTL = 8 * 3600.0  # seconds a login lasts; the secret dies with the process anyway
# A cookie-authenticated request that changes something must carry this header: a cross-site
# form cannot set it, and a cross-site script needs a CORS preflight the hub never grants.
CSRF_HEADER = "x-taskhub-dashboard"
STATIC = os.path.join(os.path.dirname(__file__), "static")


def is_admin(creds: Credentials) -> bool:
    """Admin rights (the dashboard): ``admin`` or ``*`` among the sub or pub permissions."""
    perms = (*creds.sub_permissions, *creds.pub_permissions)
    return "admin" in perms or "*" in perms


# --- signed session cookies -----------------------------------------------------------------
class Sessions:
    """Session tokens ``<name>.<expires>.<nonce>.<hmac>`` under a per-process secret.

    Nothing is stored per session but what logout revokes (until the token would expire
    anyway); the credentials of each admin who logged in are kept by name (at most one entry
    per configured credential). A restart logs everybody out.
    """

    def __init__(self, *, ttl: float = SESSION_TTL, clock: Any = time.time) -> None:
        self._secret = os.urandom(32)
        self.ttl = ttl
        self.clock = clock
        self._admins: dict[str, Credentials] = {}
        self._revoked: dict[str, int] = {}  # signature -> when the token expires

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, creds: Credentials) -> str:
        self._admins[creds.name] = creds
        name = base64.urlsafe_b64encode(creds.name.encode()).decode().rstrip("=")
        # The nonce makes each login's token its own, so a logout revokes that one only.
        body = f"{name}.{int(self.clock() + self.ttl)}.{secrets.token_urlsafe(8)}"
        return f"{body}.{self._sign(body)}"

    def check(self, token: str) -> Credentials | None:
        """The session's credentials, or None if the token is forged, garbled or expired."""
        body, _, sig = token.rpartition(".")
        if not body or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return None
        if sig in self._revoked:
            return None
        name_b64, _, rest = body.partition(".")
        expires = rest.partition(".")[0]
        if not expires.isdigit() or int(expires) < self.clock():
            return None
        try:
            name = base64.urlsafe_b64decode(name_b64 + "=" * (-len(name_b64) % 4)).decode()
        except ValueError:
            return None
        return self._admins.get(name)

    def revoke(self, token: str) -> None:
        """End a session (logout): its token is refused from now on, wherever it is kept."""
        if self.check(token) is None:
            return  # forged or expired: nothing to remember
        now = self.clock()
        self._revoked = {s: exp for s, exp in self._revoked.items() if exp >= now}
        _, expires, _, sig = token.split(".")
        self._revoked[sig] = int(expires)


# --- answers (documented in the served OpenAPI) ---------------------------------------------
class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    key: str = Field(max_length=1024)


class SessionView(BaseModel):
    name: str
    open_access: bool = Field(description="No credentials configured: no login needed.")
    expires_at: float | None = Field(None, description="When the session cookie expires.")


class SubscriptionView(BaseModel):
    action: str
    group: str
    concurrency: int = Field(description="Credit: deliveries it may hold at once.")
    inflight: int = Field(description="Deliveries it holds now (offered or started).")
    observe: bool


class HeldTask(BaseModel):
    task: str
    action: str
    group: str
    state: str = Field(description="offered or started")
    attempt: int
    started_at: float | None


class ConnectionView(BaseModel):
    id: str
    service: str
    kind: Literal["websocket", "pull"]
    host: str | None = Field(description="From the client's hello; null for older clients.")
    pid: int | None
    client: str | None = Field(description="The client library, e.g. taskhub-python.")
    version: str | None = Field(description="The client library's version.")
    remote: str | None = Field(description="The address the connection came from.")
    connected_at: float
    uptime: float = Field(description="Seconds since it connected.")
    processed: int = Field(description="Deliveries it finished: succeeded + failed + dropped.")
    succeeded: int
    failed: int
    dropped: int
    holding: int
    current: list[HeldTask] = Field(description="The deliveries it holds (at most 20).")
    subscriptions: list[SubscriptionView]
    last_seen: float | None = Field(None, description="Pull consumers: its last call.")
    leases: int | None = Field(None, description="Pull consumers: tasks it has leased.")


class QueueStats(BaseModel):
    action: str
    group: str
    durable: bool
    workers: int
    credit: int = Field(description="Sum of the workers' concurrency.")
    inflight: int = Field(description="Deliveries the workers hold.")
    waiting: int
    in_flight: int


class GroupRate(BaseModel):
    group: str
    started: int = Field(description="Deliveries picked up.")
    failed: int = Field(description="Tries that failed (retried or not).")


class RateRow(BaseModel):
    action: str
    published: int
    started: int = Field(description="Deliveries picked up, all groups.")
    succeeded: int
    failed: int = Field(description="Tasks failed.")
    ended: int = Field(description="Tasks ended without a result.")
    failed_tries: int = Field(description="Tries that failed, all groups.")
    groups: list[GroupRate]


class Counts(BaseModel):
    waiting: int = Field(description="Live tasks no worker has started (state init).")
    running: int = Field(description="Live tasks a worker has started (state start).")
    success: int = Field(description="Tasks succeeded since the hub started.")
    fail: int
    end: int
    chains: int = Field(description="Live chains and groups (not counted as tasks).")


class Stats(BaseModel):
    hub: str
    at: float
    started_at: float
    window: int = Field(description="Seconds the rates count.")
    counts: Counts
    rates: list[RateRow] = Field(description="Events per action, with its groups.")
    queues: list[QueueStats]
    connections: list[ConnectionView]
    services: dict[str, int] = Field(description="Open connections per service.")


class ChainRef(BaseModel):
    task: str
    step: int


class TaskRow(BaseModel):
    id: str
    action: str
    state: str
    publisher: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    updates: int
    error: dict[str, Any] | None
    groups: dict[str, str] = Field(description="Delivery state per group.")
    kind: Literal["task", "chain", "group"]
    chain: ChainRef | None = Field(description="The chain this task is a step of.")


class TaskPage(BaseModel):
    tasks: list[TaskRow]
    next: str | None = Field(description="Search: the cursor to go on from (null: done).")


class SeriesView(BaseModel):
    step: int = Field(description="Seconds between points: 1, or 60 beyond 15 minutes.")
    span: int
    t: list[int] = Field(description="Each point's start (Unix seconds).")
    published: list[float] = Field(description="Tasks per second.")
    succeeded: list[float]
    failed: list[float]
    wait_p50: list[float | None] = Field(description="Seconds; null: no task ended then.")
    wait_p90: list[float | None]
    wait_p99: list[float | None]
    run_p50: list[float | None]
    run_p90: list[float | None]
    run_p99: list[float | None]


class Purged(BaseModel):
    action: str
    group: str
    purged: int = Field(description="Waiting deliveries failed with reason `purged`.")


class Retried(BaseModel):
    task: str = Field(description="The new task's id.")
    retried_from: str


class TaskDetail(TaskView):
    payload: Any = None


class DeadLetterRow(BaseModel):
    id: str
    action: str
    publisher: str
    error: dict[str, Any] | None
    created_at: float
    ended_at: float | None
    options: dict[str, Any]


# --- auth -----------------------------------------------------------------------------------
def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.dashboard_sessions
    return sessions


def _monitor(request: Request) -> Monitor:
    monitor: Monitor = request.app.state.dashboard_monitor
    return monitor


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _refuse_non_admin(creds: Credentials) -> Credentials:
    if not is_admin(creds):
        raise PermissionDenied(
            f"{creds.name!r} may not use the dashboard: it needs the 'admin' permission "
            "(or '*') in its sub_permissions or pub_permissions",
            permission="admin",
        )
    return creds


async def _admin(request: Request) -> Credentials:
    """The caller, if it has admin rights: a Bearer header, the session cookie, or nobody on
    a hub with open access."""
    hub = _hub(request)
    header = request.headers.get("authorization")
    if hub.registry.open_access:
        return Credentials("anonymous")
    if header:
        name, key = parse_bearer(header)
        creds = await hub.registry.authenticate(name, key, _address(request))
        return _refuse_non_admin(creds)
    token = request.cookies.get(COOKIE)
    if token is None:
        raise AuthenticationFailed("log in, or send 'Authorization: Bearer <name>:<key>'")
    session = _sessions(request).check(token)
    if session is None:
        raise AuthenticationFailed("the dashboard session has expired or is not valid; log in")
    if request.method not in ("GET", "HEAD") and not request.headers.get(CSRF_HEADER):
        raise PermissionDenied(
            f"a change made with the session cookie needs the {CSRF_HEADER} header"
        )
    return session


def _requeuer(creds: Credentials) -> Credentials:
    # An admin re-publishes any dead letter, also one whose action it may not publish itself.
    return Credentials(creds.name, pub_permissions=("*",))


HubDep = Annotated[Hub, Depends(_hub)]
AdminCaller = Annotated[Credentials, Depends(_admin)]
MonitorDep = Annotated[Monitor, Depends(_monitor)]
OPERATOR = Credentials("dashboard")  # reads on behalf of an admin: every action

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])
_ADMIN_ERRORS = {
    "_403": "Not an admin (no 'admin' or '*' permission), or a change made with the session "
    f"cookie without the {CSRF_HEADER} header.",
}


@router.post(
    "/login",
    response_model=SessionView,
    summary="Log in to the dashboard (sets the session cookie)",
    responses=_responses(_403="The credential has no admin rights."),
)
async def login(body: Login, request: Request, response: Response, hub: HubDep) -> Any:
    """Checks name and key like a Bearer header; only an admin gets the cookie (HttpOnly,
    SameSite=Strict, signed with a per-process secret, valid for 8 hours)."""
    if hub.registry.open_access:
        return {"name": "anonymous", "open_access": True, "expires_at": None}
    creds = await hub.registry.authenticate(body.name, body.key, _address(request))
    _refuse_non_admin(creds)
    sessions = _sessions(request)
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
    responses={413: _responses()[413], 500: _responses()[500]},
)
async def logout(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if token is not None:
        _sessions(request).revoke(token)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get(
    "/session",
    response_model=SessionView,
    summary="Who is logged in",
    responses=_responses(**_ADMIN_ERRORS),
)
async def session(creds: AdminCaller, hub: HubDep) -> Any:
    return {"name": creds.name, "open_access": hub.registry.open_access}


@router.get(
    "/stats",
    response_model=Stats,
    summary="Live counts, rates, queues and connections",
    responses=_responses(**_ADMIN_ERRORS),
)
async def stats(request: Request, creds: AdminCaller, hub: HubDep, monitor: MonitorDep) -> Any:
    """Cheap enough to poll every second: one pass over the live tasks, no store read."""
    counts, queues = monitor.live()
    return {
        "hub": hub.name,
        "at": hub.clock(),
        "started_at": monitor.started_at,
        "window": RATE_WINDOW,
        "counts": {**counts, **{s: monitor.ended[s] for s in ("success", "fail", "end")}},
        "rates": monitor.rates(),
        "queues": queues,
        "connections": monitor.connections(_pull(request)),
        "services": dict(hub.registry.connections),
    }


def _pull(request: Request) -> dict[str, Any]:
    consumers = getattr(request.app.state, "consumers", None)
    return dict(consumers.by_id) if consumers is not None else {}


@router.get(
    "/connections",
    response_model=list[ConnectionView],
    summary="Connected workers and pull consumers, with their host, pid and credit",
    responses=_responses(**_ADMIN_ERRORS),
)
async def connections(request: Request, creds: AdminCaller, monitor: MonitorDep) -> Any:
    return monitor.connections(_pull(request))


SPANS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}


@router.get(
    "/series",
    response_model=SeriesView,
    summary="Tasks per second and wait/run percentiles over time (the charts)",
    responses=_responses(**_ADMIN_ERRORS),
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
    responses=_responses(**_ADMIN_ERRORS),
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
        return {"tasks": monitor.tasks(action, state, kind, limit), "next": None}
    found, next_id = await search(hub, OPERATOR, f, after=after, limit=limit)
    return {"tasks": [summary(rec) for rec in found], "next": next_id}


@router.get(
    "/tasks/{task_id}",
    response_model=TaskDetail,
    summary="A task with its payload",
    responses=_responses(**_ADMIN_ERRORS, _404="Unknown task."),
)
async def task_detail(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    rec = await _readable(hub, OPERATOR, task_id)
    return task_view(rec, payload=True)


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    summary="Stream a task's events (Server-Sent Events)",
    responses={
        200: {
            "description": "As `GET /v1/tasks/{task_id}/events`, with the session cookie, "
            "and every event sent as a plain `message` (its type is in its data).",
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **_responses(**_ADMIN_ERRORS, _404="Unknown task."),
    },
)
async def task_events(
    task_id: str, request: Request, creds: AdminCaller, hub: HubDep
) -> StreamingResponse:
    # The same stream as the task API's (stored events, then live ones, ending after the
    # terminal event); only the credentials differ, as EventSource cannot send a header.
    await _readable(hub, OPERATOR, task_id)
    events: TaskEvents = request.app.state.task_events
    last = request.headers.get("last-event-id", "")
    return StreamingResponse(
        _unnamed(_event_stream(hub, events, task_id, int(last) if last.isdigit() else 0)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _unnamed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream without its ``event:`` lines: an EventSource hears a named event only with
    a listener for that name, and the page must show every type, also ones added later."""
    async for chunk in stream:
        yield b"".join(line for line in chunk.splitlines(True) if not line.startswith(b"event:"))


# --- actions (each needs admin rights, as every route here) -----------------------------------
@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskView,
    summary="Cancel a waiting or running task",
    responses=_responses(**_ADMIN_ERRORS, _404="Unknown task.", _409="It has already ended."),
)
async def cancel(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    """The task fails with reason `cancelled` ("cancelled by <admin>"); its workers are told
    to stop. A chain or group cancelled this way cancels its running steps too."""
    try:
        task = hub.lc.cancel(_operator(creds), task_id)
    except TaskNotFound:
        rec = await _readable(hub, OPERATOR, task_id)  # 404 if it never existed
        raise TaskEnded(f"task {task_id} has already ended ({rec.state})", task=task_id) from None
    hub.kick()
    await hub.flush()
    return task_view(task.rec)


@router.post(
    "/tasks/{task_id}/retry",
    response_model=Retried,
    summary="Publish a fresh copy of a failed task",
    responses=_responses(
        **_ADMIN_ERRORS, _404="Unknown task.", _409="The task has not failed (named state)."
    ),
)
async def retry(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    """Same action, payload and options as the failed task (without its `key`, `delay`, `at`
    and `once_every`, as a dead-letter re-queue), a new id, `options.retried_from` the failed
    one, published by the admin. Only a task in state `fail` can be retried; a chain or group
    cannot (publish it again)."""
    rec = await _readable(hub, OPERATOR, task_id)
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
    task, _ = hub.lc.publish(
        _operator(creds),
        rec.action,
        rec.payload,
        StoredOptions(kept),
        extra={"retried_from": rec.id},
    )
    assert isinstance(task, Task)  # no key, no once_every: always a new task
    hub.kick()
    await hub.flush()
    return {"task": task.id, "retried_from": task_id}


@router.post(
    "/queues/{action}/{group}/purge",
    response_model=Purged,
    summary="Purge a group queue (its waiting deliveries)",
    responses=_responses(**_ADMIN_ERRORS, _404="No such queue."),
)
async def purge(action: str, group: str, creds: AdminCaller, hub: HubDep) -> Any:
    """As `DELETE /v1/queues/{action}/{group}`: the group's waiting deliveries fail with
    reason `purged`; deliveries a worker holds are left to it."""
    n = await hub.admin.purge(_operator(creds), action, group)
    return {"action": action, "group": group, "purged": n}


def _operator(creds: Credentials) -> Credentials:
    # An admin acts on every action: cancel, retry and purge whatever the dashboard shows.
    return Credentials(creds.name, sub_permissions=("*",), pub_permissions=("*",))


@router.get(
    "/dead-letters",
    response_model=list[DeadLetterRow],
    summary="Every dead letter, oldest first",
    responses=_responses(**_ADMIN_ERRORS),
)
async def dead_letters(creds: AdminCaller, hub: HubDep) -> Any:
    return await hub.admin.dead_letters(OPERATOR)


@router.post(
    "/dead-letters/{task_id}/requeue",
    response_model=Requeued,
    summary="Re-queue a dead letter",
    responses=_responses(**_ADMIN_ERRORS, _404="No such dead letter."),
)
async def requeue(task_id: str, creds: AdminCaller, hub: HubDep) -> Any:
    """Publishes a fresh copy (a new id, `options.requeued_from` the dead one), published by
    the admin, and removes the dead letter."""
    return {"task": await hub.admin.requeue(_requeuer(creds), task_id), "requeued_from": task_id}


def install(app: FastAPI, hub: Hub) -> None:
    """Serve the page at ``/`` and ``/static`` and its JSON under ``/v1/dashboard``. Call
    after ``http.install`` (it uses its error model and task event fan-out)."""
    app.state.dashboard_sessions = Sessions()
    app.state.dashboard_monitor = Monitor(hub)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        # no-cache: the page is tiny, and a hub upgrade must not leave an old page behind
        return FileResponse(
            os.path.join(STATIC, "index.html"), headers={"Cache-Control": "no-cache"}
        )


__all__ = ["Monitor", "Sessions", "install", "is_admin"]
