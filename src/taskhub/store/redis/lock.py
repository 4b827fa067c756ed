"""The Redis engine's :class:`~taskhub.store.lock.LeaderLock`: ``SET NX PX`` to take the lock,
compare-and-``PEXPIRE`` to renew it, compare-and-``DEL`` to release it (``renew.lua``,
``release.lua``), and the store's fence on the lock's key (docs/redis.md)."""

from __future__ import annotations

from taskhub.store.redis.engine import RedisStore

LEADER = "leader"  # the lock's name: key {prefix}:lock:leader


class RedisLeaderLock:
    """Lock ``name`` of the Redis store at ``store_url`` (the same URL the hubs store into)."""

    def __init__(self, store_url: str, name: str = LEADER) -> None:
        self.store_url = store_url
        self.name = name
        self._store = RedisStore.from_url(store_url)  # a connection of its own
        self.url = self._store.url

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def acquire(self, token: str, ttl_ms: int) -> bool:
        return await self._store.acquire_lock(self.name, token, ttl_ms)

    async def renew(self, token: str, ttl_ms: int) -> bool:
        return await self._store.renew_lock(self.name, token, ttl_ms)

    async def release(self, token: str) -> bool:
        return await self._store.release_lock(self.name, token)

    async def owner(self) -> str | None:
        return await self._store.lock_owner(self.name)

    def fenced_store(self, token: str) -> RedisStore:
        store = RedisStore.from_url(self.store_url)
        store.set_fence(store.lock_key(self.name), token)
        return store
