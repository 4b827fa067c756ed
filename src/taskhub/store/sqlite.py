"""SQLite store engine: one file, WAL, every batch one transaction on a dedicated thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from taskhub.errors import StoreUnavailable
from taskhub.records import TASK_STATES, TERMINAL_STATES, EventRecord, TaskRecord, WriteBatch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: one hub per file is on the user
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

SCHEMA_VERSION = 3  # 1: tasks, events; 2: + meta; 3: - tasks_active (tasks_state serves)
BUSY_TIMEOUT_MS = 5000
# A batch of at most this many task records, while the store's thread is idle, is written on
# the caller's thread (the hub's event loop): a sequential task's commit costs ~0.1 ms of
# SQLite there, against two thread hand-offs that cost more than that on a busy machine.
# Bigger batches go to the thread, so the loop goes on applying messages meanwhile.
INLINE_TASKS = 1
# SQLite checkpoints the WAL inside the commit that grows it past WAL_PAGES, and a checkpoint
# copies pages and syncs the file: not for a write on the event loop. Inline writes run with
# the automatic checkpoint off, and after INLINE_RUN of them in a row the next small write
# goes to the thread anyway, where SQLite checkpoints if the WAL has grown (a small commit
# appends ~4 pages, so 250 of them are about SQLite's threshold).
WAL_PAGES = 1000  # SQLite's default
INLINE_RUN = 250

# Terminal states spelled out for SQL; the partial indexes and the queries must use the very
# same expressions for SQLite to pick the indexes.
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATES))
_ACTIVE_SQL = ", ".join(f"'{s}'" for s in TASK_STATES if s not in TERMINAL_STATES)
_ENDED_WHERE = f"state IN ({_TERMINAL_SQL})"

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
    f"CREATE INDEX IF NOT EXISTS tasks_ended ON tasks(ended_at, id) WHERE {_ENDED_WHERE}",
    """CREATE TABLE IF NOT EXISTS events (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (task_id, seq)
    )""",
]
# Version 2: the metadata store (schedules, durable queues, dead letters). Each entry of this
# list upgrades a file from version i + 1 to i + 2; a new file runs them all.
_MIGRATIONS = [
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
]
_UPSERT_META = "INSERT OR REPLACE INTO meta (kind, key, value) VALUES (?, ?, ?)"
_SELECT_ENDED_RECORDS = (
    f"SELECT record FROM tasks INDEXED BY tasks_ended WHERE {_ENDED_WHERE} AND ended_at < ?"
    " ORDER BY ended_at, id LIMIT ?"
)

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
# REPLACE, so applying the same batch twice (a retry after an unclear failure) is harmless.
_INSERT_EVENT = "INSERT OR REPLACE INTO events (task_id, seq, at, record) VALUES (?, ?, ?, ?)"

# Left to itself the planner probes tasks_state for each terminal state and sorts them all;
# the partial index gives the rows already in removal order.
_SELECT_ENDED = (
    f"SELECT id FROM tasks INDEXED BY tasks_ended WHERE {_ENDED_WHERE} AND ended_at < ?"
    " ORDER BY ended_at, id LIMIT ?"
)

_TaskRow = tuple[str, str, str, float, float | None, bytes]
# One call for the writer thread: what to run, and the future its caller awaits.
_Job = tuple[Callable[[], Any], "asyncio.Future[Any]"]
_EventRow = tuple[str, int, float, bytes]


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


def _path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``, ``sqlite:////abs.db`` -> ``/abs.db``."""
    if url in ("sqlite://:memory:", "sqlite:///:memory:"):
        return ":memory:"
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix) or "?" in url:
        raise ValueError(
            f"bad sqlite store URL {url!r}: use sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite://:memory:"
        )
    return url[len(prefix) :]


class SqliteStore:
    """Calls run on one writer thread fed by a queue, in the order they were made, except a
    small write made while that thread is idle, which runs at once on the caller's thread
    (``INLINE_TASKS``).

    One connection used by one call at a time, so there is no locking to get wrong, and the
    event loop never waits on more than a small write. Records are encoded on the caller's
    thread when :meth:`apply` is called, so the batch is a snapshot taken at that moment even
    if the hub keeps changing its live records while the write runs.
    """

    def __init__(self, path: str, url: str | None = None, fence: WriteFence | None = None) -> None:
        self.path = path
        self.url = url if url is not None else f"sqlite:///{path}"
        # The writer: one thread fed by a queue. An executor's submit costs a concurrent Future,
        # its lock and a chained asyncio Future per call; here a call is one put on a C queue
        # and one call_soon_threadsafe back (37 % of sqlite:// hub CPU was the hand-off).
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._conn: sqlite3.Connection | None = None  # one call at a time (see the class)
        self._lock: int | None = None  # fd holding the file's flock while open (_claim)
        self._closed = False
        # Calls handed to the writer thread and not finished there; counted down on the event
        # loop when the thread reports back, so a caller cancelled meanwhile does not make
        # the connection look idle while the thread still uses it.
        self._busy = 0
        self._inline_run = 0  # inline writes since the last one on the thread
        # Writes only while the fence holds; no flock then (a writer that lost the fence
        # must not keep its successor out).
        self._fence = fence
        self._encoder = msgspec.json.Encoder()
        # Used only on the writer thread: no decoder is shared between threads.
        self._task_decoder = msgspec.json.Decoder(TaskRecord)
        self._event_decoder = msgspec.json.Decoder(EventRecord)
        self._any_decoder = msgspec.json.Decoder()

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(_path_from_url(url), url)

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        jobs = self._jobs
        if jobs is None or self._conn is None:
            what = "closed" if self._closed else "not open yet (call open() first)"
            raise StoreUnavailable(f"sqlite store {self.path!r} is {what}", url=self.url)
        return await self._submit(jobs, lambda: self._call(fn))

    def _submit(
        self, jobs: queue.SimpleQueue[_Job | None], fn: Callable[[], T]
    ) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._busy += 1
        jobs.put((fn, future))
        return future

    def _writer(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        """The writer thread: runs the calls in the order they were made, until ``None``."""
        while (job := jobs.get()) is not None:
            fn, future = job
            result: Any = None
            error: BaseException | None = None
            if not future.cancelled():  # as an executor: a call cancelled before it ran is not run
                try:
                    result = fn()
                except BaseException as exc:  # handed to the caller, whatever it is
                    error = exc
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(self._finished, future, result, error)
            del job, fn, future, result, error  # drop references while waiting for the next

    def _finished(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self._busy -= 1
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(f"sqlite store {self.path!r} is closed", url=self.url)
        try:
            return fn(conn)
        except sqlite3.DatabaseError as exc:
            # Disk full, I/O error, locked past busy_timeout, read-only or corrupt file: the
            # store is unusable, not the batch wrong. Integrity or programming errors are
            # bugs and stay as they are.
            if not (
                isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError)
                or type(exc) is sqlite3.DatabaseError
            ):
                raise
            raise StoreUnavailable(
                f"sqlite store {self.path!r} failed: {exc}", url=self.url
            ) from exc

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._closed:
            raise StoreUnavailable(
                f"sqlite store {self.path!r} was closed and cannot be opened again",
                url=self.url,
            )
        if self._jobs is not None:
            return
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # A daemon: a hub that exits without closing its store must not hang on this thread.
        # Nothing acknowledged is lost by that: apply returns only after the commit.
        threading.Thread(
            target=self._writer, args=(jobs,), name="taskhub-sqlite", daemon=True
        ).start()
        try:
            conn = await self._submit(jobs, self._connect)
        except BaseException:
            jobs.put(None)
            raise
        if self._closed:  # close() was called while we were opening
            await self._submit(jobs, conn.close)
            jobs.put(None)
            raise StoreUnavailable(f"sqlite store {self.path!r} was closed while opening")
        self._conn = conn
        self._jobs = jobs

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly
            # one transaction whatever the Python version's implicit-transaction rules.
            # check_same_thread=False: small writes run on the caller's thread while the
            # writer thread is idle (apply); never two threads at once.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(
                f"cannot open sqlite store {self.path!r}: {exc}", url=self.url
            ) from exc
        try:
            if self._fence is None:
                self._claim()
        except StoreUnavailable:
            conn.close()
            raise
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses no committed transaction when the process dies
            # (kill -9 included), which is the durability we promise; only a power cut or OS
            # crash can drop the last commits. FULL would fsync every batch for that.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._migrate(conn)
            _barrier(conn, self._fence)
        except (sqlite3.Error, StoreUnavailable) as exc:
            conn.close()
            self._release()
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(
                f"cannot open sqlite store {self.path!r}: {exc}", url=self.url
            ) from exc
        return conn

    def _claim(self) -> None:
        """One hub per file: hold an exclusive flock on it while open. Two hubs on one file
        would each run their own lifecycle and offer the same restored tasks twice; several
        hubs share a redis:// store instead. SQLite locks with fcntl, which flock does not
        touch, so the sqlite3 shell can still read the file; the kernel drops the lock when the
        process dies, so a killed hub does not keep its file locked."""
        if self.path == ":memory:" or fcntl is None:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreUnavailable(
                f"sqlite store {self.path!r} is in use by another hub (a sqlite file serves one "
                "hub; several hubs share a redis:// store)",
                url=self.url,
            ) from None
        self._lock = fd

    def _release(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"sqlite store {self.path!r} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this TaskHub knows; upgrade TaskHub",
                url=self.url,
            )
        if version == SCHEMA_VERSION:
            return
        with _transaction(conn):
            # Every statement of version 1 is IF NOT EXISTS: rerunning them repairs a file
            # that lost an index and costs nothing on a sound one.
            for statement in _SCHEMA:
                conn.execute(statement)
            for statements in _MIGRATIONS[max(version, 1) - 1 :]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    async def close(self) -> None:
        """Waits for calls already made, then closes; later calls raise StoreUnavailable."""
        jobs = self._jobs
        self._closed = True
        self._jobs = None
        if jobs is None:
            return
        try:
            # Queued behind every call already submitted, so those finish first.
            await self._submit(jobs, self._close_conn)
        finally:
            jobs.put(None)  # the thread ends after the calls before it

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # SQLite's advice for long-lived connections: refresh planner statistics on close.
            conn.execute("PRAGMA optimize")
        finally:
            conn.close()
            self._release()
            if self._fence is not None:
                self._fence.close()

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        """One transaction: upserts, then event appends, then deletes (with their events).

        Once the write has started it completes even if the caller is cancelled meanwhile.
        """
        if not batch:
            await self._run(_nothing)  # still refuses when not open, like any other call
            return
        encode = self._encoder.encode
        tasks: list[_TaskRow] = [
            (t.id, t.action, t.state, t.created_at, t.ended_at, encode(t)) for t in batch.tasks
        ]
        events: list[_EventRow] = [(e.task_id, e.seq, e.at, encode(e)) for e in batch.events]
        deleted = [(task_id,) for task_id in batch.deleted]
        meta = [(m.kind, m.key, encode(m.value)) for m in batch.meta]
        meta_deleted = [(kind, key) for kind, key in batch.meta_deleted]

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn, self._fence):
                if tasks:
                    conn.executemany(_UPSERT_TASK, tasks)
                if events:
                    conn.executemany(_INSERT_EVENT, events)
                if deleted:
                    conn.executemany("DELETE FROM events WHERE task_id = ?", deleted)
                    conn.executemany("DELETE FROM tasks WHERE id = ?", deleted)
                if meta:
                    conn.executemany(_UPSERT_META, meta)
                if meta_deleted:
                    conn.executemany("DELETE FROM meta WHERE kind = ? AND key = ?", meta_deleted)

        if (
            len(tasks) <= INLINE_TASKS
            and not deleted
            and self._busy == 0
            and self._jobs is not None
            and self._inline_run < INLINE_RUN
        ):
            self._inline_run += 1
            self._call(lambda conn: _without_checkpoint(conn, write))
            return
        self._inline_run = 0
        await self._run(write)

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Oldest ended first; a terminal task without ``ended_at`` is never removed."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")

        def remove(conn: sqlite3.Connection) -> list[str]:
            with _transaction(conn, self._fence):
                ids = [row[0] for row in conn.execute(_SELECT_ENDED, (at, limit))]
                params = [(task_id,) for task_id in ids]
                conn.executemany("DELETE FROM events WHERE task_id = ?", params)
                conn.executemany("DELETE FROM tasks WHERE id = ?", params)
            return ids

        return await self._run(remove)

    async def list_ended_before(self, at: float, limit: int = 1000) -> list[TaskRecord]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        decode = self._task_decoder.decode

        def query(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [decode(row[0]) for row in conn.execute(_SELECT_ENDED_RECORDS, (at, limit))]

        return await self._run(query)

    # -- reads ----------------------------------------------------------------------------

    async def list_meta(self, kind: str) -> dict[str, Any]:
        decode = self._any_decoder.decode

        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            rows = conn.execute("SELECT key, value FROM meta WHERE kind = ? ORDER BY key", (kind,))
            return {key: decode(value) for key, value in rows}

        return await self._run(query)

    async def get_meta(self, kind: str, key: str) -> Any:
        decode = self._any_decoder.decode

        def query(conn: sqlite3.Connection) -> Any:
            row = conn.execute(
                "SELECT value FROM meta WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            return None if row is None else decode(row[0])

        return await self._run(query)

    async def load_active(self) -> list[TaskRecord]:
        decode = self._task_decoder.decode

        def load(conn: sqlite3.Connection) -> list[TaskRecord]:
            rows = conn.execute(
                "SELECT record FROM tasks INDEXED BY tasks_state"
                f" WHERE state IN ({_ACTIVE_SQL}) ORDER BY id"
            )
            return [decode(row[0]) for row in rows]

        return await self._run(load)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        decode = self._task_decoder.decode

        def get(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute("SELECT record FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else decode(row[0])

        return await self._run(get)

    async def get_events(self, task_id: str) -> list[EventRecord]:
        decode = self._event_decoder.decode

        def get(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                "SELECT record FROM events WHERE task_id = ? ORDER BY seq", (task_id,)
            )
            return [decode(row[0]) for row in rows]

        return await self._run(get)

    async def list_tasks(
        self,
        *,
        action: str | None = None,
        state: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        if limit < 0:
            # SQLite reads a negative LIMIT as "no limit"; refuse rather than surprise.
            raise ValueError(f"limit must be >= 0, got {limit}")
        where: list[str] = []
        params: list[object] = []
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        sql = "SELECT record FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        decode = self._task_decoder.decode

        def query(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [decode(row[0]) for row in conn.execute(sql, params)]

        return await self._run(query)


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _without_checkpoint(
    conn: sqlite3.Connection, write: Callable[[sqlite3.Connection], None]
) -> None:
    conn.execute("PRAGMA wal_autocheckpoint=0")
    try:
        write(conn)
    finally:
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")


def _barrier(conn: sqlite3.Connection, fence: WriteFence | None) -> None:
    """Take and drop the write lock: a fenced store's first step (WriteFence)."""
    if fence is not None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")


@contextmanager
def _transaction(conn: sqlite3.Connection, fence: WriteFence | None = None) -> Iterator[None]:
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
