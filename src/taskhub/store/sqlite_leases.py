"""The SQLite engine's :class:`~taskhub.store.lock.PartitionLeases`, for several hub processes
on one machine sharing ``sqlite:///dir/name.db``.

The leases, the members and the members' connection slots are tables of the main file
(``dir/name.db``); partition p's data is ``dir/name.p<p>.db`` (the main file itself with one
partition). A lease is a row (token, epoch, expiry in wall-clock seconds: every process on
the machine reads the same clock); taking it is one ``BEGIN IMMEDIATE`` transaction that finds
the row free or expired and writes a token with the next epoch. A partition's fenced store
checks the row inside each of its write transactions, after taking its own file's write lock,
and takes that lock once when it opens (:class:`~taskhub.store.sqlite.WriteFence`): a stale
writer's batch either commits before its successor has opened the partition, or is refused.
A claim of a connection slot counts the other members' live rows and writes its own in one
such transaction, so two hubs cannot both take the last slot.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.store import partition_path
from taskhub.store.lock import Member, check_member, lease_name
from taskhub.store.sqlite import BUSY_TIMEOUT_MS, SqliteStore

T = TypeVar("T")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY,
        token TEXT,
        epoch INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS members (
        instance TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    # A member's connections per service (max_connections across hubs); expire with it.
    """CREATE TABLE IF NOT EXISTS slots (
        instance TEXT NOT NULL,
        service TEXT NOT NULL,
        held INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (instance, service)
    )""",
]
_HOLDER = "SELECT token FROM leases WHERE name = ? AND token IS NOT NULL AND expires_at > ?"


class SqlitePartitionLeases:
    """The partition leases and members of ``sqlite:///dir/name.db``, split in ``partitions``.

    ``clock`` is the wall clock the expiries are written and read in (a test's fake clock);
    every process sharing the file must use the same clock. Calls run on a worker thread, one
    at a time, so a busy file (``busy_timeout``) never stalls the event loop.
    """

    def __init__(
        self, store_url: str, partitions: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not 1 <= partitions <= 1024:
            raise ValueError(f"partitions must be between 1 and 1024, got {partitions}")
        self.path = SqliteStore.from_url(store_url).path
        if self.path == ":memory:":
            raise ValueError(
                "an in-memory sqlite store cannot be shared: use sqlite:///path/to/file.db"
            )
        self.url = store_url
        self.partitions = partitions
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _check(self, partition: int) -> str:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is out of range: 0 <= p < {self.partitions}")
        return lease_name(partition)

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            with _immediate(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(
                f"cannot open the partition leases in {self.path!r}: {exc}", url=self.url
            ) from exc
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._locked, conn.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(f"partition leases in {self.path!r} are not open", url=self.url)

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"partition leases in {self.path!r} failed: {exc}", url=self.url
                ) from exc

        return await asyncio.to_thread(self._locked, call)

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._lock:
            return fn()

    # -- leases ---------------------------------------------------------------------------

    async def take(self, partition: int, holder: str, ttl_ms: int) -> str | None:
        name = self._check(partition)

        def take(conn: sqlite3.Connection) -> str | None:
            now = self.clock()
            with _immediate(conn):
                row = conn.execute(
                    "SELECT token, epoch, expires_at FROM leases WHERE name = ?", (name,)
                ).fetchone()
                if row is not None and row[0] is not None and row[2] > now:
                    return None
                token = f"{(row[1] if row else 0) + 1} {holder}"
                conn.execute(
                    "INSERT OR REPLACE INTO leases (name, token, epoch, expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (name, token, (row[1] if row else 0) + 1, now + ttl_ms / 1000),
                )
                return token

        return await self._run(take)

    async def renew(self, partition: int, token: str, ttl_ms: int) -> bool:
        name = self._check(partition)

        def renew(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            return _renew(conn, name, token, now + ttl_ms / 1000, now)

        return await self._run(renew)

    async def renew_many(
        self, held: list[tuple[int, str]], ttl_ms: int, member: Member | None = None
    ) -> list[bool]:
        names = [(self._check(p), token) for p, token in held]
        if member is not None:
            check_member(member)

        def renew(conn: sqlite3.Connection) -> list[bool]:
            now = self.clock()
            with _immediate(conn):  # one write lock of the main file for all of them
                kept = [
                    _renew(conn, name, token, now + ttl_ms / 1000, now) for name, token in names
                ]
                if member is not None:
                    _beat(conn, member, now + ttl_ms / 1000, now)
            return kept

        return await self._run(renew)

    async def release(self, partition: int, token: str) -> bool:
        name = self._check(partition)

        def release(conn: sqlite3.Connection) -> bool:
            done = conn.execute(
                "UPDATE leases SET token = NULL, expires_at = 0"
                " WHERE name = ? AND token = ? AND expires_at > ?",
                (name, token, self.clock()),
            )
            return done.rowcount == 1

        return await self._run(release)

    async def holder(self, partition: int) -> str | None:
        name = self._check(partition)

        def holder(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(_HOLDER, (name, self.clock())).fetchone()
            return None if row is None else str(row[0])

        return await self._run(holder)

    def fenced_store(self, partition: int, token: str) -> SqliteStore:
        name = self._check(partition)
        path = self.path if self.partitions == 1 else partition_path(self.path, partition)
        fence = LeaseFence(self.path, name, token, self.clock)
        return SqliteStore(path, f"sqlite:///{path}", fence=fence)

    # -- members --------------------------------------------------------------------------

    async def heartbeat(self, member: Member, ttl_ms: int) -> None:
        check_member(member)

        def beat(conn: sqlite3.Connection) -> None:
            now = self.clock()
            with _immediate(conn):
                _beat(conn, member, now + ttl_ms / 1000, now)

        await self._run(beat)

    async def leave(self, instance: str) -> None:
        def leave(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                conn.execute("DELETE FROM members WHERE instance = ?", (instance,))
                conn.execute("DELETE FROM slots WHERE instance = ?", (instance,))

        await self._run(leave)

    async def members(self) -> list[Member]:
        def query(conn: sqlite3.Connection) -> list[Member]:
            rows = conn.execute(
                "SELECT instance, url FROM members WHERE expires_at > ? ORDER BY instance",
                (self.clock(),),
            )
            return [Member(instance, url) for instance, url in rows]

        return await self._run(query)

    # -- connection slots -----------------------------------------------------------------

    async def claim_slot(
        self, instance: str, service: str, held: int, limit: int, ttl_ms: int
    ) -> int | None:
        def claim(conn: sqlite3.Connection) -> int | None:
            now = self.clock()
            with _immediate(conn):  # the count and the write in one transaction
                (others,) = conn.execute(
                    "SELECT COALESCE(SUM(held), 0) FROM slots"
                    " WHERE service = ? AND instance != ? AND expires_at > ?",
                    (service, instance, now),
                ).fetchone()
                if others + held > limit:
                    return int(others)
                _write_slots(conn, instance, service, held, now + ttl_ms / 1000)
                return None

        return await self._run(claim)

    async def set_slots(self, instance: str, service: str, held: int, ttl_ms: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                _write_slots(conn, instance, service, held, self.clock() + ttl_ms / 1000)

        await self._run(write)


def _write_slots(
    conn: sqlite3.Connection, instance: str, service: str, held: int, expires_at: float
) -> None:
    """``instance`` holds ``held`` connections of ``service``; its record lives on."""
    if held > 0:
        conn.execute(
            "INSERT OR REPLACE INTO slots (instance, service, held, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (instance, service, held, expires_at),
        )
    else:
        conn.execute("DELETE FROM slots WHERE instance = ? AND service = ?", (instance, service))
    conn.execute("UPDATE slots SET expires_at = ? WHERE instance = ?", (expires_at, instance))


def _renew(conn: sqlite3.Connection, name: str, token: str, until: float, now: float) -> bool:
    done = conn.execute(
        "UPDATE leases SET expires_at = ? WHERE name = ? AND token = ? AND expires_at > ?",
        (until, name, token, now),
    )
    return done.rowcount == 1


def _beat(conn: sqlite3.Connection, member: Member, until: float, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO members (instance, url, expires_at) VALUES (?, ?, ?)",
        (member.instance, member.url, until),
    )
    # The member's connection slots live as long as it does.
    conn.execute("UPDATE slots SET expires_at = ? WHERE instance = ?", (until, member.instance))
    # The dead are pruned here, so the tables stay as long as the live list.
    conn.execute("DELETE FROM members WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM slots WHERE expires_at <= ?", (now,))


class LeaseFence:
    """A partition store's fence (:class:`~taskhub.store.sqlite.WriteFence`): the lease row
    ``name`` of the main file must hold ``token`` and not have expired."""

    def __init__(self, path: str, name: str, token: str, clock: Callable[[], float]) -> None:
        self.path = path
        self.name = name
        self.token = token
        self.clock = clock
        # Used by the store's writer thread, or by its caller while that thread is idle:
        # never two at once (SqliteStore), hence check_same_thread=False.
        self._conn: sqlite3.Connection | None = None

    def check(self) -> None:
        if self._conn is None:
            self._conn = connect(self.path)
        row = self._conn.execute(_HOLDER, (self.name, self.clock())).fetchone()
        if row is None or row[0] != self.token:
            raise StoreFenced(
                f"sqlite store: write refused, this writer was fenced out (lease {self.name} "
                f"in {self.path!r} no longer holds its token)",
                fence=self.name,
            )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


class _immediate:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
