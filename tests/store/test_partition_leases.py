"""Partition leases and members through their protocol (taskhub.store.PartitionLeases), over
a real redis-server and real SQLite files: take, renew, release, expiry, fencing tokens, the
fenced store of a partition, the member list, and the members' connection slots."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from taskhub.errors import StoreFenced
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import Member, PartitionLeases, open_partition_leases, open_store
from taskhub.store.lock import Token
from taskhub.store.redis.leases import RedisPartitionLeases
from taskhub.store.sqlite_leases import SqlitePartitionLeases
from tests.conftest import until
from tests.redisproc import RedisCluster, RedisProcess

Open = Callable[[int], Awaitable[PartitionLeases]]


class FakeClock:
    """A wall clock the test moves (SQLite's expiry reads it)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def task(task_id: str, state: str = "init") -> TaskRecord:
    return TaskRecord(id=task_id, action="img:resize", publisher="p", created_at=1.0, state=state)


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        return f"{server.url}?prefix=pl{uuid.uuid4().hex[:12]}"
    return f"sqlite:///{tmp_path}/hub.db"


@pytest.fixture
async def open_leases(store_url: str) -> AsyncIterator[Open]:
    """Opens the leases of ``store_url`` split in P partitions: each call another hub's."""
    opened: list[PartitionLeases] = []

    async def make(partitions: int) -> PartitionLeases:
        leases = open_partition_leases(store_url, partitions)
        await leases.open()
        opened.append(leases)
        return leases

    yield make
    for leases in opened:
        await leases.close()


async def test_one_token_holds_a_partition_at_a_time(open_leases: Open) -> None:
    a, b = await open_leases(4), await open_leases(4)
    assert a.partitions == 4
    assert await a.holder(2) is None
    token = await a.take(2, "ia http://a", 10_000)
    assert token is not None and Token.parse(token) == Token(1, "ia", "http://a")
    assert await b.take(2, "ib http://b", 10_000) is None  # held
    assert await a.take(2, "ia http://a", 10_000) is None  # not re-entrant: renew instead
    assert await b.holder(2) == token
    assert await b.holder(1) is None  # the partitions are apart
    assert await a.renew(2, token, 10_000)
    assert not await b.renew(2, "1 ib http://b", 10_000)  # only the holder renews
    assert not await b.release(2, "1 ib http://b")  # nor releases another's lease
    assert await a.release(2, token)
    assert not await a.renew(2, token, 10_000)  # a released lease is not revived
    assert await a.holder(2) is None
    second = await b.take(2, "ib http://b", 10_000)
    assert second is not None and Token.parse(second).epoch == 2  # a new tenure, a new token


async def test_renew_many_renews_what_each_token_holds_and_heartbeats(
    open_leases: Open,
) -> None:
    """The renewal thread's one call per round (hub/renewer.py): each lease is renewed only
    for the token that holds it, in the order asked, and the member record is kept."""
    a, b = await open_leases(4), await open_leases(4)
    mine = [await a.take(p, "ia http://a", 300) for p in (0, 2, 3)]
    theirs = await b.take(1, "ib http://b", 10_000)
    assert all(mine) and theirs is not None
    held = [(0, mine[0] or ""), (1, "1 ia http://a"), (2, mine[1] or ""), (3, mine[2] or "")]
    assert await a.renew_many(held, 10_000, Member("ia", "http://a")) == [True, False, True, True]
    assert await b.members() == [Member("ia", "http://a")]
    assert await a.release(3, mine[2] or "")
    # Renewed for 10 s, not the 300 ms taken: still held once the first TTL is long gone.
    await asyncio.sleep(0.5)
    assert await b.take(0, "ib http://b", 10_000) is None
    assert await a.renew_many([(3, mine[2] or ""), (0, mine[0] or "")], 10_000) == [False, True]
    assert await a.renew_many([], 10_000) == []
    with pytest.raises(ValueError, match="partition 4 is out of range"):
        await a.renew_many([(4, "1 ia http://a")], 10_000)


async def test_a_lease_not_renewed_expires(open_leases: Open, store_url: str) -> None:
    a, b = await open_leases(2), await open_leases(2)
    token = await a.take(0, "ia http://a", 200)
    assert token is not None
    # The store's own expiry (Redis PX, the row's expiry on SQLite's wall clock): polled,
    # not timed.
    assert await until(lambda: b.take(0, "ib http://b", 10_000), timeout=10.0)
    assert not await a.renew(0, token, 10_000)
    assert not await a.release(0, token)


@contextlib.asynccontextmanager
async def _two_sqlite_hubs(
    tmp_path: Path,
) -> AsyncIterator[tuple[FakeClock, SqlitePartitionLeases, SqlitePartitionLeases]]:
    """Two hubs' leases on one sqlite file, both on one fake clock."""
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/hub.db"
    a = SqlitePartitionLeases(url, 3, clock=clock)
    b = SqlitePartitionLeases(url, 3, clock=clock)
    await a.open()
    await b.open()
    try:
        yield clock, a, b
    finally:
        await a.close()
        await b.close()


async def test_sqlite_expiry_follows_the_injected_clock(tmp_path: Path) -> None:
    async with _two_sqlite_hubs(tmp_path) as (clock, a, b):
        token = await a.take(1, "ia http://a", 3000)
        assert token is not None
        clock.now += 2.9
        assert await a.renew(1, token, 3000)  # renewed in time: 3 s from now
        clock.now += 2.9
        assert await b.take(1, "ib http://b", 3000) is None
        clock.now += 0.2
        assert await a.holder(1) is None
        assert not await a.renew(1, token, 3000)  # too late
        taken = await b.take(1, "ib http://b", 3000)
        assert taken == "2 ib http://b"


async def test_a_partition_outside_the_count_is_refused(open_leases: Open) -> None:
    leases = await open_leases(4)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=f"partition {bad} is out of range"):
            await leases.take(bad, "ia http://a", 1000)
        with pytest.raises(ValueError, match="out of range"):
            leases.fenced_store(bad, "1 ia http://a")


@pytest.mark.parametrize(("partitions", "p"), [(1, 0), (4, 3)])
async def test_the_fenced_store_writes_only_while_its_token_holds_the_lease(
    open_leases: Open, store_url: str, partitions: int, p: int
) -> None:
    # One partition: the store is the URL's (today's layout), fenced by partition:0's lease;
    # several: partition p's own namespace (open_store(url, partition=p, partitions=P)).
    a, b = await open_leases(partitions), await open_leases(partitions)
    first = await a.take(p, "ia http://a", 10_000)
    assert first is not None
    store = a.fenced_store(p, first)
    await store.open()
    try:
        await store.apply(WriteBatch(tasks=[task("t1")]))
        assert await a.release(p, first)
        with pytest.raises(StoreFenced):  # nobody holds it: no write
            await store.apply(WriteBatch(tasks=[task("t1", "success")]))
        # The same hub takes it again: a new token, and the old tenure's store stays fenced.
        again = await a.take(p, "ia http://a", 10_000)
        assert again is not None and again != first
        with pytest.raises(StoreFenced):
            await store.apply(WriteBatch(tasks=[task("t1", "success")]))
        with pytest.raises(StoreFenced):
            await store.remove_ended_before(1e12)
        assert await a.release(p, again)
        successor = await b.take(p, "ib http://b", 10_000)
        assert successor is not None
        theirs = b.fenced_store(p, successor)
        await theirs.open()
        try:
            await theirs.apply(WriteBatch(tasks=[task("t2")]))
            with pytest.raises(StoreFenced):
                await store.apply(WriteBatch(tasks=[task("t3")]))
            got = await theirs.get_task("t1")
            assert got is not None and got.state == "init"  # the stale writes changed nothing
            assert await theirs.get_task("t3") is None
        finally:
            await theirs.close()
    finally:
        await store.close()
    plain = open_store(store_url, partition=p, partitions=partitions)
    await plain.open()
    try:  # the writes went to the partition's own namespace
        assert [t.id for t in await plain.list_tasks()] == ["t1", "t2"]
    finally:
        await plain.close()


async def test_sqlite_partitions_are_files_beside_the_main_one(tmp_path: Path) -> None:
    clock = FakeClock()
    leases = SqlitePartitionLeases(f"sqlite:///{tmp_path}/hub.db", 3, clock=clock)
    await leases.open()
    try:
        tokens = [await leases.take(p, "ia http://a", 3000) for p in range(3)]
        stores = [leases.fenced_store(p, t) for p, t in enumerate(tokens) if t is not None]
        for p, store in enumerate(stores):
            await store.open()
            await store.apply(WriteBatch(tasks=[task(f"t{p}")]))
        assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".db")) == [
            "hub.db",
            "hub.p0.db",
            "hub.p1.db",
            "hub.p2.db",
        ]
        assert await stores[1].get_task("t0") is None  # each partition its own data
        clock.now += 3.1  # every lease ran out: nobody renewed it
        with pytest.raises(StoreFenced):
            await stores[2].apply(WriteBatch(tasks=[task("t2", "success")]))
        for store in stores:
            await store.close()
    finally:
        await leases.close()


async def test_members_heartbeat_leave_and_expire(open_leases: Open) -> None:
    a, b = await open_leases(2), await open_leases(2)
    assert await a.members() == []
    await a.heartbeat(Member("ia", "http://a"), 10_000)
    await b.heartbeat(Member("ib", "http://b"), 200)
    await a.heartbeat(Member("ia", "http://a:2"), 10_000)  # a beat replaces the record
    assert await b.members() in (
        [Member("ia", "http://a:2"), Member("ib", "http://b")],
        [Member("ia", "http://a:2")],  # b's 200 ms already ran out on a slow machine
    )
    await until(lambda: _one(a), timeout=10.0)
    await a.leave("ia")
    assert await b.members() == []
    with pytest.raises(ValueError, match="bad member instance id"):
        await a.heartbeat(Member("i a", "http://a"), 1000)


async def _one(leases: PartitionLeases) -> bool:
    return len(await leases.members()) == 1


async def test_connection_slots_count_every_live_member(open_leases: Open) -> None:
    a, b = await open_leases(2), await open_leases(2)
    assert await a.claim_slot("ia", "emailer", 1, 2, 10_000) is None
    assert await b.claim_slot("ib", "emailer", 1, 2, 10_000) is None
    assert await b.claim_slot("ib", "emailer", 2, 2, 10_000) == 1  # a holds one: refused
    assert await b.claim_slot("ib", "mailer", 1, 1, 10_000) is None  # services apart
    await a.set_slots("ia", "emailer", 0, 10_000)  # a's connection closed
    assert await b.claim_slot("ib", "emailer", 2, 2, 10_000) is None
    assert await a.claim_slot("ia", "emailer", 1, 2, 10_000) == 2
    await b.set_slots("ib", "emailer", 1, 10_000)  # a count, not a step: b holds one now
    assert await a.claim_slot("ia", "emailer", 1, 2, 10_000) is None
    await b.leave("ib")  # a member that leaves takes its slots with it
    assert await a.claim_slot("ia", "emailer", 2, 2, 10_000) is None
    assert await a.claim_slot("ia", "mailer", 1, 1, 10_000) is None


async def test_connection_slots_expire_with_their_members_heartbeat(open_leases: Open) -> None:
    a, b = await open_leases(2), await open_leases(2)
    assert await a.claim_slot("ia", "emailer", 1, 1, 10_000) is None
    assert await b.claim_slot("ib", "emailer", 1, 1, 10_000) == 1
    # The heartbeat gives the slots the member's TTL: a hub killed now (no more beats) stops
    # counting once it runs out. Polled, not timed.
    await a.heartbeat(Member("ia", "http://a"), 200)
    assert await until(lambda: _claimed(b.claim_slot("ib", "emailer", 1, 1, 60_000)), timeout=10.0)
    assert await a.claim_slot("ia", "emailer", 1, 1, 10_000) == 1  # b holds it now
    # The renewal thread's one call per round beats the member too: the same for its slots.
    await b.renew_many([], 200, Member("ib", "http://b"))
    assert await until(lambda: _claimed(a.claim_slot("ia", "emailer", 1, 1, 10_000)), timeout=10.0)


async def _claimed(claim: Awaitable[int | None]) -> bool:
    return await claim is None


async def test_sqlite_slots_live_as_long_as_the_heartbeat(tmp_path: Path) -> None:
    async with _two_sqlite_hubs(tmp_path) as (clock, a, b):
        assert await a.claim_slot("ia", "emailer", 1, 1, 3000) is None
        clock.now += 2.9
        await a.heartbeat(Member("ia", "http://a"), 3000)  # the slots live 3 s from now
        clock.now += 2.9
        assert await b.claim_slot("ib", "emailer", 1, 1, 3000) == 1
        clock.now += 0.2  # a beat no more: its member and its slots ran out
        assert await b.claim_slot("ib", "emailer", 1, 1, 3000) is None
        await b.heartbeat(Member("ib", "http://b"), 3000)  # prunes what ran out
        await a.set_slots("ia", "mailer", 0, 3000)  # nothing held: nothing written
        assert await a.claim_slot("ia", "emailer", 1, 1, 3000) == 1


def test_only_redis_and_sqlite_stores_have_partition_leases() -> None:
    with pytest.raises(ValueError, match="no partition leases for store URL 'memory://'"):
        open_partition_leases("memory://", 4)
    with pytest.raises(ValueError, match="an in-memory sqlite store cannot be shared"):
        open_partition_leases("sqlite://:memory:", 4)
    with pytest.raises(ValueError, match="partitions must be between 1 and 1024, got 0"):
        open_partition_leases("redis://localhost:6379/0", 0)


async def test_on_a_cluster_each_lease_lives_with_its_partition(
    redis_cluster: RedisCluster,
) -> None:
    url = f"{redis_cluster.url}?prefix=pc{uuid.uuid4().hex[:8]}"
    leases = RedisPartitionLeases(url, 12)
    await leases.open()
    try:
        owners = {redis_cluster.owner_of(leases.lease_key(p)) for p in range(12)}
        assert owners == {0, 1, 2}  # the partitions' hash tags spread over the primaries
        tokens = [await leases.take(p, "ia http://a", 10_000) for p in range(12)]
        assert all(t is not None for t in tokens)
        assert all([await leases.renew(p, t, 10_000) for p, t in enumerate(tokens) if t])
        held = [(p, t) for p, t in enumerate(tokens) if t]
        assert await leases.renew_many(held, 10_000, Member("ia", "http://a")) == [True] * 12
        await leases.heartbeat(Member("ia", "http://a"), 10_000)
        assert await leases.members() == [Member("ia", "http://a")]
        # The slot scripts read other members' records by name: one hash tag, one primary.
        assert await leases.claim_slot("ia", "emailer", 1, 1, 10_000) is None
        assert await leases.claim_slot("ib", "emailer", 1, 1, 10_000) == 1
        await leases.set_slots("ia", "emailer", 0, 10_000)
        assert await leases.claim_slot("ib", "emailer", 1, 1, 10_000) is None
    finally:
        await leases.close()
