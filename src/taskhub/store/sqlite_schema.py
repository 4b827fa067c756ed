"""The sqlite engine's schema: tables, indexes, the migrations of older files, transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from taskhub.errors import StoreUnavailable
from taskhub.records import TASK_STATES, TERMINAL_STATES


class WriteFence(Protocol):
    """What a fenced store writes under (a partition's lease, :mod:`taskhub.store.sqlite_leases`).

    ``check`` raises :class:`~taskhub.errors.StoreFenced` once this writer no longer holds the
    fence; the store calls it inside every write transaction, after that transaction took the
    file's write lock, so a writer whose check passed commits before a successor's store has
    opened: opening a fenced store takes the write lock once (a barrier) before anything is
    read. ``close`` is called when the store closes.
    """

    def check(self) -> None: ...

    def close(self) -> None: ...


# 1: tasks, events; 2: + meta; 3: - tasks_active (tasks_state serves); 4: events packed, one
# row per task per fold, and the journal the writes go to first (store/sqlite_journal.py);
# 5: tasks_ended's condition without IN; 6: journal rows of layout 2 (sqlite_journal.ROW_LAYOUT);
# 7: mark rows in the journal (sqlite_journal.MARK_LAYOUT: live tasks carried over by a fold);
# 8: a task's events in its own row (tasks.events), packs only past sqlite_journal.ROW_SEQS
SCHEMA_VERSION = 8

# Terminal states spelled out for SQL; the partial indexes and the queries must use the very
# same expressions for SQLite to pick the indexes.
ACTIVE_SQL = ", ".join(f"'{s}'" for s in TASK_STATES if s not in TERMINAL_STATES)
# Comparisons joined by OR, not ``state IN (...)``: SQLite checks a partial index's condition
# on every row a statement writes, and an IN of more than two values builds a temporary
# b-tree of them each time (a third of the SQL of a fold went to that).
ENDED_WHERE = "(" + " OR ".join(f"state = '{s}'" for s in sorted(TERMINAL_STATES)) + ")"

# Version 1, run again on every upgrade: each statement is IF NOT EXISTS, so rerunning them
# repairs a file that lost an index and costs nothing on a sound one.
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        ended_at REAL,
        record BLOB NOT NULL
    )""",
    # Also what recovery at start reads the live tasks by (a range per live state).
    "CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, id)",
    "CREATE INDEX IF NOT EXISTS tasks_action ON tasks(action, id)",
    # Only finished tasks, in removal order, so retention never scans or sorts the rest.
    f"CREATE INDEX IF NOT EXISTS tasks_ended ON tasks(ended_at, id) WHERE {ENDED_WHERE}",
    """CREATE TABLE IF NOT EXISTS events (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (task_id, seq)
    )""",
]
# Each entry upgrades a file from version i + 1 to i + 2; a new file runs them all.
_MIGRATIONS = [
    # Version 2: the metadata store (schedules, durable queues, dead letters).
    [
        """CREATE TABLE IF NOT EXISTS meta (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
    ],
    # Version 3: the partial index of live tasks duplicated tasks_state's ranges of the live
    # states, and cost every task an insert and a delete (~10 % of a task's writes).
    ["DROP INDEX IF EXISTS tasks_active"],
    # Version 4: a row per event (and a b-tree entry in its key's index) became a row per task
    # and fold, a JSON array of events ("pack"); a later pack's event replaces an earlier one
    # of the same seq when read. Each batch is first appended to the journal whole.
    [
        "ALTER TABLE events RENAME TO events_v3",
        """CREATE TABLE events (
            pack INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL,
            records BLOB NOT NULL
        )""",
        "CREATE INDEX events_task ON events(task_id)",
        # One pack per task; the order inside it does not matter (reads sort by seq), and a
        # version 3 file holds one row per (task, seq), so no event replaces another here.
        """INSERT INTO events (task_id, records)
            SELECT task_id, CAST('[' || group_concat(CAST(record AS TEXT), ',') || ']' AS BLOB)
            FROM events_v3 GROUP BY task_id""",
        "DROP TABLE events_v3",
        "CREATE TABLE journal (n INTEGER PRIMARY KEY, batch BLOB NOT NULL)",
    ],
    # Version 5: tasks_ended's condition as comparisons (ENDED_WHERE); the index is the same.
    [
        "DROP INDEX tasks_ended",
        f"CREATE INDEX tasks_ended ON tasks(ended_at, id) WHERE {ENDED_WHERE}",
    ],
    # Version 6: journal rows without the query columns, events as two lists. No SQL: a fold
    # reads rows of either layout, so a journal left by version 4 or 5 folds as it is; the
    # version keeps an older TaskHub, which reads only its own layout, off the file.
    [],
    # Version 7: a fold may keep rows and append a mark naming what it wrote (live tasks
    # carried over). No SQL: the journal is as version 6 left it; the version keeps version 6,
    # which would fold the rows a mark says were written over newer writes, off the file.
    [],
    # Version 8: a task's events go in its own row, as JSON objects each after a comma
    # (sqlite_journal.ROW_SEQS says which); a task without events there has NULL or an empty
    # blob. The packs a file holds stay where they are: they are older than anything written
    # to a row, which is what reads rely on (SqliteStore.get_events).
    ["ALTER TABLE tasks ADD COLUMN events BLOB"],
]


def migrate(conn: sqlite3.Connection, path: str, url: str) -> None:
    """Bring the file to :data:`SCHEMA_VERSION` in one transaction; refuse a newer file."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"sqlite store {path!r} has schema version {version}, newer than the "
            f"{SCHEMA_VERSION} this TaskHub knows; upgrade TaskHub",
            url=url,
        )
    if version == SCHEMA_VERSION:
        return
    with transaction(conn):
        for statement in _SCHEMA:
            conn.execute(statement)
        for statements in _MIGRATIONS[max(version, 1) - 1 :]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@contextmanager
def transaction(conn: sqlite3.Connection, fence: WriteFence | None = None) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT on the autocommit connection, rolled back on any error;
    ``fence`` is checked first, under the write lock."""
    # IMMEDIATE takes the write lock up front, so a busy database fails here (after
    # busy_timeout) rather than half way through the batch.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if fence is not None:
            fence.check()
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself after some errors (disk full, for one); a second
        # ROLLBACK would then fail and hide the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
