"""The data model: tasks, their deliveries and events, metadata entries, and the batch of
writes the lifecycle hands the store. Below both: the lifecycle builds these records, the
stores keep them, and neither imports the other."""

from __future__ import annotations

from typing import Any

import msgspec

TERMINAL_STATES = frozenset({"success", "fail", "end"})
TASK_STATES = ("init", "start", "success", "fail", "end")

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
