"""Storage engines behind one interface; :func:`open_store` picks one by URL."""

from __future__ import annotations

from pathlib import Path

from taskhub.partitions import check_partitions
from taskhub.store.base import Store
from taskhub.store.lock import LeaderLock, Member, PartitionLeases
from taskhub.store.urls import REDIS_SCHEMES

__all__ = [
    "REDIS_SCHEMES",
    "LeaderLock",
    "Member",
    "PartitionLeases",
    "Store",
    "open_leader_lock",
    "open_partition_leases",
    "open_store",
]


def open_store(url: str, *, partition: int | None = None, partitions: int = 1) -> Store:
    """``memory://``, ``sqlite:///path/to/file.db`` (or ``sqlite://:memory:``),
    ``redis://[:password@]host:port/db[?prefix=NAME]`` (``rediss://`` for TLS),
    ``redis+cluster://host:port[?prefix=NAME]`` (``rediss+cluster://``) for a Redis Cluster.

    ``partition`` of ``partitions`` (docs/deployment.md, "Partitions"): with one partition
    (or ``partition=None``, the deployment's cluster-wide records) the store is the URL's, as
    it always was. With several, partition ``p`` has a namespace of its own: a MemoryStore of
    its own, the file ``dir/name.p<p>.db`` beside ``dir/name.db``, or every Redis key under
    ``<prefix>{p<p>}:``, so all of a partition's keys share one hash tag.
    """
    check_partitions(partitions)
    if partition is not None and not 0 <= partition < partitions:
        raise ValueError(f"partition must be from 0 to {partitions - 1}, got {partition}")
    own = partition if partitions > 1 else None  # one partition: the URL's own layout
    if url.startswith("memory:"):
        from taskhub.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from taskhub.store.sqlite import SqliteStore

        if own is None:
            return SqliteStore.from_url(url)
        path = partition_path(SqliteStore.from_url(url).path, own)
        return SqliteStore(path, f"sqlite:///{path}")
    if url.startswith(REDIS_SCHEMES):
        from taskhub.store.redis import RedisStore

        return RedisStore.from_url(url, partition=own)
    raise ValueError(
        f"unknown store URL {url.split('@')[-1]!r}: use memory://, sqlite:///path, "
        "redis://host:port/db, rediss://host:port/db or redis+cluster://host:port"
    )


def partition_path(path: str, partition: int) -> str:
    """The sqlite file of ``partition`` beside ``path``: ``dir/name.db`` -> ``dir/name.p3.db``
    (``:memory:`` stays: each connection has a database of its own)."""
    if path == ":memory:":
        return path
    file = Path(path)
    return str(file.with_name(f"{file.stem}.p{partition}{file.suffix}"))


def open_leader_lock(url: str) -> LeaderLock:
    """The leader lock of the store at ``url``, for hubs that share it (taskhub.hub.cluster).
    Only a Redis store can be shared: ValueError for any other URL."""
    if url.startswith(REDIS_SCHEMES):
        from taskhub.store.redis import RedisLeaderLock

        return RedisLeaderLock(url)
    raise ValueError(
        f"no leader lock for store URL {url.split('@')[-1]!r}: only a redis store "
        "(redis://, rediss://, redis+cluster://) can be shared by several hubs"
    )


def open_partition_leases(url: str, partitions: int) -> PartitionLeases:
    """The partition leases and members of the store at ``url`` split in ``partitions``
    (docs/deployment.md, "Partition leases"): a Redis store (hubs on any machines) or a SQLite
    file (hub processes on one machine). ValueError for any other URL."""
    if url.startswith(REDIS_SCHEMES):
        from taskhub.store.redis.leases import RedisPartitionLeases

        return RedisPartitionLeases(url, partitions)
    if url.startswith("sqlite:"):
        from taskhub.store.sqlite_leases import SqlitePartitionLeases

        return SqlitePartitionLeases(url, partitions)
    raise ValueError(
        f"no partition leases for store URL {url.split('@')[-1]!r}: hubs share a redis store "
        "(redis://, rediss://, redis+cluster://) or, on one machine, a sqlite:///file.db"
    )
