"""The sqlite engine's journal: every batch is appended whole as one row, and folded into the
tables in bulk later, so a task written several times between two folds is written there once.

A commit then writes one row and a few pages instead of every page the batch's task rows,
event rows and index entries touch; a fold writes each touched page once for many batches.
Every read folds first, so readers see exactly what was applied.
"""

from __future__ import annotations

import math
import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from taskhub.errors import StoreFenced
from taskhub.records import TaskRecord, TaskState, WriteBatch
from taskhub.store.sqlite_schema import WriteFence, transaction

# A row buffer grown past this is dropped after use rather than kept.
_ROW_KEPT = 1 << 20
# Fold once the journal holds this many records (task writes, events, deletes, metadata).
# Bounds the journal, the memory a fold reads at once and the work of the fold a restart does.
FOLD_RECORDS = 4096
# ... and a second after a write at the latest, so the tables do not lag behind for long.
FOLD_AFTER = 1.0

# A batch as apply takes it: task columns, task records, event task ids, events, deletes,
# metadata.
Entry = tuple[
    list[tuple[Any, Any, Any, Any, Any]],
    list[bytes],
    list[Any],
    list[bytes],
    list[Any],
    list[tuple[Any, Any, bytes]],
    list[tuple[Any, Any]],
]
_COLUMNS = operator.attrgetter("id", "action", "state", "created_at", "ended_at")
_TASK_ID = operator.attrgetter("task_id")
_FIRST = operator.itemgetter(0)
_TEXT = frozenset({str, TaskState})
_REAL = frozenset({float})
_REAL_OR_NONE = frozenset({float, type(None)})

# Parameters of the fold's statements, by the hundred thousand. The sqlite3 module binds
# int, float, str and bytearray as they are, and looks every other value (bytes and None
# too) up in its adapter registry first, which fails through two attribute lookups that
# each format an AttributeError: ~5,000 instructions for each blob. So the blobs are bound
# as bytearrays and a missing ended_at as NaN, which SQLite stores as NULL.
_NULL = math.nan

# A journal row (msgpack) since schema 6: ``[ROW_LAYOUT, records, event task ids, events,
# deleted, meta, meta_deleted]``; the query columns are not in it (the records hold them).
# Schema 4 and 5 wrote ``[columns, records, [[task id, event], ...], deleted, meta,
# meta_deleted]``, which a fold still reads (a file migrated with a batch in its journal).
ROW_LAYOUT = 2
_APPEND = "INSERT INTO journal (batch) VALUES (?)"
_COUNT = "SELECT count(*), coalesce(max(n), 0) FROM journal"
_UPSERT_TASK = """
    INSERT INTO tasks (id, action, state, created_at, ended_at, record)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET
        action = excluded.action,
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        record = excluded.record
"""
# The same for a task whose action is unchanged, which is every task the hub writes: SQLite
# rewrites an index entry whenever its column is SET, to the same value or not, so leaving
# action out spares tasks_action a delete and an insert per update. A row whose action did
# change is left alone here (the WHERE), counted as missing, and written by _UPSERT_TASK.
_UPSERT_SAME_ACTION = """
    INSERT INTO tasks (id, action, state, created_at, ended_at, record)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        record = excluded.record
    WHERE action = excluded.action
"""
_INSERT_PACK = "INSERT INTO events (task_id, records) VALUES (?, ?)"
_UPSERT_META = "INSERT OR REPLACE INTO meta (kind, key, value) VALUES (?, ?, ?)"


class Journal:
    """Entries made on the caller's thread (:meth:`entry`); :meth:`append` and :meth:`fold`
    run with the store's connection, one call at a time."""

    def __init__(self, fence: WriteFence | None = None) -> None:
        self._fence = fence  # checked in every transaction (a partition's lease)
        self._json = msgspec.json.Encoder()
        # Used with the connection only, so by one thread at a time.
        self._pack = msgspec.msgpack.Encoder()
        self._row = bytearray()  # reused: a row is encoded in place, not grown and copied
        self._task = msgspec.json.Decoder(TaskRecord)  # a row's columns, when read back
        self._unpack = msgspec.msgpack.Decoder()
        self.pending = 0  # records appended and not folded yet
        # The rows appended since the last fold, replayed as they were appended: a fold
        # writes this instead of reading the rows back and decoding them. ``_rows`` and
        # ``_last`` (their count and the last one's key) are checked against the table by
        # the fold; ``_replay``: read the rows instead (at open, after a fence was lost).
        self._folded = _Folded()
        self._rows = 0
        self._last = 0
        self._replay = True

    def entry(self, batch: WriteBatch) -> Entry:
        """The batch's values, taken now (its records encoded): a snapshot, whatever the
        caller changes afterwards. Only this part runs on the caller's thread."""
        encode = self._json.encode
        tasks = batch.tasks
        events = batch.events
        return (
            list(map(_COLUMNS, tasks)),
            list(map(encode, tasks)),
            list(map(_TASK_ID, events)),
            list(map(encode, events)),
            list(batch.deleted),
            [(m.kind, m.key, encode(m.value)) for m in batch.meta],
            list(batch.meta_deleted),
        )

    def append(self, conn: sqlite3.Connection, entry: Entry) -> None:
        """One transaction: the batch is durable when this returns.

        Every column value is checked first: a row the fold could not write would stop every
        later fold, so what the tables would refuse is refused here, naming the field."""
        plain, records, event_ids, events, deleted, meta, meta_deleted = entry
        columns: Sequence[Sequence[Any]] = plain
        if not _plain(plain):
            columns = [_task_row(*t) for t in plain]
        if not _texts(event_ids):
            event_ids = [_text(task_id, "event task_id") for task_id in event_ids]
        batch = (
            ROW_LAYOUT,
            records,
            event_ids,
            events,
            [_text(task_id, "deleted task id") for task_id in deleted],
            [(_text(k, "meta kind"), _text(key, "meta key"), v) for k, key, v in meta],
            [(_text(k, "meta kind"), _text(key, "meta key")) for k, key in meta_deleted],
        )
        row = self._row
        self._pack.encode_into(batch, row)
        if len(row) > _ROW_KEPT:  # a burst's one big batch: not kept for the rest of the run
            self._row = bytearray()
        try:
            with transaction(conn, self._fence):
                last = conn.execute(_APPEND, (row,)).lastrowid
        except StoreFenced:
            self._replay = True  # another writer may change the journal from now on
            raise
        self._rows += 1
        self._last = last or 0
        self._folded.add(columns, *batch[1:])
        self.pending += len(columns) + len(events) + len(deleted) + len(meta) + len(meta_deleted)

    def fold(self, conn: sqlite3.Connection) -> None:
        """Move every journal entry into the tables, in one transaction."""
        try:
            with transaction(conn, self._fence):
                folded = self._folded
                if self._replay or conn.execute(_COUNT).fetchone() != (self._rows, self._last):
                    folded = _Folded()
                    for (row,) in conn.execute("SELECT batch FROM journal ORDER BY n"):
                        folded.add_row(self._unpack.decode(row), self._task.decode)
                folded.write(conn)
                conn.execute("DELETE FROM journal")
        except StoreFenced:
            self._replay = True
            raise
        self._folded = _Folded()
        self._rows = self._last = 0
        self._replay = False
        self.pending = 0


class _Folded:
    """Journal entries replayed in order: the last write of each task, its events in the
    order written (one pack per task), and what was deleted since the last fold."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Sequence[Any], bytes]] = {}  # columns, record
        # Events as two lists, extended a batch at a time: no pair made per event until the
        # fold groups them.
        self.event_ids: list[str] = []
        self.events: list[bytes] = []
        self.deleted: set[str] = set()
        self.meta: dict[tuple[str, str], bytes] = {}
        self.meta_deleted: set[tuple[str, str]] = set()

    def add(
        self,
        columns: Sequence[Sequence[Any]],
        records: list[bytes],
        event_ids: list[str],
        events: list[bytes],
        deleted: list[str],
        meta: list[tuple[str, str, bytes]],
        meta_deleted: list[tuple[str, str]],
    ) -> None:
        """One batch, in the order apply promises: upserts, events, deletes, metadata.
        Loops in C (map, zip, update, extend): several records per task, every batch."""
        self.tasks.update(
            zip(map(_FIRST, columns), zip(columns, records, strict=True), strict=True)
        )
        self.event_ids += event_ids
        self.events += events
        if deleted:
            gone = set(deleted)
            for task_id in gone:
                self.tasks.pop(task_id, None)
            kept = [i for i, task_id in enumerate(self.event_ids) if task_id not in gone]
            self.event_ids = [self.event_ids[i] for i in kept]
            self.events = [self.events[i] for i in kept]
            self.deleted |= gone
        for kind, key, value in meta:
            self.meta[kind, key] = value
        for kind, key in meta_deleted:
            self.meta.pop((kind, key), None)
            self.meta_deleted.add((kind, key))

    def add_row(self, row: list[Any], decode: Callable[[bytes], TaskRecord]) -> None:
        """A journal row as the table holds it (read back at open), of either layout."""
        if row[0] == ROW_LAYOUT:
            _, records, event_ids, events, *rest = row
            columns = [_COLUMNS(decode(record)) for record in records]
        else:  # schema 4 and 5: the columns, events as pairs
            columns, records, pairs, *rest = row
            event_ids = [task_id for task_id, _ in pairs]
            events = [event for _, event in pairs]
        self.add(columns, records, event_ids, events, *rest)

    def write(self, conn: sqlite3.Connection) -> None:
        """Deletes first: a task deleted and written again since the last fold keeps only what
        came after the delete, which is all that is left here."""
        if self.deleted:
            gone = [(task_id,) for task_id in self.deleted]
            conn.executemany("DELETE FROM events WHERE task_id = ?", gone)
            conn.executemany("DELETE FROM tasks WHERE id = ?", gone)
        if self.tasks:
            # str(state): a TaskState is a str subclass, which the module would adapt.
            tasks = [
                (i, action, str(state), at, _NULL if end is None else end, bytearray(record))
                for (i, action, state, at, end), record in self.tasks.values()
            ]
            if conn.executemany(_UPSERT_SAME_ACTION, tasks).rowcount != len(tasks):
                conn.executemany(_UPSERT_TASK, tasks)
        if self.events:
            # Each task's events in the order they were written: a dict of lists, filled in one
            # pass (a sort of the pairs by task id cost more).
            by_task: dict[str, list[bytes]] = {}
            for task_id, event in zip(self.event_ids, self.events, strict=True):
                if (pack := by_task.get(task_id)) is None:
                    by_task[task_id] = [event]
                else:
                    pack.append(event)
            packs = [
                (task_id, bytearray(b"[%b]" % b",".join(pack))) for task_id, pack in by_task.items()
            ]
            conn.executemany(_INSERT_PACK, packs)
        if self.meta_deleted:
            conn.executemany("DELETE FROM meta WHERE kind = ? AND key = ?", self.meta_deleted)
        if self.meta:
            conn.executemany(_UPSERT_META, [(*key, value) for key, value in self.meta.items()])


def _texts(values: list[Any]) -> bool:
    return set(map(type, values)) <= _TEXT


def _plain(columns: list[tuple[Any, Any, Any, Any, Any]]) -> bool:
    """Every task's columns are what the tables take as they are (the hub's always are):
    checked a column at a time in C, instead of a call of _task_row per task."""
    if not columns:
        return True
    ids, actions, states, created, ended = zip(*columns, strict=True)
    return (
        _texts(ids)  # type: ignore[arg-type]
        and _texts(actions)  # type: ignore[arg-type]
        and _texts(states)  # type: ignore[arg-type]
        and set(map(type, created)) == _REAL
        and not any(map(math.isnan, created))
        and set(map(type, ended)) <= _REAL_OR_NONE
        and not any(map(math.isnan, filter(None, ended)))
    )


def _task_row(
    task_id: object, action: object, state: object, created_at: object, ended_at: object
) -> list[Any]:
    """The query columns of a task, checked: what the tasks table would refuse, refused now."""
    if (
        type(task_id) is str
        and type(action) is str
        and isinstance(state, str)
        and type(created_at) is float
        and created_at == created_at  # not NaN
        and (ended_at is None or (type(ended_at) is float and ended_at == ended_at))
    ):
        return [task_id, action, state, created_at, ended_at]
    return [  # the slow way, for an error naming the field, or ints made floats
        _text(task_id, "task id"),
        _text(action, f"action of task {task_id!r}"),
        _text(state, f"state of task {task_id!r}"),
        _real(created_at, f"created_at of task {task_id!r}"),
        None if ended_at is None else _real(ended_at, f"ended_at of task {task_id!r}"),
    ]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _real(value: object, what: str) -> float:
    if type(value) is not float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{what} must be a number, got {type(value).__name__}")
        value = float(value)
    if value != value:
        raise ValueError(f"{what} is NaN")
    return value
