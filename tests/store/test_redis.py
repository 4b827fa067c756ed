"""Redis engine only: fencing, locks, heartbeats, key layout, restarts and outages.

The behaviour every engine shares is tested in test_conformance.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store import open_store
from taskhub.store.redis import RedisStore
from tests.redisproc import RedisProcess, cluster_args, free_port, make_tls_files


def task(task_id: str, **fields: object) -> TaskRecord:
    fields.setdefault("action", "img.resize")
    fields.setdefault("publisher", "svc-a")
    fields.setdefault("created_at", 1000.0)
    return TaskRecord(id=task_id, **fields)  # type: ignore[arg-type]


def event(task_id: str, seq: int) -> EventRecord:
    return EventRecord(task_id=task_id, seq=seq, at=1.0 + seq, type="update")


def url_for(server: RedisProcess, prefix: str | None = None) -> str:
    return f"{server.url}?prefix={prefix or 'r' + uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_server: RedisProcess) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(url_for(redis_server))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def keys_of(raw: aioredis.Redis, store: RedisStore) -> set[str]:
    pattern = "{" + store.prefix + "}:*"
    return {k.decode() async for k in raw.scan_iter(match=pattern.replace("{", "\\{"))}


# -- URLs -------------------------------------------------------------------------------------


def test_url_forms() -> None:
    s = RedisStore.from_url("redis://h:6390/2")
    assert s.prefix == "taskhub" and s.key("t", "x") == "{taskhub}:t:x"
    s = RedisStore.from_url("redis://u:secret@h:6390/2?prefix=app1&ssl_cert_reqs=none")
    assert s.prefix == "app1"
    assert "secret" not in s.url and s.url.startswith("redis://u:***@h:6390/2")
    assert s._redis_url == "redis://u:secret@h:6390/2?ssl_cert_reqs=none"
    assert RedisStore.from_url("rediss://:pw@h/0").url == "rediss://:***@h/0"
    assert isinstance(open_store("redis://h/0"), RedisStore)
    assert isinstance(open_store("rediss://h/0?prefix=x"), RedisStore)
    for bad in ["redis://", "http://h/0", "redis://h/0?prefix=", "redis://h/0?prefix=a{b}"]:
        with pytest.raises(ValueError):
            RedisStore.from_url(bad)
    with pytest.raises(ValueError) as info:
        open_store("postgres://u:pw@h/db")
    assert "pw" not in str(info.value)
    # Secrets in the query are masked too.
    s = RedisStore.from_url("rediss://h/0?ssl_keyfile=/k.pem&ssl_password=pw&prefix=p")
    assert s.url == "rediss://h/0?ssl_keyfile=/k.pem&ssl_password=***&prefix=p"
    assert "ssl_password=pw" in s._redis_url


def test_cluster_url_forms() -> None:
    s = RedisStore.from_url("redis+cluster://u:pw@h:7000?prefix=app")
    assert s.cluster and s.prefix == "app" and s.url == "redis+cluster://u:***@h:7000?prefix=app"
    assert s._redis_url == "redis://u:pw@h:7000"  # what redis-py's cluster client parses
    s = RedisStore.from_url("rediss+cluster://h:7000/0?ssl_ca_certs=/ca.pem")
    assert s.cluster and s._redis_url == "rediss://h:7000?ssl_ca_certs=%2Fca.pem"
    assert not RedisStore.from_url("redis://h:7000").cluster
    for url in ("redis+cluster://h:7000", "rediss+cluster://h:7000?prefix=x"):
        store = open_store(url)
        assert isinstance(store, RedisStore) and store.cluster
    with pytest.raises(ValueError, match="database 0 only"):
        RedisStore.from_url("redis+cluster://h:7000/2")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        RedisStore.from_url("redis://h:7000?cluster=true")


# -- key layout -------------------------------------------------------------------------------


async def test_every_key_is_under_the_hash_tag_and_one_slot(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    await store.apply(
        WriteBatch(
            tasks=[task("a", state="start"), task("b", state="success", ended_at=5.0)],
            events=[event("a", 0)],
            meta=[MetaRecord("schedule", "s1", {"x": 1})],
        )
    )
    await store.acquire_lock("leader", "tok", 10_000)
    await store.heartbeat("hub1", "ws://h1", 10_000)
    keys = await keys_of(raw, store)
    tag = "{" + store.prefix + "}:"
    assert all(k.startswith(tag) for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one slot: Cluster-safe scripts
    want = {
        "t:a",  # with its events: layout 2 has no ev:<id>
        "t:b",
        "writes",  # the batches' counter: each batch's events of a task are one field g<n>
        "active",  # a live task is in no other set
        "ended",
        "state:success",
        "sa:success:img.resize",
        "meta:schedule",
        "lock:leader",
        "hb:hub1",
    }
    assert keys == {tag + k for k in want}


async def test_state_change_moves_the_task_between_indexes(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    await store.apply(WriteBatch(tasks=[task("a", state="start", action="x")]))
    await store.apply(WriteBatch(tasks=[task("a", state="fail", action="y", ended_at=9.0)]))
    assert await raw.zrange(store.key("active"), 0, -1) == []
    assert await raw.zrange(store.key("state", "fail"), 0, -1) == [b"a"]
    assert await raw.zrange(store.key("sa", "fail", "y"), 0, -1) == [b"a"]
    assert await raw.zrange(store.key("ended"), 0, -1, withscores=True) == [(b"a", 9.0)]
    # Another terminal state, then back to a live one (a retried task, say).
    await store.apply(WriteBatch(tasks=[task("a", state="end", action="y", ended_at=10.0)]))
    assert await raw.zrange(store.key("state", "fail"), 0, -1) == []
    assert await raw.zrange(store.key("sa", "end", "y"), 0, -1) == [b"a"]
    assert await raw.zrange(store.key("ended"), 0, -1, withscores=True) == [(b"a", 10.0)]
    await store.apply(WriteBatch(tasks=[task("a", state="start", action="y")]))
    assert await raw.zrange(store.key("ended"), 0, -1) == []
    assert await raw.zrange(store.key("state", "end"), 0, -1) == []
    assert await raw.zrange(store.key("active"), 0, -1) == [b"a"]
    assert [t.id for t in await store.load_active()] == ["a"]
    await store.apply(WriteBatch(deleted=["a"]))
    assert await keys_of(raw, store) == set()  # a delete leaves no index entry behind


async def test_a_state_outside_taskstate_is_listed_and_restored(store: RedisStore) -> None:
    # A state outside TaskState is not terminal: such a task is live, in the active set.
    await store.apply(WriteBatch(tasks=[task("a", state="progress"), task("b", state="init")]))
    assert [t.id for t in await store.list_tasks()] == ["a", "b"]
    assert [t.id for t in await store.list_tasks(action="img.resize")] == ["a", "b"]
    assert [t.id for t in await store.load_active()] == ["a", "b"]


@pytest.mark.parametrize("budget", [1, 2, 3, 2000])
async def test_pages_are_whole_whatever_the_live_scan_budget(
    store: RedisStore, budget: int
) -> None:
    # Live tasks are filtered in the active set, at most `budget` per script call: the engine
    # calls again from where a call stopped, so every page is the same.
    live = [task(f"a{i}", state="start", action="x") for i in range(7)]
    live += [task("a5y", state="init", action="y"), task("c", state="start", action="y")]
    ended = [task("a3", state="success", action="y", ended_at=1.0), task("b", state="fail")]
    await store.apply(WriteBatch(tasks=live + ended))
    store.live_scan_budget = budget

    async def ids(**query: Any) -> list[str]:
        return [t.id for t in await store.list_tasks(**query)]

    assert await ids(action="y") == ["a3", "a5y", "c"]
    assert await ids(action="y", limit=2) == ["a3", "a5y"]
    assert await ids(action="y", after="a3") == ["a5y", "c"]
    assert await ids(state="start", action="y") == ["c"]
    assert await ids(state="init") == ["a5y"]
    every = ["a0", "a1", "a2", "a3", "a4", "a5", "a5y", "a6", "b", "c"]
    assert await ids() == every
    assert await ids(after="a4", limit=3) == every[5:8]
    assert [t.id for t in await store.load_active()] == [i for i in every if i not in {"a3", "b"}]


async def test_a_batch_with_hundreds_of_events_per_task(store: RedisStore) -> None:
    # The script writes a task's fields in slices of 512 arguments (Lua's unpack limit).
    many = [event("a", seq) for seq in range(700)] + [event("b", seq) for seq in range(600)]
    await store.apply(WriteBatch(tasks=[task("a", state="start")], events=many))
    assert [e.seq for e in await store.get_events("a")] == list(range(700))
    assert [e.seq for e in await store.get_events("b")] == list(range(600))
    assert await store.get_task("a") == task("a", state="start")


async def test_a_batchs_events_of_a_task_are_one_field_read_in_batch_order(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    # Each batch writes a task's events as one field g<n>, n from the batches' counter; the
    # reader takes the fields by n as a number (g10 after g9), a later seq replacing an
    # earlier one.
    await raw.set(store.keys.writes(), 8)
    await store.apply(WriteBatch(tasks=[task("a")], events=[event("a", 0), event("a", 1)]))
    replaced = EventRecord(task_id="a", seq=1, at=9.5, type="offer")
    await store.apply(WriteBatch(events=[replaced, event("a", 2)]))
    await store.apply(WriteBatch(tasks=[task("a", state="start")]))  # no events: no field
    assert sorted(await raw.hkeys(store.keys.task("a"))) == [
        b"a",
        b"e",
        b"g10",
        b"g9",
        b"r",
        b"s",
    ]
    assert await store.get_events("a") == [event("a", 0), replaced, event("a", 2)]


async def test_event_seqs_are_stored_exactly_however_large(store: RedisStore) -> None:
    # Seqs go to the script as text in the batch header (a Lua number would be exact only up
    # to 2**53), the usual small ones from a table made once.
    seqs = [0, 3, 255, 256, 2**53 + 1, 10**18 + 7]
    await store.apply(WriteBatch(tasks=[task("a")], events=[event("a", seq) for seq in seqs[:3]]))
    await store.apply(WriteBatch(events=[event("a", seq) for seq in seqs[3:]]))
    assert [e.seq for e in await store.get_events("a")] == seqs


async def test_end_scores_are_the_exact_doubles_however_written(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    # The score goes as the shortest text that reads back as the same double (1e16 is
    # written "1e16", not repr's "1e+16"): retention's strict bounds must see each exactly.
    ends = [1e-7, 0.1 + 0.2, 1e16, 1700000000.0298705, 2.0**53 + 2]
    tasks = [task(f"t{i}", state="success", ended_at=at) for i, at in enumerate(ends)]
    await store.apply(WriteBatch(tasks=tasks))
    scored = await raw.zrange(store.key("ended"), 0, -1, withscores=True)
    assert sorted(score for _, score in scored) == sorted(ends)
    for i, at in enumerate(ends):
        before = {t.id for t in await store.list_ended_before(at)}
        assert f"t{i}" not in before
        assert f"t{i}" in {t.id for t in await store.list_ended_before(math.nextafter(at, 2e16))}
    assert await store.remove_ended_before(1e16) == ["t0", "t1", "t3", "t4"]


async def test_a_task_written_twice_in_one_batch_is_indexed_by_its_last_record(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    first, again = task("a", state="start"), task("a", state="success", ended_at=3.0)
    await store.apply(WriteBatch(tasks=[first, task("b"), again], events=[event("a", 0)]))
    assert await store.get_task("a") == again
    assert [e.seq for e in await store.get_events("a")] == [0]
    assert [t.id for t in await store.load_active()] == ["b"]
    assert [t.id for t in await store.list_tasks(state="success")] == ["a"]
    assert await raw.zrange(store.key("active"), 0, -1) == [b"b"]


async def commands_run(raw: aioredis.Redis) -> int:
    """Commands redis-server ran so far, those that scripts called included (not EVALSHA)."""
    stats = await raw.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_evalsha",))


async def test_a_task_costs_redis_few_commands(store: RedisStore, raw: aioredis.Redis) -> None:
    # The batch script's work is counted in commands (each costs redis-server ~1 µs besides
    # its work, docs/performance.md): a task published, started and finished in three
    # batches, with four events, is one HSET per write, and one call per index set and
    # batch (~4.2 per task here). Layout 1 ran 37 per task here.
    n = 10
    names = [f"t{i:02d}" for i in range(n)]
    before = await commands_run(raw)
    await store.apply(
        WriteBatch(
            tasks=[task(i, state="init") for i in names], events=[event(i, 0) for i in names]
        )
    )
    await store.apply(
        WriteBatch(
            tasks=[task(i, state="start") for i in names],
            events=[e for i in names for e in (event(i, 1), event(i, 2))],
        )
    )
    await store.apply(
        WriteBatch(
            tasks=[task(i, state="success", ended_at=9.0) for i in names],
            events=[event(i, 3) for i in names],
        )
    )
    ran = await commands_run(raw) - before - 1  # the INFO that read the count
    assert ran <= 6 * n, ran / n


async def test_two_prefixes_on_one_server_are_independent(redis_server: RedisProcess) -> None:
    one = RedisStore.from_url(url_for(redis_server))
    two = RedisStore.from_url(url_for(redis_server))
    await one.open()
    await two.open()
    try:
        await one.apply(WriteBatch(tasks=[task("a")]))
        assert await two.get_task("a") is None
        assert await two.list_tasks() == []
    finally:
        await one.close()
        await two.close()


# -- fencing ----------------------------------------------------------------------------------


async def test_fenced_batch_writes_nothing(store: RedisStore, raw: aioredis.Redis) -> None:
    await store.apply(
        WriteBatch(
            tasks=[task("kept", payload=1), task("old", state="success", ended_at=1.0)],
            events=[event("kept", 0)],
            meta=[MetaRecord("q", "k", 1)],
        )
    )
    assert await store.acquire_lock("leader", "other-hub", 10_000)
    before = {k: await raw.dump(k) for k in await keys_of(raw, store)}
    store.set_fence(store.lock_key("leader"), "this-hub")
    batch = WriteBatch(
        tasks=[task("new"), task("kept", payload=2, state="fail", ended_at=2.0)],
        events=[event("kept", 1), event("new", 0)],
        deleted=["old"],
        meta=[MetaRecord("q", "k2", 2)],
        meta_deleted=[("q", "k")],
    )
    with pytest.raises(StoreFenced, match="fenced") as info:
        await store.apply(batch)
    assert isinstance(info.value, StoreUnavailable)  # callers that handle outages handle this
    assert info.value.code == "store_fenced"
    with pytest.raises(StoreFenced):
        await store.remove_ended_before(100.0)
    after = {k: await raw.dump(k) for k in await keys_of(raw, store)}
    assert after == before  # byte for byte: not one key written

    # The fence holds for the lock's owner, and only while it holds the lock.
    store.set_fence(store.lock_key("leader"), "other-hub")
    await store.apply(batch)
    assert await store.get_task("new") is not None
    assert await store.release_lock("leader", "other-hub")
    with pytest.raises(StoreFenced):  # an expired or released lock fences too
        await store.apply(WriteBatch(tasks=[task("later")]))
    store.set_fence(None, None)
    await store.apply(WriteBatch(tasks=[task("later")]))
    assert await store.get_task("later") is not None


def test_fence_key_must_belong_to_the_store() -> None:
    store = RedisStore.from_url("redis://h/0?prefix=a")
    store.set_fence(store.lock_key("leader"), "t")
    with pytest.raises(ValueError, match="not a key of this store"):
        store.set_fence("{b}:lock:leader", "t")


async def test_a_hub_that_lost_its_lease_cannot_overwrite_its_successor(
    redis_server: RedisProcess,
) -> None:
    url = url_for(redis_server)
    old, new = RedisStore.from_url(url), RedisStore.from_url(url)
    await old.open()
    await new.open()
    try:
        assert await old.acquire_lock("leader", "old", 50)
        old.set_fence(old.lock_key("leader"), "old")
        await old.apply(WriteBatch(tasks=[task("t", state="start")]))
        await asyncio.sleep(0.1)  # the old leader stalls past its lease
        assert await new.acquire_lock("leader", "new", 10_000)
        new.set_fence(new.lock_key("leader"), "new")
        await new.apply(WriteBatch(tasks=[task("t", state="success", ended_at=3.0)]))
        with pytest.raises(StoreFenced):
            await old.apply(WriteBatch(tasks=[task("t", state="start", payload="stale")]))
        got = await new.get_task("t")
        assert got is not None and got.state == "success"
    finally:
        await old.close()
        await new.close()


# -- locks and heartbeats ---------------------------------------------------------------------


async def test_lock_acquire_renew_release(store: RedisStore) -> None:
    assert await store.lock_owner("l") is None
    assert await store.acquire_lock("l", "a", 10_000)
    assert await store.lock_owner("l") == "a"
    assert not await store.acquire_lock("l", "b", 10_000)  # held: no one else takes it
    assert not await store.acquire_lock("l", "a", 10_000)  # not re-entrant: renew instead
    assert await store.renew_lock("l", "a", 10_000)
    assert not await store.renew_lock("l", "b", 10_000)  # only the owner renews
    assert not await store.release_lock("l", "b")  # nor releases someone else's lock
    assert await store.lock_owner("l") == "a"
    assert await store.release_lock("l", "a")
    assert await store.lock_owner("l") is None
    assert not await store.release_lock("l", "a")  # twice is harmless
    assert not await store.renew_lock("l", "a", 10_000)  # a released lock is not revived
    assert await store.acquire_lock("l", "b", 10_000)


async def test_lock_expires_and_renew_extends(store: RedisStore, raw: aioredis.Redis) -> None:
    assert await store.acquire_lock("l", "a", 200)
    assert await store.renew_lock("l", "a", 5_000)
    assert 1_000 < await raw.pttl(store.lock_key("l")) <= 5_000
    assert await store.acquire_lock("short", "a", 30)
    await asyncio.sleep(0.1)
    assert await store.lock_owner("short") is None
    assert not await store.renew_lock("short", "a", 5_000)  # too late: the lease is gone
    assert await store.acquire_lock("short", "b", 5_000)


async def test_heartbeats(store: RedisStore) -> None:
    assert await store.alive() == {}
    await store.heartbeat("hub-1", "ws://a:1", 10_000)
    await store.heartbeat("hub-2", "ws://b:2", 10_000)
    await store.heartbeat("other*[x]", "v", 10_000)
    await store.heartbeat("brief", "gone soon", 30)
    await asyncio.sleep(0.1)
    assert await store.alive() == {"hub-1": "ws://a:1", "hub-2": "ws://b:2", "other*[x]": "v"}
    assert await store.alive("hub-*") == {"hub-1": "ws://a:1", "hub-2": "ws://b:2"}
    await store.heartbeat("hub-1", "ws://a:9", 10_000)  # a beat replaces the value
    assert (await store.alive("hub-1")) == {"hub-1": "ws://a:9"}


# -- durability and outages -------------------------------------------------------------------


async def test_data_survives_a_redis_restart_with_aof(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", appendfsync="always").start()
    url = f"{server.url}?prefix=durable"
    try:
        store = RedisStore.from_url(url)
        await store.open()
        await store.apply(
            WriteBatch(
                tasks=[task("a", state="start"), task("b", state="success", ended_at=2.0)],
                events=[event("a", 0), event("a", 1)],
                meta=[MetaRecord("schedule", "s", {"cron": "* * * * *"})],
            )
        )
        server.stop()  # graceful: AOF flushed
        server.start()
        # The same store object carries on: the pool reconnects and the scripts, gone with
        # the old process, are loaded again.
        assert [t.id for t in await store.load_active()] == ["a"]
        await store.apply(WriteBatch(tasks=[task("c")], events=[event("a", 2)]))
        await store.close()

        server.kill()  # a crash: with appendfsync always every acknowledged write is on disk
        server.start()
        again = RedisStore.from_url(url)
        await again.open()
        try:
            assert [t.id for t in await again.load_active()] == ["a", "c"]
            assert [e.seq for e in await again.get_events("a")] == [0, 1, 2]
            assert await again.get_meta("schedule", "s") == {"cron": "* * * * *"}
            assert await again.remove_ended_before(10.0) == ["b"]
        finally:
            await again.close()
    finally:
        server.cleanup()


async def test_scripts_the_server_lost_are_loaded_again(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """The engine calls its scripts by EVALSHA itself: after SCRIPT FLUSH (or a failover to a
    replica that never loaded them) each call loads its script again and goes through."""
    await store.apply(WriteBatch(tasks=[task("a", state="start")], events=[event("a", 1)]))
    await raw.script_flush()
    await store.apply(WriteBatch(tasks=[task("b")], events=[event("a", 2)]))
    await raw.script_flush()
    assert [t.id for t in await store.load_active()] == ["a", "b"]
    await raw.script_flush()
    assert [e.seq for e in await store.get_events("a")] == [1, 2]


async def test_unreachable_redis_raises_store_unavailable_naming_the_url() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore.from_url(f"redis://:hunter2@127.0.0.1:{port}/0?prefix=x")
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "hunter2" not in message
    assert info.value.details["url"] == f"redis://:***@127.0.0.1:{port}/0?prefix=x"
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.get_task("t")


async def test_redis_going_down_raises_store_unavailable(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    store = RedisStore.from_url(f"{server.url}?prefix=x")
    try:
        await store.open()
        await store.apply(WriteBatch(tasks=[task("a")]))
        server.kill()
        for call in (
            store.get_task("a"),
            store.apply(WriteBatch(tasks=[task("b")])),
            store.list_tasks(),
            store.acquire_lock("l", "t", 1000),
            store.renew_lock("l", "t", 1000),
            store.alive(),
        ):
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
                await call
        server.start()  # and it recovers by itself once Redis is back
        assert await store.get_task("a") is not None
    finally:
        await store.close()
        server.cleanup()


async def test_a_hung_redis_raises_store_unavailable_within_the_timeout(tmp_path: Path) -> None:
    """A Redis that takes the connection but never answers (SIGSTOP: a frozen VM, a full
    network queue) must not hang the hub: every call is bounded (``socket_timeout``), and the
    store works again, on a new connection, once Redis answers."""
    server = RedisProcess(tmp_path / "redis").start()
    store = RedisStore(server.url, prefix="x", socket_timeout=0.3)
    assert server.proc is not None
    try:
        await store.open()
        await store.apply(WriteBatch(tasks=[task("a")]))
        server.proc.send_signal(signal.SIGSTOP)
        try:
            for call in (
                store.get_task("a"),
                store.apply(WriteBatch(tasks=[task("b")])),
                store.renew_lock("l", "t", 1000),
                store.alive(),
            ):
                with pytest.raises(StoreUnavailable, match=r"no answer within 0.3s"):
                    await asyncio.wait_for(call, 10)  # the bound is the store's, not this
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await store.apply(WriteBatch(tasks=[task("c")]))
        # ("b" may have been written or not: a write not answered in time may still land.)
        assert {"a", "c"} <= {t.id for t in await store.list_tasks()}
    finally:
        await store.close()
        server.cleanup()


async def test_a_batch_abandoned_by_its_timeout_leaves_no_reply_for_the_next(
    tmp_path: Path,
) -> None:
    """Batches go on a connection the store keeps (``store/redis/kept.py``): a call given
    up on at its timeout must not leave its late reply (a success) on that connection to be
    read as the answer to the next batch, which here is fenced and must write nothing."""
    server = RedisProcess(tmp_path / "redis").start()
    store = RedisStore(server.url, prefix="x", socket_timeout=0.3)
    raw = aioredis.Redis.from_url(server.url)
    assert server.proc is not None
    try:
        await store.open()
        lock = store.lock_key("leader")
        await raw.set(lock, "this-hub")
        store.set_fence(lock, "this-hub")
        await store.apply(WriteBatch(tasks=[task("a")]))
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable, match=r"no answer within 0.3s"):
                await asyncio.wait_for(store.apply(WriteBatch(tasks=[task("b")])), 10)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await raw.set(lock, "next-hub")
        with pytest.raises(StoreFenced):
            await store.apply(WriteBatch(tasks=[task("c")]))
        assert await store.get_task("c") is None
        store.set_fence(lock, "next-hub")
        await store.apply(WriteBatch(tasks=[task("d")]))
        assert await store.get_task("d") is not None
    finally:
        await raw.aclose()
        await store.close()
        server.cleanup()


async def test_a_batch_connection_closed_by_redis_is_made_again(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """Redis (a restart of a proxy, ``CLIENT KILL``, an idle timeout) closes the connection the
    store keeps for its batches: the next batch is sent again on a new one, as redis-py's
    retry does for any command."""
    await store.apply(WriteBatch(tasks=[task("a")]))
    assert await raw.client_kill_filter(_type="normal", skipme=True) >= 1
    await store.apply(WriteBatch(tasks=[task("b")], events=[event("b", 1)]))
    assert {t.id for t in await store.list_tasks()} == {"a", "b"}
    assert [e.seq for e in await store.get_events("b")] == [1]


async def test_oom_and_readonly_replies_raise_store_unavailable(tmp_path: Path) -> None:
    """redis-py strips the code from the replies it has a class for: mapped by status_code."""
    server = RedisProcess(tmp_path / "redis").start()
    store = RedisStore.from_url(f"{server.url}?prefix=x")
    raw = aioredis.Redis.from_url(server.url)
    try:
        await store.open()
        await raw.config_set("maxmemory", 1)  # noeviction: new keys are refused
        with pytest.raises(StoreUnavailable, match="unavailable: OOM command not allowed"):
            await store.acquire_lock("l", "t", 1000)
        await raw.config_set("maxmemory", 0)
        await raw.replicaof("127.0.0.1", free_port())  # a read-only replica, as after a failover
        with pytest.raises(StoreUnavailable, match="READONLY"):
            await store.apply(WriteBatch(tasks=[task("a")]))
    finally:
        await raw.aclose()
        await store.close()
        server.cleanup()


def oom_batch(n: int) -> WriteBatch:
    """Batch ``n`` of the fill below: ten new 4 KiB tasks, a change to task ``keep`` (a new
    payload and event), a delete of a task and a meta entry of batch ``n - 1``, a meta entry."""
    return WriteBatch(
        tasks=[task(f"n{n}-{i}", payload="x" * 4096) for i in range(10)]
        + [task("keep", state="progress", payload=n)],
        events=[event("keep", n + 1)],
        deleted=[f"n{n - 1}-0"] if n else [],
        meta=[MetaRecord("batch", str(n), n)],
        meta_deleted=[("batch", str(n - 1))] if n else [],
    )


async def test_a_full_redis_refuses_a_whole_batch_with_oom(tmp_path: Path) -> None:
    """maxmemory + noeviction: once Redis is full, a batch is refused whole with OOM.

    The batch script declares script flags (Redis 7+), so Redis checks memory before it runs
    any of it. Without flags Redis checks only at a script's first write that may grow memory,
    and the batch script's first writes are ZREMs: batches kept being applied past maxmemory.
    """
    args = ["--maxmemory-policy", "noeviction"]
    server = RedisProcess(tmp_path / "redis", extra_args=args).start()
    store = RedisStore.from_url(f"{server.url}?prefix=x")
    raw = aioredis.Redis.from_url(server.url)
    try:
        await store.open()
        if not store.script_flags:
            pytest.skip("this redis-server (< 7) has no script flags: batches are not refused")
        await store.apply(
            WriteBatch(
                tasks=[task("keep", state="start"), task("old", state="success", ended_at=1.0)],
                events=[event("keep", 0)],
            )
        )
        used = (await raw.info("memory"))["used_memory"]
        limit = used + 256 * 1024
        await raw.config_set("maxmemory", limit)
        refused: int | None = None
        for n in range(200):  # 200 batches of 40+ KiB: 8 MiB, far more than the 256 KiB left
            try:
                await store.apply(oom_batch(n))
            except StoreUnavailable as exc:
                assert f"127.0.0.1:{server.port}" in str(exc)
                assert "unavailable: OOM" in str(exc) and "maxmemory" in str(exc)
                refused = n
                break
        assert refused is not None, "a full Redis (noeviction) kept taking batches"
        assert refused > 0  # some were applied first, so the refused one has deletes too
        # Each accepted batch started under the limit: at most one batch (~50 KiB) past it.
        assert (await raw.info("memory"))["used_memory"] < limit + 200 * 1024

        # Nothing of the refused batch was written; the last accepted one is all there.
        last = refused - 1
        for i in range(10):
            assert await store.get_task(f"n{refused}-{i}") is None
        kept = await store.get_task("keep")
        assert kept is not None and kept.payload == last
        assert [e.seq for e in await store.get_events("keep")] == list(range(refused + 1))
        assert await store.get_task(f"n{last}-0") is not None  # its delete did not happen
        assert await store.get_meta("batch", str(refused)) is None
        assert await store.get_meta("batch", str(last)) == last  # nor its meta delete
        assert "keep" in [t.id for t in await store.list_tasks(state="progress")]

        # Firmly full: batches are refused, retention still frees memory (it only deletes).
        await raw.config_set("maxmemory", 1)
        with pytest.raises(StoreUnavailable, match="OOM"):
            await store.apply(WriteBatch(tasks=[task("tiny")]))
        assert await store.get_task("tiny") is None
        assert await store.remove_ended_before(10.0) == ["old"]

        # With room again, the same batch goes through.
        await raw.config_set("maxmemory", limit + 64 * 1024 * 1024)
        await store.apply(oom_batch(refused))
        assert all([await store.get_task(f"n{refused}-{i}") for i in range(10)])
        kept = await store.get_task("keep")
        assert kept is not None and kept.payload == refused
        assert await store.get_task(f"n{last}-0") is None
        assert await store.list_meta("batch") == {str(refused): refused}
    finally:
        await raw.aclose()
        await store.close()
        server.cleanup()


async def test_without_script_flags_the_batch_script_has_no_shebang(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis < 7 cannot compile a script that starts with ``#!``: the store sees that at open
    and runs its batch script without the shebang (and so without the up-front OOM check)."""
    real_load = aioredis.Redis.script_load

    async def redis6_script_load(self: aioredis.Redis, script: str | bytes) -> str:
        text = script.decode() if isinstance(script, bytes) else script
        if text.startswith("#!"):  # what Redis 6.2 answers
            raise ResponseError(
                "Error compiling script (new function): user_script:1: unexpected symbol near '#'"
            )
        return str(await real_load(self, script))

    monkeypatch.setattr(aioredis.Redis, "script_load", redis6_script_load)
    store = RedisStore.from_url(url_for(redis_server))
    await store.open()
    try:
        assert not store.script_flags
        assert not str(store._scripts["apply"].script).startswith("#!")
        await store.apply(WriteBatch(tasks=[task("a")], events=[event("a", 0)]))
        assert [t.id for t in await store.load_active()] == ["a"]
    finally:
        await store.close()
    monkeypatch.undo()
    store = RedisStore.from_url(url_for(redis_server))
    raw = aioredis.Redis.from_url(redis_server.url)
    await store.open()
    try:
        version = (await raw.info("server"))["redis_version"]
        assert store.script_flags == (int(str(version).split(".")[0]) >= 7)
    finally:
        await raw.aclose()
        await store.close()


# -- TLS --------------------------------------------------------------------------------------


async def test_rediss_round_trip_over_tls(tmp_path: Path) -> None:
    """A TLS-only redis-server (no plain-text port) with a certificate from a throwaway CA."""
    tls = make_tls_files(tmp_path / "tls")
    server = RedisProcess(tmp_path / "redis", tls=tls)
    try:
        server.start()
    except RuntimeError as exc:
        if "tls" in str(exc).lower() and "bad directive" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS support: {exc}")
        raise
    base = f"rediss://127.0.0.1:{server.port}"
    try:
        store = open_store(f"{base}?prefix=x&ssl_ca_certs={tls.ca}")
        assert isinstance(store, RedisStore)
        await store.open()
        try:
            await store.apply(
                WriteBatch(tasks=[task("a", payload={"over": "tls"})], events=[event("a", 0)])
            )
            got = await store.get_task("a")
            assert got is not None and got.payload == {"over": "tls"}
            assert [e.seq for e in await store.get_events("a")] == [0]
            assert [t.id for t in await store.load_active()] == ["a"]
            assert await store.acquire_lock("l", "me", 10_000)
            assert await store.release_lock("l", "me")
        finally:
            await store.close()

        # The certificate is verified: without the CA the handshake fails.
        unverified = RedisStore.from_url(f"{base}?prefix=x")
        with pytest.raises(StoreUnavailable, match="certificate verify failed"):
            await unverified.open()
        # Nor does plain text reach a TLS port.
        plain = RedisStore.from_url(f"redis://127.0.0.1:{server.port}?prefix=x")
        with pytest.raises(StoreUnavailable):
            await plain.open()
    finally:
        server.cleanup()


async def test_works_on_a_cluster_mode_server(tmp_path: Path) -> None:
    """A one-node Redis Cluster owning every slot: the scripts and commands run in cluster
    mode. (Redis does not refuse a legacy script's undeclared keys of another slot on the node
    that owns it, so the one-slot layout itself is checked by the key_slot test above.)"""
    server = RedisProcess(
        tmp_path / "cluster",
        extra_args=cluster_args(),
    ).start()
    try:
        raw = aioredis.Redis.from_url(server.url)
        await raw.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        for _ in range(200):
            info = await raw.execute_command("CLUSTER", "INFO")
            if b"cluster_state:ok" in info:
                break
            await asyncio.sleep(0.05)
        await raw.aclose()
        store = RedisStore.from_url(f"{server.url}?prefix=c")
        await store.open()
        try:
            await store.apply(
                WriteBatch(
                    tasks=[task("a", state="start"), task("b", state="end", ended_at=1.0)],
                    events=[event("a", 0)],
                    deleted=["zz"],
                    meta=[MetaRecord("k", "x", 1)],
                )
            )
            assert [t.id for t in await store.list_tasks(state="start")] == ["a"]
            assert [t.id for t in await store.list_ended_before(5.0)] == ["b"]
            assert await store.remove_ended_before(5.0) == ["b"]
            assert await store.acquire_lock("l", "t", 1000)
            store.set_fence(store.lock_key("l"), "t")
            await store.apply(WriteBatch(tasks=[task("c")]))
            assert [t.id for t in await store.load_active()] == ["a", "c"]
        finally:
            await store.close()
    finally:
        server.cleanup()


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f00d", 1, "{tq}:all", b"\x00\xffbytes", 42, -7, 1.5, "", "ünïcode"),
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # a command of two words, as redis-py sends
        (b"CONFIG GET", "maxmemory"),
        ("SET", "k", memoryview(b"view"), bytearray(b"array")),
        ("EVALSHA", "f00d", 0, *(f"v{i}" for i in range(20_001))),  # over HIREDIS_MAX_ARGS
    ],
)
def test_hiredis_packing_sends_what_redis_py_would(args: tuple[object, ...]) -> None:
    """The store packs commands with hiredis (C) instead of redis-py's Python packer: the
    bytes on the wire must be the same."""
    from redis.asyncio.connection import Connection

    from taskhub.store.redis.packing import packing

    plain = Connection()
    fast = packing(Connection)()
    assert type(fast).pack_command is not Connection.pack_command
    # redis-py before 8 refuses a bytearray; the store sends its bytes, as redis-py 8 does.
    same = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*same))


def test_a_long_command_is_packed_in_pieces() -> None:
    """A batch of thousands of tasks is packed by hiredis a piece at a time (not in one
    growing buffer, which raised a hub's peak memory by ~150 MiB for 100,000 tasks), and the
    pieces are the command redis-py would send."""
    from redis.asyncio.connection import Connection

    from taskhub.store.redis.packing import HIREDIS_MAX_ARGS, PIECE_ARGS, packing

    args = ("EVALSHA", "f00d", 1, "{p}:ended", *(b"r" * 500 for _ in range(HIREDIS_MAX_ARGS)))
    pieces = packing(Connection)().pack_command(*args)
    assert len(pieces) == 1 + -(-len(args) // PIECE_ARGS)  # the header, then the pieces
    assert max(len(p) for p in pieces) < PIECE_ARGS * 520
    assert b"".join(pieces) == b"".join(Connection().pack_command(*args))


def eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]


async def test_a_redis_that_may_evict_keys_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, redis_server: RedisProcess
) -> None:
    """maxmemory-policy other than noeviction lets Redis drop tasks under memory pressure: the
    store says so when it opens (docs/redis.md). It never did: redis-py answers CONFIG GET
    with str, and the check read bytes."""
    server = RedisProcess(tmp_path / "redis", extra_args=["--maxmemory-policy", "allkeys-lru"])
    server.start()
    try:
        store = open_store(f"{server.url}?prefix=x")
        with caplog.at_level(logging.WARNING, logger="taskhub"):
            await store.open()
        await store.close()
    finally:
        server.cleanup()
    [warning] = eviction_warnings(caplog)
    assert "has maxmemory-policy allkeys-lru" in warning and "noeviction" in warning
    caplog.clear()
    quiet = open_store(f"{redis_server.url}?prefix=y")  # noeviction: nothing to say
    with caplog.at_level(logging.WARNING, logger="taskhub"):
        await quiet.open()
    await quiet.close()
    assert eviction_warnings(caplog) == []
