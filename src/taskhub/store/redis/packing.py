"""hiredis' command packer for redis-py's asyncio connections.

redis-py packs commands in Python, a few steps per argument; a batch's script call carries ~30
arguments per task, which was ~15 % of a hub's CPU per task on redis://
(docs/performance.md). redis-py has no public hook for a packer, so each client's connection
class is replaced by a subclass whose ``pack_command`` calls hiredis: this module is the one
place that relies on that method, and test_hiredis_packing_sends_what_redis_py_would checks
it byte for byte, so a redis-py upgrade that changes it fails there.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

# hiredis packs a command into one buffer, grown as it goes; redis-py's packer into a list of
# ~6 KB chunks. For a huge batch (a subscription that routes 100,000 waiting tasks at once) the
# one buffer raised the hub's peak memory by ~150 MiB, so commands with more arguments than
# this (~700 tasks) are packed by redis-py.
HIREDIS_MAX_ARGS = 20_000


class HiredisPacking:
    """Commands packed by hiredis, in C. redis-py's asyncio connection packs in Python, a
    few steps per argument, and a batch's script call carries ~30 arguments per task: that
    was ~15 % of a hub's CPU per task on redis:// (docs/performance.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if len(args) > HIREDIS_MAX_ARGS:
            packed_by_redis_py: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed_by_redis_py
        # As redis-py's packer: a first argument such as "CLIENT SETINFO" is several words.
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            # The engine's arguments (str, bytes, int) go to hiredis as they are: no Python
            # step per argument (a batch carries ~10 per task).
            return [hiredis.pack_command(args)]
        except TypeError:  # hiredis takes no bytearray: as redis-py, send its bytes
            packed: Any = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
            return [hiredis.pack_command(packed)]


def pack_with_hiredis(client: aioredis.Redis | RedisCluster) -> None:
    """Give the client's connections (not made yet) hiredis' packer, whatever their class
    (TCP, TLS, Unix socket; one per cluster node)."""
    if isinstance(client, RedisCluster):
        kwargs = client.connection_kwargs
        kwargs["connection_class"] = packing(kwargs.get("connection_class", Connection))
    else:
        pool = client.connection_pool
        pool.connection_class = packing(pool.connection_class)


def packing(cls: type[Any]) -> type[Any]:
    """A subclass of connection class ``cls`` that packs with hiredis."""
    return type(cls.__name__, (HiredisPacking, cls), {})
