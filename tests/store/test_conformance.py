"""One behaviour suite for every store engine: each test runs on each engine in ENGINES."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from taskhub.errors import StoreInUse, StoreUnavailable
from taskhub.records import (
    TASK_STATES,
    TERMINAL_STATES,
    DeliveryRecord,
    EventRecord,
    MetaRecord,
    TaskRecord,
    WriteBatch,
)
from taskhub.store import open_store
from taskhub.store.base import Store
from taskhub.store.redis import RedisStore
from taskhub.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests import redisproc
from tests.store.data.make_sqlite_v3 import FILE as V3_FILE

# A new engine joins the suite by adding its name here and a URL in store_url().
# "redis-cluster" is the same engine on a real 3-primary Redis Cluster with the cluster-aware
# client (redis+cluster://): prefixes (one per test) land on different primaries.
# "redis-pieces" is the Redis engine writing every batch of more than 3 items in pieces (its
# big-batch path: staged, committed, applied a piece at a time; docs/redis.md, "Big batches").
ENGINES = ["memory", "sqlite", "redis", "redis-pieces", "redis-cluster"]
PIECE_ITEMS = 3
# The namespaces a store can have (docs/deployment.md, "Partitions"): (partition, partitions).
# (None, 1) is the layout of a hub of one partition, as before partitions; (3, 4) the last of
# four partitions: a file of its own, keys under a hash tag of their own.
LAYOUTS = {"p1": (None, 1), "p3of4": (3, 4)}


def store_url(engine: str, folder: Path) -> str:
    if engine == "memory":
        return "memory://"
    if engine == "sqlite":
        return f"sqlite:///{folder / 'store.db'}"  # folder is absolute: sqlite:////...
    if engine in ("redis", "redis-pieces"):
        # One server for the session; a prefix per folder keeps tests (and hypothesis
        # examples) apart, and the same folder opens the same data, as with sqlite.
        prefix = "t" + hashlib.sha1(str(folder).encode()).hexdigest()[:16]
        return f"{redisproc.shared().url}?prefix={prefix}"
    if engine == "redis-cluster":
        prefix = "t" + hashlib.sha1(str(folder).encode()).hexdigest()[:16]
        return f"{redisproc.shared_cluster().url}?prefix={prefix}"
    raise AssertionError(f"no URL for engine {engine!r}")


async def make_store(
    engine: str, folder: Path, *, partition: int | None = None, partitions: int = 1
) -> Store:
    store = open_store(store_url(engine, folder), partition=partition, partitions=partitions)
    if engine == "redis-pieces":
        assert isinstance(store, RedisStore)
        store.piece_items = PIECE_ITEMS
    await store.open()
    return store


@pytest.fixture(params=[(e, layout) for e in ENGINES for layout in LAYOUTS], ids="-".join)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    engine, layout = request.param
    partition, partitions = LAYOUTS[layout]
    s = await make_store(engine, tmp_path, partition=partition, partitions=partitions)
    yield s
    await s.close()


def task(task_id: str, **fields: Any) -> TaskRecord:
    fields.setdefault("action", "img.resize")
    fields.setdefault("publisher", "svc-a")
    fields.setdefault("created_at", 1000.0)
    return TaskRecord(id=task_id, **fields)


def ended(task_id: str, ended_at: float, state: str = "success", **fields: Any) -> TaskRecord:
    return task(task_id, state=state, ended_at=ended_at, **fields)


def event(task_id: str, seq: int, type: str = "update", **fields: Any) -> EventRecord:
    return EventRecord(task_id=task_id, seq=seq, at=1000.0 + seq, type=type, **fields)


async def apply(store: Store, *tasks: TaskRecord, events: Any = (), deleted: Any = ()) -> None:
    await store.apply(WriteBatch(tasks=list(tasks), events=list(events), deleted=list(deleted)))


async def all_pages(store: Store, limit: int, **filters: Any) -> list[str]:
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await store.list_tasks(after=after, limit=limit, **filters)
        assert len(page) <= limit
        if not page:
            return seen
        # A page that does not move past `after` would loop forever: fail instead.
        assert after is None or page[0].id > after, f"page after {after!r} starts at {page[0].id!r}"
        seen.extend(t.id for t in page)
        after = page[-1].id


# -- round trips ----------------------------------------------------------------------------


async def test_round_trip_every_field(store: Store) -> None:
    full = TaskRecord(
        id="01J000000000000000000000AA",
        action="img.resize",
        publisher="svc-a",
        created_at=1700000000.125,
        payload={"w": 640, "tags": ["a", None, 1.5, True], "nested": {"deep": [[{}]]}},
        options={"timeout": 30.0, "groups": ["g1", "g2"], "retry": {"max": 3}},
        state="start",
        started_at=1700000001.5,
        ended_at=None,
        result=[1, "two", {"three": 3}],
        error={"reason": "error", "type": "ValueError", "message": "bad"},
        last_update={"progress": 0.5},
        updates=7,
        deliveries=[
            DeliveryRecord(group="g1"),
            DeliveryRecord(
                group="g2",
                state="failed",
                attempt=3,
                tries=2,
                not_before=1700000009.0,
                error={"reason": "lost", "type": "", "message": "worker gone"},
            ),
        ],
        not_before=1700000002.0,
    )
    minimal = task("01J000000000000000000000AB")
    ev_full = EventRecord(
        task_id=full.id, seq=0, at=1.5, type="pickup", group="g1", service="w1", data={"x": [1]}
    )
    ev_min = EventRecord(task_id=full.id, seq=1, at=2.0, type="init")
    await apply(store, full, minimal, events=[ev_full, ev_min])

    got = await store.get_task(full.id)
    assert got == full
    assert got is not full
    assert got.deliveries[1].error == {"reason": "lost", "type": "", "message": "worker gone"}

    got_min = await store.get_task(minimal.id)
    assert got_min == minimal
    assert got_min is not None
    assert got_min.payload is None
    assert got_min.started_at is None and got_min.ended_at is None and got_min.error is None
    assert got_min.options == {} and got_min.deliveries == []
    assert got_min.state == "init" and got_min.updates == 0

    events = await store.get_events(full.id)
    assert events == [ev_full, ev_min]
    assert events[1].group is None and events[1].data is None


async def test_unknown_ids(store: Store) -> None:
    assert await store.get_task("nope") is None
    assert await store.get_events("nope") == []
    assert await store.load_active() == []
    assert await store.list_tasks() == []
    assert await store.remove_ended_before(1e12) == []


async def test_empty_batch_is_a_no_op(store: Store) -> None:
    await store.apply(WriteBatch())
    assert await store.list_tasks() == []


async def test_upsert_replaces_whole_record(store: Store) -> None:
    await apply(store, task("t1", payload={"v": 1}, options={"a": 1}))
    done = task("t1", state="success", ended_at=5.0, result="ok", payload={"v": 2})
    await apply(store, done)
    got = await store.get_task("t1")
    assert got == done
    assert got is not None and got.options == {}  # replaced, not merged
    assert [t.id for t in await store.list_tasks()] == ["t1"]


async def test_same_id_twice_in_one_batch_last_wins(store: Store) -> None:
    await apply(store, task("t1", payload=1), task("t1", payload=2))
    got = await store.get_task("t1")
    assert got is not None and got.payload == 2


# -- events ---------------------------------------------------------------------------------


async def test_events_in_seq_order_and_appended_across_batches(store: Store) -> None:
    await apply(store, task("t1"), events=[event("t1", 2), event("t1", 0, "init")])
    await apply(store, events=[event("t1", 3), event("t1", 1, "offer")])
    await apply(store, events=[event("t2", 0, "init")])
    assert [e.seq for e in await store.get_events("t1")] == [0, 1, 2, 3]
    assert [e.type for e in await store.get_events("t1")] == ["init", "offer", "update", "update"]
    assert [e.seq for e in await store.get_events("t2")] == [0]


async def test_replaying_a_batch_is_harmless(store: Store) -> None:
    batch = WriteBatch(tasks=[task("t1")], events=[event("t1", 0, "init"), event("t1", 1)])
    await store.apply(batch)
    await store.apply(batch)
    assert [e.seq for e in await store.get_events("t1")] == [0, 1]
    assert [t.id for t in await store.list_tasks()] == ["t1"]


async def test_an_event_written_again_replaces_only_its_own_seq(store: Store) -> None:
    """An event is replaced by (task, seq), also when the first one was written long before
    (a read in between: the sqlite engine has folded it into the tables by then)."""
    await apply(store, task("t1"), events=[event("t1", s) for s in range(4)])
    assert [e.seq for e in await store.get_events("t1")] == [0, 1, 2, 3]
    await apply(store, events=[event("t1", 1, "offer"), event("t1", 4)])
    await apply(store, events=[event("t1", 3, "success")])
    got = await store.get_events("t1")
    assert [(e.seq, e.type) for e in got] == [
        (0, "update"),
        (1, "offer"),
        (2, "update"),
        (3, "success"),
        (4, "update"),
    ]
    await apply(store, events=[event("t1", 1, "drop")])  # again, after another read
    assert [e.type for e in await store.get_events("t1")][1] == "drop"


# -- load_active ----------------------------------------------------------------------------


async def test_load_active_skips_terminal_and_orders_by_id(store: Store) -> None:
    await apply(
        store,
        task("t5", state="start"),
        ended("t2", 10.0, "success"),
        task("t1", state="init"),
        ended("t4", 10.0, "fail"),
        ended("t3", 10.0, "end"),
        task("t0", state="start"),
    )
    await apply(store, task("t6"))
    active = await store.load_active()
    assert [t.id for t in active] == ["t0", "t1", "t5", "t6"]
    assert all(t.state not in TERMINAL_STATES for t in active)
    # A task that reaches a terminal state leaves the active set.
    await apply(store, ended("t0", 11.0, "success"))
    assert [t.id for t in await store.load_active()] == ["t1", "t5", "t6"]


# -- list_tasks -----------------------------------------------------------------------------


async def _fill_for_listing(store: Store) -> list[TaskRecord]:
    tasks = []
    for i in range(24):
        state = TASK_STATES[i % len(TASK_STATES)]
        action = ["a.one", "a.two", "b.three"][i % 3]
        tasks.append(task(f"t{i:03d}", action=action, state=state))
    # Applied in scrambled order over several batches: the order must come from the ids.
    scrambled = tasks[::-1][::2] + tasks[::-1][1::2]
    await apply(store, *scrambled[:10])
    await apply(store, *scrambled[10:])
    return tasks


async def test_list_tasks_all_ordered_by_id(store: Store) -> None:
    tasks = await _fill_for_listing(store)
    assert await store.list_tasks(limit=1000) == tasks
    assert [t.id for t in await store.list_tasks()] == [t.id for t in tasks]  # default 100


async def test_list_tasks_filters(store: Store) -> None:
    tasks = await _fill_for_listing(store)
    by_action = await store.list_tasks(action="a.two", limit=1000)
    assert by_action == [t for t in tasks if t.action == "a.two"]
    by_state = await store.list_tasks(state="fail", limit=1000)
    assert by_state == [t for t in tasks if t.state == "fail"]
    both = await store.list_tasks(action="a.one", state="start", limit=1000)
    assert both == [t for t in tasks if t.action == "a.one" and t.state == "start"]
    assert both  # the fixture data does hold such tasks
    assert await store.list_tasks(action="missing") == []
    assert await store.list_tasks(action="a.one", state="missing") == []


@pytest.mark.parametrize("limit", [1, 3, 5, 24, 100])
async def test_list_tasks_paging_covers_everything_once(store: Store, limit: int) -> None:
    tasks = await _fill_for_listing(store)
    assert await all_pages(store, limit) == [t.id for t in tasks]
    want = [t.id for t in tasks if t.action == "a.one"]
    assert await all_pages(store, limit, action="a.one") == want
    want = [t.id for t in tasks if t.action == "b.three" and t.state == "init"]
    assert await all_pages(store, limit, action="b.three", state="init") == want


async def test_list_tasks_after_and_limit_edges(store: Store) -> None:
    tasks = await _fill_for_listing(store)
    # `after` need not be a stored id; it is a position.
    got = await store.list_tasks(after="t010x", limit=2)
    assert [t.id for t in got] == ["t011", "t012"]
    assert await store.list_tasks(after=tasks[-1].id) == []
    assert await store.list_tasks(limit=0) == []
    with pytest.raises(ValueError):
        await store.list_tasks(limit=-1)


# -- remove_ended_before --------------------------------------------------------------------


async def test_remove_ended_before(store: Store) -> None:
    await apply(
        store,
        ended("old-success", 10.0, "success"),
        ended("old-fail", 20.0, "fail"),
        ended("old-end", 30.0, "end"),
        ended("at-cutoff", 50.0, "success"),  # cutoff is strict
        ended("recent", 60.0, "success"),
        task("live-with-ended-at", state="start", ended_at=5.0),  # not terminal: kept
        task("terminal-no-ended-at", state="fail"),  # no time to judge it by: kept
        task("live"),
        events=[event("old-success", 0, "init"), event("old-success", 1, "success")],
    )
    await apply(store, events=[event("recent", 0, "init")])
    removed = await store.remove_ended_before(50.0)
    assert sorted(removed) == ["old-end", "old-fail", "old-success"]
    for task_id in removed:
        assert await store.get_task(task_id) is None
        assert await store.get_events(task_id) == []
    left = [t.id for t in await store.list_tasks()]
    assert left == ["at-cutoff", "live", "live-with-ended-at", "recent", "terminal-no-ended-at"]
    assert [e.seq for e in await store.get_events("recent")] == [0]
    assert await store.remove_ended_before(50.0) == []


async def test_remove_ended_before_respects_limit_oldest_first(store: Store) -> None:
    await apply(store, *(ended(f"t{i:02d}", 100.0 - i) for i in range(10)))
    first = await store.remove_ended_before(1000.0, limit=4)
    assert first == ["t09", "t08", "t07", "t06"]  # smallest ended_at first
    assert await store.remove_ended_before(1000.0, limit=0) == []
    rest = await store.remove_ended_before(1000.0, limit=100)
    assert sorted(first + rest) == [f"t{i:02d}" for i in range(10)]
    assert len(set(first + rest)) == 10
    assert await store.list_tasks() == []
    with pytest.raises(ValueError):
        await store.remove_ended_before(1000.0, limit=-1)


# -- deletes --------------------------------------------------------------------------------


async def test_deleted_ids_remove_tasks_and_their_events(store: Store) -> None:
    await apply(
        store,
        task("t1"),
        task("t2"),
        events=[event("t1", 0), event("t1", 1), event("t2", 0)],
    )
    await apply(store, deleted=["t1", "never-existed"])
    assert await store.get_task("t1") is None
    assert await store.get_events("t1") == []
    assert await store.get_task("t2") is not None
    assert [e.seq for e in await store.get_events("t2")] == [0]
    assert [t.id for t in await store.list_tasks()] == ["t2"]


async def test_deletes_apply_after_upserts_and_events_of_the_same_batch(store: Store) -> None:
    await apply(store, task("t1"), events=[event("t1", 0)], deleted=["t1"])
    assert await store.get_task("t1") is None
    assert await store.get_events("t1") == []


# -- copies ---------------------------------------------------------------------------------


async def test_store_keeps_copies(store: Store) -> None:
    rec = task(
        "t1",
        payload={"list": [1, 2]},
        options={"o": 1},
        deliveries=[DeliveryRecord(group="g1")],
    )
    ev = event("t1", 0, data={"k": "v"})
    await store.apply(WriteBatch(tasks=[rec], events=[ev]))
    snapshot = msgspec.structs.replace(rec, payload={"list": [1, 2]}, options={"o": 1})
    snapshot.deliveries = [DeliveryRecord(group="g1")]

    # The caller goes on changing its live records after apply returned...
    rec.payload["list"].append(3)
    rec.options["new"] = True
    rec.state = "start"
    rec.deliveries[0].state = "offered"
    rec.deliveries.append(DeliveryRecord(group="g2"))
    ev.data["k"] = "changed"
    assert await store.get_task("t1") == snapshot
    assert await store.get_events("t1") == [event("t1", 0, data={"k": "v"})]

    # ...or the records it read back.
    got = await store.get_task("t1")
    assert got is not None
    got.payload["list"].clear()
    got.deliveries[0].attempt = 99
    (await store.load_active())[0].options["x"] = 1
    (await store.list_tasks())[0].deliveries.clear()
    (await store.get_events("t1"))[0].data["k"] = "again"
    assert await store.get_task("t1") == snapshot
    assert await store.get_events("t1") == [event("t1", 0, data={"k": "v"})]


async def test_payloads_and_results_kept_as_raw_json_read_back_as_values(store: Store) -> None:
    # The hub keeps a task's payload and result as the client's JSON (msgspec.Raw): an engine
    # must store them as JSON values (an encoding that copies Raw's bytes into another format,
    # as msgspec's MessagePack does, would store broken records).
    payload = msgspec.Raw(b'{"id":7,"tags":["a","b"],"n":1.5}')
    rec = task("t1", state="success", ended_at=3.0, payload=payload, result=msgspec.Raw(b"[1,2]"))
    ev = event("t1", 0, data=msgspec.Raw(b'{"ok":true}'))
    await store.apply(WriteBatch(tasks=[rec], events=[ev], sealed=True))
    got = await store.get_task("t1")
    assert got is not None
    assert (got.payload, got.result) == ({"id": 7, "tags": ["a", "b"], "n": 1.5}, [1, 2])
    assert [e.data for e in await store.get_events("t1")] == [{"ok": True}]
    assert [t.payload for t in await store.list_tasks(state="success")] == [got.payload]


async def test_a_sealed_batch_reads_back_like_any_other(store: Store) -> None:
    # Sealed: the caller never changes these records again (the hub's batches), so the memory
    # engine keeps them as they are. What readers get is still a normalized copy each time.
    rec = task("t1", payload={"pair": (1, 2)}, deliveries=[DeliveryRecord(group="g1")])
    live = task("t2", state="start", options={"timeout": 5.0})
    ev = event("t1", 0, data=(3, 4))
    await store.apply(WriteBatch(tasks=[rec, live], events=[ev], sealed=True))
    want = task("t1", payload={"pair": [1, 2]}, deliveries=[DeliveryRecord(group="g1")])
    for _ in range(2):  # the first read and a later one
        got = await store.get_task("t1")
        assert got == want
        assert got is not None and got is not rec
        got.payload["pair"].append(3)
        got.deliveries[0].state = "offered"
        [got_ev] = await store.get_events("t1")
        assert got_ev == event("t1", 0, data=[3, 4])
        got_ev.data.append(5)
    assert [r.id for r in await store.load_active()] == ["t1", "t2"]
    (await store.list_tasks(state="start"))[0].options["timeout"] = 1.0
    assert await store.get_task("t2") == live


async def test_apply_snapshots_the_batch_when_called(store: Store) -> None:
    rec = task("t1", payload="before")
    pending = asyncio.ensure_future(store.apply(WriteBatch(tasks=[rec])))
    await asyncio.sleep(0)  # let apply start
    rec.payload = "after"  # the hub mutates live state while the write is in flight
    await pending
    got = await store.get_task("t1")
    assert got is not None and got.payload == "before"


# -- values ---------------------------------------------------------------------------------


async def test_unicode_everywhere(store: Store) -> None:
    ids = ["tâche-1", "タスク", "z", "Ω", "a", "😀-emoji", "A"]
    for i, task_id in enumerate(ids):
        await apply(
            store,
            task(
                task_id,
                action="ação.redimensionar",
                publisher="сервис",
                payload={"текст": "naïve ☃ 𝄞", "ключ": ["日本語", "\u0000nul", "\u200b"]},
                error={"reason": "error", "type": "Ошибка", "message": "💥"},
            ),
            events=[event(task_id, i, data="données ✓")],
        )
    listed = [t.id for t in await store.list_tasks(action="ação.redimensionar")]
    assert listed == sorted(ids)  # code point order, the same as UTF-8 byte order
    got = await store.get_task("タスク")
    assert got is not None
    assert got.payload["ключ"] == ["日本語", "\u0000nul", "\u200b"]
    assert got.error is not None and got.error["message"] == "💥"
    assert [e.data for e in await store.get_events("😀-emoji")] == ["données ✓"]
    assert await all_pages(store, 2) == sorted(ids)


async def test_large_payloads(store: Store) -> None:
    big_text = "x" * 1_000_000 + "✓"
    big_list = [{"i": i, "s": "y" * 90} for i in range(10_000)]  # about 1 MB encoded
    await apply(
        store,
        task("big", payload=big_text, result=big_list),
        events=[event("big", 0, data=big_text)],
    )
    got = await store.get_task("big")
    assert got is not None
    assert got.payload == big_text
    assert got.result == big_list
    assert (await store.get_events("big"))[0].data == big_text


async def test_unencodable_batch_raises_and_stores_nothing(store: Store) -> None:
    await apply(store, task("kept", payload=1))
    bad = WriteBatch(
        tasks=[task("t1"), task("kept", payload=2)],
        events=[event("t1", 0), event("t1", 1, data=object())],
        deleted=["kept"],
    )
    with pytest.raises((TypeError, msgspec.EncodeError)):
        await store.apply(bad)
    assert await store.get_task("t1") is None
    assert await store.get_events("t1") == []
    kept = await store.get_task("kept")
    assert kept is not None and kept.payload == 1


async def test_concurrent_applies_all_land(store: Store) -> None:
    await asyncio.gather(
        *(
            store.apply(WriteBatch(tasks=[task(f"t{i:03d}")], events=[event(f"t{i:03d}", 0)]))
            for i in range(50)
        )
    )
    assert [t.id for t in await store.list_tasks()] == [f"t{i:03d}" for i in range(50)]


async def test_closed_store_refuses_calls(store: Store) -> None:
    await apply(store, task("t1"))
    await store.close()
    await store.close()  # closing twice is fine
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get_task("t1")
    with pytest.raises(StoreUnavailable, match="closed"):
        await apply(store, task("t2"))
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.list_tasks()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.apply(WriteBatch())


@pytest.mark.parametrize("engine", ENGINES)
async def test_store_not_opened_refuses_calls(engine: str, tmp_path: Path) -> None:
    store = open_store(store_url(engine, tmp_path))
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.get_task("t1")
    await store.close()


# -- sqlite only ----------------------------------------------------------------------------


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


async def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    first = SqliteStore.from_url(sqlite_url(tmp_path))
    await first.open()
    await apply(
        first,
        task("t1", payload={"a": [1]}),
        ended("t2", 5.0),
        events=[event("t1", 0), event("t1", 1)],
    )
    await first.close()

    second = SqliteStore.from_url(sqlite_url(tmp_path))
    await second.open()
    try:
        got = await second.get_task("t1")
        assert got == task("t1", payload={"a": [1]})
        assert [e.seq for e in await second.get_events("t1")] == [0, 1]
        assert [t.id for t in await second.load_active()] == ["t1"]
        assert await second.remove_ended_before(10.0) == ["t2"]
    finally:
        await second.close()


async def test_sqlite_batch_is_one_transaction(tmp_path: Path) -> None:
    """A batch is all or nothing: a record SQLite's tables would refuse, anywhere in it, is
    refused before anything is written; and a fold of the journal into the tables that fails
    half way leaves the tables as they were and the journal whole, to be folded later."""
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    await store.open()
    try:
        await apply(store, task("kept", payload=1), events=[event("kept", 0)])
        bad = WriteBatch(
            tasks=[task("t1"), task("t2", action=None), task("kept", payload=2)],
            events=[event("t1", 0)],
        )
        with pytest.raises(TypeError, match="action of task 't2' must be a string"):
            await store.apply(bad)
        assert await store.get_task("t1") is None
        assert await store.get_events("t1") == []
        kept = await store.get_task("kept")
        assert kept is not None and kept.payload == 1

        await apply(store, task("t3"), task("t4"), events=[event("t3", 0)], deleted=["kept"])
        with sqlite3.connect(tmp_path / "hub.db") as raw:
            # The fold writes the task rows (their events in them) one by one: this fails
            # the second.
            raw.execute(
                "CREATE TRIGGER half_way BEFORE INSERT ON tasks WHEN NEW.id = 't4' BEGIN"
                " SELECT * FROM no_such_table; END"
            )
        with pytest.raises(StoreUnavailable, match="no_such_table"):
            await store.get_task("t3")
        with sqlite3.connect(tmp_path / "hub.db") as raw:
            assert raw.execute("SELECT id FROM tasks").fetchall() == [("kept",)]
            assert raw.execute("SELECT count(*) FROM journal").fetchone() == (1,)
            raw.execute("DROP TRIGGER half_way")
        assert await store.get_task("t3") == task("t3")
        assert await store.get_events("t3") == [event("t3", 0)]
        assert await store.get_task("kept") is None
        # The connection is usable after the rollback.
        await apply(store, task("t5"))
        assert [t.id for t in await store.list_tasks()] == ["t3", "t4", "t5"]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "hub.db") as raw:  # close folds: the tables hold it all
        assert raw.execute("SELECT id FROM tasks ORDER BY id").fetchall() == [
            ("t3",),
            ("t4",),
            ("t5",),
        ]
        assert raw.execute("SELECT count(*) FROM journal").fetchone() == (0,)


async def test_sqlite_writes_small_batches_at_once_and_big_ones_on_its_thread(
    tmp_path: Path,
) -> None:
    """A one-task batch made while the store's thread is idle is written on the caller's
    thread (no thread hand-off for a sequential task's commit); a bigger one on the store's
    thread, so the event loop goes on meanwhile. Both are committed when apply returns."""
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    await store.open()
    threads: set[int] = set()
    assert store._conn is not None
    store._conn.set_trace_callback(lambda sql: threads.add(threading.get_ident()))
    try:
        await apply(store, task("small"), events=[event("small", 0), event("small", 1)])
        assert threads == {threading.get_ident()}
        with sqlite3.connect(tmp_path / "hub.db") as raw:  # committed, seen by another reader
            assert raw.execute("SELECT count(*) FROM journal").fetchone() == (1,)
        threads.clear()
        await apply(store, task("big1"), task("big2"), events=[event("big1", 0)])
        assert threads and threading.get_ident() not in threads
        assert [t.id for t in await store.list_tasks()] == ["big1", "big2", "small"]
    finally:
        await store.close()


async def test_sqlite_checkpoints_keep_the_wal_bounded(tmp_path: Path) -> None:
    """Writes on the caller's thread run without SQLite's automatic checkpoint (it would run
    on the event loop); after a run of them the next small write goes to the store's thread,
    where SQLite checkpoints. The WAL stays near SQLite's own size however the writes come."""
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    await store.open()
    wal = tmp_path / "hub.db-wal"
    try:
        for i in range(2000):  # one-task commits, as sequential tasks make them
            await apply(store, task(f"s{i:05d}"), events=[event(f"s{i:05d}", 0)])
        for i in range(40):  # and big ones, as a burst makes them
            batch = [task(f"b{i:03d}{j:03d}", payload="x" * 200) for j in range(200)]
            await apply(store, *batch, events=[event(t.id, 0) for t in batch])
        # Without checkpoints: ~2,000 commits of 3+ pages each, and 8,000 rows of ~300 bytes,
        # over 25 MB of WAL.
        assert 0 < wal.stat().st_size < 8 * 1024 * 1024
        assert len(await all_pages(store, 1000)) == 2000 + 40 * 200
    finally:
        await store.close()


async def test_sqlite_schema_and_pragmas(tmp_path: Path) -> None:
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    await store.open()
    await apply(store, task("t1"))
    assert store._conn is not None
    # Per connection, whatever the build's default (Debian's is ON): 2 is FAST.
    assert store._conn.execute("PRAGMA secure_delete").fetchone()[0] == 2
    await store.close()
    raw = sqlite3.connect(tmp_path / "hub.db")
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 16384  # a new file's
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tasks", "events"} <= tables
        row = raw.execute("SELECT id, action, state, created_at, ended_at FROM tasks").fetchone()
        assert row == ("t1", "img.resize", "init", 1000.0, None)
    finally:
        raw.close()


async def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "hub.db")
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    with pytest.raises(StoreUnavailable, match="schema version"):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.get_task("t1")
    await store.close()


async def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "hub.db").write_bytes(b"this is not sqlite" * 100)
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    with pytest.raises(StoreUnavailable, match=r"hub\.db"):
        await store.open()


async def test_sqlite_file_serves_one_hub_at_a_time(tmp_path: Path) -> None:
    """A second store on the same file (another hub) is refused, naming why, until the first
    closes or its process dies; the sqlite3 shell can still read it meanwhile."""
    first = SqliteStore.from_url(sqlite_url(tmp_path))
    await first.open()
    await apply(first, task("t1"))
    second = SqliteStore.from_url(sqlite_url(tmp_path))
    with pytest.raises(StoreInUse, match="in use by another hub"):
        await second.open()
    assert await first.get_task("t1") is not None  # a read folds the journal into the tables
    with sqlite3.connect(tmp_path / "hub.db") as raw:
        assert raw.execute("SELECT id FROM tasks").fetchall() == [("t1",)]
    await first.close()
    third = SqliteStore.from_url(sqlite_url(tmp_path))
    await third.open()
    assert (await third.get_task("t1")) is not None
    await third.close()
    # A hub killed with SIGKILL leaves no lock behind: the kernel drops it with the process.
    code = (
        "import asyncio, os, sys\n"
        "from taskhub.store.sqlite import SqliteStore\n"
        "async def main():\n"
        f"    await SqliteStore.from_url({sqlite_url(tmp_path)!r}).open()\n"
        "    print('open', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"open\n"
    with pytest.raises(StoreInUse, match="in use by another hub"):
        await SqliteStore.from_url(sqlite_url(tmp_path)).open()
    proc.kill()
    await proc.wait()
    fourth = SqliteStore.from_url(sqlite_url(tmp_path))
    await fourth.open()
    await fourth.close()


async def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SqliteStore.from_url("sqlite:///data/sub/rel.db")
    assert relative.path == "data/sub/rel.db"
    absolute = SqliteStore.from_url(f"sqlite:///{tmp_path}/abs/hub.db")
    assert absolute.path == f"{tmp_path}/abs/hub.db"
    in_memory = SqliteStore.from_url("sqlite://:memory:")
    assert in_memory.path == ":memory:"
    for store in (relative, absolute, in_memory):
        await store.open()  # parent folders are created
        await apply(store, task("t1"))
        assert await store.get_task("t1") is not None
        await store.close()
    assert (tmp_path / "data" / "sub" / "rel.db").is_file()
    assert (tmp_path / "abs" / "hub.db").is_file()
    for bad in [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "postgres:///x",
        "sqlite:///x?a=1",
    ]:
        with pytest.raises(ValueError):
            SqliteStore.from_url(bad)


# -- model-based property test --------------------------------------------------------------

IDS = ["a", "b", "c", "d", "e", "é", "日本", "Z"]
ACTIONS = ["act.one", "act.two", "ação"]
TIMES = [1.0, 2.0, 3.0]  # few values, so cutoffs and ties are hit

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
error_dicts = st.none() | st.fixed_dictionaries(
    {"reason": st.sampled_from(["error", "timeout"]), "type": st.text(max_size=5)}
)
deliveries = st.builds(
    DeliveryRecord,
    group=st.sampled_from(["g1", "g2"]),
    state=st.sampled_from(["pending", "offered", "started", "done"]),
    attempt=st.integers(0, 5),
    tries=st.integers(0, 5),
    not_before=st.floats(0, 1e10),
    error=error_dicts,
)
tasks = st.builds(
    TaskRecord,
    id=st.sampled_from(IDS),
    action=st.sampled_from(ACTIONS),
    publisher=st.text(max_size=5),
    created_at=st.floats(0, 1e10),
    payload=json_values,
    options=st.dictionaries(st.text(max_size=4), json_values, max_size=2),
    state=st.sampled_from(TASK_STATES),
    started_at=st.none() | st.floats(0, 1e10),
    ended_at=st.none() | st.sampled_from(TIMES),
    result=json_values,
    error=error_dicts,
    last_update=json_values,
    updates=st.integers(0, 100),
    deliveries=st.lists(deliveries, max_size=2),
    not_before=st.floats(0, 1e10),
)
events = st.builds(
    EventRecord,
    task_id=st.sampled_from(IDS),
    seq=st.integers(0, 6),
    at=st.floats(0, 1e10),
    type=st.sampled_from(["init", "offer", "update", "success"]),
    group=st.none() | st.sampled_from(["g1", "g2"]),
    service=st.none() | st.text(max_size=4),
    data=json_values,
)
batches = st.builds(
    WriteBatch,
    tasks=st.lists(tasks, max_size=5),
    events=st.lists(events, max_size=4),
    deleted=st.lists(st.sampled_from(IDS), max_size=2),
)
removals = st.tuples(st.sampled_from([*TIMES, 9.0]), st.integers(0, 3))
operations = st.lists(st.one_of(batches, removals), min_size=1, max_size=8)


class Model:
    """What any engine must answer, in the simplest terms."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.events: dict[str, dict[int, EventRecord]] = {}

    def apply(self, batch: WriteBatch) -> None:
        for t in batch.tasks:
            self.tasks[t.id] = t
        for e in batch.events:
            self.events.setdefault(e.task_id, {})[e.seq] = e
        for task_id in batch.deleted:
            self.tasks.pop(task_id, None)
            self.events.pop(task_id, None)

    def remove_ended_before(self, at: float, limit: int) -> list[str]:
        old = sorted(
            (t.ended_at, t.id)
            for t in self.tasks.values()
            if t.state in TERMINAL_STATES and t.ended_at is not None and t.ended_at < at
        )
        removed = [task_id for _, task_id in old[:limit]]
        for task_id in removed:
            del self.tasks[task_id]
            self.events.pop(task_id, None)
        return removed


async def check_against_model(store: Store, model: Model) -> None:
    for task_id in IDS:
        assert await store.get_task(task_id) == model.tasks.get(task_id)
        by_seq = model.events.get(task_id, {})
        assert await store.get_events(task_id) == [by_seq[s] for s in sorted(by_seq)]
    ordered = [model.tasks[i] for i in sorted(model.tasks)]
    assert await store.load_active() == [t for t in ordered if t.state not in TERMINAL_STATES]
    for action in [None, *ACTIONS]:
        for state in [None, *TASK_STATES]:
            want = [
                t.id
                for t in ordered
                if (action is None or t.action == action) and (state is None or t.state == state)
            ]
            assert await all_pages(store, 2, action=action, state=state) == want
    assert await store.list_tasks(limit=len(IDS)) == ordered


async def run_against_model(engine: str, layout: str, folder: Path, ops: list[Any]) -> None:
    partition, partitions = LAYOUTS[layout]
    store = await make_store(engine, folder, partition=partition, partitions=partitions)
    model = Model()
    try:
        for op in ops:
            if isinstance(op, WriteBatch):
                await store.apply(op)
                model.apply(op)
            else:
                at, limit = op
                got = await store.remove_ended_before(at, limit)
                assert got == model.remove_ended_before(at, limit)
        # Checked once at the end: every answer depends on the whole history anyway, and
        # hypothesis shrinks a failure to the shortest history.
        await check_against_model(store, model)
    finally:
        await store.close()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("engine", ENGINES)
@settings(
    max_examples=30,
    deadline=None,
    # The explain phase reruns a failure a thousand times to annotate it: a minute, no news.
    phases=[phase for phase in Phase if phase is not Phase.explain],
    # tmp_path is shared by the examples; each one works in a folder of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_engine_matches_model(engine: str, layout: str, tmp_path: Path, ops: list[Any]) -> None:
    # The model keeps the generated records themselves: nothing mutates them afterwards.
    asyncio.run(run_against_model(engine, layout, tmp_path / uuid.uuid4().hex, ops))


# --- metadata (schedules, durable queues, dead letters) and archiving reads ---------------------
def put_meta(kind: str, key: str, value: Any) -> MetaRecord:
    return MetaRecord(kind, key, value)


async def test_meta_put_list_get_delete(store: Store) -> None:
    assert await store.list_meta("schedule") == {}
    assert await store.get_meta("schedule", "nope") is None
    await store.apply(
        WriteBatch(
            meta=[
                put_meta("schedule", "b", {"cron": "* * * * *", "n": [1, 2]}),
                put_meta("schedule", "a", {"cron": "0 * * * *"}),
                put_meta("queue", "email:send g", {"action": "email:send", "group": "g"}),
            ]
        )
    )
    assert await store.list_meta("schedule") == {
        "a": {"cron": "0 * * * *"},
        "b": {"cron": "* * * * *", "n": [1, 2]},
    }
    assert list(await store.list_meta("schedule")) == ["a", "b"]  # ordered by key
    assert await store.get_meta("queue", "email:send g") == {"action": "email:send", "group": "g"}
    await store.apply(WriteBatch(meta=[put_meta("schedule", "a", {"v": 2})]))  # upsert
    assert await store.get_meta("schedule", "a") == {"v": 2}
    await store.apply(WriteBatch(meta_deleted=[("schedule", "a"), ("schedule", "missing")]))
    assert list(await store.list_meta("schedule")) == ["b"]
    assert await store.list_meta("dead") == {}


async def test_meta_commits_with_task_writes_all_or_nothing(store: Store) -> None:
    bad = task("t1", payload={"x": object()})  # unencodable: the whole batch fails
    with pytest.raises(Exception):  # noqa: B017 - engines raise their codec's error
        await store.apply(WriteBatch(tasks=[bad], meta=[put_meta("dead", "t1", {"id": "t1"})]))
    assert await store.list_meta("dead") == {}
    await store.apply(WriteBatch(tasks=[task("t1")], meta=[put_meta("dead", "t1", 1)]))
    assert await store.get_meta("dead", "t1") == 1
    assert await store.get_task("t1") is not None


async def test_meta_delete_after_put_in_one_batch_deletes(store: Store) -> None:
    await store.apply(WriteBatch(meta=[put_meta("k", "x", 1)], meta_deleted=[("k", "x")]))
    assert await store.get_meta("k", "x") is None


async def test_meta_values_and_keys_unicode(store: Store) -> None:
    await store.apply(WriteBatch(meta=[put_meta("schedule", "ñ/日本:x", {"p": "ü" * 1000})]))
    assert await store.list_meta("schedule") == {"ñ/日本:x": {"p": "ü" * 1000}}


async def test_list_ended_before_matches_remove_order(store: Store) -> None:
    await apply(
        store,
        ended("t3", 30.0),
        ended("t1", 10.0, state="fail"),
        ended("t2", 10.0, state="end"),
        ended("t4", 99.0),
        task("t5"),
    )
    listed = await store.list_ended_before(50.0, limit=2)
    assert [r.id for r in listed] == ["t1", "t2"]
    assert listed[0].state == "fail"
    assert [r.id for r in await store.list_ended_before(50.0)] == ["t1", "t2", "t3"]
    assert await store.remove_ended_before(50.0, limit=2) == ["t1", "t2"]  # nothing consumed
    assert [r.id for r in await store.list_ended_before(50.0)] == ["t3"]


async def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "hub.db")
    raw.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, action TEXT NOT NULL, state TEXT NOT NULL,"
        " created_at REAL NOT NULL, ended_at REAL, record BLOB NOT NULL)"
    )
    raw.execute(
        "CREATE TABLE events (task_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,"
        " record BLOB NOT NULL, PRIMARY KEY (task_id, seq))"
    )
    record = msgspec.json.encode(task("old"))
    raw.execute(
        "INSERT INTO tasks VALUES ('old', 'img.resize', 'init', 1000.0, NULL, ?)", (record,)
    )
    raw.execute("PRAGMA user_version=1")
    raw.commit()
    raw.close()
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    await store.open()
    try:
        assert [r.id for r in await store.load_active()] == ["old"]
        await store.apply(WriteBatch(meta=[put_meta("queue", "q", {"a": 1})]))
        assert await store.list_meta("queue") == {"q": {"a": 1}}
        assert await store.list_ended_before(1e12) == []
    finally:
        await store.close()
    raw = sqlite3.connect(tmp_path / "hub.db")
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8
    raw.close()


async def test_sqlite_migrates_a_version_2_file_off_its_live_task_index(tmp_path: Path) -> None:
    """Version 3 drops the partial index of live tasks: recovery reads them through
    tasks_state (a range per live state), and no write keeps a second copy of them."""
    path = tmp_path / "hub.db"
    shutil.copy(V3_FILE, path)  # version 3 (t1 started; t0, t4 in init; t2, t3 ended)
    raw = sqlite3.connect(path)  # as version 2 left a file
    raw.execute(
        "CREATE INDEX tasks_active ON tasks(id) WHERE state NOT IN ('end','fail','success')"
    )
    raw.execute("PRAGMA user_version=2")
    raw.commit()
    raw.close()
    store = SqliteStore.from_url(sqlite_url(tmp_path))
    await store.open()
    try:
        assert [r.id for r in await store.load_active()] == ["t0", "t1", "t4"]
    finally:
        await store.close()
    raw = sqlite3.connect(path)
    try:
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "tasks_active" not in indexes and "tasks_state" in indexes
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


async def test_memory_retention_index_skips_rewritten_and_deleted_tasks(tmp_path: Path) -> None:
    store = await make_store("memory", tmp_path)
    await apply(store, ended("a", 10.0), ended("b", 20.0), ended("c", 30.0))
    await apply(store, deleted=["a"])
    await apply(store, ended("b", 40.0))  # ended again later: its old entry is stale
    assert await store.remove_ended_before(35.0) == ["c"]
    assert await store.remove_ended_before(50.0) == ["b"]
    await store.close()
