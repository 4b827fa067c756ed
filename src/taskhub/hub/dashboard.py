"""The web dashboard: a static page at ``/`` and the JSON it reads under ``/v1/dashboard``.

The page (``hub/static``: plain HTML, CSS and JavaScript modules, no build step) polls
``/v1/dashboard/stats`` once a second and streams a task's events over Server-Sent Events.
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
from collections import deque
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from taskhub.errors import AuthenticationFailed, PermissionDenied
from taskhub.hub.auth import parse_bearer
from taskhub.hub.http import (
    _SSE_EVENT,
    TaskEvents,
    TaskView,
    _event_stream,
    _readable,
    _responses,
)
from taskhub.hub.hub import Hub, task_view
from taskhub.hub.schedules_http import Requeued
from taskhub.lifecycle import Credentials, EventKey, Task
from taskhub.store.base import TERMINAL_STATES, EventRecord, TaskRecord

COOKIE = "taskhub_session"
SESSION_TTL = 8 * 3600.0  # seconds a login lasts; the secret dies with the process anyway
RATE_WINDOW = 60  # seconds the rates are counted over
RECENT_TASKS = 1000  # ended tasks kept (as small summaries) for the task list
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


# --- what the page shows --------------------------------------------------------------------
# An ended task as the recent list keeps it: id, action, state, publisher, created_at,
# started_at, ended_at, updates, error, and (group, delivery state) per delivery. Taken when
# the terminal event fires; the row dict is only built when the task list is read.
Snapshot = tuple[
    str,
    str,
    str,
    str,
    float,
    float | None,
    float | None,
    int,
    dict[str, Any] | None,
    list[tuple[str, str]],
]


def _snapshot(rec: TaskRecord) -> Snapshot:
    return (
        rec.id,
        rec.action,
        rec.state,
        rec.publisher,
        rec.created_at,
        rec.started_at,
        rec.ended_at,
        rec.updates,
        rec.error,  # replaced on change, never mutated: the reference is a snapshot
        [(d.group, d.state) for d in rec.deliveries],
    )


def _row(snap: Snapshot) -> dict[str, Any]:
    """A task list row: no payload, result or update data, so the recent list stays small."""
    task_id, action, state, publisher, created_at, started_at, ended_at, updates, error, ds = snap
    if error is not None:  # a handler's message can be long: the task page has all of it
        error = {k: (v[:200] if isinstance(v, str) else v) for k, v in error.items()}
    return {
        "id": task_id,
        "action": action,
        "state": state,
        "publisher": publisher,
        "created_at": created_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "updates": updates,
        "error": error,
        "groups": {group: _delivery_state(state, d_state) for group, d_state in ds},
    }


def _summary(rec: TaskRecord) -> dict[str, Any]:
    return _row(_snapshot(rec))


def _delivery_state(task_state: str, state: str) -> str:
    # The terminal event comes before the lifecycle closes the deliveries: close them here
    # as it is about to (whatever was still pending, offered or started becomes done).
    if task_state in TERMINAL_STATES and state in ("pending", "offered", "started"):
        return "done"
    return state


# The rate kinds, in the order of a bucket's count lists.
KINDS = ("published", "started", "succeeded", "failed", "ended")
# Event type -> (index in KINDS, counted per group); other types are not counted.
_COUNTED: dict[str, tuple[int, bool]] = {
    "init": (0, False),
    "start": (1, True),  # a task's first pickup
    "pickup": (1, True),  # any later one: each is one delivery picked up by its group
    "delivery_fail": (3, True),
    "success": (2, False),
    "fail": (3, False),
    "end": (4, False),
}


class Monitor:
    """Keeps what the dashboard shows of the past: the lifecycle's event counts of the last
    ``RATE_WINDOW`` seconds (for the rates), totals of ended tasks, and the most recent ended
    tasks.

    It adds nothing per event: the lifecycle counts events per second (``lc.counts``) and hands
    each complete second here; ended tasks come through ``lc.end_listeners``, one call per task.

    Memory: at most ``RATE_WINDOW + 1`` seconds of (action, event type, group) counters, plus
    ``RECENT_TASKS`` snapshots of a few hundred bytes each.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._clock = hub.clock
        self.started_at = hub.clock()
        self.ended: dict[str, int] = {"success": 0, "fail": 0, "end": 0}  # since the start
        self._seconds: deque[tuple[int, dict[EventKey, int]]] = deque()
        self.recent: deque[Snapshot] = deque(maxlen=RECENT_TASKS)
        hub.lc.second_listeners.append(self._on_second)
        hub.lc.end_listeners.append(self._on_end)

    def _on_second(self, second: int, counts: dict[EventKey, int]) -> None:
        seconds = self._seconds
        seconds.append((second, counts))
        since = int(self._clock()) - RATE_WINDOW  # no window from now on reaches back further
        while seconds and seconds[0][0] <= since:
            seconds.popleft()

    def _on_end(self, task: Task, ev: EventRecord) -> None:
        self.ended[ev.type] += 1
        self.recent.append(_snapshot(task.rec))

    def rates(self) -> list[dict[str, Any]]:
        """Per action (group null) and per action and group: events in the last minute."""
        since = int(self._clock()) - RATE_WINDOW
        lc = self.hub.lc
        total: dict[tuple[str, str | None], list[int]] = {}
        for second, counts in (*self._seconds, (lc.counts_second, lc.counts)):
            if second <= since:
                continue
            for (action, type_, group), n in counts.items():
                counted = _COUNTED.get(type_)
                if counted is None:
                    continue
                kind, per_group = counted
                if not per_group:
                    group = None
                elif group is None:
                    continue
                sums = total.get((action, group))
                if sums is None:
                    sums = total[action, group] = [0, 0, 0, 0, 0]
                sums[kind] += n
        out: list[dict[str, Any]] = []
        for action, group in sorted(total, key=lambda k: (k[0], k[1] or "")):
            row: dict[str, Any] = {"action": action, "group": group}
            row.update(zip(KINDS, total[action, group], strict=True))
            out.append(row)
        return out

    def live(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Live task counts and every group queue, in one pass over the live tasks (the
        per-queue view of the lifecycle walks all tasks once per queue)."""
        lc = self.hub.lc
        counts = {"waiting": 0, "running": 0}
        per_queue: dict[tuple[str, str], list[int]] = {}
        for task in lc.tasks.values():
            counts["running" if task.rec.state == "start" else "waiting"] += 1
            for group, d in task.deliveries.items():
                slot = per_queue.setdefault((task.rec.action, group), [0, 0])
                if d.rec.state == "pending":
                    slot[0] += 1
                elif d.rec.state in ("offered", "started"):
                    slot[1] += 1
        queues = []
        for (action, group), q in sorted(lc.queues.items()):
            waiting, in_flight = per_queue.get((action, group), (0, 0))
            queues.append(
                {
                    "action": action,
                    "group": group,
                    "durable": q.durable,
                    "workers": len(q.workers),
                    "credit": sum(s.concurrency for s in q.workers),
                    "inflight": sum(s.inflight for s in q.workers),
                    "waiting": waiting,
                    "in_flight": in_flight,
                }
            )
        return counts, queues

    def connections(self, pull: set[str]) -> list[dict[str, Any]]:
        out = []
        for peer in sorted(self.hub.senders, key=lambda p: (p.service, p.id)):
            out.append(
                {
                    "id": peer.id,
                    "service": peer.service,
                    "kind": "pull" if peer.id in pull else "websocket",
                    "holding": len(peer.holding),
                    "subscriptions": [
                        {
                            "action": s.action,
                            "group": s.group,
                            "concurrency": s.concurrency,
                            "inflight": s.inflight,
                            "observe": s.observe,
                        }
                        for s in peer.subs.values()
                    ],
                }
            )
        return out

    def tasks(self, action: str | None, state: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first: the live tasks, then the recently ended ones."""
        rows = {t.id: _summary(t.rec) for t in self.hub.lc.tasks.values()}
        for snap in reversed(self.recent):  # newest first: a task's last snapshot wins
            if snap[0] not in rows:
                rows[snap[0]] = _row(snap)
        picked = [
            row
            for row in rows.values()
            if (action is None or row["action"] == action)
            and (state is None or row["state"] == state)
        ]
        picked.sort(key=lambda row: row["id"], reverse=True)
        return picked[:limit]


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


class ConnectionView(BaseModel):
    id: str
    service: str
    kind: Literal["websocket", "pull"]
    holding: int
    subscriptions: list[SubscriptionView]


class QueueStats(BaseModel):
    action: str
    group: str
    durable: bool
    workers: int
    credit: int = Field(description="Sum of the workers' concurrency.")
    inflight: int = Field(description="Deliveries the workers hold.")
    waiting: int
    in_flight: int


class RateRow(BaseModel):
    action: str
    group: str | None = Field(description="null: the action's own row (all groups).")
    published: int
    started: int = Field(description="Deliveries picked up (group rows).")
    succeeded: int
    failed: int = Field(description="Tasks failed (action row) or deliveries failed (group).")
    ended: int = Field(description="Tasks ended without a result.")


class Counts(BaseModel):
    waiting: int = Field(description="Live tasks no worker has started (state init).")
    running: int = Field(description="Live tasks a worker has started (state start).")
    success: int = Field(description="Tasks succeeded since the hub started.")
    fail: int
    end: int


class Stats(BaseModel):
    hub: str
    at: float
    started_at: float
    window: int = Field(description="Seconds the rates count.")
    counts: Counts
    rates: list[RateRow] = Field(description="Events per action, and per action and group.")
    queues: list[QueueStats]
    connections: list[ConnectionView]
    services: dict[str, int] = Field(description="Open connections per service.")


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
        "connections": monitor.connections(_pull_ids(request)),
        "services": dict(hub.registry.connections),
    }


def _pull_ids(request: Request) -> set[str]:
    consumers = getattr(request.app.state, "consumers", None)
    return set(consumers.by_id) if consumers is not None else set()


@router.get(
    "/connections",
    response_model=list[ConnectionView],
    summary="Connected services and each subscription's credit",
    responses=_responses(**_ADMIN_ERRORS),
)
async def connections(request: Request, creds: AdminCaller, monitor: MonitorDep) -> Any:
    return monitor.connections(_pull_ids(request))


@router.get(
    "/tasks",
    response_model=list[TaskRow],
    summary="Recent tasks, newest first",
    responses=_responses(**_ADMIN_ERRORS),
)
async def recent_tasks(
    creds: AdminCaller,
    monitor: MonitorDep,
    action: str | None = None,
    state: Literal["init", "start", "success", "fail", "end"] | None = None,
    limit: Annotated[int, Query(ge=1, le=RECENT_TASKS)] = 100,
) -> Any:
    """Live tasks and the last tasks this hub saw end (at most 1000); older ones are read by
    id (`GET /v1/dashboard/tasks/{id}`) or listed with `GET /v1/tasks`."""
    return monitor.tasks(action, state, limit)


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
            "description": "As `GET /v1/tasks/{task_id}/events`, with the session cookie.",
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
        _event_stream(hub, events, task_id, int(last) if last.isdigit() else 0),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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
