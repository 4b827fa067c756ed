"""The connection a store keeps for its batch script's calls (``RedisStore.apply``), instead of
one taken from redis-py's pool and given back on every call."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection


class KeptConnection:
    """``EVALSHA`` on one connection of a single-server client, kept between calls.

    redis-py's ``execute_command`` takes a connection from the pool and gives it back on every
    call, checking it for unread data (a ``recv`` and a timeout context) and counting it for
    its metrics: 39 us of the caller's CPU for an ``EVALSHA`` of five arguments, against 21 us
    sending and reading on a connection kept (docs/decisions.md, "Redis, layout 4 /
    redis-server's per-task cost"); a burst's batches are 10-20 tasks. The call is otherwise
    the same: redis-py's packer, the connection's health check before a send after it was idle,
    and the connection's own ``Retry`` as ``execute_command`` retries (the connection closed
    before each retry; the batch script is idempotent). redis-py closes the connection on any
    error while sending or reading but a Redis error reply (``read_response`` raises that one
    after reading it whole), so a call given up on at its timeout leaves no late reply to be
    read as the next call's. Calls take turns (a lock): one connection, one reply at a time.
    """

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def evalsha(
        self, client: aioredis.Redis, sha: str, keys: list[str], args: list[Any]
    ) -> Any:
        """The script's reply; raises what redis-py raises (``NoScriptError`` included)."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
                self._conn = conn
            packed = conn.pack_command("EVALSHA", sha, len(keys), *keys, *args)

            async def call() -> Any:
                await conn.send_packed_command(packed)
                return await conn.read_response()

            async def closed(_error: Exception) -> None:
                await conn.disconnect()

            return await conn.retry.call_with_retry(call, closed)
