"""The store interface every engine implements, and the records it keeps.

The hub keeps live task state in memory and writes every change through the store in
batches (group commit): :meth:`Store.apply` returns only once the batch is durable, and the
hub answers a ``pub`` only after the batch holding that task has been applied.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

TERMINAL_STATES = frozenset({"success", "fail", "end"})
TASK_STATES = ("init", "start", "success", "fail", "end")
# The redis engine's URL schemes -> (the scheme redis-py parses, a Redis Cluster client?):
# one server or a cluster, plain or TLS. Here, not in store/redis.py, so that telling a redis
# URL apart needs no import of redis-py.
REDIS_URL_SCHEMES = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
}

# Records hold JSON values and other records only, so they cannot be part of a reference
# cycle: gc=False keeps them out of the garbage collector, whose full collections would
# otherwise walk every record of every task in flight (issue #7, docs/performance.md).


class DeliveryRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One group's copy of a task."""

    group: str
    # pending | offered | started | done | dropped | failed
    state: str = "pending"
    attempt: int = 0  # offer sequence number; fences stale workers
    tries: int = 0  # started attempts that were lost or failed
    not_before: float = 0.0  # retry backoff: not offered again before this time
    error: dict[str, Any] | None = None


class TaskRecord(msgspec.Struct, omit_defaults=True, gc=False):
    id: str
    action: str
    publisher: str
    created_at: float
    payload: Any = None
    options: dict[str, Any] = {}
    state: str = "init"
    started_at: float | None = None
    ended_at: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None  # {"reason", "type", "message"}
    last_update: Any = None
    updates: int = 0
    deliveries: list[DeliveryRecord] = []
    not_before: float = 0.0  # delayed tasks are not offered before this time
    seq: int = 0  # seq of the task's last event, so events stay ordered across restarts


class EventRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """A task event: one lifecycle change, stored with the task and streamed to watchers."""

    task_id: str
    seq: int
    at: float
    type: str  # init | offer | pickup | update | drop | return | success | fail | end | ...
    group: str | None = None
    service: str | None = None
    data: Any = None


class MetaRecord(msgspec.Struct):
    """One entry of the small metadata store: schedules, durable queues, dead letters.

    ``kind`` groups entries (``schedule``, ``queue``, ``dead``); ``key`` is unique within a
    kind; ``value`` is any JSON-able value. Kept beside the tasks so that a change to both
    (a schedule firing: its task and its last fired slot) commits in one transaction.
    """

    kind: str
    key: str
    value: Any = None


class WriteBatch(msgspec.Struct):
    tasks: list[TaskRecord] = []  # upserts (whole records)
    events: list[EventRecord] = []  # appends
    deleted: list[str] = []  # task ids to remove with their events
    meta: list[MetaRecord] = []  # metadata upserts, applied after the task writes
    meta_deleted: list[tuple[str, str]] = []  # (kind, key) to remove, applied last

    def __bool__(self) -> bool:
        return bool(self.tasks or self.events or self.deleted or self.meta or self.meta_deleted)


class Store(Protocol):
    """What the hub needs from storage. Engines: memory, sqlite, redis.

    Metadata (:class:`MetaRecord`) is written only through :meth:`apply`, in the same
    transaction as the batch's task writes; it is read with :meth:`list_meta`/:meth:`get_meta`.
    """

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, batch: WriteBatch) -> None:
        """Make the whole batch durable (one transaction where the engine has them).

        The hub keeps mutating these record objects after calling ``apply``: an engine must
        take what it needs from them (copy or encode) before its first ``await``.
        """

    async def load_active(self) -> list[TaskRecord]:
        """Every task not in a terminal state, oldest first (hub recovery at start)."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def get_events(self, task_id: str) -> list[EventRecord]:
        """The task's events in ``seq`` order."""

    async def list_tasks(
        self,
        *,
        action: str | None = None,
        state: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        """Tasks by id (creation order), filtered; ``after`` is the last id of the previous page."""

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Delete up to ``limit`` terminal tasks ended before ``at``; return their ids."""

    async def list_ended_before(self, at: float, limit: int = 1000) -> list[TaskRecord]:
        """The terminal tasks :meth:`remove_ended_before` would remove next, in the same order
        (oldest ``ended_at`` first): read to archive them before they are removed."""

    async def list_meta(self, kind: str) -> dict[str, Any]:
        """Every metadata value of ``kind``, by key (empty when there is none)."""

    async def get_meta(self, kind: str, key: str) -> Any:
        """One metadata value, or ``None`` when there is no such entry."""
