"""The sqlite engine's writer thread: one thread fed by a queue, one call at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from taskhub.errors import StoreUnavailable
from taskhub.records import EventRecord, TaskRecord, WriteBatch
from taskhub.store.sqlite import SqliteStore


def _task(task_id: str) -> TaskRecord:
    return TaskRecord(id=task_id, action="a", publisher="p", created_at=1.0)


async def test_a_cancelled_call_still_keeps_small_writes_off_the_busy_connection(
    tmp_path: Path,
) -> None:
    """A caller cancelled while its call runs on the writer thread does not make the store
    look idle: a small write made meanwhile waits its turn on the thread instead of using the
    connection from the event loop while the thread still has it."""
    store = SqliteStore.from_url(f"sqlite:///{tmp_path / 'hub.db'}")
    await store.open()
    running, gate = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        running.set()
        gate.wait(30)

    threads: set[int] = set()
    assert store._conn is not None
    store._conn.set_trace_callback(lambda sql: threads.add(threading.get_ident()))
    try:
        # Any call on the thread (a read, a big batch): one the test can hold there.
        held = asyncio.ensure_future(store._run(hold))
        assert await asyncio.to_thread(running.wait, 30)
        held.cancel()
        await asyncio.sleep(0)
        assert held.cancelled()

        small = asyncio.ensure_future(
            store.apply(
                WriteBatch(
                    tasks=[_task("t1")],
                    events=[EventRecord(task_id="t1", seq=0, at=1.0, type="init")],
                )
            )
        )
        await asyncio.sleep(0)  # apply ran up to its first await
        assert threading.get_ident() not in threads  # not written from the event loop
        assert not small.done()
        gate.set()
        await small
        assert threads and threading.get_ident() not in threads
        assert [t.id for t in await store.list_tasks()] == ["t1"]
    finally:
        gate.set()
        await store.close()


async def test_calls_run_in_order_and_errors_reach_their_caller(tmp_path: Path) -> None:
    store = SqliteStore.from_url(f"sqlite:///{tmp_path / 'hub.db'}")
    await store.open()
    try:
        batches = [WriteBatch(tasks=[_task(f"t{i}"), _task(f"u{i}")]) for i in range(20)]
        writes = [asyncio.ensure_future(store.apply(b)) for b in batches]
        reads = asyncio.ensure_future(store.list_tasks(limit=1000))
        await asyncio.gather(*writes)
        # Queued after every write, so it sees them all.
        assert len(await reads) == 40

        def boom(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT * FROM no_such_table")

        with pytest.raises(StoreUnavailable, match="no_such_table"):
            await store._run(boom)
        assert (await store.get_task("t3")) == _task("t3")  # the thread goes on after an error
    finally:
        await store.close()
