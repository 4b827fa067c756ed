"""A Redis store written by the engine's layout 1 (taskhub 0.1: separate event hashes and the
all/active/action index sets) opens and serves with today's engine (layout 2, store/redis/keys.py).

The layout-1 store is written by layout 1's own batch script (tests/store/redis_layout1/, the
files as they were), with the arguments that version's ``RedisStore.apply`` passed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from taskhub.records import TERMINAL_STATES, EventRecord, TaskRecord, WriteBatch
from taskhub.store.redis import RedisStore
from tests.redisproc import RedisProcess

LAYOUT1 = Path(__file__).parent / "redis_layout1"
LAYOUT1_APPLY = "".join((LAYOUT1 / name).read_text() for name in ("common.lua", "apply.lua"))


def task(task_id: str, state: str, action: str = "img.resize", **fields: object) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        action=action,
        publisher="svc-a",
        created_at=1000.0,
        state=state,
        **fields,  # type: ignore[arg-type]
    )


def event(task_id: str, seq: int, kind: str = "update") -> EventRecord:
    return EventRecord(task_id=task_id, seq=seq, at=1.0 + seq, type=kind)


async def write_layout1(raw: aioredis.Redis, prefix: str, batch: WriteBatch) -> None:
    """``batch`` written as taskhub 0.1's RedisStore.apply wrote it (no fence)."""
    encode = msgspec.json.encode
    args: list[object] = ["{" + prefix + "}:", "", "", len(batch.tasks)]
    for t in batch.tasks:
        terminal = t.state in TERMINAL_STATES
        ended = repr(float(t.ended_at)) if terminal and t.ended_at is not None else ""
        args += [t.id, t.state, t.action, ended, "0" if terminal else "1", encode(t)]
    args.append(len(batch.events))
    for e in batch.events:
        args += [e.task_id, str(e.seq), encode(e)]
    args += [len(batch.deleted), *batch.deleted, 0, 0]
    await raw.eval(LAYOUT1_APPLY, 1, "{" + prefix + "}:all", *args)  # type: ignore[misc]


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def old(raw: aioredis.Redis, redis_server: RedisProcess) -> AsyncIterator[RedisStore]:
    """Today's engine on a store that layout 1 wrote: a (live), b (live, other action),
    c (ended at 5), d (ended at 50), with events of a and c."""
    prefix = "old" + uuid.uuid4().hex[:10]
    await write_layout1(
        raw,
        prefix,
        WriteBatch(
            tasks=[
                task("a", "init"),
                task("b", "start", action="mail.send"),
                task("c", "success", ended_at=5.0, result=1),
                task("d", "fail", ended_at=50.0),
            ],
            events=[event("a", 0, "init"), event("a", 1), event("c", 0, "init")],
        ),
    )
    store = RedisStore.from_url(f"{redis_server.url}?prefix={prefix}")
    await store.open()
    yield store
    await store.close()


async def keys_of(raw: aioredis.Redis, store: RedisStore) -> set[str]:
    pattern = ("{" + store.prefix + "}:*").replace("{", "\\{")
    return {k.decode()[len(store.keys.tag) :] async for k in raw.scan_iter(match=pattern)}


async def ids(tasks: list[TaskRecord]) -> list[str]:
    return [t.id for t in tasks]


async def test_a_layout1_store_is_read_as_it_is(old: RedisStore, raw: aioredis.Redis) -> None:
    assert "ev:a" in await keys_of(raw, old) and "all" in await keys_of(raw, old)
    got = await old.get_task("c")
    assert got is not None and got.result == 1 and got.state == "success"
    assert [(e.seq, e.type) for e in await old.get_events("a")] == [(0, "init"), (1, "update")]
    assert await ids(await old.load_active()) == ["a", "b"]
    assert await ids(await old.list_tasks()) == ["a", "b", "c", "d"]
    assert await ids(await old.list_tasks(after="a", limit=2)) == ["b", "c"]
    assert await ids(await old.list_tasks(action="img.resize")) == ["a", "c", "d"]
    assert await ids(await old.list_tasks(state="start")) == ["b"]
    assert await ids(await old.list_tasks(state="fail", action="img.resize")) == ["d"]
    assert await ids(await old.list_ended_before(10.0)) == ["c"]


async def test_a_layout1_task_written_again_leaves_the_old_sets(
    old: RedisStore, raw: aioredis.Redis
) -> None:
    await old.apply(
        WriteBatch(tasks=[task("a", "success", ended_at=7.0)], events=[event("a", 2, "success")])
    )
    # Its events: the ones layout 1 wrote and the new one, in seq order.
    assert [e.seq for e in await old.get_events("a")] == [0, 1, 2]
    assert await ids(await old.load_active()) == ["b"]
    assert await ids(await old.list_tasks(state="success")) == ["a", "c"]
    assert await ids(await old.list_ended_before(10.0)) == ["c", "a"]
    for index in ("all", "active", "action:img.resize", "state:init", "sa:init:img.resize"):
        assert await raw.zscore(old.key(index), "a") is None, index
    assert await raw.hget(old.keys.task("a"), "e") == b"7.0"  # layout 2 writes e
    # A terminal layout-1 task written again: out of its layout-1 sets, into its new ones.
    await old.apply(WriteBatch(tasks=[task("d", "end", ended_at=60.0)]))
    assert await raw.zscore(old.key("action", "img.resize"), "d") is None
    assert await raw.zscore(old.key("state", "fail"), "d") is None
    assert await ids(await old.list_tasks(state="end", action="img.resize")) == ["d"]
    assert await raw.zscore(old.key("ended"), "d") == 60.0


async def test_removing_layout1_tasks_leaves_nothing_of_them(
    old: RedisStore, raw: aioredis.Redis
) -> None:
    assert await old.remove_ended_before(100.0) == ["c", "d"]
    await old.apply(WriteBatch(deleted=["a", "b"]))
    assert await keys_of(raw, old) == set()
    assert await old.list_tasks() == []
