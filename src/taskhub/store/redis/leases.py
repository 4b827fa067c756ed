"""The Redis engine's :class:`~taskhub.store.lock.PartitionLeases`: one lease per partition and
the cluster's member list.

Keys (``P`` the prefix, ``T`` the partition's hash tag: ``{P}:`` when there is one partition,
``P{p<p>}:`` otherwise, the tag the partition's store keys carry)::

    T lock:partition:<p>     string with a TTL: the fencing token "<epoch> <holder>"
    T epoch:partition:<p>    counter: the last take's epoch (never expires)
    {P}:members              set: instance ids that heartbeat (pruned when listed)
    {P}:member:<instance>    string with a TTL: the member's advertised URL
    {P}:slots                set: instance ids with connection slots (pruned when claimed)
    {P}:slots:<instance>     hash with the member's TTL: service -> connections it holds

A lease shares its partition's hash tag, so on a Redis Cluster it lives on the same primary as
the partition's data and the batch script checks it (the fence) atomically with its writes.
The member keys live in the global tag: they are read a few times per lease, never per task;
so do the slot keys, written when a connection of a credential with ``max_connections`` opens
or closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from taskhub.errors import StoreUnavailable
from taskhub.store.lock import Member, check_member, lease_name
from taskhub.store.redis import scripts
from taskhub.store.redis.connection import (
    CONNECTION_ERRORS,
    Client,
    client_options,
    connect,
    parse_url,
    safe_url,
    store_error,
)
from taskhub.store.redis.engine import RedisStore

# name -> the .lua file (None: the engine's compare-and-PEXPIRE and compare-and-DEL).
_SCRIPTS: dict[str, str | None] = {
    "renew": None,
    "release": None,
    "take": "lease_take",
    "beat": "member_beat",
    "members": "member_list",
    "claim": "slot_claim",
    "slots": "slot_set",
}


def partition_tag(prefix: str, partition: int, partitions: int) -> str:
    """The hash tag of ``partition``'s keys: ``{prefix}:`` with one partition (today's layout),
    ``prefix{p<partition>}:`` with several (docs/partition-design: store namespaces)."""
    if partitions == 1:
        return "{" + prefix + "}:"
    return f"{prefix}{{p{partition}}}:"


def check_partition(partition: int, partitions: int) -> None:
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is out of range: 0 <= p < {partitions}")


class RedisPartitionLeases:
    """The partition leases and members of the Redis store at ``store_url``, split in
    ``partitions``."""

    def __init__(self, store_url: str, partitions: int) -> None:
        if not 1 <= partitions <= 1024:
            raise ValueError(f"partitions must be between 1 and 1024, got {partitions}")
        self.store_url = store_url
        self.partitions = partitions
        self.url = safe_url(store_url)
        self._redis_url, self.prefix, self.cluster = parse_url(store_url)
        self._client: Client | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._global = "{" + self.prefix + "}:"

    def lease_key(self, partition: int) -> str:
        """The key holding ``partition``'s lease (the fence of its store)."""
        return self._key("lock", partition)

    def _key(self, kind: str, partition: int) -> str:
        check_partition(partition, self.partitions)
        tag = partition_tag(self.prefix, partition, self.partitions)
        return f"{tag}{kind}:{lease_name(partition)}"

    async def open(self) -> None:
        if self._client is not None:
            return
        options = client_options(
            socket_timeout=10.0, connect_timeout=5.0, health_check_interval=15, cluster=self.cluster
        )
        client, _ = await connect(self._redis_url, options, cluster=self.cluster, url=self.url)
        files = resources.files("taskhub.store.redis")
        for name, file in _SCRIPTS.items():
            text = (
                scripts.source(name)
                if file is None
                else files.joinpath(f"{file}.lua").read_text("utf-8")
            )
            self._scripts[name] = client.register_script(text)
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(lambda c: self._scripts[name](keys=keys, args=args, client=c))

    async def _call(self, command: Callable[[Client], Awaitable[Any]]) -> Any:
        client = self._client
        if client is None:
            raise StoreUnavailable(f"partition leases at {self.url} are not open", url=self.url)
        try:
            return await command(client)
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable(
                f"redis store {self.url} is unavailable: {exc}", url=self.url
            ) from exc
        except ResponseError as exc:
            raise store_error(exc, self.url, "") from exc

    # -- leases ---------------------------------------------------------------------------

    async def take(self, partition: int, holder: str, ttl_ms: int) -> str | None:
        keys = [self.lease_key(partition), self._key("epoch", partition)]
        token = await self._run("take", keys, [holder, ttl_ms])
        return None if token is None else bytes(token).decode()

    async def renew(self, partition: int, token: str, ttl_ms: int) -> bool:
        return bool(await self._run("renew", [self.lease_key(partition)], [token, ttl_ms]))

    async def renew_many(
        self, held: list[tuple[int, str]], ttl_ms: int, member: Member | None = None
    ) -> list[bool]:
        calls = [("renew", [self.lease_key(p)], [token, ttl_ms]) for p, token in held]
        if member is not None:
            check_member(member)
            calls.append(("beat", self._beat_keys(member), [member.instance, member.url, ttl_ms]))
        if self.cluster:  # the keys live on several primaries: a call to each, at once
            answers = await asyncio.gather(*(self._run(*call) for call in calls))
        else:
            answers = await self._call(lambda c: self._pipelined(c, calls))
        return [bool(answer) for answer in answers[: len(held)]]

    async def _pipelined(
        self, client: Client, calls: list[tuple[str, list[str], list[Any]]]
    ) -> Any:
        """The script calls ``calls`` in one round trip (the pipeline loads them first)."""
        async with client.pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                # redis-py documents a pipeline as a script's client; its stubs do not say so.
                await self._scripts[name](keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
            return await pipe.execute()

    async def release(self, partition: int, token: str) -> bool:
        return bool(await self._run("release", [self.lease_key(partition)], [token]))

    async def holder(self, partition: int) -> str | None:
        key = self.lease_key(partition)
        value = await self._call(lambda c: c.get(key))
        return None if value is None else bytes(value).decode()

    def fenced_store(self, partition: int, token: str) -> RedisStore:
        key = self.lease_key(partition)
        store = self._partition_store(partition)
        store.set_fence(key, token)  # ValueError if the store's tag is not the partition's
        return store

    def _partition_store(self, partition: int) -> RedisStore:
        # The partition's own namespace (taskhub.store.open_store); one partition: the URL's.
        own = partition if self.partitions > 1 else None
        return RedisStore.from_url(self.store_url, partition=own)

    # -- members --------------------------------------------------------------------------

    async def heartbeat(self, member: Member, ttl_ms: int) -> None:
        check_member(member)
        await self._run("beat", self._beat_keys(member), [member.instance, member.url, ttl_ms])

    def _beat_keys(self, member: Member) -> list[str]:
        """``member_beat.lua``'s keys: the member set, its record, its connection slots."""
        return [
            self._global + "members",
            self._global + "member:" + member.instance,
            self._slots(member.instance),
        ]

    async def leave(self, instance: str) -> None:
        await self._call(lambda c: c.delete(self._global + "member:" + instance))
        await self._call(lambda c: c.srem(self._global + "members", instance))
        await self._call(lambda c: c.delete(self._slots(instance)))

    async def members(self) -> list[Member]:
        flat = await self._run("members", [self._global + "members"], [self._global + "member:"])
        pairs = [
            Member(bytes(flat[i]).decode(), bytes(flat[i + 1]).decode())
            for i in range(0, len(flat), 2)
        ]
        return sorted(pairs)

    # -- connection slots -----------------------------------------------------------------

    def _slots(self, instance: str) -> str:
        return self._global + "slots:" + instance

    async def claim_slot(
        self, instance: str, service: str, held: int, limit: int, ttl_ms: int
    ) -> int | None:
        keys = [self._global + "slots", self._slots(instance)]
        args = [instance, service, held, limit, ttl_ms, self._global + "slots:"]
        others = await self._run("claim", keys, args)
        return None if others is None else int(others)

    async def set_slots(self, instance: str, service: str, held: int, ttl_ms: int) -> None:
        keys = [self._global + "slots", self._slots(instance)]
        await self._run("slots", keys, [instance, service, held, ttl_ms])
