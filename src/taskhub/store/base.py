"""The store interface every engine implements (the records it keeps: taskhub.records).

The hub keeps live task state in memory and writes every change through the store in
batches (group commit): :meth:`Store.apply` returns only once the batch is durable, and the
hub answers a ``pub`` only after the batch holding that task has been applied.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from taskhub.records import EventRecord, TaskRecord, WriteBatch


@runtime_checkable
class AppliesNow(Protocol):
    """An engine whose write needs no I/O (memory): :meth:`apply_now` does what
    :meth:`Store.apply` does, without an ``await``, so the hub can commit an input's changes
    and send what they caused in the same event-loop turn as the input. The hub calls it only
    while ``apply`` is the one defined beside it: a subclass that overrides ``apply`` alone
    gets every batch through ``apply``."""

    def apply_now(self, batch: WriteBatch) -> None: ...


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

        Unless ``batch.sealed``, the caller may change these record objects as soon as
        ``apply`` has started: an engine must take what it needs from them (copy or encode)
        before its first ``await``. A sealed batch's records (the hub's) never change again,
        so an engine may keep them as they are (the memory engine does).
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
