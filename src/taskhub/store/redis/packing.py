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

# hiredis packs a command into one buffer, grown as it goes. For a huge batch (a subscription
# that routes 100,000 waiting tasks at once) one buffer raised the hub's peak memory by ~150 MiB,
# so a command with more arguments than this (~700 tasks) is packed in pieces of PIECE_ARGS
# arguments, each by hiredis (redis-py's packer, which these went to before, walks every
# argument in Python: a burst's first batch of ~5,000 tasks was several % of the hub's CPU).
HIREDIS_MAX_ARGS = 20_000
PIECE_ARGS = 2_000  # ~200 KB of a burst's batch


class HiredisPacking:
    """Commands packed by hiredis, in C. redis-py's asyncio connection packs in Python, a
    few steps per argument, and a batch's script call carries ~30 arguments per task: that
    was ~15 % of a hub's CPU per task on redis:// (docs/performance.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py's packer: a first argument such as "CLIENT SETINFO" is several words.
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        if len(args) > HIREDIS_MAX_ARGS:
            return _pack_in_pieces(args)
        return [_pack(args)]


def _pack(args: tuple[Any, ...]) -> bytes:
    try:
        # The engine's arguments (str, bytes, int) go to hiredis as they are: no Python step
        # per argument (a batch carries ~10 per task).
        packed: bytes = hiredis.pack_command(args)
    except TypeError:  # hiredis takes no bytearray: as redis-py, send its bytes
        plain: Any = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
        packed = hiredis.pack_command(plain)
    return packed


def _pack_in_pieces(args: tuple[Any, ...]) -> list[bytes]:
    """A long command as the header ``*<count>`` and its arguments packed PIECE_ARGS at a time
    (each piece without the ``*<count>`` header hiredis gives it)."""
    out = [b"*%d\r\n" % len(args)]
    for first in range(0, len(args), PIECE_ARGS):
        piece = _pack(args[first : first + PIECE_ARGS])
        out.append(piece[piece.index(b"\n") + 1 :])
    return out


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
