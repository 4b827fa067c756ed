"""The leader lock through its protocol (taskhub.store.LeaderLock), as the hubs' cluster uses
it: take, renew, release, read the owner, and write through a store fenced by the lock."""

from __future__ import annotations

import uuid

import pytest

from taskhub.errors import StoreFenced
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import LeaderLock, open_leader_lock
from tests.redisproc import RedisProcess


def task(task_id: str, state: str = "init") -> TaskRecord:
    return TaskRecord(id=task_id, action="img:resize", publisher="p", created_at=1.0, state=state)


@pytest.fixture
def url(redis_server: RedisProcess) -> str:
    return f"{redis_server.url}?prefix=l{uuid.uuid4().hex[:12]}"


async def test_one_token_holds_the_lock_at_a_time(url: str) -> None:
    lock: LeaderLock = open_leader_lock(url)
    other: LeaderLock = open_leader_lock(url)  # another hub's connection to the same lock
    await lock.open()
    await other.open()
    try:
        assert "redis://" in lock.url
        assert await lock.owner() is None
        assert await lock.acquire("a http://a", 10_000)
        assert not await other.acquire("b http://b", 10_000)
        assert not await lock.acquire("a http://a", 10_000)  # not re-entrant: renew instead
        assert await other.owner() == "a http://a"
        assert await lock.renew("a http://a", 10_000)
        assert not await other.renew("b http://b", 10_000)  # only the holder renews
        assert not await other.release("b http://b")  # nor releases another's lock
        assert await lock.release("a http://a")
        assert not await lock.renew("a http://a", 10_000)  # a released lock is not revived
        assert await other.acquire("b http://b", 10_000)
        assert await lock.owner() == "b http://b"
    finally:
        await lock.close()
        await other.close()


async def test_the_fenced_store_writes_only_while_its_token_holds_the_lock(url: str) -> None:
    lock = open_leader_lock(url)
    await lock.open()
    store = lock.fenced_store("a")
    await store.open()
    try:
        with pytest.raises(StoreFenced):  # nobody holds the lock: no write
            await store.apply(WriteBatch(tasks=[task("t1")]))
        assert await lock.acquire("a", 10_000)
        await store.apply(WriteBatch(tasks=[task("t1")]))
        assert await lock.release("a")
        assert await lock.acquire("b", 10_000)  # a successor
        with pytest.raises(StoreFenced):
            await store.apply(WriteBatch(tasks=[task("t1", "success")]))
        got = await store.get_task("t1")
        assert got is not None and got.state == "init"  # the stale write changed nothing
    finally:
        await store.close()
        await lock.close()


@pytest.mark.parametrize("url", ["memory://", "sqlite:///x.db"])
def test_only_a_redis_store_has_a_leader_lock(url: str) -> None:
    with pytest.raises(ValueError, match="only a redis store"):
        open_leader_lock(url)
