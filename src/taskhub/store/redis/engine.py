"""Redis store engine: several hubs share one Redis (or a Redis Cluster, or a managed Redis).

Key layout: :mod:`.keys` (layout 3; a store written in layout 1 or 2 is read as it is).

One partition ``n`` of several (docs/deployment.md, "Partitions") has the same keys under
``P{pn}:`` instead of ``{P}:`` (``taskhub{p3}:t:<id>``): the hash tag is then the partition,
so each partition's keys share one slot and the partitions spread over a Cluster's primaries.
The deployment's cluster-wide records stay under ``{P}:``.

The braces make ``{P}`` a Redis Cluster *hash tag*: every key of one TaskHub hashes to the
same slot, so one Lua script can read and write all of them atomically on a Cluster too. The
price is that one TaskHub's data is not spread over the Cluster's nodes: it lives on one
shard (and its replicas). Run several TaskHubs with different prefixes to use several shards.

``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) connects with redis-py's
cluster client: it learns the slot map from that seed node, sends every command and script
to the primary that owns the prefix's slot, and follows ``MOVED``/``ASK`` redirects when
slots move. Every script is called with a key of the store as ``KEYS[1]``: that key is what
routes it.

Every write of a batch is one Lua script call (``EVALSHA``; a big one is staged, committed and
applied in bounded calls, :mod:`.batches`), so a batch is atomic: Redis runs
a script to the end before serving anyone else, and the script checks everything that could
make it fail (the fence) before its first write. The scripts compute key names from the
prefix they are given; that is allowed on Cluster because all of them share the hash tag. The
scripts are the ``*.lua`` files beside this module (:mod:`.scripts` loads them).

The batch script declares Redis 7 script flags (a ``#!lua`` first line, no flags listed: it
writes and may not run out of memory), so a full Redis with ``noeviction`` refuses the whole
batch with ``OOM`` before running any of it. Redis 6 cannot compile that line: :meth:`open`
notices and falls back to the script without it (checked by Redis only at its first write
that may grow memory, and only if the script wrote nothing before it: a batch that starts
with a ``ZREM`` is taken, so a full Redis 6 still takes batches).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from taskhub.errors import StoreUnavailable
from taskhub.records import EventRecord, TaskRecord, WriteBatch
from taskhub.store.redis import batches, scripts
from taskhub.store.redis.connection import (
    CONNECTION_ERRORS,
    DEFAULT_PREFIX,
    Client,
    check_eviction,
    client_options,
    connect,
    parse_url,
    safe_url,
    store_error,
)
from taskhub.store.redis.kept import KeptConnection
from taskhub.store.redis.keys import TERMINAL_ORDER, Keys, store_tag

# load_active reads the active set in pages, so no single script holds Redis for long or
# builds one huge reply.
LOAD_PAGE = 1000


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters, so the prefix is matched literally by SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# The terminal states, as the scripts are told them (common.lua, list.lua).
_TERMINAL = " ".join(TERMINAL_ORDER)
# list.lua reads at most this many live tasks per call when it filters them by state or
# action (each one HMGET, ~1-2 us), so a page of rare tasks never holds Redis for long: the
# engine calls it again from where it stopped.
LIVE_SCAN_BUDGET = 2000


def _joined(numbers: list[int]) -> str:
    return " ".join(map(str, numbers))


def _score(value: float) -> str:
    # repr round-trips a float exactly, and Redis parses it with strtod: no precision lost.
    return repr(float(value))


def _events(
    layout1: list[bytes],
    fields: list[bytes],
    decode: Callable[[bytes], EventRecord],
    decode_many: Callable[[bytes], list[EventRecord]],
) -> list[EventRecord]:
    """A task's events, in seq order, from flat [field, value, ...] replies: its layout-1
    event hash's and its hash's (which also holds r, s, a, e). Its events there: g<n> fields,
    each the JSON array of one batch's (n: the batch's number), and fields named by a seq, one
    event each, which layout 2 wrote (before any g<n>). Layout 1's come first; later writes
    replace earlier events of the same seq."""
    by_seq: dict[int, EventRecord] = {}
    groups: list[tuple[int, bytes]] = []
    for flat in (layout1, fields):
        for j in range(0, len(flat), 2):
            name = flat[j]
            if name[:1] == b"g":
                groups.append((int(name[1:]), flat[j + 1]))
            elif name.isdigit():
                by_seq[int(name)] = decode(flat[j + 1])
    groups.sort()
    for _, blob in groups:
        for e in decode_many(blob):
            by_seq[e.seq] = e
    return [by_seq[seq] for seq in sorted(by_seq)]


class RedisStore:
    """A :class:`~taskhub.store.base.Store` on Redis, plus the lock and heartbeat primitives
    that several hubs sharing the store coordinate with.

    Records are encoded (msgspec JSON, as in the other engines) when :meth:`apply` is called,
    before its first ``await``, so the batch is a snapshot even though the hub keeps changing
    its live records while the script runs.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        url: str | None = None,
        socket_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        health_check_interval: int = 15,
        cluster: bool = False,
        partition: int | None = None,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            # A brace would end or restart the hash tag: keys of one store would scatter.
            raise ValueError(f"bad redis key prefix {prefix!r}: non-empty, without braces")
        self.prefix = prefix
        self.url = safe_url(url if url is not None else redis_url)
        self._redis_url = redis_url
        self.cluster = cluster
        # One partition of several (docs/deployment.md, "Partitions"): its keys share the
        # hash tag {p<n>}, so a Redis Cluster spreads partitions over its primaries.
        self.partition = partition
        self.keys = Keys(store_tag(prefix, partition))
        self._tag = self.keys.tag
        # Every call is bounded by one asyncio.timeout of this many seconds (the call is
        # abandoned and its connection closed), not by redis-py's socket_timeout: that wraps
        # each send in asyncio.wait_for and each read in a timeout, ~30 us of the hub's CPU
        # per call on Python 3.11 (a PING: 71 against 40 us).
        self.call_timeout = socket_timeout
        self._options = client_options(
            socket_timeout=None,
            connect_timeout=connect_timeout,
            health_check_interval=health_check_interval,
            cluster=cluster,
        )
        self._client: Client | None = None
        self._closed = False
        self._fence_key = ""
        self._fence_token = ""
        self._encoder = msgspec.json.Encoder()
        self._packer = msgspec.msgpack.Encoder()  # the batch's header (batches.batch_args)
        self._task_decoder = msgspec.json.Decoder(TaskRecord)
        self._event_decoder = msgspec.json.Decoder(EventRecord)
        self._events_decoder = msgspec.json.Decoder(list[EventRecord])
        self._any_decoder = msgspec.json.Decoder()
        self._scripts: dict[str, AsyncScript] = {}
        # Whether the batch script declares script flags (Redis 7+): known after open().
        self.script_flags = False
        # How many live tasks one list.lua call reads at most when it filters them.
        self.live_scan_budget = LIVE_SCAN_BUDGET
        # A batch of more items is written in pieces (docs/redis.md, "Big batches").
        self.piece_items = batches.PIECE_ITEMS
        self._unfinished: str | None = None  # a big batch committed and not all applied
        self._kept = KeptConnection()  # the batch script's calls (apply)

    @classmethod
    def from_url(cls, url: str, *, partition: int | None = None) -> RedisStore:
        """``redis://[[user]:password@]host[:port][/db][?prefix=NAME]``, or ``rediss://`` for
        TLS; ``redis+cluster://host:port[?prefix=NAME]`` (``rediss+cluster://``) for a Redis
        Cluster, any one of its nodes as the seed. Other query parameters are passed to
        redis-py (``ssl_ca_certs=...`` and so on). ``partition``: that partition's keys."""
        redis_url, prefix, cluster = parse_url(url)
        return cls(redis_url, prefix=prefix, url=url, cluster=cluster, partition=partition)

    # -- keys -----------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key of this store: ``{prefix}:part:part`` (a partition's: ``prefix{p3}:part``)."""
        return self.keys.key(*parts)

    def lock_key(self, name: str) -> str:
        """The key that holds lock ``name``; pass it to :meth:`set_fence`."""
        return self.keys.lock(name)

    # -- plumbing -------------------------------------------------------------------------

    def _redis(self) -> Client:
        client = self._client
        if client is None:
            what = "closed" if self._closed else "not open yet (call open() first)"
            raise StoreUnavailable(f"redis store {self.url} is {what}", url=self.url)
        return client

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        if type(exc) is TimeoutError:  # asyncio.timeout's, around the call
            exc = TimeoutError(f"no answer within {self.call_timeout:g}s")
        return StoreUnavailable(f"redis store {self.url} is unavailable: {exc}", url=self.url)

    async def _script(
        self, name: str, keys: list[str], args: list[Any], *, kept: bool = False
    ) -> Any:
        """``kept``: on the connection kept for the batch script (a single server only)."""
        client = self._redis()
        script = self._scripts[name]
        try:
            async with asyncio.timeout(self.call_timeout):
                try:
                    if kept and not isinstance(client, RedisCluster):
                        return await self._kept.evalsha(client, script.sha, keys, args)
                    # EVALSHA by hand: AsyncScript's call copies the arguments twice more and
                    # costs ~14 us a call more (a batch is one call, ~20 tasks in a burst).
                    return await client.execute_command(
                        "EVALSHA", script.sha, len(keys), *keys, *args
                    )
                except NoScriptError:
                    # The server lost it (a restarted Redis, a failover, SCRIPT FLUSH):
                    # redis-py's script object loads it and calls again.
                    return await script(keys=keys, args=args, client=client)
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            mapped = self._response_error(exc)
            if mapped is exc:
                raise  # a real error (a bug, a wrong key type): keep it as it is
            raise mapped from exc

    def _response_error(self, exc: ResponseError) -> Exception:
        return store_error(exc, self.url, self._fence_key)

    async def _call(self, command: Any) -> Any:
        """Await one redis-py command, turning connection trouble into StoreUnavailable."""
        try:
            async with asyncio.timeout(self.call_timeout):
                return await command
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            mapped = self._response_error(exc)
            if mapped is exc:
                raise  # a real error (a bug, a wrong key type): keep it as it is
            raise mapped from exc

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check the server answers; StoreUnavailable names the URL if not."""
        if self._closed:
            raise StoreUnavailable(
                f"redis store {self.url} was closed and cannot be opened again", url=self.url
            )
        if self._client is not None:
            return
        client, flags = await connect(
            self._redis_url, self._options, cluster=self.cluster, url=self.url
        )
        if self._closed:  # close() was called while we were connecting
            await client.aclose()
            raise StoreUnavailable(f"redis store {self.url} was closed while opening")
        self.script_flags = flags
        self._scripts = scripts.register(client, flags=flags)
        self._client = client
        await check_eviction(client, self.keys.route(), self.url)

    async def close(self) -> None:
        """Close the connection pool; later calls raise StoreUnavailable."""
        client, self._client = self._client, None
        self._closed = True
        if client is not None:
            await client.aclose()

    def set_fence(self, key: str | None, token: str | None) -> None:
        """Write only while ``GET key == token`` (``None`` turns fencing off).

        Every write (:meth:`apply`, :meth:`remove_ended_before`) checks the fence atomically
        with its writes and raises :class:`~taskhub.errors.StoreFenced` (writing nothing)
        when another owner holds it. ``key`` is normally :meth:`lock_key` of the leader lock;
        it must be a key of this store (same hash tag) so the check runs on the same shard.
        """
        if key is None or token is None:
            self._fence_key = self._fence_token = ""
            return
        if not key.startswith(self._tag):
            raise ValueError(f"fence key {key!r} is not a key of this store ({self._tag}...)")
        self._fence_key, self._fence_token = key, token

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        """Upserts, event writes, deletes, meta upserts, meta deletes, all or nothing: one
        script call, or for a batch of more than :attr:`piece_items` items, pieces staged,
        committed in one call, then applied one call each (docs/redis.md, "Big batches").

        Fenced stores check the fence first and write nothing when it does not hold.
        """
        if not batch:
            self._redis()  # still refuses when not open or closed, like any other call
            return
        if self._unfinished is not None:  # a big batch committed but not all applied: first
            await self._finish(self._unfinished)
        if batches.size(batch) <= self.piece_items:
            # Everything is encoded here, before the first await: this is the snapshot.
            await self._script("apply", [self.keys.route()], self._args(batch), kept=True)
        else:
            await self._apply_pieces(batch)

    def _args(self, batch: WriteBatch) -> list[Any]:
        head = [self._tag, self._fence_key, self._fence_token, _TERMINAL]
        return batches.batch_args(batch, head, self._encoder.encode, self._packer.encode)

    async def _apply_pieces(self, batch: WriteBatch) -> None:
        """Stage the batch's pieces in a list, commit it (from then on the batch is written
        whole, by this store or by the next leader's :meth:`load_active`), apply the pieces."""
        args: Iterable[list[Any]] = map(self._args, batches.pieces(batch, self.piece_items))
        if not batch.sealed:
            args = list(args)  # the caller may change the records: encoded before any await
        batch_id = os.urandom(8).hex()
        client, stage = self._redis(), self.keys.stage(batch_id)
        await self._call(client.sadd(self.keys.staging(), batch_id))
        lengths: list[int] = []
        for piece in args:  # a sealed batch is encoded a piece at a time, between the calls
            lengths.append(len(piece))
            await self._call(client.execute_command("RPUSH", stage, *piece))
        head = [self._tag, self._fence_key, self._fence_token, batch_id]
        await self._script("commit", [self.keys.route()], [*head, _joined(lengths), sum(lengths)])
        await self._finish(batch_id, len(lengths))

    async def _finish(self, batch_id: str, pieces: int | None = None) -> None:
        """Apply the committed batch's pieces not applied yet, one call each (``pieces``: how
        many there are, if known; else until the script says none is left)."""
        self._unfinished = batch_id
        head = [self._tag, self._fence_key, self._fence_token, batch_id]
        left = -1 if pieces is None else pieces
        while left != 0 and await self._script("staged", [self.keys.route()], head):
            left -= 1
        self._unfinished = None

    async def _recover(self) -> None:
        """What a writer left of big batches: drop those staged but not committed, finish
        those committed (a leader that stopped or lost Redis between their pieces)."""
        fence = [self._tag, self._fence_key, self._fence_token]
        await self._script("drop_staged", [self.keys.route()], fence)
        for batch_id in await self._call(self._redis().hkeys(self.keys.committed())):
            await self._finish(batch_id.decode())

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Oldest ended first (ties by id); a terminal task without ``ended_at`` is kept."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._redis()
        if limit == 0 or math.isnan(at):
            return []
        args = [self._tag, self._fence_key, self._fence_token, _TERMINAL, "(" + _score(at), limit]
        ids = await self._script("remove_ended", [self.keys.ended()], args)
        return [i.decode() for i in ids]

    # -- reads ----------------------------------------------------------------------------

    async def list_ended_before(self, at: float, limit: int = 1000) -> list[TaskRecord]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._redis()
        if limit == 0 or math.isnan(at):
            return []
        args = [self._tag, "(" + _score(at), limit]
        blobs = await self._script("list_ended", [self.keys.ended()], args)
        decode = self._task_decoder.decode
        return [decode(blob) for blob in blobs]

    async def load_active(self) -> list[TaskRecord]:
        """Also finishes (or drops, if not committed) the big batches a previous writer left
        half written, before reading: the next leader restores every batch whole or not at
        all."""
        await self._recover()
        out: list[TaskRecord] = []
        after: str | None = None
        while True:
            page = await self._page(None, None, after, LOAD_PAGE, live=True)
            out += page
            if len(page) < LOAD_PAGE:
                return out
            after = page[-1].id

    async def get_task(self, task_id: str) -> TaskRecord | None:
        blob = await self._call(self._redis().hget(self.keys.task(task_id), "r"))
        return None if blob is None else self._task_decoder.decode(blob)

    async def get_events(self, task_id: str) -> list[EventRecord]:
        keys = [self.keys.task(task_id), self.keys.legacy_events(task_id)]
        fields, layout1 = await self._script("events", keys, [])
        return _events(layout1, fields, self._event_decoder.decode, self._events_decoder.decode)

    async def list_tasks(
        self,
        *,
        action: str | None = None,
        state: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._redis()
        if limit == 0:
            return []
        return await self._page(state, action, after, limit)

    async def _page(
        self,
        state: str | None,
        action: str | None,
        after: str | None,
        limit: int,
        *,
        live: bool = False,
    ) -> list[TaskRecord]:
        """The first ``limit`` tasks after ``after`` in ``state`` (``live``: in any state not
        terminal), of ``action``, None meaning any: list.lua's pages, until one is complete
        (a call stops early when it has read its budget of live tasks)."""
        # All scores are 0, so each set is in byte order of the ids, and list.lua merges them
        # in byte order: UTF-8 byte order is code point order, the order the other engines
        # list in.
        route = [self.keys.index(state or TERMINAL_ORDER[0], action)]
        out: list[TaskRecord] = []
        decode = self._task_decoder.decode
        while True:
            start = "-" if after is None else "(" + after
            args = [self._tag, start, limit - len(out), action or "", state or ""]
            args += ("1" if live else "0", _TERMINAL, self.live_scan_budget)
            cursor, *blobs = await self._script("list", route, args)
            out += [decode(blob) for blob in blobs]
            if not cursor or len(out) >= limit:
                return out
            after = cursor.decode()

    async def list_meta(self, kind: str) -> dict[str, Any]:
        raw = await self._call(self._redis().hgetall(self.keys.meta(kind)))
        decode = self._any_decoder.decode
        entries = {key.decode(): value for key, value in raw.items()}
        return {key: decode(entries[key]) for key in sorted(entries)}

    async def get_meta(self, kind: str, key: str) -> Any:
        blob = await self._call(self._redis().hget(self.keys.meta(kind), key))
        return None if blob is None else self._any_decoder.decode(blob)

    # -- coordination between hubs ----------------------------------------------------------

    async def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take lock ``name`` for ``ttl_ms`` if nobody holds it (``SET NX PX``); True if
        taken. Holding it again with the same token also answers False: use renew_lock."""
        done = await self._call(self._redis().set(self.lock_key(name), token, nx=True, px=ttl_ms))
        return bool(done)

    async def renew_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Extend the lock to ``ttl_ms`` from now if ``token`` still holds it; False when
        it expired or another owner took it (the caller must stop acting as the owner)."""
        done = await self._script("renew", [self.lock_key(name)], [token, ttl_ms])
        return bool(done)

    async def release_lock(self, name: str, token: str) -> bool:
        """Delete the lock if ``token`` holds it (never someone else's); True if it did."""
        done = await self._script("release", [self.lock_key(name)], [token])
        return bool(done)

    async def lock_owner(self, name: str) -> str | None:
        """The token holding lock ``name``, or None when it is free."""
        value = await self._call(self._redis().get(self.lock_key(name)))
        return None if value is None else bytes(value).decode()

    async def heartbeat(self, name: str, value: str, ttl_ms: int) -> None:
        """Say ``name`` is alive for ``ttl_ms`` more, with ``value`` (a URL, a load...)."""
        await self._call(self._redis().set(self.keys.heartbeat(name), value, px=ttl_ms))

    async def alive(self, pattern: str = "*") -> dict[str, str]:
        """The heartbeats whose name matches the glob ``pattern`` and have not expired, by name.

        Uses SCAN, so it costs a walk of the keyspace: meant for a handful of hubs polled
        every few seconds, not for a hot path.
        """
        client = self._redis()
        head = self.keys.heartbeat("")
        match = _glob_escape(head) + pattern
        keys: list[bytes] = []
        try:
            async with asyncio.timeout(self.call_timeout):
                async for k in client.scan_iter(match=match, count=1000):
                    keys.append(k)
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        if not keys:
            return {}
        values = await self._call(client.mget(keys))
        return {
            k.decode()[len(head) :]: v.decode()
            for k, v in zip(keys, values, strict=True)
            if v is not None  # expired between the scan and the read
        }
