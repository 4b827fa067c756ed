"""A Redis store written by layout 3 (records and events as JSON) opens and serves with today's
engine (layout 4: MessagePack, store/redis/values.py), and a big batch a layout-3 leader staged
is finished by a new one. Layout 3 wrote the same keys and header as layout 4 with JSON values,
so its writes are the batch script's with JSON-encoded arguments (``layout3_args``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store.redis import RedisStore, batches, scripts
from taskhub.store.redis.keys import TERMINAL_ORDER
from tests.redisproc import RedisProcess

BIG = 2**70  # JSON carries it, MessagePack cannot


def task(task_id: str, state: str, **fields: Any) -> TaskRecord:
    return TaskRecord(
        id=task_id, action="img.resize", publisher="svc-a", created_at=1000.5, state=state, **fields
    )


def event(task_id: str, seq: int, kind: str = "update", data: Any = None) -> EventRecord:
    return EventRecord(task_id=task_id, seq=seq, at=1.25 + seq, type=kind, data=data)


def layout3_args(store: RedisStore, batch: WriteBatch) -> list[Any]:
    head = [store.keys.tag, "", "", " ".join(TERMINAL_ORDER)]
    json = msgspec.json.encode
    return batches.batch_args(batch, head, json, json, msgspec.msgpack.encode)


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisProcess) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(f"{redis_server.url}?prefix=l3{uuid.uuid4().hex[:10]}")
    await store.open()
    yield store
    await store.close()


async def write_layout3(raw: aioredis.Redis, store: RedisStore, batch: WriteBatch) -> None:
    args = layout3_args(store, batch)
    await raw.eval(scripts.APPLY, 1, store.keys.ended(), *args)  # type: ignore[misc]


async def test_records_and_events_are_stored_as_messagepack(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    rec = task("a", "start", payload={"n": 1.5, "s": "é"})
    await store.apply(WriteBatch([rec], [event("a", 0, "init"), event("a", 1)]))
    fields = await raw.hgetall(store.keys.task("a"))
    assert msgspec.msgpack.decode(fields[b"r"], type=TaskRecord) == rec
    events = msgspec.msgpack.decode(fields[b"g1"], type=list[EventRecord])
    assert events == [event("a", 0, "init"), event("a", 1)]
    assert await store.get_task("a") == rec


async def test_a_layout3_store_is_read_as_it_is_and_written_on(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    done = task("c", "success", ended_at=5.0, result={"ok": True})
    await write_layout3(
        raw,
        store,
        WriteBatch(
            tasks=[task("a", "init", payload=[1, 2]), done],
            events=[event("a", 0, "init"), event("a", 1), event("c", 0, "init")],
            meta=[MetaRecord("schedule", "nightly", {"last": 7})],
        ),
    )
    assert (await raw.hget(store.keys.task("a"), "r") or b"")[:1] == b"{"  # layout 3's JSON
    assert await store.get_task("a") == task("a", "init", payload=[1, 2])
    assert [t.id for t in await store.load_active()] == ["a"]
    assert await store.list_tasks(state="success") == [done]
    assert await store.list_ended_before(10.0) == [done]
    assert await store.get_meta("schedule", "nightly") == {"last": 7}
    # Written again since the upgrade: its events of both layouts read in order, seq 1
    # replaced by the later write.
    later = task("a", "success", ended_at=6.0, payload=[1, 2])
    await store.apply(WriteBatch([later], [event("a", 1, "offer"), event("a", 2, "success")]))
    got = await store.get_events("a")
    assert [(e.seq, e.type) for e in got] == [(0, "init"), (1, "offer"), (2, "success")]
    assert await store.get_task("a") == later
    assert [t.id for t in await store.list_tasks(state="success")] == ["a", "c"]
    assert await store.remove_ended_before(10.0) == ["c", "a"]
    assert await raw.exists(store.keys.task("a"), store.keys.task("c")) == 0


async def test_a_big_batch_a_layout3_leader_staged_is_finished_by_a_new_one(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    await store.apply(WriteBatch([task("a", "init")], [event("a", 0, "init")]))
    first = WriteBatch(
        [task("a", "start"), task("b", "success", ended_at=5.0)],
        [event("a", 1, "offer"), event("b", 0, "init")],
    )
    second = WriteBatch([], [event("a", 2), event("b", 1, "success")])
    pieces = [layout3_args(store, first), layout3_args(store, second)]
    batch_id = "0123456789abcdef"
    for piece in pieces:
        await raw.rpush(store.keys.stage(batch_id), *piece)
    await raw.hset(store.keys.committed(), batch_id, " ".join(str(len(p)) for p in pieces))

    successor = RedisStore.from_url(store.url)
    await successor.open()
    try:
        assert await successor.load_active() == [task("a", "start")]
        got = await successor.get_events("a")
        assert [(e.seq, e.type) for e in got] == [(0, "init"), (1, "offer"), (2, "update")]
        assert [e.type for e in await successor.get_events("b")] == ["init", "success"]
        assert await raw.exists(store.keys.stage(batch_id)) == 0
    finally:
        await successor.close()


async def test_a_batch_messagepack_cannot_carry_is_written_as_json(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    big = task("a", "start", payload={"id": BIG})
    await store.apply(WriteBatch([big, task("b", "init")], [event("a", 0, data=[-BIG])]))
    assert (await raw.hget(store.keys.task("a"), "r") or b"")[:1] == b"{"
    assert await store.get_task("a") == big
    assert (await store.get_events("a"))[0].data == [-BIG]
    # The next batch, without such a value, is MessagePack again; both read back.
    await store.apply(WriteBatch([task("b", "start")], [event("a", 1)]))
    assert msgspec.msgpack.decode(await raw.hget(store.keys.task("b"), "r") or b"")
    assert [e.seq for e in await store.get_events("a")] == [0, 1]
    assert [t.id for t in await store.load_active()] == ["a", "b"]
