"""The leader lock: how several hubs sharing one store agree which of them runs the lifecycle.

A :class:`LeaderLock` is a lease on one lock with a fencing token. A hub takes it with its
token (``"<instance id> <advertised URL>"``: unique per process, and naming where the others
relay to), renews it well before the lease runs out, and releases it when it steps down. The
token is also the fence: :meth:`LeaderLock.fenced_store` gives the store the leader writes
through, which refuses every write (:class:`~taskhub.errors.StoreFenced`, writing nothing)
once the lock no longer holds that token, so a hub that stalled past its lease cannot overwrite
what its successor does. The Redis engine implements it (:mod:`taskhub.store.redis.lock`);
:func:`taskhub.store.open_leader_lock` picks it by URL. The hub's cluster
(:mod:`taskhub.hub.cluster`) uses only this protocol.
"""

from __future__ import annotations

from typing import Protocol

from taskhub.store.base import Store


class LeaderLock(Protocol):
    """A lease on one lock, held by at most one token at a time."""

    url: str  # where the lock lives, without secrets (for logs)

    async def open(self) -> None:
        """Connect; StoreUnavailable if the lock's store cannot be reached."""
        ...

    async def close(self) -> None: ...

    async def acquire(self, token: str, ttl_ms: int) -> bool:
        """Take the lock for ``ttl_ms`` if nobody holds it; True if taken. Not re-entrant:
        holding it already with the same token also answers False (renew instead)."""
        ...

    async def renew(self, token: str, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now if ``token`` still holds it; False when it
        expired or another token took it (the caller must stop acting as the holder)."""
        ...

    async def release(self, token: str) -> bool:
        """Let the lock go if ``token`` holds it (never another's); True if it did."""
        ...

    async def owner(self) -> str | None:
        """The token holding the lock, or None when it is free."""
        ...

    def fenced_store(self, token: str) -> Store:
        """A new store (not open yet) over the same data whose writes succeed only while
        ``token`` holds this lock; checked atomically with each write."""
        ...
