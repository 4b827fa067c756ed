"""The sqlite engine's schema: a file written by an older TaskHub opens and reads the same."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from taskhub.records import EventRecord, TaskRecord, WriteBatch
from taskhub.store.memory import MemoryStore
from taskhub.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.store.data import (
    make_sqlite_v3,
    make_sqlite_v4,
    make_sqlite_v5,
    make_sqlite_v6,
    make_sqlite_v7,
)

V3_FILE = make_sqlite_v3.FILE
V4_FILE = make_sqlite_v4.FILE
V5_FILE = make_sqlite_v5.FILE
V6_FILE = make_sqlite_v6.FILE
V7_FILE = make_sqlite_v7.FILE
IDS = [f"t{i}" for i in range(7)]


async def _same_answers(store: SqliteStore, model: MemoryStore) -> None:
    for task_id in IDS:
        assert await store.get_task(task_id) == await model.get_task(task_id)
        assert await store.get_events(task_id) == await model.get_events(task_id)
    assert await store.load_active() == await model.load_active()
    assert await store.list_tasks() == await model.list_tasks()
    assert await store.list_tasks(state="start") == await model.list_tasks(state="start")
    assert await store.list_ended_before(1e12) == await model.list_ended_before(1e12)
    assert await store.list_ended_before(1025.0) == await model.list_ended_before(1025.0)
    for kind in ("queue", "dead"):
        assert await store.list_meta(kind) == await model.list_meta(kind)


async def _old_file(
    tmp_path: Path,
    source: Path,
    contents: Callable[[], list[WriteBatch]],
    version: int,
    table: str,
    rows: int,
) -> tuple[Path, MemoryStore]:
    """A copy of ``source`` (tests/store/data), checked to be a schema ``version`` file with
    ``rows`` rows in ``table``, and a MemoryStore holding what it holds."""
    path = tmp_path / "hub.db"
    shutil.copy(source, path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (version,)
        assert raw.execute(f"SELECT count(*) FROM {table}").fetchone() == (rows,)
    model = MemoryStore()
    await model.open()
    for batch in contents():
        await model.apply(batch)
    return path, model


@contextlib.asynccontextmanager
async def _opened(path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _goes_on(store: SqliteStore, model: MemoryStore, more: WriteBatch) -> None:
    """``more`` written to both: every read still answers the same."""
    await store.apply(more)
    await model.apply(more)
    await _same_answers(store, model)


async def _reopens_the_same(path: Path, model: MemoryStore) -> None:
    """Closed, the file is of today's schema, its journal folded, and opens again as it is."""
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (8,)
        assert raw.execute("SELECT count(*) FROM journal").fetchone() == (0,)
    async with _opened(path) as store:
        await _same_answers(store, model)


async def test_sqlite_migrates_a_version_3_file(tmp_path: Path) -> None:
    """A file TaskHub wrote with schema 3 (one row per event; tests/store/data) opens as
    version 4 (packed events, the journal), answers every read as before, and goes on."""
    path, model = await _old_file(tmp_path, V3_FILE, make_sqlite_v3.contents, 3, "events", 11)
    async with _opened(path) as store:
        await _same_answers(store, model)
        more = WriteBatch(
            tasks=[TaskRecord(id="t6", action="a", publisher="p", created_at=2000.0)],
            events=[
                EventRecord(task_id="t1", seq=1, at=2000.0, type="drop"),  # replaces seq 1
                EventRecord(task_id="t1", seq=2, at=2001.0, type="offer"),
            ],
            deleted=["t4"],
        )
        await _goes_on(store, model, more)
    with sqlite3.connect(path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables - {"sqlite_stat1"} == {"tasks", "events", "meta", "journal"}
        assert raw.execute("PRAGMA page_size").fetchone() == (4096,)  # kept as it was
        columns = [r[1] for r in raw.execute("PRAGMA table_info(events)")]
        assert columns == ["pack", "task_id", "records"]
    await _reopens_the_same(path, model)


async def test_sqlite_migrates_a_version_4_file_with_an_unfolded_journal(tmp_path: Path) -> None:
    """A file TaskHub wrote with schema 4, killed with a batch still in its journal
    (tests/store/data), opens as version 5: the journal is folded, every read answers as
    before, retention finds the ended tasks through the rebuilt index, and it goes on."""
    path, model = await _old_file(tmp_path, V4_FILE, make_sqlite_v4.contents, 4, "journal", 1)
    async with _opened(path) as store:
        await _same_answers(store, model)
        assert [t.id for t in await store.list_ended_before(1e12)] == ["t2", "t3", "t0"]
        assert await store.remove_ended_before(1025.0) == ["t2", "t3"]
        assert await model.remove_ended_before(1025.0) == ["t2", "t3"]
        more = WriteBatch(
            tasks=[TaskRecord(id="t6", action="a", publisher="p", created_at=2000.0)],
            events=[EventRecord(task_id="t4", seq=2, at=2000.0, type="success")],
        )
        await _goes_on(store, model, more)
    with sqlite3.connect(path) as raw:
        sql = "SELECT sql FROM sqlite_master WHERE name = 'tasks_ended'"
        (index,) = raw.execute(sql).fetchone()
        assert " IN " not in index and "state = 'success'" in index
    await _reopens_the_same(path, model)


async def test_sqlite_migrates_a_version_5_file_with_an_unfolded_journal(tmp_path: Path) -> None:
    """A file TaskHub wrote with schema 5, killed with a batch still in its journal (a row of
    the old layout: query columns, events as pairs; tests/store/data), opens as version 6:
    that row folds (an end, a task written twice, a delete, metadata set and removed), every
    read answers as before, and rows of the new layout go on from there, across a kill."""
    path, model = await _old_file(tmp_path, V5_FILE, make_sqlite_v5.contents, 5, "journal", 1)
    async with _opened(path) as store:
        await _same_answers(store, model)
        assert await store.get_task("t1") is None
        assert (await store.get_task("t6")).state == "start"  # type: ignore[union-attr]
        assert await store.list_meta("dead") == {}
        more = WriteBatch(
            tasks=[TaskRecord(id="t0", action="b", publisher="p", created_at=1000.0)],
            events=[EventRecord(task_id="t6", seq=3, at=2000.0, type="success")],
        )
        await _goes_on(store, model, more)
        assert [t.id for t in await store.list_tasks(action="b")] == ["t0"]  # action changed
    await _reopens_the_same(path, model)


async def test_sqlite_migrates_a_version_6_file_with_an_unfolded_journal(tmp_path: Path) -> None:
    """A file TaskHub wrote with schema 6, killed with a batch still in its journal (a row of
    layout 2; tests/store/data), opens as version 7: that row folds, every read answers as
    before, and the store goes on, carrying live tasks over from there (mark rows)."""
    path, model = await _old_file(tmp_path, V6_FILE, make_sqlite_v6.contents, 6, "journal", 1)
    async with _opened(path) as store:
        await _same_answers(store, model)
        assert await store.get_task("t1") is None
        assert (await store.get_task("t6")).state == "start"  # type: ignore[union-attr]
        more = WriteBatch(
            tasks=[TaskRecord(id="t0", action="b", publisher="p", created_at=1000.0)],
            events=[EventRecord(task_id="t6", seq=3, at=2000.0, type="success")],
        )
        await _goes_on(store, model, more)
    await _reopens_the_same(path, model)


async def test_sqlite_migrates_a_version_7_file_with_an_unfolded_journal(tmp_path: Path) -> None:
    """A file TaskHub wrote with schema 7, killed with a batch still in its journal
    (tests/store/data), opens as version 8: that row folds, a task's events from then on go
    in its row, where one written again replaces the one its old packs hold, every read
    answers as before, and the packs stay where they were."""
    path, model = await _old_file(tmp_path, V7_FILE, make_sqlite_v7.contents, 7, "journal", 1)
    packs = "SELECT task_id FROM events ORDER BY pack"
    with sqlite3.connect(path) as raw:
        before = raw.execute(packs).fetchall()
    async with _opened(path) as store:
        await _same_answers(store, model)
        assert [e.type for e in await store.get_events("t0")][1] == "start"  # from a pack
        ended = await store.get_task("t0")
        assert ended is not None
        more = WriteBatch(
            tasks=[ended, TaskRecord(id="t0b", action="b", publisher="p", created_at=1000.0)],
            events=[
                EventRecord(task_id="t0", seq=1, at=2000.0, type="again"),
                EventRecord(task_id="t0b", seq=1, at=2000.0, type="init"),
            ],
        )
        await _goes_on(store, model, more)
        assert [e.type for e in await store.get_events("t0")][1] == "again"
    with sqlite3.connect(path) as raw:
        # The journal's batch deleted t1, with its pack; the others stay.
        assert raw.execute(packs).fetchall() == [row for row in before if row != ("t1",)]
        rows = "SELECT id FROM tasks WHERE length(events) > 0 ORDER BY id"
        assert raw.execute(rows).fetchall() == [("t0",), ("t0b",), ("t4",), ("t6",)]
    await _reopens_the_same(path, model)
