"""The sqlite engine's journal: every batch is appended whole as one row, and folded into the
tables in bulk later, so a task written several times between two folds is written there once.

A commit then writes one row and a few pages instead of every page the batch's task rows,
event rows and index entries touch; a fold writes each touched page once for many batches.
Every read folds first, so readers see exactly what was applied.

A fold made because the journal is full (a burst) carries live tasks over: their rows stay in
the journal and their last record and events wait in memory, so a task queued in one window
and ended in a later one is written to the tables once, not twice. Such a fold deletes only
the rows before the oldest carried task's first row and appends a mark row naming the tasks
it wrote; a replay (at open) drops those tasks at each mark, which leaves exactly what no fold
wrote.

A task's events go in its own row (schema 8: ``tasks.events``, each JSON object after a comma),
appended by the fold that writes its record; those of seq past ``ROW_SEQS`` go in a pack of
their own instead (an ``events`` row per task and fold, a JSON array), and so do the events of a
task that has no row yet. Reads take the packs first, then the row: everything in a row was
written after its task's packs of the same seqs.
"""

from __future__ import annotations

import math
import operator
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from taskhub.errors import StoreFenced
from taskhub.records import TERMINAL_STATES, EventRecord, TaskRecord, TaskState, WriteBatch
from taskhub.store.sqlite_schema import WriteFence, transaction

# A row buffer grown past this is dropped after use rather than kept.
_ROW_KEPT = 1 << 20
# Fold once the journal holds this many records (task writes, events, deletes, metadata).
# Bounds the journal, the memory a fold reads at once and the work of the fold a restart does.
FOLD_RECORDS = 4096
# ... and a second after a write at the latest, so the tables do not lag behind for long.
FOLD_AFTER = 1.0
# A fold because of FOLD_RECORDS carries live tasks over while the journal rows they keep hold
# at most this many bytes and are at most this old; past either, the oldest are written.
# Bounds the journal, the memory the carried records take and how long a live task can be
# missing from the tables (a fold when nothing was written since the last writes them all).
CARRY_BYTES = 64 << 20
CARRY_SECONDS = 60.0

# A batch as apply takes it: task columns, task records, event task ids, events, deletes,
# metadata, and whether some of its events are marked for packs (_PACKED).
Entry = tuple[
    list[tuple[Any, Any, Any, Any, Any]],
    list[bytes],
    list[Any],
    list[bytes],
    list[Any],
    list[tuple[Any, Any, bytes]],
    list[tuple[Any, Any]],
    bool,
]
_COLUMNS = operator.attrgetter("id", "action", "state", "created_at", "ended_at")
_TASK_ID = operator.attrgetter("task_id")
_SEQ = operator.attrgetter("seq")
_FIRST = operator.itemgetter(0)
_TEXT = frozenset({str, TaskState})
_REAL = frozenset({float})
_REAL_OR_NONE = frozenset({float, type(None)})

# Events of a seq up to this go in their task's row, rewritten with it at each fold that writes
# the task; later ones in packs, so a task with a long history (a progress update a second,
# say) does not have all of it rewritten at every fold. The same seq always goes to the same
# place, so a pack's event and a row's never replace each other out of order.
ROW_SEQS = 64
# Marks an event for a pack in the journal (rows and memory); no JSON starts with it.
_PACKED = b"\x00"

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
# A mark row (schema 7): ``[MARK_LAYOUT, task ids]``, appended by a fold that carried tasks
# over: it wrote the tasks (records and events) named, every delete and all metadata so far.
MARK_LAYOUT = 3
_ENDED = frozenset(map(str, TERMINAL_STATES))
_APPEND = "INSERT INTO journal (batch) VALUES (?)"
_KEEP_FROM = "DELETE FROM journal WHERE n < ?"
_COUNT = "SELECT count(*), coalesce(max(n), 0) FROM journal"
# A task's events appended to its row: every statement writing a task row does this.
_APPEND_SQL = "CAST(coalesce(events, x'') || {} AS BLOB)"
_ROW_EVENTS = _APPEND_SQL.format("excluded.events")
_UPSERT_TASK = f"""
    INSERT INTO tasks (id, action, state, created_at, ended_at, record, events)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET
        action = excluded.action,
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        record = excluded.record,
        events = {_ROW_EVENTS}
"""
# The same for a task whose action is unchanged, which is every task the hub writes: SQLite
# rewrites an index entry whenever its column is SET, to the same value or not, so leaving
# action out spares tasks_action a delete and an insert per update. A row whose action did
# change is left alone here (the WHERE), counted as missing, and written by _UPSERT_TASK.
_UPSERT_SAME_ACTION = f"""
    INSERT INTO tasks (id, action, state, created_at, ended_at, record, events)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        record = excluded.record,
        events = {_ROW_EVENTS}
    WHERE action = excluded.action
"""
_INSERT_PACK = "INSERT INTO events (task_id, records) VALUES (?, ?)"
_APPEND_EVENTS = f"UPDATE tasks SET events = {_APPEND_SQL.format('?')} WHERE id = ?"
_ACTION_OF = "SELECT action FROM tasks WHERE id = ?"
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
        self._seq = msgspec.json.Decoder(_Seq)  # an event's seq, when read back
        self._unpack = msgspec.msgpack.Decoder()
        self.pending = 0  # records appended and not folded yet
        # The rows appended since the last fold, replayed as they were appended: a fold
        # writes this instead of reading the rows back and decoding them. ``_rows`` and
        # ``_last`` (the table's row count and the last one's key) are checked against the
        # table by the fold; ``_replay``: read the rows instead (at open, after a fence was
        # lost).
        self._folded = _Folded()
        self._rows = 0
        self._last = 0
        self._replay = True
        self._carry = _Carry()  # live tasks a fold carried over, and the rows they keep
        self._window = _Segment()  # the rows appended since the last fold

    @property
    def dirty(self) -> bool:
        """Something is not in the tables yet: appended since the last fold, or carried."""
        return bool(self.pending or self._carry.tasks)

    def entry(self, batch: WriteBatch) -> Entry:
        """The batch's values, taken now (its records encoded): a snapshot, whatever the
        caller changes afterwards. Only this part runs on the caller's thread."""
        encode = self._json.encode
        tasks = batch.tasks
        events = batch.events
        encoded = list(map(encode, events))
        late = bool(events) and _late(events)
        if late:
            encoded = [
                _PACKED + e if event.seq > ROW_SEQS else e
                for event, e in zip(events, encoded, strict=True)
            ]
        return (
            list(map(_COLUMNS, tasks)),
            list(map(encode, tasks)),
            list(map(_TASK_ID, events)),
            encoded,
            list(batch.deleted),
            [(m.kind, m.key, encode(m.value)) for m in batch.meta],
            list(batch.meta_deleted),
            late,
        )

    def append(self, conn: sqlite3.Connection, entry: Entry) -> None:
        """One transaction: the batch is durable when this returns.

        Every column value is checked first: a row the fold could not write would stop every
        later fold, so what the tables would refuse is refused here, naming the field."""
        plain, records, event_ids, events, deleted, meta, meta_deleted, late = entry
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
        size = len(row)
        if size > _ROW_KEPT:  # a burst's one big batch: not kept for the rest of the run
            self._row = bytearray()
        try:
            with transaction(conn, self._fence):
                last = conn.execute(_APPEND, (row,)).lastrowid
        except StoreFenced:
            self._replay = True  # another writer may change the journal from now on
            raise
        self._rows += 1
        self._last = last or 0
        window = self._window
        if not window.rows:
            window.first = self._last
        window.rows += 1
        window.size += size
        self._folded.add(columns, *batch[1:], packed=late)
        self.pending += len(columns) + len(events) + len(deleted) + len(meta) + len(meta_deleted)

    def fold(self, conn: sqlite3.Connection, carry: bool = False) -> None:
        """Move the journal into the tables, in one transaction; with ``carry``, every entry
        but the live tasks' (as long as CARRY_BYTES and CARRY_SECONDS allow)."""
        try:
            with transaction(conn, self._fence):
                folded = self._folded
                carried = self._carry
                if self._replay or conn.execute(_COUNT).fetchone() != (self._rows, self._last):
                    # The table's rows hold whatever was carried (or another writer's).
                    folded, carried, carry = _Folded(), _Carry(), False
                    for (row,) in conn.execute("SELECT batch FROM journal ORDER BY n"):
                        folded.add_row(
                            self._unpack.decode(row), self._task.decode, self._seq.decode
                        )
                if carry and self._window.rows:
                    self._carry_over(conn, folded)
                else:
                    carried.merge(folded)
                    _write(
                        conn, folded.deleted, carried.tasks, carried.events, folded, carried.packed
                    )
                    conn.execute("DELETE FROM journal")
                    self._carry = _Carry()
                    self._rows = self._last = 0
        except BaseException:
            # Fenced, or failed half way: the carried state may be half changed; the table's
            # rows are as they were, and the next fold reads them.
            self._replay = True
            raise
        self._folded = _Folded()
        self._window = _Segment()
        self._replay = False
        self.pending = 0

    def fold_carrying(self, conn: sqlite3.Connection) -> None:
        """A fold that carries live tasks over, unless nothing was written since the last
        (then the hub is quiet, and the tables catch up whole)."""
        if self.dirty:
            self.fold(conn, carry=self.pending > 0)

    def _carry_over(self, conn: sqlite3.Connection, window: _Folded) -> None:
        """Write what the window ended, deleted or changed of metadata, and carried tasks too
        old for CARRY_BYTES or CARRY_SECONDS; keep the rows of the rest and append a mark."""
        carry = self._carry
        segment = self._window
        segment.at = time.monotonic()
        segment.rows += 1  # its mark
        carry.segments.append(segment)
        for task_id in window.deleted:
            carry.drop(task_id)
        written: dict[str, tuple[Sequence[Any], bytes]] = {}
        tasks = carry.tasks
        since = carry.since
        for task_id, value in window.tasks.items():
            if value[0][2] in _ENDED:
                written[task_id] = value
                tasks.pop(task_id, None)
                if (old := since.pop(task_id, None)) is not None:
                    old.carried -= 1
            else:
                tasks[task_id] = value
                if task_id not in since:
                    since[task_id] = segment
                    segment.ids.append(task_id)
        segment.carried = len(segment.ids)
        packs = carry.take_events(window, written)
        carry.expire(segment.at - CARRY_SECONDS, written, packs)
        segments = carry.segments
        _write(conn, window.deleted, written, packs, window, carry.packed)
        if not segments:  # nothing carried after all
            conn.execute("DELETE FROM journal")
            self._rows = self._last = 0
            return
        conn.execute(_KEEP_FROM, (segments[0].first,))
        mark = bytearray(self._pack.encode([MARK_LAYOUT, [*written, *packs.keys() - written]]))
        self._last = conn.execute(_APPEND, (mark,)).lastrowid or 0
        self._rows = sum(s.rows for s in segments)


class _Segment:
    """The journal rows appended between two folds, and its mark once a fold carried tasks
    over: ``carried`` of its tasks (``ids``, first written in it) are still carried."""

    __slots__ = ("at", "carried", "first", "ids", "rows", "size")

    def __init__(self) -> None:
        self.first = 0  # its first row's key
        self.rows = 0
        self.size = 0  # bytes of its rows
        self.at = 0.0  # when it was folded (time.monotonic)
        self.ids: list[str] = []
        self.carried = 0


class _Carry:
    """Live tasks carried over by folds: their last record and their events since their last
    write to the tables, and the segments whose rows hold them (oldest first)."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Sequence[Any], bytes]] = {}
        self.events: dict[str, list[bytes]] = {}  # only of carried tasks
        self.since: dict[str, _Segment] = {}  # the segment each task's entries start in
        self.segments: deque[_Segment] = deque()
        # Some of the events taken in (carried or returned for packs) may be marked _PACKED.
        self.packed = False

    def drop(self, task_id: str) -> None:
        """The task was deleted: nothing of it is carried any more."""
        self.tasks.pop(task_id, None)
        self.events.pop(task_id, None)
        if (segment := self.since.pop(task_id, None)) is not None:
            segment.carried -= 1

    def take_events(
        self, window: _Folded, written: dict[str, tuple[Sequence[Any], bytes]]
    ) -> dict[str, list[bytes]]:
        """The window's events of carried tasks kept; the packs of the rest returned, with
        what was carried of the ``written`` tasks before them."""
        tasks = self.tasks
        events = self.events
        self.packed = self.packed or window.packed
        packs: dict[str, list[bytes]] = {}
        for task_id, pack in _group(window.event_ids, window.events, {}).items():
            if task_id in tasks:
                if (kept := events.get(task_id)) is None:
                    events[task_id] = pack
                else:
                    kept += pack
            elif (kept := events.pop(task_id, None)) is not None:
                packs[task_id] = kept + pack
            else:
                packs[task_id] = pack
        for task_id in written:
            if task_id not in packs and (kept := events.pop(task_id, None)) is not None:
                packs[task_id] = kept
        return packs

    def expire(
        self,
        before: float,
        written: dict[str, tuple[Sequence[Any], bytes]],
        packs: dict[str, list[bytes]],
    ) -> None:
        """The tasks of the oldest segments added to ``written`` (and their events to
        ``packs``) while the segments hold more than CARRY_BYTES or were folded by ``before``;
        then segments none of whose tasks is carried any more are forgotten."""
        segments = self.segments
        size = sum(s.size for s in segments)
        while segments and (size > CARRY_BYTES or segments[0].at <= before):
            gone = segments.popleft()
            size -= gone.size
            for task_id in gone.ids:
                if self.since.get(task_id) is gone:
                    del self.since[task_id]
                    written[task_id] = self.tasks.pop(task_id)
                    if (kept := self.events.pop(task_id, None)) is not None:
                        packs[task_id] = kept
        while segments and not segments[0].carried:
            segments.popleft()

    def merge(self, window: _Folded) -> None:
        """The window's entries after the carried ones: everything, for a fold of it all."""
        for task_id in window.deleted:
            self.drop(task_id)
        self.tasks.update(window.tasks)
        self.packed = self.packed or window.packed
        _group(window.event_ids, window.events, self.events)


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
        self.packed = False  # some of the events are marked _PACKED

    def add(
        self,
        columns: Sequence[Sequence[Any]],
        records: list[bytes],
        event_ids: list[str],
        events: list[bytes],
        deleted: list[str],
        meta: list[tuple[str, str, bytes]],
        meta_deleted: list[tuple[str, str]],
        *,
        packed: bool,
    ) -> None:
        """One batch, in the order apply promises: upserts, events (``packed``: some marked
        for packs), deletes, metadata. Loops in C (map, zip, update, extend): several records
        per task, every batch."""
        self.packed = self.packed or packed
        self.tasks.update(
            zip(map(_FIRST, columns), zip(columns, records, strict=True), strict=True)
        )
        self.event_ids += event_ids
        self.events += events
        if deleted:
            gone = set(deleted)
            for task_id in gone:
                self.tasks.pop(task_id, None)
            self._drop_events(gone)
            self.deleted |= gone
        for kind, key, value in meta:
            self.meta[kind, key] = value
        for kind, key in meta_deleted:
            self.meta.pop((kind, key), None)
            self.meta_deleted.add((kind, key))

    def _drop_events(self, gone: set[str]) -> None:
        kept = [i for i, task_id in enumerate(self.event_ids) if task_id not in gone]
        self.event_ids = [self.event_ids[i] for i in kept]
        self.events = [self.events[i] for i in kept]

    def add_row(
        self,
        row: list[Any],
        decode: Callable[[bytes], TaskRecord],
        seq_of: Callable[[bytes], _Seq],
    ) -> None:
        """A journal row as the table holds it (read back at open), of any layout; its events
        for packs marked again (rows before schema 8 have no marks)."""
        if row[0] == MARK_LAYOUT:
            # What a fold wrote: those tasks, every delete and all metadata until then.
            written = set(row[1])
            for task_id in written:
                self.tasks.pop(task_id, None)
            self._drop_events(written)
            self.deleted.clear()
            self.meta.clear()
            self.meta_deleted.clear()
            return
        if row[0] == ROW_LAYOUT:
            _, records, event_ids, events, *rest = row
            columns = [_COLUMNS(decode(record)) for record in records]
        else:  # schema 4 and 5: the columns, events as pairs
            columns, records, pairs, *rest = row
            event_ids = [task_id for task_id, _ in pairs]
            events = [event for _, event in pairs]
        events = [
            e if e[:1] == _PACKED or seq_of(e).seq <= ROW_SEQS else _PACKED + e for e in events
        ]
        self.add(columns, records, event_ids, events, *rest, packed=True)


class _Seq(msgspec.Struct):
    """An event's seq, read from its JSON (the rest skipped)."""

    seq: int


def _group(
    event_ids: list[str], events: list[bytes], by_task: dict[str, list[bytes]]
) -> dict[str, list[bytes]]:
    """Each task's events added to its list in ``by_task``, in the order they were written: a
    dict of lists, filled in one pass (a sort of the pairs by task id cost more)."""
    for task_id, event in zip(event_ids, events, strict=True):
        if (pack := by_task.get(task_id)) is None:
            by_task[task_id] = [event]
        else:
            pack.append(event)
    return by_task


def _write(
    conn: sqlite3.Connection,
    deleted: Iterable[str],
    tasks: dict[str, tuple[Sequence[Any], bytes]],
    packs: dict[str, list[bytes]],
    window: _Folded,
    packed: bool,
) -> None:
    """Deletes first: a task deleted and written again since the last fold keeps only what
    came after the delete, which is all that is left here. Then the tasks' last records with
    their events, the events of tasks not written here (to their rows, or packs when they
    have none), the packs and the window's metadata. ``packed``: some events in ``packs`` may
    be marked for packs (``window.packed`` counts too)."""
    if deleted:
        gone = [(task_id,) for task_id in deleted]
        conn.executemany("DELETE FROM events WHERE task_id = ?", gone)
        conn.executemany("DELETE FROM tasks WHERE id = ?", gone)
    own, packed_events = _split(packs, packed or window.packed)
    if tasks:
        take = own.pop
        none = bytearray()  # no events for the row this time
        # str(state): a TaskState is a str subclass, which the module would adapt.
        rows = [
            (
                i,
                action,
                str(state),
                at,
                _NULL if end is None else end,
                bytearray(record),
                take(i, none),
            )
            for (i, action, state, at, end), record in tasks.values()
        ]
        if conn.executemany(_UPSERT_SAME_ACTION, rows).rowcount != len(rows):
            # Rows whose action changed were left alone (the WHERE): only those again, since
            # the others have their events appended already.
            for row in rows:
                if conn.execute(_ACTION_OF, row[:1]).fetchone()[0] != row[1]:
                    conn.execute(_UPSERT_TASK, row)
    if own:
        appends = [(events, task_id) for task_id, events in own.items()]
        if conn.executemany(_APPEND_EVENTS, appends).rowcount != len(appends):
            for events, task_id in appends:  # a task without a row: a pack, as other packs
                if conn.execute(_ACTION_OF, (task_id,)).fetchone() is None:
                    packed_events.setdefault(task_id, []).append(bytes(events[1:]))
    if packed_events:
        conn.executemany(
            _INSERT_PACK,
            [
                (task_id, bytearray(b"[%b]" % b",".join(pack)))
                for task_id, pack in packed_events.items()
            ],
        )
    if window.meta_deleted:
        conn.executemany("DELETE FROM meta WHERE kind = ? AND key = ?", window.meta_deleted)
    if window.meta:
        conn.executemany(_UPSERT_META, [(*key, value) for key, value in window.meta.items()])


def _late(events: list[EventRecord]) -> bool:
    """Some of the events are for packs (seq past ROW_SEQS); a seq that is not an integer is
    refused, naming its task."""
    try:
        return bool(max(map(_SEQ, events)) > ROW_SEQS)
    except TypeError:  # not comparable: not all integers
        pass
    for event in events:
        if type(event.seq) is not int:
            raise TypeError(
                f"seq of an event of task {event.task_id!r} must be an integer, "
                f"got {type(event.seq).__name__}"
            )
    return True  # pragma: no cover - integers always compare


def _split(
    packs: dict[str, list[bytes]], marked: bool
) -> tuple[dict[str, bytearray], dict[str, list[bytes]]]:
    """Each task's events for its row (``,event,event``) and for a pack (those past
    ROW_SEQS, marked: rarely any, and only if ``marked``)."""
    packed: dict[str, list[bytes]] = {}
    if not marked:
        # One join per task, straight into the bytearray bound: an empty first part makes
        # the leading comma.
        join = bytearray(b",").join
        return {task_id: join((b"", *e)) for task_id, e in packs.items()}, packed
    own: dict[str, bytearray] = {}
    for task_id, events in packs.items():
        row = [e for e in events if e[:1] != _PACKED]
        if row:
            own[task_id] = bytearray(b",%b" % b",".join(row))
        if len(row) < len(events):
            packed[task_id] = [e[1:] for e in events if e[:1] == _PACKED]
    return own, packed


def _texts(values: list[Any]) -> bool:
    return set(map(type, values)) <= _TEXT


def _plain(columns: list[tuple[Any, Any, Any, Any, Any]]) -> bool:
    """Every task's columns are what the tables take as they are (the hub's always are):
    checked a column at a time in C, instead of a call of _task_row per task."""
    if not columns:
        return True
    ids, actions, states, created, ended = zip(*columns, strict=True)
    if not set(map(type, ids + actions + states)) <= _TEXT:
        return False
    if set(map(type, created)) != _REAL or set(map(type, ended)) - _REAL_OR_NONE:
        return False
    # A sum is NaN if any of its floats is (a NaN check per value cost a call each); it is
    # also NaN for inf - inf, which the slow way then takes as it is.
    total: float = sum(created) + sum(filter(None, ended))
    return total == total


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
