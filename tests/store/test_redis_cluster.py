"""The Redis engine on a real multi-node Redis Cluster (``redis+cluster://``).

tests/redisproc.py starts three cluster-mode redis-servers on loopback and joins them with
``redis-cli --cluster create``: each owns a third of the slots. The conformance suite runs on
it as the "redis-cluster" engine; these tests check what is particular to a cluster: each
prefix's keys live on the primary that owns its slot, the client routes there from any seed
node, and it follows MOVED when that slot moves to another primary.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest
import redis
from redis.crc import key_slot

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.store import open_store
from taskhub.store.redis import RedisStore
from tests.redisproc import RedisCluster, free_port


def task(task_id: str, **fields: object) -> TaskRecord:
    fields.setdefault("action", "img.resize")
    fields.setdefault("publisher", "svc-a")
    fields.setdefault("created_at", 1000.0)
    return TaskRecord(id=task_id, **fields)  # type: ignore[arg-type]


def prefix_owned_by(cluster: RedisCluster, node: int) -> str:
    """A fresh prefix whose hash tag's slot the primary ``node`` owns."""
    while True:
        prefix = "c" + uuid.uuid4().hex[:12]
        if cluster.owner_of("{" + prefix + "}") == node:
            return prefix


@pytest.fixture
def nodes(redis_cluster: RedisCluster) -> Iterator[list[redis.Redis]]:
    clients = [redis_cluster.client(i) for i in range(len(redis_cluster))]
    yield clients
    for client in clients:
        client.close()


async def exercise(store: RedisStore) -> None:
    """Every kind of call once: scripts, plain commands, locks, fencing, heartbeats."""
    await store.apply(
        WriteBatch(
            tasks=[task("a", state="start"), task("b", state="success", ended_at=1.0)],
            events=[EventRecord(task_id="a", seq=0, at=1.0, type="update")],
            meta=[MetaRecord("schedule", "s", {"cron": "* * * * *"})],
        )
    )
    assert (got := await store.get_task("a")) is not None and got.state == "start"
    assert [e.seq for e in await store.get_events("a")] == [0]
    assert [t.id for t in await store.list_tasks()] == ["a", "b"]
    assert [t.id for t in await store.list_tasks(state="start", action="img.resize")] == ["a"]
    assert [t.id for t in await store.load_active()] == ["a"]
    assert await store.list_meta("schedule") == {"s": {"cron": "* * * * *"}}
    assert [t.id for t in await store.list_ended_before(5.0)] == ["b"]
    assert await store.remove_ended_before(5.0) == ["b"]
    assert await store.get_task("b") is None

    assert await store.acquire_lock("leader", "me", 10_000)
    assert not await store.acquire_lock("leader", "other", 10_000)
    assert await store.renew_lock("leader", "me", 10_000)
    assert await store.lock_owner("leader") == "me"
    store.set_fence(store.lock_key("leader"), "other")
    with pytest.raises(StoreFenced):
        await store.apply(WriteBatch(tasks=[task("fenced")]))
    store.set_fence(store.lock_key("leader"), "me")
    await store.apply(WriteBatch(tasks=[task("c")]))
    assert await store.release_lock("leader", "me")
    assert not await store.release_lock("leader", "me")
    store.set_fence(None, None)

    await store.heartbeat("hub-1", "ws://h1", 10_000)
    assert await store.alive() == {"hub-1": "ws://h1"}
    assert [t.id for t in await store.load_active()] == ["a", "c"]


async def test_prefixes_on_different_primaries_each_live_on_their_owner(
    redis_cluster: RedisCluster, nodes: list[redis.Redis]
) -> None:
    # The seed in the URL is node 0; both prefixes belong to the other two primaries, so
    # nothing works unless the client routes by slot.
    prefixes = [prefix_owned_by(redis_cluster, 1), prefix_owned_by(redis_cluster, 2)]
    async with AsyncExitStack() as stack:
        stores = []
        for prefix in prefixes:
            store = open_store(f"{redis_cluster.url}?prefix={prefix}")
            assert isinstance(store, RedisStore) and store.cluster
            await store.open()
            stack.push_async_callback(store.close)
            stores.append(store)
        for store in stores:
            await exercise(store)
        # Independent: the same ids, each store sees its own.
        await stores[0].apply(WriteBatch(tasks=[task("only-in-0")]))
        assert await stores[1].get_task("only-in-0") is None

    for owner, prefix in zip((1, 2), prefixes, strict=True):
        slot = key_slot(("{" + prefix + "}").encode())
        for i, node in enumerate(nodes):
            count = node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
            # t:a t:c ev:a all active state:start action:img.resize sa:start:img.resize
            # meta:schedule hb:hub-1 (+ t:only-in-0 and its index entries for the first)
            assert (count > 0) == (i == owner), (prefix, i, count)


async def test_a_single_node_client_on_the_wrong_node_is_told_moved(
    redis_cluster: RedisCluster,
) -> None:
    """Why redis+cluster:// exists: a plain redis:// URL works only on the owning node."""
    prefix = prefix_owned_by(redis_cluster, 1)
    store = RedisStore.from_url(f"{redis_cluster.nodes[0].url}?prefix={prefix}")
    await store.open()
    try:
        with pytest.raises(StoreUnavailable, match="MOVED"):
            await store.apply(WriteBatch(tasks=[task("a")]))
        with pytest.raises(StoreUnavailable, match="MOVED"):
            await store.get_task("a")
    finally:
        await store.close()


async def test_follows_moved_when_the_slot_migrates_to_another_primary(
    redis_cluster: RedisCluster, nodes: list[redis.Redis]
) -> None:
    prefix = prefix_owned_by(redis_cluster, 1)
    store = RedisStore.from_url(f"{redis_cluster.url}?prefix={prefix}")
    await store.open()
    try:
        await store.apply(
            WriteBatch(
                tasks=[task("a", state="start"), task("b", state="fail", ended_at=2.0)],
                events=[EventRecord(task_id="a", seq=0, at=1.0, type="update")],
            )
        )
        assert await store.acquire_lock("leader", "me", 60_000)
        store.set_fence(store.lock_key("leader"), "me")

        # Move the prefix's slot from node 1 to node 2, keys and all, as a resharding does.
        slot = key_slot(("{" + prefix + "}").encode())
        src, dst = nodes[1], nodes[2]
        src_id = src.execute_command("CLUSTER", "MYID").decode()
        dst_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        assert keys
        port = redis_cluster.nodes[2].port
        src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
        for node in nodes:
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        assert redis_cluster.owner_of("{" + prefix + "}") == 2

        # The store's slot map still says node 1: its next calls get MOVED and follow it,
        # and the scripts (not yet loaded on node 2) are loaded there transparently.
        assert [t.id for t in await store.load_active()] == ["a"]
        await store.apply(WriteBatch(tasks=[task("c")]))
        assert await store.remove_ended_before(5.0) == ["b"]
        assert await store.renew_lock("leader", "me", 60_000)
        assert [t.id for t in await store.list_tasks()] == ["a", "c"]
        assert dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
        assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        await store.close()


async def test_unreachable_cluster_raises_store_unavailable_naming_the_url(
    redis_cluster: RedisCluster,
) -> None:
    port = free_port()
    store = RedisStore.from_url(f"redis+cluster://:hunter2@127.0.0.1:{port}?prefix=x")
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert f"127.0.0.1:{port}" in str(info.value) and "hunter2" not in str(info.value)


async def test_every_store_call_works_from_any_seed_node(redis_cluster: RedisCluster) -> None:
    prefix = prefix_owned_by(redis_cluster, 0)
    for node in redis_cluster.nodes:
        store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{node.port}?prefix={prefix}")
        await store.open()
        try:
            await store.apply(WriteBatch(tasks=[task(f"from-{node.port}")]))
        finally:
            await store.close()
    store = RedisStore.from_url(f"{redis_cluster.url}?prefix={prefix}")
    await store.open()
    try:
        assert len(await store.load_active()) == len(redis_cluster)
    finally:
        await store.close()
