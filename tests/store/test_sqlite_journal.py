"""The sqlite engine's journal: batches appended whole, folded into the tables later."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store import sqlite, sqlite_journal
from taskhub.store.sqlite import SqliteStore
from taskhub.store.sqlite_journal import FOLD_RECORDS
from tests.store.test_conformance import Model, check_against_model, operations


def _task(task_id: str) -> TaskRecord:
    return TaskRecord(id=task_id, action="a", publisher="p", created_at=1.0)


def _ended(task_id: str, at: float = 2.0) -> TaskRecord:
    return msgspec.structs.replace(_task(task_id), state="success", ended_at=at)


# Task rows with events of their own, and how many a row holds (schema 8: ",event,event").
_WITH_EVENTS = "SELECT count(*) FROM tasks WHERE length(events) > 0"
_EVENTS_IN_ROW = "json_array_length('[' || substr(events, 2) || ']')"


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as raw:
        return raw.execute(sql).fetchall()


async def _until(check: object, what: str) -> None:
    """Poll ``check`` (a no-argument callable) until true; fail naming ``what`` after 20 s."""
    assert callable(check)
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_the_journal_is_folded_a_moment_after_a_write_without_any_read(
    tmp_path: Path,
) -> None:
    """The tables (what the sqlite3 shell reads) catch up with the journal by themselves."""
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 0.05
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[_task("t1")]))
        await _until(lambda: _rows(path, "SELECT id FROM tasks") == [("t1",)], "t1 in tasks")
        assert _rows(path, "SELECT count(*) FROM journal") == [(0,)]
        # As the sqlite3 shell sees it (the fold binds them otherwise: _NULL, bytearray).
        columns = "SELECT typeof(ended_at), typeof(record), json_extract(record, '$.id') FROM tasks"
        assert _rows(path, columns) == [("null", "blob", "t1")]
    finally:
        await store.close()


async def test_a_full_journal_is_folded_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 3600.0  # only the size can trigger it
    await store.open()
    try:
        # Ended: live tasks would be carried over (test_a_burst_writes_each_task_once).
        tasks = [_ended(f"t{i:05d}") for i in range(FOLD_RECORDS // 2 + 1)]
        events = [EventRecord(task_id=t.id, seq=0, at=1.0, type="init") for t in tasks]
        await store.apply(WriteBatch(tasks=tasks, events=events))
        count = "SELECT count(*) FROM tasks"
        await _until(lambda: _rows(path, count) == [(len(tasks),)], "every task in tasks")
        # Each task's events in its row (schema 8), no pack.
        assert _rows(path, _WITH_EVENTS) == [(len(tasks),)]
        assert _rows(path, "SELECT count(*) FROM events") == [(0,)]
    finally:
        await store.close()


async def test_a_fold_that_fails_loses_nothing_and_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fold on its own (no caller waiting) that fails is logged; the journal stays whole,
    a read says the store is unavailable, and once the cause is gone everything is there."""
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 0.05
    await store.open()
    try:
        with sqlite3.connect(path) as raw:
            raw.execute(
                "CREATE TRIGGER broken BEFORE INSERT ON tasks BEGIN SELECT * FROM gone; END"
            )
        with caplog.at_level(logging.WARNING, logger="taskhub.store.sqlite"):
            # Ended: a live task would be carried over by this fold, not written.
            await store.apply(WriteBatch(tasks=[_ended("t1")]))
            await _until(lambda: "folding the journal failed" in caplog.text, "a warning")
        assert "no such table: main.gone" in caplog.text
        assert _rows(path, "SELECT count(*) FROM journal") == [(1,)]
        with pytest.raises(StoreUnavailable, match="no such table"):
            await store.get_task("t1")
        await store.apply(WriteBatch(tasks=[_task("t2")]))  # writes still go to the journal
        with sqlite3.connect(path) as raw:
            raw.execute("DROP TRIGGER broken")
        assert [t.id for t in await store.list_tasks()] == ["t1", "t2"]
    finally:
        await store.close()


async def test_a_journal_left_by_a_killed_hub_is_folded_at_open(tmp_path: Path) -> None:
    """What a hub appended and never folded (killed: no close) is in the tables after open."""
    path = tmp_path / "hub.db"
    code = (
        "import asyncio, os\n"
        "from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch\n"
        "from taskhub.store.sqlite import SqliteStore\n"
        "async def main():\n"
        f"    store = SqliteStore({str(path)!r})\n"
        "    store.fold_after = 3600.0\n"
        "    await store.open()\n"
        "    t = TaskRecord(id='t1', action='a', publisher='p', created_at=1.0)\n"
        "    await store.apply(WriteBatch(tasks=[t]))\n"
        # The query columns are not in a row: read back, they come from the records.
        "    t2 = TaskRecord(id='t2', action='b', publisher='p', created_at=2)\n"
        "    t3 = TaskRecord(id='t3', action='b', publisher='p', created_at=3.0)\n"
        "    e = EventRecord(task_id='t2', seq=1, at=2.0, type='init')\n"
        "    m = MetaRecord('queue', 'b/g', {'n': 1})\n"
        "    await store.apply(WriteBatch(tasks=[t2, t3], events=[e], meta=[m]))\n"
        "    t2.state, t2.ended_at = 'success', 5.0\n"
        "    f = EventRecord(task_id='t2', seq=2, at=5.0, type='success')\n"
        "    await store.apply(WriteBatch(tasks=[t2], events=[f], deleted=['t3']))\n"
        "    os._exit(9)  # no close, no fold\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await proc.wait() == 9
    assert _rows(path, "SELECT count(*) FROM journal") == [(3,)]
    assert _rows(path, "SELECT count(*) FROM tasks") == [(0,)]
    store = SqliteStore(str(path))
    await store.open()
    try:
        rows = _rows(path, "SELECT id, action, state, created_at, ended_at FROM tasks ORDER BY id")
        assert rows == [("t1", "a", "init", 1.0, None), ("t2", "b", "success", 2.0, 5.0)]
        assert await store.get_task("t1") == _task("t1")
        assert [e.type for e in await store.get_events("t2")] == ["init", "success"]
        assert [t.id for t in await store.list_ended_before(10.0)] == ["t2"]
        assert await store.get_meta("queue", "b/g") == {"n": 1}
        assert await store.get_task("t3") is None
    finally:
        await store.close()


async def test_a_fold_that_fails_at_close_still_closes_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await store.open()
    await store.apply(WriteBatch(tasks=[_task("t1")]))
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TRIGGER broken BEFORE INSERT ON tasks BEGIN SELECT * FROM gone; END")
    with caplog.at_level(logging.WARNING, logger="taskhub.store.sqlite"):
        await store.close()
    assert "the journal stays for the next open: " in caplog.text
    assert _rows(path, "SELECT count(*) FROM journal") == [(1,)]
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TRIGGER broken")
    again = SqliteStore(str(path))  # the file was closed and unlocked
    await again.open()
    try:
        assert await again.get_task("t1") == _task("t1")
    finally:
        await again.close()


class _Fence:
    """A WriteFence held until ``lost`` is set (the partition lease's role, simplified)."""

    def __init__(self) -> None:
        self.lost = False

    def check(self) -> None:
        if self.lost:
            raise StoreFenced("another writer holds this file's fence")

    def close(self) -> None:
        pass


async def test_a_fenced_store_appends_nothing_and_still_reads(tmp_path: Path) -> None:
    """Journal appends and folds are write transactions under the fence; once it is lost a
    write is refused whole, and reads go on (the tables, as the file's new writer keeps them)."""
    path = tmp_path / "hub.db"
    fence = _Fence()
    store = SqliteStore(str(path), fence=fence)
    store.fold_after = 3600.0
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[_task("t1")]))
        assert await store.get_task("t1") == _task("t1")  # folded
        await store.apply(WriteBatch(tasks=[_task("t2")]))
        fence.lost = True
        with pytest.raises(StoreFenced):
            await store.apply(WriteBatch(tasks=[_task("t3")]))
        assert [t.id for t in await store.list_tasks()] == ["t1"]  # t2 waits in the journal
        assert _rows(path, "SELECT count(*) FROM journal") == [(1,)]
    finally:
        await store.close()


async def test_a_journal_changed_by_another_writer_is_read_back_before_a_fold(
    tmp_path: Path,
) -> None:
    """A fold writes the rows this store appended as it remembers them, unless the table no
    longer holds exactly those rows (a successor on the file folded them): then it reads the
    table, and what it remembered is not written over the other writer's."""
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[_task("t1")]))
        with sqlite3.connect(path) as raw:
            raw.execute("DELETE FROM journal")
            other = TaskRecord(id="t1", action="b", publisher="p", created_at=2.0)
            raw.execute(
                "INSERT INTO tasks VALUES ('t1', 'b', 'init', 2.0, NULL, ?, NULL)",
                (msgspec.json.encode(other),),
            )
        assert await store.get_task("t1") == other
        await store.apply(WriteBatch(tasks=[_task("t2")]))
        assert [t.action for t in await store.list_tasks()] == ["b", "a"]
    finally:
        await store.close()


async def test_a_task_written_again_with_another_action_is_found_by_its_new_one(
    tmp_path: Path,
) -> None:
    """The fold's upsert leaves the action of a task as it is (the hub never changes it); one
    whose action did change is written again whole, in the same fold."""
    store = SqliteStore(str(tmp_path / "hub.db"))
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[_task("t1"), _task("t2")]))
        assert [t.id for t in await store.list_tasks(action="a")] == ["t1", "t2"]  # folded
        moved = TaskRecord(id="t2", action="b", publisher="p", created_at=1.0, state="start")
        await store.apply(WriteBatch(tasks=[_task("t1"), moved]))
        assert [t.id for t in await store.list_tasks(action="a")] == ["t1"]
        assert await store.list_tasks(action="b") == [moved]
        assert await store.list_tasks(state="start") == [moved]
    finally:
        await store.close()


def _bad(**fields: object) -> WriteBatch:
    """A batch of a good task and one with ``fields`` (unchecked, as a caller may build it)."""
    return WriteBatch(tasks=[_task("t1"), msgspec.structs.replace(_task("t2"), **fields)])


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        (_bad(id=7), "task id must be a string"),
        (_bad(state=3), "state of task 't2' must be a string"),
        (_bad(created_at=True), "created_at of task 't2' must be a number"),
        (_bad(created_at=math.nan), "created_at of task 't2' is NaN"),
        (_bad(ended_at=math.nan), "ended_at of task 't2' is NaN"),
        (_bad(ended_at="x"), "ended_at of task 't2' must be a number"),
        (
            WriteBatch(events=[EventRecord(task_id=None, seq=0, at=1.0, type="init")]),  # type: ignore[arg-type]
            "event task_id must be a string",
        ),
        (WriteBatch(deleted=[b"t1"]), "deleted task id must be a string"),  # type: ignore[list-item]
    ],
)
async def test_a_column_the_tables_would_refuse_is_refused_with_the_whole_batch(
    tmp_path: Path, batch: WriteBatch, error: str
) -> None:
    """Checked a column at a time for the whole batch (the hub's are always right); one
    wrong value, wherever it is, refuses the batch naming the field, and nothing is kept."""
    store = SqliteStore(str(tmp_path / "hub.db"))
    await store.open()
    try:
        with pytest.raises((TypeError, ValueError), match=error):
            await store.apply(batch)
        assert await store.list_tasks() == []
        # An int where a float goes is taken (as a float), like the other engines.
        fine = TaskRecord(id="t3", action="a", publisher="p", created_at=5, ended_at=6)  # type: ignore[arg-type]
        await store.apply(WriteBatch(tasks=[fine]))
        assert [t.id for t in await store.list_tasks()] == ["t3"]  # folded
        assert _rows(tmp_path / "hub.db", "SELECT created_at, ended_at FROM tasks") == [(5.0, 6.0)]
    finally:
        await store.close()


def _burst(prefix: str, state: str = "init", seq: int = 1) -> WriteBatch:
    """FOLD_RECORDS tasks and an event each: a batch that makes the store fold."""
    tasks = [
        msgspec.structs.replace(_task(f"{prefix}{i:05d}"), state=state)
        for i in range(FOLD_RECORDS // 2)
    ]
    events = [EventRecord(task_id=t.id, seq=seq, at=1.0, type=state) for t in tasks]
    return WriteBatch(tasks=tasks, events=events)


async def test_a_burst_writes_each_task_once(tmp_path: Path) -> None:
    """A fold because the journal is full carries live tasks over (their rows stay in the
    journal), so a task queued in one fold's window and ended in a later one reaches the
    tables once: its record once, its events as one pack. Reads see every task meanwhile."""
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 3600.0  # only the size can trigger a fold
    await store.open()
    try:
        queued = _burst("q")
        await store.apply(queued)
        # Folded: the batch's row and the fold's mark stay, nothing is in the tables.
        await _until(lambda: _rows(path, "SELECT count(*) FROM journal") == [(2,)], "a mark")
        assert _rows(path, "SELECT count(*) FROM tasks") == [(0,)]
        ended = _burst("q", "success", seq=2)
        for task in ended.tasks:
            task.ended_at = 2.0
        await store.apply(ended)
        await _until(lambda: _rows(path, "SELECT count(*) FROM journal") == [(0,)], "a fold")
        n = len(ended.tasks)
        assert _rows(path, "SELECT count(*), min(state), max(state) FROM tasks") == [
            (n, "success", "success")
        ]
        assert _rows(path, _WITH_EVENTS) == [(n,)]  # in their rows
        assert _rows(path, "SELECT count(*) FROM events") == [(0,)]
        assert [e.type for e in await store.get_events("q00007")] == ["init", "success"]
        # Reads see carried tasks too: a read folds everything first.
        await store.apply(_burst("r"))
        await _until(lambda: _rows(path, "SELECT count(*) FROM journal") == [(2,)], "a mark")
        assert await store.get_task("r00003") == _task("r00003")
        assert _rows(path, "SELECT count(*) FROM journal") == [(0,)]
    finally:
        await store.close()


async def test_carried_tasks_are_there_after_a_kill_and_written_ones_stay_written(
    tmp_path: Path,
) -> None:
    """A hub killed after folds that carried tasks over: at open the journal's rows replay
    up to each mark, which drops what that fold wrote, so a task written by a fold is not
    written again from the older rows kept for others (its events not packed twice), and one
    deleted since stays deleted."""
    path = tmp_path / "hub.db"
    code = (
        "import asyncio, os\n"
        "from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch\n"
        "from taskhub.store.sqlite import SqliteStore\n"
        "from tests.store.test_sqlite_journal import _burst\n"
        "async def main():\n"
        f"    store = SqliteStore({str(path)!r})\n"
        "    store.fold_after = 3600.0\n"
        "    await store.open()\n"
        "    gone = TaskRecord(id='gone', action='a', publisher='p', created_at=1.0)\n"
        "    first = _burst('a')\n"
        "    kept = TaskRecord(id='kept', action='a', publisher='p', created_at=1.0)\n"
        "    first.tasks += [gone, kept]\n"
        "    first.events.append(EventRecord(task_id='kept', seq=1, at=1.0, type='init'))\n"
        "    first.meta.append(MetaRecord('queue', 'a/g', {'n': 1}))\n"
        "    await store.apply(first)\n"  # folded: everything carried
        "    ended = TaskRecord(id='gone', action='a', publisher='p', created_at=1.0,\n"
        "                       state='success', ended_at=3.0)\n"
        "    second = _burst('b')\n"
        "    kept.state, kept.ended_at = 'success', 3.0\n"
        "    second.tasks += [ended, kept]\n"
        "    second.events.append(EventRecord(task_id='kept', seq=2, at=3.0, type='success'))\n"
        "    second.events.append(EventRecord(task_id='gone', seq=2, at=3.0, type='success'))\n"
        "    await store.apply(second)\n"  # folded: 'gone' written, the rest carried
        "    third = _burst('c')\n"
        "    third.deleted.append('gone')\n"
        "    third.meta_deleted.append(('queue', 'a/g'))\n"
        "    await store.apply(third)\n"  # folded: 'gone' deleted from the tables
        "    await store.apply(WriteBatch(tasks=[ended]))\n"  # waits for the third fold
        "    await store.apply(WriteBatch(deleted=['gone']))\n"
        "    os._exit(9)  # no close, no last fold\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=Path(__file__).parents[2]
    )
    assert await proc.wait() == 9
    # 'gone' was written, and deleted; 'kept' written, with its two events in its row.
    assert _rows(path, f"SELECT id, {_EVENTS_IN_ROW} FROM tasks") == [("kept", 2)]
    assert _rows(path, "SELECT count(*) FROM events") == [(0,)]
    assert _rows(path, "SELECT count(*) FROM journal") == [(8,)]  # 3 rows, 3 marks, 2 rows
    store = SqliteStore(str(path))
    await store.open()
    try:
        assert await store.get_task("gone") is None
        assert await store.get_events("gone") == []
        assert [e.type for e in await store.get_events("kept")] == ["init", "success"]
        n = FOLD_RECORDS // 2
        assert _rows(path, "SELECT count(*) FROM tasks") == [(3 * n + 1,)]
        assert _rows(path, _WITH_EVENTS) == [(3 * n + 1,)]
        kept = f"SELECT {_EVENTS_IN_ROW} FROM tasks WHERE id = 'kept'"
        assert _rows(path, kept) == [(2,)]  # not appended again from the older rows
        for task_id in ("a00000", "b00001", "c00002"):
            assert await store.get_task(task_id) == _task(task_id)
            assert [e.type for e in await store.get_events(task_id)] == ["init"]
        assert await store.get_meta("queue", "a/g") is None
        assert _rows(path, "SELECT count(*) FROM journal") == [(0,)]
    finally:
        await store.close()


async def _burst_reaches_the_tables(store: SqliteStore, path: Path) -> None:
    """A burst of queued tasks applied to ``store`` (opened here, closed at the end) is, in
    time, all in the tables, with its journal empty."""
    await store.open()
    try:
        await store.apply(_burst("q"))
        n = FOLD_RECORDS // 2
        count = "SELECT count(*) FROM tasks"
        await _until(lambda: _rows(path, count) == [(n,)], "the tasks in the tables")
        assert _rows(path, "SELECT count(*) FROM journal") == [(0,)]
    finally:
        await store.close()


async def test_carried_tasks_reach_the_tables_once_writes_stop(tmp_path: Path) -> None:
    """The tables lag a quiet hub by about ``fold_after``, carried tasks included."""
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 0.2
    await _burst_reaches_the_tables(store, path)


@pytest.mark.parametrize("bound", ["CARRY_BYTES", "CARRY_SECONDS"])
async def test_a_fold_writes_the_oldest_carried_tasks_past_its_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """Carrying keeps journal rows; past CARRY_BYTES of them, or CARRY_SECONDS, the tasks
    they keep are written (the journal and the records in memory stay bounded)."""
    monkeypatch.setattr(sqlite_journal, bound, 0)
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await _burst_reaches_the_tables(store, path)


# The model tests' hypothesis settings: each example runs whole histories on a real file.
_AGAINST_MODEL = settings(
    max_examples=40,
    deadline=None,
    phases=[phase for phase in Phase if phase is not Phase.explain],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_AGAINST_MODEL
@given(ops=operations)
def test_folds_that_carry_tasks_over_match_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops: list[Any]
) -> None:
    """The conformance suite's histories with a carrying fold after every batch, then read
    by a second writer of the file, which replays the journal's rows and marks at its open
    (as after a kill): it answers exactly as the model."""
    monkeypatch.setattr(sqlite, "FOLD_RECORDS", 1)  # every batch makes the store fold
    asyncio.run(_carrying_against_model(tmp_path / uuid.uuid4().hex, ops))


async def _carrying_against_model(folder: Path, ops: list[Any]) -> None:
    path = str(folder / "store.db")
    first = SqliteStore(path, fence=_Fence())  # fenced: no flock, so a second can open
    first.fold_after = 3600.0
    await first.open()
    model = Model()
    try:
        for op in ops:
            if isinstance(op, WriteBatch):
                await first.apply(op)
                model.apply(op)
            else:  # a read: folds everything first
                assert await first.remove_ended_before(*op) == model.remove_ended_before(*op)
        await first.apply(WriteBatch(meta=[MetaRecord("queue", "q", 1)]))  # after the last fold
        second = SqliteStore(path, fence=_Fence())
        await second.open()
        try:
            await check_against_model(second, model)
        finally:
            await second.close()
        await check_against_model(first, model)  # it reads what the second folded
    finally:
        await first.close()


@_AGAINST_MODEL
@given(ops=operations)
def test_events_split_between_rows_and_packs_match_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops: list[Any]
) -> None:
    """As above, with the histories' seqs (0-6) on both sides of ROW_SEQS: some events in
    their task's row, some in packs, events of tasks without a row in packs, written again
    from either side; the store answers exactly as the model, also replayed by a second."""
    monkeypatch.setattr(sqlite, "FOLD_RECORDS", 1)
    monkeypatch.setattr(sqlite_journal, "ROW_SEQS", 3)
    asyncio.run(_carrying_against_model(tmp_path / uuid.uuid4().hex, ops))


def _event(task_id: str, seq: int, type: str = "update") -> EventRecord:
    return EventRecord(task_id=task_id, seq=seq, at=float(seq), type=type)


async def test_a_tasks_events_go_in_its_row_and_late_ones_in_packs(tmp_path: Path) -> None:
    """Schema 8: events up to ROW_SEQS in the task's row, appended fold after fold; later ones
    in a pack per fold (a long history is not rewritten with the row); events of a task with
    no row in a pack, and once it has one, in its row, where they replace the pack's."""
    path = tmp_path / "hub.db"
    last = sqlite_journal.ROW_SEQS
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[_task("t1")], events=[_event("t1", 1, "init")]))
        await store.apply(WriteBatch(events=[_event("t2", 1, "init"), _event("t2", 2)]))
        assert len(await store.get_events("t1")) == 1  # a read folds
        more = [_event("t1", seq) for seq in range(2, last + 3)]
        await store.apply(WriteBatch(tasks=[_task("t1")], events=more))
        assert len(await store.get_events("t1")) == last + 2
        await store.apply(WriteBatch(events=[_event("t1", last + 3), _event("t1", 2, "again")]))
        await store.apply(WriteBatch(tasks=[_task("t2")], events=[_event("t2", 2, "again")]))
        got = await store.get_events("t1")
        assert [e.seq for e in got] == list(range(1, last + 4))
        assert got[1].type == "again"
        assert [(e.seq, e.type) for e in await store.get_events("t2")] == [
            (1, "init"),
            (2, "again"),
        ]
        in_row = f"SELECT id, {_EVENTS_IN_ROW} FROM tasks ORDER BY id"
        assert _rows(path, in_row) == [("t1", last + 1), ("t2", 1)]  # 1..last, 2 again
        packs = "SELECT task_id, json_array_length(records) FROM events ORDER BY pack"
        assert _rows(path, packs) == [("t2", 2), ("t1", 2), ("t1", 1)]
    finally:
        await store.close()
    store = SqliteStore(str(path))  # as they were, and retention removes both
    await store.open()
    try:
        assert [e.seq for e in await store.get_events("t1")] == list(range(1, last + 4))
        await store.apply(WriteBatch(deleted=["t1", "t2"]))
        assert await store.get_events("t1") == await store.get_events("t2") == []
        assert _rows(path, "SELECT count(*) FROM events") == [(0,)]
    finally:
        await store.close()


async def test_a_late_event_carried_over_goes_to_a_pack_when_a_later_fold_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live task's event past ROW_SEQS is carried by one fold and written by a later one
    whose own batches hold no such event: it still goes to a pack, the rest to the row."""
    monkeypatch.setattr(sqlite, "FOLD_RECORDS", 1)  # every batch makes a carrying fold
    path = tmp_path / "hub.db"
    last = sqlite_journal.ROW_SEQS
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await store.open()
    try:
        late = [_event("t1", 1, "init"), _event("t1", last + 1)]
        await store.apply(WriteBatch(tasks=[_task("t1")], events=late))
        await _until(lambda: _rows(path, "SELECT count(*) FROM journal") == [(2,)], "a mark")
        await store.apply(WriteBatch(tasks=[_ended("t1")], events=[_event("t1", 2, "end")]))
        await _until(lambda: _rows(path, "SELECT count(*) FROM journal") == [(0,)], "a fold")
        assert _rows(path, f"SELECT {_EVENTS_IN_ROW} FROM tasks") == [(2,)]
        packs = "SELECT task_id, json_array_length(records) FROM events"
        assert _rows(path, packs) == [("t1", 1)]
        got = await store.get_events("t1")
        assert [(e.seq, e.type) for e in got] == [(1, "init"), (2, "end"), (last + 1, "update")]
    finally:
        await store.close()


async def test_a_task_whose_action_changed_gets_its_events_once(tmp_path: Path) -> None:
    """The fold's upsert leaves a row whose action changed to a second statement; the events
    of the rows the first one wrote are not appended again by it."""
    path = tmp_path / "hub.db"
    store = SqliteStore(str(path))
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[_task("t1"), _task("t2")]))
        assert await store.get_task("t1") == _task("t1")
        moved = msgspec.structs.replace(_task("t2"), action="b")
        events = [_event("t1", 1), _event("t2", 1)]
        await store.apply(WriteBatch(tasks=[_task("t1"), moved], events=events))
        assert await store.get_task("t2") == moved
        assert [t.id for t in await store.list_tasks(action="b")] == ["t2"]
        in_row = f"SELECT id, {_EVENTS_IN_ROW} FROM tasks ORDER BY id"
        assert _rows(path, in_row) == [("t1", 1), ("t2", 1)]
    finally:
        await store.close()


async def test_an_event_seq_that_is_not_an_integer_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "hub.db"))
    await store.open()
    try:
        bad = EventRecord(task_id="t1", seq="2", at=1.0, type="init")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="seq of an event of task 't1' must be an integer"):
            await store.apply(WriteBatch(tasks=[_task("t1")], events=[bad]))
        assert await store.get_task("t1") is None
    finally:
        await store.close()
