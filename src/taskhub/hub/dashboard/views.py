"""What the dashboard's JSON routes answer, as documented in the served OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskhub.hub.http.tasks import TaskView


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
    hub: str | None = Field(
        None, description="The hub it is connected to (its `name`), with several hubs."
    )
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
    success: int = Field(
        description="Tasks succeeded since the hub started (with several hubs: added up over "
        "the hubs, each since it started)."
    )
    fail: int
    end: int
    chains: int = Field(description="Live chains and groups (not counted as tasks).")


class HubShare(BaseModel):
    name: str
    partitions: list[int] = Field(description="The partitions it leads.")


class Stats(BaseModel):
    hub: str = Field(description="The hub that answered.")
    hubs: list[HubShare] = Field(
        description="The hubs whose numbers these are: this one first, then each hub that "
        "leads some partition of the deployment."
    )
    missing: list[int] = Field(
        description="Partitions left out: no hub leads them right now, or their hub did "
        "not answer (try again in a moment)."
    )
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
