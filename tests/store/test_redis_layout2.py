"""A Redis store written by the engine's layout 2 (each event in a hash field named by its seq)
opens and serves with today's engine (layout 3: a batch's events of a task in one field g<n>,
store/redis/keys.py), and a big batch a layout-2 leader committed is finished by a new one.

The layout-2 store is written by layout 2's own batch script (tests/store/redis_layout2/, the
files as they were), with the arguments that version's ``batches.batch_args`` made.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from taskhub.records import TERMINAL_STATES, EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store.redis import RedisStore
from taskhub.store.redis.keys import TERMINAL_ORDER
from tests.redisproc import RedisProcess

LAYOUT2 = Path(__file__).parent / "redis_layout2"
LAYOUT2_APPLY = "".join(
    (LAYOUT2 / f"{part}.lua").read_text() for part in ("args", "common", "apply")
)


def task(task_id: str, state: str, **fields: Any) -> TaskRecord:
    return TaskRecord(
        id=task_id, action="img.resize", publisher="svc-a", created_at=1000.0, state=state, **fields
    )


def event(task_id: str, seq: int, kind: str = "update") -> EventRecord:
    return EventRecord(task_id=task_id, seq=seq, at=1.0 + seq, type=kind)


def layout2_args(batch: WriteBatch, head: list[Any]) -> list[Any]:
    """``batch`` as layout 2's ``batch_args`` made apply.lua's arguments after ``head``: a
    MessagePack header with each event's seq, then a value per record and per event."""
    encode = msgspec.json.encode
    events: dict[str, list[EventRecord]] = {}
    for e in batch.events:
        events.setdefault(e.task_id, []).append(e)
    fields: list[Any] = [len(batch.tasks)]
    values: list[Any] = [*head, b""]
    for t in batch.tasks:
        at = t.ended_at
        ended = repr(float(at)) if at is not None and t.state in TERMINAL_STATES else ""
        evs = events.pop(t.id, [])
        fields += (t.id, t.state, t.action, ended, len(evs))
        values.append(encode(t))
        for e in evs:
            fields.append(str(e.seq))
            values.append(encode(e))
    fields.append(len(events))
    for task_id, evs in events.items():
        fields += (task_id, len(evs))
        for e in evs:
            fields.append(str(e.seq))
            values.append(encode(e))
    fields += [len(batch.deleted), *batch.deleted, len(batch.meta)]
    for m in batch.meta:
        fields += (m.kind, m.key)
        values.append(encode(m.value))
    fields.append(len(batch.meta_deleted))
    for kind, key in batch.meta_deleted:
        fields += (kind, key)
    values[len(head)] = msgspec.msgpack.encode(fields)
    return values


def head_of(store: RedisStore) -> list[Any]:
    return [store.keys.tag, "", "", " ".join(TERMINAL_ORDER)]


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisProcess) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(f"{redis_server.url}?prefix=l2{uuid.uuid4().hex[:10]}")
    await store.open()
    yield store
    await store.close()


async def write_layout2(raw: aioredis.Redis, store: RedisStore, batch: WriteBatch) -> None:
    args = layout2_args(batch, head_of(store))
    await raw.eval(LAYOUT2_APPLY, 1, store.keys.ended(), *args)  # type: ignore[misc]


async def test_a_layout2_store_is_read_as_it_is_and_later_events_replace_its_own(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    await write_layout2(
        raw,
        store,
        WriteBatch(
            tasks=[task("a", "init"), task("c", "success", ended_at=5.0, result=1)],
            events=[event("a", 0, "init"), event("a", 1), event("c", 0, "init")],
        ),
    )
    assert await raw.hexists(store.keys.task("a"), "1")  # an event in a field of its own
    assert [(e.seq, e.type) for e in await store.get_events("a")] == [(0, "init"), (1, "update")]
    assert [t.id for t in await store.load_active()] == ["a"]
    # Written again since the upgrade: seq 1 replaced (a later write of a seq wins), 2 added,
    # in one field of this batch's.
    await store.apply(
        WriteBatch(tasks=[task("a", "start")], events=[event("a", 1, "offer"), event("a", 2)])
    )
    got = await store.get_events("a")
    assert [(e.seq, e.type) for e in got] == [(0, "init"), (1, "offer"), (2, "update")]
    assert got[1] == event("a", 1, "offer")
    assert [(e.seq, e.type) for e in await store.get_events("c")] == [(0, "init")]
    assert [t.id for t in await store.list_tasks(state="success")] == ["c"]
    assert await store.remove_ended_before(10.0) == ["c"]
    assert await raw.exists(store.keys.task("c")) == 0
    assert await store.get_events("c") == []


async def test_a_big_batch_a_layout2_leader_committed_is_finished_by_a_new_one(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """After an upgrade the new leader finishes what a layout-2 leader committed but did not
    apply: pieces with a seq per event in their header."""
    await store.apply(WriteBatch([task("a", "init")], [event("a", 0, "init")]))
    first = WriteBatch(
        [task("a", "start"), task("b", "success", ended_at=5.0)],
        [event("a", 1, "offer"), event("a", 2, "start"), event("b", 0, "init")],
    )
    second = WriteBatch(
        [],
        [event("a", 3), event("b", 1, "success")],
        meta=[MetaRecord("schedule", "nightly", {"last": 7})],
    )
    pieces = [layout2_args(first, head_of(store)), layout2_args(second, head_of(store))]
    batch_id = "fedcba9876543210"
    for piece in pieces:
        await raw.rpush(store.keys.stage(batch_id), *piece)
    lengths = " ".join(str(len(piece)) for piece in pieces)
    await raw.hset(store.keys.committed(), batch_id, lengths)

    successor = RedisStore.from_url(f"{store.url}")
    await successor.open()
    try:
        assert [t.id for t in await successor.load_active()] == ["a"]
        events = await successor.get_events("a")
        assert [(e.seq, e.type) for e in events] == [
            (0, "init"),
            (1, "offer"),
            (2, "start"),
            (3, "update"),
        ]
        assert [e.type for e in await successor.get_events("b")] == ["init", "success"]
        assert await successor.get_meta("schedule", "nightly") == {"last": 7}
        assert await raw.exists(store.keys.stage(batch_id)) == 0
    finally:
        await successor.close()
