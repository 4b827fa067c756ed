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

With several partitions (docs/deployment.md, "Partition leases") each partition has a lease of
its own, ``partition:<p>``, kept through :class:`PartitionLeases`: a lease is taken with a
*holder* (``"<instance id> <advertised URL>"``) and answers a *fencing token*
``"<epoch> <holder>"``, whose epoch the store counts up at every take of that partition, so
every tenure of a partition has a token of its own (a hub that lost a partition and took it
again cannot write with its old tenure's stale store). The same object keeps the members:
every hub heartbeats a :class:`Member` record with a TTL, and the live ones are listed; each
member's connection slots (``max_connections`` counted across hubs) live and expire with it.
Engines: Redis (:mod:`taskhub.store.redis.leases`) and SQLite
(:mod:`taskhub.store.sqlite_leases`, for several hub processes on one machine);
:func:`taskhub.store.open_partition_leases` picks one by URL.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

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


def lease_name(partition: int) -> str:
    """The lease of ``partition``: ``partition:<p>``."""
    return f"partition:{partition}"


class Member(NamedTuple):
    """A live hub of the cluster, as its heartbeat says."""

    instance: str  # new for every process (os.urandom), so a restarted hub is a new member
    url: str  # where the other hubs reach it


def check_member(member: Member) -> None:
    """ValueError naming what is wrong with a member record an engine is asked to keep."""
    if not member.instance or any(c in member.instance for c in " \t\r\n{}"):
        raise ValueError(f"bad member instance id {member.instance!r}: no spaces nor braces")
    if not member.url or any(c.isspace() for c in member.url):
        raise ValueError(f"bad URL {member.url!r} for member {member.instance}")


class Token(NamedTuple):
    """A fencing token taken apart: ``"<epoch> <instance> <url>"``."""

    epoch: int  # counted up by the store at every take of the partition
    instance: str
    url: str

    @classmethod
    def parse(cls, token: str) -> Token:
        """ValueError naming the token when it is not ``"<epoch> <instance> <url>"``."""
        parts = token.split(" ", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1]:
            raise ValueError(f"bad fencing token {token!r}: want '<epoch> <instance> <url>'")
        return cls(int(parts[0]), parts[1], parts[2])


class PartitionLeases(Protocol):
    """One lease per partition (``partition:<p>``, ``0 <= p < partitions``), each held by at
    most one fencing token at a time, and the cluster's member list.

    Every call that names a partition raises ValueError for one outside ``range(partitions)``.
    Expiry is the store's: a lease not renewed within its TTL is free (a hub killed with
    SIGKILL loses its partitions after at most one TTL), and a member not heard of within its
    TTL is not listed.
    """

    url: str  # where the leases live, without secrets (for logs)
    partitions: int

    async def open(self) -> None:
        """Connect; StoreUnavailable if the store cannot be reached."""
        ...

    async def close(self) -> None: ...

    async def take(self, partition: int, holder: str, ttl_ms: int) -> str | None:
        """Take the partition's lease for ``ttl_ms`` if it is free; its new fencing token
        (``"<epoch> <holder>"``, the epoch one more than the last take's), or None when
        another token holds it. Holding it already also answers None (renew instead)."""
        ...

    async def renew(self, partition: int, token: str, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now if ``token`` still holds it; False when it
        expired or another token took it (the caller must stop leading the partition)."""
        ...

    async def renew_many(
        self, held: list[tuple[int, str]], ttl_ms: int, member: Member | None = None
    ) -> list[bool]:
        """:meth:`renew` for every ``(partition, token)`` of ``held``, and :meth:`heartbeat`
        ``member`` (when given), in one store call where the engine allows (one SQLite
        transaction, one Redis round trip): whether each lease was renewed, in order."""
        ...

    async def release(self, partition: int, token: str) -> bool:
        """Let the lease go if ``token`` holds it (never another's); True if it did."""
        ...

    async def holder(self, partition: int) -> str | None:
        """The token holding the partition's lease, or None when it is free."""
        ...

    def fenced_store(self, partition: int, token: str) -> Store:
        """A new store (not open yet) over the partition's data whose writes succeed only
        while ``token`` holds the partition's lease; checked atomically with each write (a
        refused write raises StoreFenced and writes nothing)."""
        ...

    async def heartbeat(self, member: Member, ttl_ms: int) -> None:
        """Say ``member`` is alive for ``ttl_ms`` more (adds it if it was not listed)."""
        ...

    async def leave(self, instance: str) -> None:
        """Take the member off the list at once (a hub that stops)."""
        ...

    async def members(self) -> list[Member]:
        """The members whose heartbeat has not expired, by instance id."""
        ...

    # A member's connection slots: how many connections of each service (credential) it
    # holds, so that ``max_connections`` holds across the hubs of a deployment. Each member's
    # record lives as long as its member record: :meth:`heartbeat` extends it, :meth:`leave`
    # removes it, and a member killed with SIGKILL stops counting once it expires.

    async def claim_slot(
        self, instance: str, service: str, held: int, limit: int, ttl_ms: int
    ) -> int | None:
        """Set ``instance``'s count of ``service`` connections to ``held`` (this one
        included) if the other live members hold at most ``limit - held``, atomically with
        that count; None when set (its record then lives ``ttl_ms``), else how many the
        others hold (nothing written)."""
        ...

    async def set_slots(self, instance: str, service: str, held: int, ttl_ms: int) -> None:
        """Set ``instance``'s count of ``service`` connections to ``held`` (0 removes it)."""
        ...
