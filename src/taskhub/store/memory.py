"""In-process store engine (dicts): for tests and hubs that need no durability."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from taskhub.errors import StoreUnavailable
from taskhub.store.base import TERMINAL_STATES, EventRecord, TaskRecord, WriteBatch


@dataclass(slots=True)
class _Row:
    # The query columns are kept beside the encoded record so filters need no decode.
    action: str
    state: str
    ended_at: float | None
    record: bytes


class MemoryStore:
    """Keeps encoded copies of every record, exactly as a durable engine would.

    Records are encoded when :meth:`apply` is called and decoded on every read, so neither
    the caller mutating a record afterwards nor mutating one it got back changes what is
    stored; and values come back normalized the same way as from the sqlite engine
    (tuples as lists, for instance), so tests on this engine do not hide surprises.
    """

    url = "memory://"

    def __init__(self) -> None:
        self._tasks: dict[str, _Row] = {}
        self._events: dict[str, dict[int, bytes]] = {}
        self._state = "new"  # new | open | closed
        # Same codec as the sqlite engine, so both normalize values identically.
        self._encoder = msgspec.json.Encoder()
        self._task_decoder = msgspec.json.Decoder(TaskRecord)
        self._event_decoder = msgspec.json.Decoder(EventRecord)

    async def open(self) -> None:
        if self._state == "closed":
            raise StoreUnavailable("memory store was closed and cannot be opened again")
        self._state = "open"

    async def close(self) -> None:
        self._state = "closed"

    def _check_open(self) -> None:
        if self._state != "open":
            what = "closed" if self._state == "closed" else "not open yet (call open() first)"
            raise StoreUnavailable(f"memory store is {what}")

    async def apply(self, batch: WriteBatch) -> None:
        """Upserts, then event appends, then deletes; all or nothing."""
        self._check_open()
        # Encode everything before touching the dicts: an unencodable value then leaves
        # the store as it was, like a rolled-back transaction.
        encode = self._encoder.encode
        rows = [(t.id, _Row(t.action, t.state, t.ended_at, encode(t))) for t in batch.tasks]
        events = [(e.task_id, e.seq, encode(e)) for e in batch.events]
        for task_id, row in rows:
            self._tasks[task_id] = row
        for task_id, seq, blob in events:
            self._events.setdefault(task_id, {})[seq] = blob
        for task_id in batch.deleted:
            self._tasks.pop(task_id, None)
            self._events.pop(task_id, None)

    async def load_active(self) -> list[TaskRecord]:
        self._check_open()
        decode = self._task_decoder.decode
        return [
            decode(row.record)
            for task_id, row in sorted(self._tasks.items())
            if row.state not in TERMINAL_STATES
        ]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        self._check_open()
        row = self._tasks.get(task_id)
        return None if row is None else self._task_decoder.decode(row.record)

    async def get_events(self, task_id: str) -> list[EventRecord]:
        self._check_open()
        by_seq = self._events.get(task_id, {})
        decode = self._event_decoder.decode
        return [decode(by_seq[seq]) for seq in sorted(by_seq)]

    async def list_tasks(
        self,
        *,
        action: str | None = None,
        state: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        decode = self._task_decoder.decode
        out: list[TaskRecord] = []
        if limit == 0:
            return out
        for task_id in sorted(self._tasks):
            if after is not None and task_id <= after:
                continue
            row = self._tasks[task_id]
            if (action is None or row.action == action) and (state is None or row.state == state):
                out.append(decode(row.record))
                if len(out) >= limit:
                    break
        return out

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Oldest ended first; a terminal task without ``ended_at`` is never removed."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        candidates = sorted(
            (row.ended_at, task_id)
            for task_id, row in self._tasks.items()
            if row.state in TERMINAL_STATES and row.ended_at is not None and row.ended_at < at
        )
        removed = [task_id for _, task_id in candidates[:limit]]
        for task_id in removed:
            del self._tasks[task_id]
            self._events.pop(task_id, None)
        return removed
