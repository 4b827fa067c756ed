"""The data model: tasks, their deliveries and events, metadata entries, and the batch of
writes the lifecycle hands the store. Below both: the lifecycle builds these records, the
stores keep them, and neither imports the other."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class TaskState(StrEnum):
    """A task's state: its value is the word on the wire, in the store, in the HTTP API and
    on the command line; :attr:`label` is the friendlier word the dashboard shows for it."""

    INIT = "init"  # published, no worker has started it yet (waiting)
    START = "start"  # a worker started it (running)
    SUCCESS = "success"  # a worker returned its result
    FAIL = "fail"  # failed, timed out or cancelled
    END = "end"  # every group dropped it: ended without a result

    @property
    def label(self) -> str:
        return TASK_LABELS[self]

    @classmethod
    def parse(cls, word: str) -> TaskState:
        """The state named by ``word``: its value (``init``) or its label (``waiting``)."""
        state = _BY_WORD.get(word)
        if state is None:
            words = ", ".join(f"{s.value} ({s.label})" if s.label != s else s for s in cls)
            raise ValueError(f"unknown task state {word!r}; one of {words}")
        return state


# The dashboard's words for the states; ``?state=`` accepts them too (docs/http.md).
TASK_LABELS: dict[TaskState, str] = {
    TaskState.INIT: "waiting",
    TaskState.START: "running",
    TaskState.SUCCESS: "success",
    TaskState.FAIL: "failed",
    TaskState.END: "ended",
}
_BY_WORD = {**{s.value: s for s in TaskState}, **{w: s for s, w in TASK_LABELS.items()}}
# Every word a filter accepts for a task state: the states, then the labels that differ.
TASK_STATE_WORDS = tuple(_BY_WORD)
TASK_STATES = tuple(TaskState)
TERMINAL_STATES = frozenset({TaskState.SUCCESS, TaskState.FAIL, TaskState.END})


class DeliveryState(StrEnum):
    """A delivery's state (one group's copy of a task)."""

    PENDING = "pending"  # waiting in its group's queue (or out a retry's backoff)
    OFFERED = "offered"  # offered to a worker, not started yet
    STARTED = "started"  # a worker picked it up
    DONE = "done"  # the task ended (success, or ended elsewhere) while this copy was open
    DROPPED = "dropped"  # the worker dropped it
    FAILED = "failed"  # its tries ran out or its handler failed for good


ENDED_DELIVERY_STATES = frozenset({DeliveryState.DONE, DeliveryState.DROPPED, DeliveryState.FAILED})

# Records hold JSON values and other records only, so they cannot be part of a reference
# cycle: gc=False keeps them out of the garbage collector, whose full collections would
# otherwise walk every record of every task in flight (issue #7, docs/performance.md).


class DeliveryRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One group's copy of a task."""

    group: str
    # A DeliveryState's word. Typed str: a store keeps states as opaque words (they decode
    # as str, and compare equal to the enum's members).
    state: str = DeliveryState.PENDING
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
    state: str = TaskState.INIT  # a TaskState's word (str, as DeliveryRecord.state)
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
    """What the lifecycle hands the store at once (one transaction where the engine has them).

    ``sealed``: the caller never changes these task and event records again, nor anything in
    them (the lifecycle's batches: it hands over copies of the records it goes on changing,
    ``Journal.take_writes``), so an engine may keep the objects themselves instead of copies.
    Unsealed (the default), the caller may change them as soon as ``apply`` has started.
    """

    tasks: list[TaskRecord] = []  # upserts (whole records)
    events: list[EventRecord] = []  # appends
    deleted: list[str] = []  # task ids to remove with their events
    meta: list[MetaRecord] = []  # metadata upserts, applied after the task writes
    meta_deleted: list[tuple[str, str]] = []  # (kind, key) to remove, applied last
    sealed: bool = False

    def __bool__(self) -> bool:
        return bool(self.tasks or self.events or self.deleted or self.meta or self.meta_deleted)
