"""Redis engine: a big batch is written in bounded script calls and stays all or nothing
(docs/redis.md, "Big batches").

A hub that routes 100,000 waiting tasks at a worker's subscription writes them in one batch;
as one script call it held redis-server (and the leader's lease renewal queued behind it) for
seconds. The crash cases stop a writer between two calls by failing the call after, at the
engine's one seam for calls (``_script``), then open the store again as the next leader does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.records import TERMINAL_STATES, EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store.redis import RedisStore
from taskhub.store.redis.keys import TERMINAL_ORDER
from tests.redisproc import RedisProcess

PIECE = 10
Opener = Callable[[RedisStore], Awaitable[RedisStore]]


def task(i: int, state: str = "pending") -> TaskRecord:
    return TaskRecord(
        id=f"01J{i:023d}", action="img.resize", publisher="svc-a", created_at=1.0, state=state
    )


def big_batch(n: int, state: str = "pending") -> WriteBatch:
    tasks = [task(i, state) for i in range(n)]
    events = [EventRecord(task_id=t.id, seq=1, at=2.0, type="init") for t in tasks]
    meta = [MetaRecord("schedule", "nightly", {"last": n})]
    return WriteBatch(tasks, events, meta=meta, sealed=True)


class Crashing(RedisStore):
    """A store whose writer stops (its call fails) at the ``crash_after``-th call of script
    ``crash_name`` (counted from 0)."""

    crash_name = ""
    crash_after = 0

    async def _script(self, name: str, keys: list[str], args: list[Any], **kw: Any) -> Any:
        if name == self.crash_name:
            self.crash_after -= 1
            if self.crash_after < 0:
                raise StoreUnavailable("the writer stopped here", url=self.url)
        return await super()._script(name, keys, args, **kw)


def stopping_at(url: str, name: str, after: int) -> Crashing:
    store = Crashing.from_url(url)
    assert isinstance(store, Crashing)
    store.crash_name, store.crash_after = name, after
    return store


@pytest.fixture
def url(redis_server: RedisProcess) -> str:
    return f"{redis_server.url}?prefix=b{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    """Opens a store writing batches of more than PIECE items in pieces; closed at the end."""
    stores: list[RedisStore] = []

    async def open_(store: RedisStore) -> RedisStore:
        store.piece_items = PIECE
        await store.open()
        stores.append(store)
        return store

    yield open_
    for store in stores:
        await store.close()


async def script_calls(raw: aioredis.Redis) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def staging_keys(raw: aioredis.Redis, store: RedisStore) -> list[bytes]:
    pattern = store.keys.tag.replace("{", "\\{") + "stage*"
    keys = [k async for k in raw.scan_iter(match=pattern)]
    return keys + [k for k in (store.keys.committed(),) if await raw.exists(k)]


async def test_a_big_batch_is_written_in_calls_of_bounded_size(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    store = await opened(RedisStore.from_url(url))
    await store.apply(big_batch(100, "assigned"))  # Redis has every script from now on
    before = await script_calls(raw)
    await store.apply(big_batch(100))  # 100 tasks + 100 events + 1 meta = 201 items
    # 21 pieces (10 items each, a task's events going with it: 5 tasks a piece) and one
    # commit, instead of one call for the whole batch.
    assert await script_calls(raw) - before == 21 + 1
    assert len(await store.load_active()) == 100
    assert len(await store.get_events(task(99).id)) == 1
    assert await store.get_meta("schedule", "nightly") == {"last": 100}
    assert await staging_keys(raw, store) == []  # nothing of the pieces is left behind


async def test_a_batch_at_the_bound_is_one_call(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    store = await opened(RedisStore.from_url(url))
    before = await script_calls(raw)
    await store.apply(WriteBatch([task(i) for i in range(PIECE)]))
    assert await script_calls(raw) - before == 1


async def test_a_writer_stopped_after_the_commit_is_finished_by_the_next(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    await (await opened(RedisStore.from_url(url))).apply(WriteBatch([task(0, "success")]))
    writer = await opened(stopping_at(url, "staged", after=3))
    batch = big_batch(100, "assigned")
    with pytest.raises(StoreUnavailable):
        await writer.apply(batch)
    reader = await opened(RedisStore.from_url(url))
    # Half written for anyone who reads now...
    assert 0 < len(await reader.list_tasks(state="assigned", limit=1000)) < 100
    # ...but the next leader restores it whole: load_active finishes it first.
    successor = await opened(RedisStore.from_url(url))
    restored = await successor.load_active()
    assert sorted(t.id for t in restored) == sorted(t.id for t in batch.tasks)
    assert {t.state for t in restored} == {"assigned"}
    assert await successor.get_meta("schedule", "nightly") == {"last": 100}
    assert await staging_keys(raw, successor) == []


async def test_a_writer_stopped_before_the_commit_wrote_nothing(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    writer = await opened(stopping_at(url, "commit", after=0))
    with pytest.raises(StoreUnavailable):
        await writer.apply(big_batch(100))
    assert await staging_keys(raw, writer) != []  # staged, never committed
    successor = await opened(RedisStore.from_url(url))
    assert await successor.load_active() == []
    assert await successor.get_meta("schedule", "nightly") is None
    assert await staging_keys(raw, successor) == []  # dropped


async def test_the_same_writer_finishes_a_committed_batch_before_its_next(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    store = stopping_at(url, "staged", after=2)
    await opened(store)
    with pytest.raises(StoreUnavailable):
        await store.apply(big_batch(100))
    store.crash_after = 10**9  # the store is back
    # What the hub's pipeline does: the same batch again (a retry, here a small one after it).
    await store.apply(WriteBatch([task(1000, "success")]))
    assert len(await store.list_tasks(limit=1000)) == 101
    assert await staging_keys(raw, store) == []


async def test_a_fenced_writer_stages_but_never_commits_a_big_batch(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    store = RedisStore.from_url(url)
    lock = store.lock_key("leader")
    await raw.set(lock, "someone else")
    store.set_fence(lock, "me")
    await opened(store)
    with pytest.raises(StoreFenced):
        await store.apply(big_batch(100))
    await raw.set(lock, "successor")
    successor = RedisStore.from_url(url)
    successor.set_fence(lock, "successor")
    await opened(successor)
    assert await successor.load_active() == []
    assert await staging_keys(raw, successor) == []


async def test_a_successor_finishes_a_batch_with_its_own_fence(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    """The pieces carry the stager's fence token; the successor applies them under its own."""
    first = stopping_at(url, "staged", after=1)
    lock = first.lock_key("leader")
    await raw.set(lock, "first")
    first.set_fence(lock, "first")
    await opened(first)
    with pytest.raises(StoreUnavailable):
        await first.apply(big_batch(50))
    await raw.set(lock, "second")  # the lease moved on
    second = RedisStore.from_url(url)
    second.set_fence(lock, "second")
    await opened(second)
    assert len(await second.load_active()) == 50
    # And the first, fenced out now, cannot finish it (nor write anything) any more.
    first.crash_after = 10**9
    with pytest.raises(StoreFenced):
        await first.apply(WriteBatch([task(999)]))
    assert await second.get_task(task(999).id) is None


def args_before_the_header(batch: WriteBatch, head: list[Any]) -> list[Any]:
    """``batch`` as apply.lua's arguments were before the batch header (taskhub up to this
    change's parent: every small field an argument of its own), what an older leader staged."""
    encode = msgspec.json.encode
    events: dict[str, list[Any]] = {}
    for e in batch.events:
        events.setdefault(e.task_id, []).extend((e.seq, encode(e)))
    args: list[Any] = [*head, len(batch.tasks)]
    for t in batch.tasks:
        done = t.ended_at is not None and t.state in TERMINAL_STATES
        pairs = events.pop(t.id, [])
        ended = repr(t.ended_at) if done else ""
        args += [t.id, t.state, t.action, ended, encode(t), len(pairs) // 2, *pairs]
    args.append(len(events))
    for task_id, pairs in events.items():
        args += [task_id, len(pairs) // 2, *pairs]
    args += [len(batch.deleted), *batch.deleted, len(batch.meta)]
    for m in batch.meta:
        args += [m.kind, m.key, encode(m.value)]
    args.append(len(batch.meta_deleted))
    for kind, key in batch.meta_deleted:
        args += [kind, key]
    return args


async def test_a_batch_an_older_leader_committed_is_finished_in_its_own_format(
    url: str, raw: aioredis.Redis, opened: Opener
) -> None:
    """After an upgrade the new leader finishes what the old one committed but did not apply,
    staged as the old arguments (a count where the header is now)."""
    store = await opened(RedisStore.from_url(url))
    gone = task(900, "success")
    await store.apply(
        WriteBatch([task(1), gone], [EventRecord(task_id=task(1).id, seq=1, at=1.0, type="init")])
    )
    await store.apply(WriteBatch(meta=[MetaRecord("queue", "q2", 2)]))
    ended = msgspec.structs.replace(task(2, "success"), ended_at=5.0, result={"ok": True})
    events = [
        EventRecord(task_id=ended.id, seq=2, at=4.0, type="start"),
        EventRecord(task_id=ended.id, seq=3, at=5.0, type="success"),
        EventRecord(task_id=task(1).id, seq=2, at=6.0, type="offer"),
    ]
    first = WriteBatch([task(3), ended], events[:2])
    second = WriteBatch(
        [],
        events[2:],
        deleted=[gone.id],
        meta=[MetaRecord("schedule", "nightly", {"last": 7})],
        meta_deleted=[("queue", "q2")],
    )
    head = [store.keys.tag, "", "", " ".join(TERMINAL_ORDER)]
    pieces = [args_before_the_header(first, head), args_before_the_header(second, head)]
    batch_id = "0123456789abcdef"
    for piece in pieces:
        await raw.rpush(store.keys.stage(batch_id), *piece)
    lengths = " ".join(str(len(piece)) for piece in pieces)
    await raw.hset(store.keys.committed(), batch_id, lengths)

    successor = await opened(RedisStore.from_url(url))
    restored = await successor.load_active()
    assert sorted(t.id for t in restored) == [task(1).id, task(3).id]
    assert await successor.get_task(ended.id) == ended
    assert [e.type for e in await successor.get_events(ended.id)] == ["start", "success"]
    assert [e.type for e in await successor.get_events(task(1).id)] == ["init", "offer"]
    assert [t.id for t in await successor.list_ended_before(6.0)] == [ended.id]
    assert await successor.get_task(gone.id) is None
    assert await successor.get_meta("schedule", "nightly") == {"last": 7}
    assert await successor.get_meta("queue", "q2") is None
    assert await staging_keys(raw, successor) == []
