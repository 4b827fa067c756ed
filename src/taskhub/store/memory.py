"""In-process store engine (dicts): for tests and hubs that need no durability."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import msgspec

from taskhub.errors import StoreUnavailable
from taskhub.records import TERMINAL_STATES, EventRecord, TaskRecord, WriteBatch


class _Row(msgspec.Struct, gc=False):
    # The query columns are kept beside the encoded record so filters need no decode (a
    # sealed batch's record, kept as it is until its first read, has them itself).
    # Not tracked by the garbage collector (nothing in it can form a cycle): a store of
    # many rows would otherwise make every full collection walk them all.
    action: str
    state: str
    ended_at: float | None
    record: bytes


class MemoryStore:
    """Keeps what a durable engine would: every read decodes a copy of the stored JSON.

    Records of an unsealed batch are encoded when :meth:`apply` is called, so the caller
    changing them afterwards changes nothing stored. A sealed batch's records (the hub's:
    ``WriteBatch.sealed``, never changed again) are kept as they are and encoded on their
    first read instead, which spares the hub an encoding per write; either way every read
    decodes, so changing what one got back changes nothing stored, and values come back
    normalized the same way as from the sqlite engine (tuples as lists, for instance), so
    tests on this engine do not hide surprises. Memory: a kept record and its events take
    about as many bytes as their JSON would (~1.3-1.6 KB per small task, docs/performance.md).
    """

    url = "memory://"

    def __init__(self) -> None:
        self._tasks: dict[str, _Row | TaskRecord] = {}  # a sealed record until its first read
        self._events: dict[str, dict[int, bytes | EventRecord]] = {}
        self._meta: dict[str, dict[str, bytes]] = {}  # kind -> key -> encoded value
        # (ended_at, id) of ended tasks, oldest first, so a retention sweep costs what it
        # removes rather than a scan of every task; entries whose row changed are skipped.
        self._ended: list[tuple[float, str]] = []
        self._state = "new"  # new | open | closed
        # Same codec as the sqlite engine, so both normalize values identically.
        self._encoder = msgspec.json.Encoder()
        self._task_decoder = msgspec.json.Decoder(TaskRecord)
        self._event_decoder = msgspec.json.Decoder(EventRecord)
        self._any_decoder = msgspec.json.Decoder()

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
        self.apply_now(batch)

    def apply_now(self, batch: WriteBatch) -> None:
        """:meth:`apply` without an ``await`` (:class:`taskhub.store.base.AppliesNow`)."""
        self._check_open()
        # Encode everything before touching the dicts: an unencodable value then leaves
        # the store as it was, like a rolled-back transaction. map() over the C encoder, and
        # one loop per kind below without tuples in between: the Python around the encoding
        # cost as much as the encoding itself (docs/decisions.md, "A cheaper memory store").
        # A sealed batch's records are kept as they are (its caller never changes them).
        encode = self._encoder.encode
        tasks = batch.tasks
        events = batch.events
        event_blobs: Sequence[bytes | EventRecord] = events
        rows = self._tasks
        if batch.sealed:
            kept: Sequence[_Row | TaskRecord] = tasks
        else:
            kept = [
                _Row(t.action, t.state, t.ended_at, b)
                for t, b in zip(tasks, map(encode, tasks), strict=True)
            ]
            event_blobs = list(map(encode, events))
        meta = [(m.kind, m.key, encode(m.value)) for m in batch.meta] if batch.meta else ()
        ended = self._ended
        for t, row in zip(tasks, kept, strict=True):
            rows[t.id] = row
            ended_at = t.ended_at
            if ended_at is not None and t.state in TERMINAL_STATES:
                heapq.heappush(ended, (ended_at, t.id))
        by_task = self._events
        # setdefault's spare dict costs less than a get, a test and a second lookup.
        setdefault = by_task.setdefault
        for e, event_blob in zip(events, event_blobs, strict=True):
            setdefault(e.task_id, {})[e.seq] = event_blob
        for task_id in batch.deleted:
            rows.pop(task_id, None)
            by_task.pop(task_id, None)
        for kind, key, value in meta:
            self._meta.setdefault(kind, {})[key] = value
        for kind, key in batch.meta_deleted:
            self._meta.get(kind, {}).pop(key, None)

    def _read(self, row: _Row | TaskRecord) -> TaskRecord:
        """A copy of the row's record, as the sqlite engine would give it back."""
        if isinstance(row, TaskRecord):  # a sealed record: encoded once, on its first read
            blob = self._encoder.encode(row)
            self._tasks[row.id] = _Row(row.action, row.state, row.ended_at, blob)
            return self._task_decoder.decode(blob)
        return self._task_decoder.decode(row.record)

    async def load_active(self) -> list[TaskRecord]:
        self._check_open()
        return [
            self._read(row)
            for task_id, row in sorted(self._tasks.items())
            if row.state not in TERMINAL_STATES
        ]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        self._check_open()
        row = self._tasks.get(task_id)
        return None if row is None else self._read(row)

    async def get_events(self, task_id: str) -> list[EventRecord]:
        self._check_open()
        by_seq = self._events.get(task_id, {})
        encode = self._encoder.encode
        decode = self._event_decoder.decode
        out = []
        for seq in sorted(by_seq):
            kept = by_seq[seq]
            if isinstance(kept, bytes):
                blob = kept
            else:  # a sealed event: encoded once, on its first read
                blob = by_seq[seq] = encode(kept)
            out.append(decode(blob))
        return out

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
        out: list[TaskRecord] = []
        if limit == 0:
            return out
        for task_id in sorted(self._tasks):
            if after is not None and task_id <= after:
                continue
            row = self._tasks[task_id]
            if (action is None or row.action == action) and (state is None or row.state == state):
                out.append(self._read(row))
                if len(out) >= limit:
                    break
        return out

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Oldest ended first; a terminal task without ``ended_at`` is never removed."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        removed = [task_id for _, task_id in self._pop_ended(at, limit)]
        for task_id in removed:
            del self._tasks[task_id]
            self._events.pop(task_id, None)
        return removed

    def _pop_ended(self, at: float, limit: int) -> list[tuple[float, str]]:
        """Take up to ``limit`` live entries ended before ``at`` off the heap, dropping
        stale ones (the task was removed, or rewritten since) on the way."""
        out: list[tuple[float, str]] = []
        heap = self._ended
        while heap and len(out) < limit and heap[0][0] < at:
            ended_at, task_id = heapq.heappop(heap)
            row = self._tasks.get(task_id)
            if row is None or row.ended_at != ended_at or row.state not in TERMINAL_STATES:
                continue
            if out and out[-1] == (ended_at, task_id):
                continue  # written twice with the same end: one heap entry per write
            out.append((ended_at, task_id))
        return out

    async def list_ended_before(self, at: float, limit: int = 1000) -> list[TaskRecord]:
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        entries = self._pop_ended(at, limit)
        for entry in entries:  # only looking: they stay until removed
            heapq.heappush(self._ended, entry)
        return [self._read(self._tasks[task_id]) for _, task_id in entries]

    async def list_meta(self, kind: str) -> dict[str, Any]:
        self._check_open()
        decode = self._any_decoder.decode
        return {key: decode(blob) for key, blob in sorted(self._meta.get(kind, {}).items())}

    async def get_meta(self, kind: str, key: str) -> Any:
        self._check_open()
        blob = self._meta.get(kind, {}).get(key)
        return None if blob is None else self._any_decoder.decode(blob)
