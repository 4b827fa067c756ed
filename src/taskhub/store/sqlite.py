"""SQLite store engine: one file, WAL, every batch one transaction on a dedicated thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from taskhub.errors import StoreFenced, StoreInUse, StoreUnavailable
from taskhub.records import EventRecord, TaskRecord, WriteBatch
from taskhub.store.sqlite_journal import FOLD_AFTER, FOLD_RECORDS, Journal
from taskhub.store.sqlite_schema import (
    ACTIVE_SQL,
    ENDED_WHERE,
    SCHEMA_VERSION,
    WriteFence,
    migrate,
    transaction,
)
from taskhub.store.sqlite_writer import Writer

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock: one hub per file is on the user
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

log = logging.getLogger("taskhub.store.sqlite")
__all__ = ["SCHEMA_VERSION", "SqliteStore", "WriteFence"]

BUSY_TIMEOUT_MS = 5000
# SQLite's default is 4 KiB. A journal row holds a whole batch and a fold rewrites many rows
# at once: with 16 KiB pages they take a quarter of the WAL frames, each a write system call
# (a replayed burst: 0.87x the store's CPU per task).
PAGE_SIZE = 16384
# A batch of at most this many task records, while the store's thread is idle, is written on
# the caller's thread (the hub's event loop): a sequential task's commit costs ~0.1 ms of
# SQLite there, against two thread hand-offs that cost more than that on a busy machine.
# Bigger batches go to the thread, so the loop goes on applying messages meanwhile.
INLINE_TASKS = 1
# SQLite checkpoints the WAL inside the commit that grows it past its automatic checkpoint
# (pages), and a checkpoint copies pages and syncs the file: not for a write on the event
# loop. Inline writes run with the automatic checkpoint off, and after a run of them the next
# small write goes to the thread anyway, where SQLite checkpoints if the WAL has grown. Both
# are set from the file's page size for WAL_BYTES (SQLite's default: 1,000 pages of 4 KiB);
# a small commit appends about INLINE_FRAMES pages (the journal's last leaf, its parent).
WAL_BYTES = 4_000_000
INLINE_FRAMES = 2

_SELECT_ENDED_RECORDS = (
    f"SELECT record FROM tasks INDEXED BY tasks_ended WHERE {ENDED_WHERE} AND ended_at < ?"
    " ORDER BY ended_at, id LIMIT ?"
)
# Left to itself the planner probes tasks_state for each terminal state and sorts them all;
# the partial index gives the rows already in removal order.
_SELECT_ENDED = (
    f"SELECT id FROM tasks INDEXED BY tasks_ended WHERE {ENDED_WHERE} AND ended_at < ?"
    " ORDER BY ended_at, id LIMIT ?"
)


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
    """Calls run on one writer thread (store/sqlite_writer.py) in the order they were made,
    except a small write made while that thread is idle, which runs at once on the caller's
    thread (``INLINE_TASKS``).

    One connection used by one call at a time, so there is no locking to get wrong, and the
    event loop never waits on more than a small write. A write appends its batch to the
    journal (store/sqlite_journal.py), encoded on the caller's thread when :meth:`apply` is
    called, so the batch is a snapshot taken at that moment even if the hub keeps changing its
    live records while the write runs. The journal is folded into the tables every
    ``FOLD_RECORDS`` records, before every read, at open and at close.
    """

    def __init__(self, path: str, url: str | None = None, fence: WriteFence | None = None) -> None:
        self.path = path
        self.url = url if url is not None else f"sqlite:///{path}"
        self._writer: Writer | None = None
        self._conn: sqlite3.Connection | None = None  # one call at a time (see the class)
        self._lock: int | None = None  # fd holding the file's flock while open (_claim)
        self._closed = False
        self._inline_run = 0  # inline writes since the last one on the thread
        # Writes only while the fence holds; no flock then (a writer that lost the fence
        # must not keep its successor out).
        self._fence = fence
        self._wal_pages = 1000  # set from the file's page size at open (WAL_BYTES)
        self._inline_runs = 250
        self._journal = Journal(fence)
        self._folding = False  # a fold is queued on the thread (_fold_soon)
        # Seconds after a write before the journal is folded anyway, so that the tables (what
        # the sqlite3 shell reads) lag the hub by about that much when nothing reads.
        self.fold_after = FOLD_AFTER
        self._fold_timer: asyncio.TimerHandle | None = None
        # Used only on the writer thread: no decoder is shared between threads.
        self._task_decoder = msgspec.json.Decoder(TaskRecord)
        self._events_decoder = msgspec.json.Decoder(list[EventRecord])
        self._any_decoder = msgspec.json.Decoder()

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(_path_from_url(url), url)

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None or self._conn is None:
            what = "closed" if self._closed else "not open yet (call open() first)"
            raise StoreUnavailable(f"sqlite store {self.path!r} is {what}", url=self.url)
        return await writer.submit(lambda: self._call(fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read (or retention) on the thread, after the journal is folded into the tables."""

        def read(conn: sqlite3.Connection) -> T:
            # Fenced: another writer leads this file now; the tables are as it folds them.
            with contextlib.suppress(StoreFenced):
                self._fold(conn)
            return fn(conn)

        return await self._run(read)

    def _fold(self, conn: sqlite3.Connection) -> None:
        """Everything into the tables, carried tasks included."""
        if self._journal.dirty:
            self._journal.fold(conn)

    def _fold_soon(self) -> None:
        """Queue a fold on the thread, not awaited: the batch just written is answered first.
        It carries live tasks over, unless nothing was written since the last fold."""
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if self._folding or self._writer is None:
            return
        self._folding = True
        fold = self._journal.fold_carrying
        self._writer.submit(lambda: self._call(fold)).add_done_callback(self._folded)

    def _fold_later(self) -> None:
        if self._fold_timer is None and self._writer is not None:
            loop = asyncio.get_running_loop()
            self._fold_timer = loop.call_later(self.fold_after, self._fold_soon)

    def _folded(self, future: asyncio.Future[None]) -> None:
        self._folding = False
        if not future.cancelled() and (error := future.exception()) is not None:
            # Nothing is lost: the journal stays, and the next read or fold tries again.
            log.warning("sqlite store %r: folding the journal failed: %s", self.path, error)
        elif self._journal.dirty:  # tasks carried over: the tables catch up once writes stop
            self._fold_later()

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
        if self._writer is not None:
            return
        writer = Writer("taskhub-sqlite")
        try:
            conn = await writer.submit(self._connect)
        except BaseException:
            writer.stop()
            raise
        if self._closed:  # close() was called while we were opening
            await writer.submit(conn.close)
            writer.stop()
            self._release()
            raise StoreUnavailable(f"sqlite store {self.path!r} was closed while opening")
        self._conn = conn
        self._writer = writer

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
                self._lock = _claim(self.path, self.url)
        except StoreUnavailable:
            conn.close()
            raise
        try:
            # Before WAL: a new file gets PAGE_SIZE pages, an existing one keeps its own.
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            self._wal_pages = max(1, WAL_BYTES // page)
            self._inline_runs = max(1, self._wal_pages // INLINE_FRAMES)
            conn.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
            # In WAL mode NORMAL loses no committed transaction when the process dies
            # (kill -9 included), which is the durability we promise; only a power cut or OS
            # crash can drop the last commits. FULL would fsync every batch for that.
            conn.execute("PRAGMA synchronous=NORMAL")
            # Some builds (Debian's, for one) default to secure_delete=ON: every freed page is
            # zeroed and written to the WAL, and the journal frees its pages at every fold.
            # FAST still zeroes what is deleted from a table's pages (a removed task's record
            # does not linger there) but writes no free page just to blank it: a fifth of the
            # bytes written in a burst. Durability is untouched: what commits is the same.
            conn.execute("PRAGMA secure_delete=FAST")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            migrate(conn, self.path, self.url)
            _barrier(conn, self._fence)
            # What the last run appended and did not fold (it was killed, say) goes to the
            # tables now; reads would fold it anyway.
            self._journal.pending = 1
            self._fold(conn)
        except (sqlite3.Error, StoreUnavailable) as exc:
            conn.close()
            self._release()
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(
                f"cannot open sqlite store {self.path!r}: {exc}", url=self.url
            ) from exc
        return conn

    def _release(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)

    async def close(self) -> None:
        """Waits for calls already made, folds the journal, then closes; later calls raise
        StoreUnavailable."""
        writer = self._writer
        self._closed = True
        self._writer = None
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if writer is None:
            return
        try:
            # Queued behind every call already submitted, so those finish first.
            await writer.submit(self._close_conn)
        finally:
            writer.stop()  # the thread ends after the calls before it

    def _close_conn(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            # The tables hold everything once closed (for the sqlite3 shell, say). If that
            # fails the journal stays, whole, for the next open: no reason not to close.
            try:
                self._call(self._fold)
            except StoreUnavailable as exc:
                log.warning(
                    "sqlite store %r: the journal stays for the next open: %s", self.path, exc
                )
            # SQLite's advice for long-lived connections: refresh planner statistics on close.
            conn.execute("PRAGMA optimize")
        finally:
            self._conn = None
            conn.close()
            self._release()
            if self._fence is not None:
                self._fence.close()

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        """One transaction: the batch appended to the journal (upserts, then event appends,
        then deletes with their events, then metadata, when folded).

        Once the write has started it completes even if the caller is cancelled meanwhile.
        """
        if not batch:
            await self._run(_nothing)  # still refuses when not open, like any other call
            return
        journal = self._journal
        entry = journal.entry(batch)

        def write(conn: sqlite3.Connection) -> None:
            journal.append(conn, entry)

        writer = self._writer
        if (
            len(batch.tasks) <= INLINE_TASKS
            and not batch.deleted
            and writer is not None
            and writer.idle
            and self._inline_run < self._inline_runs
        ):
            self._inline_run += 1
            self._call(lambda conn: _without_checkpoint(conn, write, self._wal_pages))
        else:
            self._inline_run = 0
            await self._run(write)
        if journal.pending >= FOLD_RECORDS:
            self._fold_soon()
        else:
            self._fold_later()

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Oldest ended first; a terminal task without ``ended_at`` is never removed."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")

        def remove(conn: sqlite3.Connection) -> list[str]:
            with transaction(conn, self._fence):
                ids = [row[0] for row in conn.execute(_SELECT_ENDED, (at, limit))]
                params = [(task_id,) for task_id in ids]
                conn.executemany("DELETE FROM events WHERE task_id = ?", params)
                conn.executemany("DELETE FROM tasks WHERE id = ?", params)
            return ids

        return await self._read(remove)

    async def list_ended_before(self, at: float, limit: int = 1000) -> list[TaskRecord]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        decode = self._task_decoder.decode

        def query(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [decode(row[0]) for row in conn.execute(_SELECT_ENDED_RECORDS, (at, limit))]

        return await self._read(query)

    # -- reads ----------------------------------------------------------------------------

    async def list_meta(self, kind: str) -> dict[str, Any]:
        decode = self._any_decoder.decode

        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            rows = conn.execute("SELECT key, value FROM meta WHERE kind = ? ORDER BY key", (kind,))
            return {key: decode(value) for key, value in rows}

        return await self._read(query)

    async def get_meta(self, kind: str, key: str) -> Any:
        decode = self._any_decoder.decode

        def query(conn: sqlite3.Connection) -> Any:
            row = conn.execute(
                "SELECT value FROM meta WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            return None if row is None else decode(row[0])

        return await self._read(query)

    async def load_active(self) -> list[TaskRecord]:
        decode = self._task_decoder.decode

        def load(conn: sqlite3.Connection) -> list[TaskRecord]:
            rows = conn.execute(
                "SELECT record FROM tasks INDEXED BY tasks_state"
                f" WHERE state IN ({ACTIVE_SQL}) ORDER BY id"
            )
            return [decode(row[0]) for row in rows]

        return await self._read(load)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        decode = self._task_decoder.decode

        def get(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute("SELECT record FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else decode(row[0])

        return await self._read(get)

    async def get_events(self, task_id: str) -> list[EventRecord]:
        decode = self._events_decoder.decode

        def get(conn: sqlite3.Connection) -> list[EventRecord]:
            # Packs in the order they were written, then the task's row, which holds what
            # came after its packs (sqlite_journal): a later event of the same seq replaces
            # an earlier one (a batch applied again, say).
            by_seq: dict[int, EventRecord] = {}
            rows = conn.execute(
                "SELECT records FROM events WHERE task_id = ? ORDER BY pack", (task_id,)
            )
            packs = [records for (records,) in rows]
            row = conn.execute("SELECT events FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is not None and row[0]:  # ",event,event"
                packs.append(b"[%b]" % row[0][1:])
            for records in packs:
                for event in decode(records):
                    by_seq[event.seq] = event
            return [by_seq[seq] for seq in sorted(by_seq)]

        return await self._read(get)

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

        return await self._read(query)


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _barrier(conn: sqlite3.Connection, fence: WriteFence | None) -> None:
    """Take and drop the write lock: a fenced store's first step (WriteFence)."""
    if fence is not None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")


def _without_checkpoint(
    conn: sqlite3.Connection, write: Callable[[sqlite3.Connection], None], wal_pages: int
) -> None:
    conn.execute("PRAGMA wal_autocheckpoint=0")
    try:
        write(conn)
    finally:
        conn.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")


def _claim(path: str, url: str) -> int | None:
    """One hub per file: an exclusive flock on it, held while open (the fd returned). Two
    hubs on one file would each run their own lifecycle and offer the same restored tasks
    twice; several hubs share a redis:// store instead. SQLite locks with fcntl, which flock
    does not touch, so the sqlite3 shell can still read the file; the kernel drops the lock
    when the process dies, so a killed hub does not keep its file locked."""
    if path == ":memory:" or fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(
            f"sqlite store {path!r} is in use by another hub (a sqlite file serves one "
            "hub; several hubs share a redis:// store)",
            url=url,
        ) from None
    return fd
