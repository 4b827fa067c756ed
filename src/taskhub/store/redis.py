"""Redis store engine: several hubs share one Redis (or a Redis Cluster, or a managed Redis).

Key layout (``P`` is the prefix, ``taskhub`` unless the URL says ``?prefix=NAME``)::

    {P}:t:<id>                hash: r = encoded TaskRecord, s = state, a = action
    {P}:ev:<id>               hash: <seq> -> encoded EventRecord (a replayed seq overwrites)
    {P}:all                   zset, every score 0: task ids in byte (= code point) order
    {P}:active                zset: ids of tasks not in a terminal state (recovery at start)
    {P}:state:<state>         zset: ids by state
    {P}:action:<action>       zset: ids by action
    {P}:sa:<state>:<action>   zset: ids by both, so a doubly filtered page is one range read
    {P}:ended                 zset scored by ended_at: terminal tasks, in removal order
    {P}:meta:<kind>           hash: key -> encoded metadata value
    {P}:lock:<name>           string with a TTL: a lock's owner token (:meth:`acquire_lock`)
    {P}:hb:<name>             string with a TTL: a heartbeat (:meth:`heartbeat`)

The braces make ``{P}`` a Redis Cluster *hash tag*: every key of one TaskHub hashes to the
same slot, so one Lua script can read and write all of them atomically on a Cluster too. The
price is that one TaskHub's data is not spread over the Cluster's nodes: it lives on one
shard (and its replicas). Run several TaskHubs with different prefixes to use several shards.

``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) connects with redis-py's
cluster client: it learns the slot map from that seed node, sends every command and script
to the primary that owns the prefix's slot, and follows ``MOVED``/``ASK`` redirects when
slots move. Every script is called with a key of the store as ``KEYS[1]``: that key is what
routes it.

Every write of a batch is one Lua script call (``EVALSHA``), so a batch is atomic: Redis runs
a script to the end before serving anyone else, and the script checks everything that could
make it fail (the fence) before its first write. The scripts compute key names from the
prefix they are given; that is allowed on Cluster because all of them share the hash tag.

The batch script declares Redis 7 script flags (a ``#!lua`` first line, no flags listed: it
writes and may not run out of memory), so a full Redis with ``noeviction`` refuses the whole
batch with ``OOM`` before running any of it. Redis 6 cannot compile that line: :meth:`open`
notices and falls back to the script without it (checked by Redis only at its first write
that may grow memory, which comes after ``ZREM``s: a full Redis 6 still takes batches).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.records import TERMINAL_STATES, EventRecord, TaskRecord, WriteBatch
from taskhub.store.urls import REDIS_URL_SCHEMES

log = logging.getLogger("taskhub.store.redis")

# The two clients: one server (or a proxy in front of a cluster), or a Redis Cluster.
Client: TypeAlias = aioredis.Redis | RedisCluster
# Query parameters whose value is a secret: masked like the password in messages and logs.
_SECRET_PARAMS = ("password", "ssl_password")
# Connection trouble, on either client: the store is unavailable. The cluster client raises
# ClusterError (CLUSTERDOWN, too many redirects) and RedisClusterException (no node of the
# cluster reachable, a slot not covered) where the single-node client raises ConnectionError.
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException)

DEFAULT_PREFIX = "taskhub"
# load_active reads the active set in pages, so no single script holds Redis for long or
# builds one huge reply.
LOAD_PAGE = 1000
_FENCED = "TASKHUB_FENCED"
# Replies that mean the server cannot serve writes now (out of memory, a read-only replica
# after a failover, a failed RDB save, loading, a busy script, bad credentials, too few
# replicas for min-replicas-to-write): the store is unavailable, not the batch wrong.
_UNAVAILABLE_CODES = (
    "OOM",
    "NOREPLICAS",
    "READONLY",
    "MISCONF",
    "LOADING",
    "BUSY",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
)
# Redis < 7 wraps the error a command inside a script got: "Error running script (call to
# f_<sha>): @user_script:13: @user_script: 13: -READONLY You can't write against a read only
# replica." (Redis 7 replies with the command's own error.)
_WRAPPED = re.compile(r"Error running script .*?: -([A-Z]+) (.*)", re.DOTALL)

# Shared by the scripts that remove or reindex a task. ARGV[1] is always the "{P}:" prefix.
_LUA_COMMON = """
local P = ARGV[1]
local function unindex(id)
  local tkey = P .. 't:' .. id
  local old = redis.call('HMGET', tkey, 's', 'a')
  if old[1] then
    redis.call('ZREM', P .. 'state:' .. old[1], id)
    if old[2] then
      redis.call('ZREM', P .. 'action:' .. old[2], id)
      redis.call('ZREM', P .. 'sa:' .. old[1] .. ':' .. old[2], id)
    end
  end
  redis.call('ZREM', P .. 'active', id)
  redis.call('ZREM', P .. 'ended', id)
  return tkey
end
local function remove(id)
  local tkey = unindex(id)
  redis.call('ZREM', P .. 'all', id)
  redis.call('DEL', tkey, P .. 'ev:' .. id)
end
local function check_fence(key, token)
  -- Before any write: a fenced-out writer changes nothing at all.
  if key ~= '' and redis.call('GET', key) ~= token then
    return redis.error_reply('TASKHUB_FENCED the fence ' .. key .. ' is held by another owner')
  end
  return nil
end
"""

# A first line that declares script flags (Redis 7+). With none listed, the script is one that
# writes and may not run out of memory, so Redis refuses it with OOM up front, before any of it
# runs, when used memory is over maxmemory (noeviction). A script without the line is checked
# only at its first write that may grow memory, and the batch script starts with ZREMs: a full
# Redis would take the batch (and grow past maxmemory). Flagged scripts must also keep to the
# slot of their KEYS on a Cluster, which the hash tag already ensures. Redis 6 cannot compile
# the line: open() then falls back to the script without it.
_SHEBANG = "#!lua\n"

# KEYS[1] = {P}:all (routes the call on Cluster). ARGV: prefix, fence key ('' = none), fence
# token, then counted groups: tasks (id, state, action, ended score or '', active '1'/'0',
# record), events (task id, seq, record), deleted ids, meta (kind, key, value), meta deletes
# (kind, key). Order as in the other engines: upserts, events, deletes, meta, meta deletes.
_APPLY = (
    _LUA_COMMON
    + """
local err = check_fence(ARGV[2], ARGV[3])
if err then return err end
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local id, state, action = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ended, active, record = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  i = i + 6
  -- Reindex from what is stored, so a state change moves the id between index sets.
  local tkey = unindex(id)
  redis.call('HSET', tkey, 'r', record, 's', state, 'a', action)
  redis.call('ZADD', P .. 'all', 0, id)
  redis.call('ZADD', P .. 'state:' .. state, 0, id)
  redis.call('ZADD', P .. 'action:' .. action, 0, id)
  redis.call('ZADD', P .. 'sa:' .. state .. ':' .. action, 0, id)
  if active == '1' then redis.call('ZADD', P .. 'active', 0, id) end
  if ended ~= '' then redis.call('ZADD', P .. 'ended', ended, id) end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', P .. 'ev:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  remove(ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', P .. 'meta:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', P .. 'meta:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
"""
)

# KEYS[1] = {P}:ended. ARGV: prefix, fence key, fence token, "(<at>" (exclusive), limit.
# Without flags on purpose: it only deletes, so it runs on a full Redis too and frees memory.
_REMOVE_ENDED = (
    _LUA_COMMON
    + """
local err = check_fence(ARGV[2], ARGV[3])
if err then return err end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, ARGV[5])
for _, id in ipairs(ids) do remove(id) end
return ids
"""
)

# One read, so a page never holds an id whose record was removed between two round trips.
# KEYS[1] = the index zset. ARGV: prefix, lex min, limit.
_LIST = """
local P = ARGV[1]
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', P .. 't:' .. id, 'r')
  if r then out[#out + 1] = r end
end
return out
"""

# KEYS[1] = {P}:ended. ARGV: prefix, "(<at>", limit.
_LIST_ENDED = """
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', P .. 't:' .. id, 'r')
  if r then out[#out + 1] = r end
end
return out
"""

# KEYS[1] = the lock. ARGV: token, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _safe_url(url: str) -> str:
    """The URL without its password (nor ``password``/``ssl_password`` query values), for
    messages and logs."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in _SECRET_PARAMS for key, _ in query):
        masked = [(key, "***" if key in _SECRET_PARAMS else value) for key, value in query]
        parts = parts._replace(query=urlencode(masked, quote_via=quote, safe="*/"))
        url = urlunsplit(parts)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters, so the prefix is matched literally by SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _score(value: float) -> str:
    # repr round-trips a float exactly, and Redis parses it with strtod: no precision lost.
    return repr(float(value))


class RedisStore:
    """A :class:`~taskhub.store.Store` on Redis, plus the lock and heartbeat primitives
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
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            # A brace would end or restart the hash tag: keys of one store would scatter.
            raise ValueError(f"bad redis key prefix {prefix!r}: non-empty, without braces")
        self.prefix = prefix
        self.url = _safe_url(url if url is not None else redis_url)
        self._redis_url = redis_url
        self.cluster = cluster
        self._tag = "{" + prefix + "}:"
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # Pings a connection idle this long before reusing it, so a connection the
            # server or a load balancer dropped is noticed before a batch is sent on it.
            "health_check_interval": health_check_interval,
            # A timed-out or dropped call is retried a few times: every script here is
            # idempotent (a replayed batch rewrites the same records and events).
            "retry_on_timeout": True,
            "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=3),
            "decode_responses": False,
        }
        if cluster:
            # The cluster client retries timeouts and connection errors itself (after
            # refreshing its slot map) as often as ``retry`` says; it has no such option.
            del self._options["retry_on_timeout"]
        self._client: Client | None = None
        self._closed = False
        self._fence_key = ""
        self._fence_token = ""
        self._encoder = msgspec.json.Encoder()
        self._task_decoder = msgspec.json.Decoder(TaskRecord)
        self._event_decoder = msgspec.json.Decoder(EventRecord)
        self._any_decoder = msgspec.json.Decoder()
        self._scripts: dict[str, AsyncScript] = {}
        # Whether the batch script declares script flags (Redis 7+): known after open().
        self.script_flags = False

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """``redis://[[user]:password@]host[:port][/db][?prefix=NAME]``, or ``rediss://`` for
        TLS; ``redis+cluster://host:port[?prefix=NAME]`` (``rediss+cluster://``) for a Redis
        Cluster, any one of its nodes as the seed. Other query parameters are passed to
        redis-py (``ssl_ca_certs=...`` and so on)."""
        parts = urlsplit(url)
        if parts.scheme not in REDIS_URL_SCHEMES or not parts.hostname:
            raise ValueError(
                f"bad redis store URL {_safe_url(url)!r}: use redis://host:port/db, "
                "rediss://host:port/db (TLS) or redis+cluster://host:port (a Redis Cluster), "
                "optionally with ?prefix=NAME"
            )
        scheme, cluster = REDIS_URL_SCHEMES[parts.scheme]
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(key == "cluster" for key, _ in query):
            raise ValueError(
                f"bad redis store URL {_safe_url(url)!r}: for a Redis Cluster write "
                "redis+cluster://host:port (rediss+cluster:// with TLS), not ?cluster="
            )
        if cluster and parts.path.strip("/") not in ("", "0"):
            raise ValueError(
                f"bad redis store URL {_safe_url(url)!r}: a Redis Cluster has database 0 only"
            )
        prefixes = [value for key, value in query if key == "prefix"]
        rest = [(key, value) for key, value in query if key != "prefix"]
        parts = parts._replace(scheme=scheme, query=urlencode(rest, quote_via=quote))
        if cluster:
            parts = parts._replace(path="")
        prefix = prefixes[-1] if prefixes else DEFAULT_PREFIX
        return cls(urlunsplit(parts), prefix=prefix, url=url, cluster=cluster)

    # -- keys -----------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key of this store: ``{prefix}:part:part``."""
        return self._tag + ":".join(parts)

    def lock_key(self, name: str) -> str:
        """The key that holds lock ``name``; pass it to :meth:`set_fence`."""
        return self.key("lock", name)

    # -- plumbing -------------------------------------------------------------------------

    def _redis(self) -> Client:
        client = self._client
        if client is None:
            what = "closed" if self._closed else "not open yet (call open() first)"
            raise StoreUnavailable(f"redis store {self.url} is {what}", url=self.url)
        return client

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"redis store {self.url} is unavailable: {exc}", url=self.url)

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        client = self._redis()
        script = self._scripts[name]
        try:
            # EVALSHA; redis-py loads the script and retries when the server lacks it
            # (a restarted Redis, a failover, SCRIPT FLUSH).
            return await script(keys=keys, args=args, client=client)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            mapped = self._response_error(exc)
            if mapped is exc:
                raise  # a real error (a bug, a wrong key type): keep it as it is
            raise mapped from exc

    def _response_error(self, exc: ResponseError) -> Exception:
        message = str(exc)
        if _FENCED in message:
            return StoreFenced(
                f"redis store {self.url}: write refused, this writer was fenced out "
                f"({self._fence_key} no longer holds its token)",
                url=self.url,
                fence=self._fence_key,
            )
        # redis-py strips the code of the errors it has a class for (OOM, READONLY, MOVED...)
        # from the message and keeps it as status_code.
        code = getattr(exc, "status_code", None) or message.split(" ", 1)[0]
        wrapped = _WRAPPED.match(message)
        if wrapped is not None:
            code, message = wrapped[1], f"{wrapped[1]} {wrapped[2]}"
        if code in _UNAVAILABLE_CODES:
            if not message.startswith(code):
                message = f"{code} {message}"
            return StoreUnavailable(
                f"redis store {self.url} is unavailable: {message}", url=self.url
            )
        return exc

    async def _call(self, command: Any) -> Any:
        """Await one redis-py command, turning connection trouble into StoreUnavailable."""
        try:
            return await command
        except _CONNECTION_ERRORS as exc:
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
        client: Client
        try:
            if self.cluster:
                client = RedisCluster.from_url(self._redis_url, **self._options)
            else:
                client = aioredis.Redis.from_url(self._redis_url, **self._options)
        except (ValueError, TypeError, RedisClusterException) as exc:
            # redis-py's URL parsing (a bad db number, an option the client does not take)
            raise ValueError(f"bad redis store URL {self.url!r}: {exc}") from exc
        _pack_with_hiredis(client)
        try:
            # The cluster client first learns the slot map from the seed node (CLUSTER
            # SLOTS), then pings every node.
            await client.ping()
        except (*_CONNECTION_ERRORS, ResponseError) as exc:
            await client.aclose()
            raise StoreUnavailable(
                f"cannot reach redis store {self.url}: {exc}", url=self.url
            ) from exc
        try:
            flags = await self._knows_script_flags(client)
        except _CONNECTION_ERRORS as exc:
            await client.aclose()
            raise StoreUnavailable(
                f"cannot reach redis store {self.url}: {exc}", url=self.url
            ) from exc
        if self._closed:  # close() was called while we were connecting
            await client.aclose()
            raise StoreUnavailable(f"redis store {self.url} was closed while opening")
        if not flags:
            log.warning(
                "redis store %s: this Redis has no script flags (Redis < 7): when it is full "
                "(maxmemory, noeviction) it still takes batches and grows past maxmemory; "
                "Redis 7 or later refuses them with OOM",
                self.url,
            )
        self.script_flags = flags
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("apply", _SHEBANG + _APPLY if flags else _APPLY),
                ("remove_ended", _REMOVE_ENDED),
                ("list", _LIST),
                ("list_ended", _LIST_ENDED),
                ("renew", _RENEW),
                ("release", _RELEASE),
            )
        }
        self._client = client
        await self._check_eviction(client)

    async def _knows_script_flags(self, client: Client) -> bool:
        """Whether Redis runs the batch script with its ``#!lua`` line (Redis 7+).

        Loads it (``SCRIPT LOAD``, on every primary of a Cluster). Redis 6 fails to compile
        it; then, if the same script without the line loads, the server lacks script flags.
        When neither loads, the trouble is elsewhere (ACLs...): the calls will report it.
        """
        try:
            await client.script_load(_SHEBANG + _APPLY)
            return True
        except ResponseError as flagged:
            try:
                await client.script_load(_APPLY)
            except ResponseError:
                return True
            log.debug("redis store %s refused the #!lua line: %s", self.url, flagged)
            return False

    async def _check_eviction(self, client: Client) -> None:
        """Warn when Redis may evict keys under memory pressure: it would drop tasks."""
        try:
            if isinstance(client, RedisCluster):
                # The primary that holds this store's slot.
                node = client.get_node_from_key(self.key("all"))
                config: dict[Any, Any] = await client.config_get(
                    "maxmemory-policy", target_nodes=node
                )
            else:
                config = await client.config_get("maxmemory-policy")
        except (ResponseError, *_CONNECTION_ERRORS):
            return  # managed services often disable CONFIG; docs/redis.md says what to set
        policy = config.get(b"maxmemory-policy", b"noeviction")
        if policy != b"noeviction":
            log.warning(
                "redis store %s has maxmemory-policy %s: Redis may silently evict tasks; "
                "set maxmemory-policy noeviction",
                self.url,
                policy.decode(errors="replace"),
            )

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
        """One atomic script call: upserts, event writes, deletes, meta upserts, meta deletes.

        Fenced stores check the fence first and write nothing when it does not hold.
        """
        if not batch:
            self._redis()  # still refuses when not open or closed, like any other call
            return
        # Everything is encoded here, before the first await: this is the snapshot.
        encode = self._encoder.encode
        args: list[Any] = [self._tag, self._fence_key, self._fence_token, len(batch.tasks)]
        for t in batch.tasks:
            terminal = t.state in TERMINAL_STATES
            ended = _score(t.ended_at) if terminal and t.ended_at is not None else ""
            args += [t.id, t.state, t.action, ended, "0" if terminal else "1", encode(t)]
        args.append(len(batch.events))
        for e in batch.events:
            args += [e.task_id, str(e.seq), encode(e)]
        args.append(len(batch.deleted))
        args += batch.deleted
        args.append(len(batch.meta))
        for m in batch.meta:
            args += [m.kind, m.key, encode(m.value)]
        args.append(len(batch.meta_deleted))
        for kind, key in batch.meta_deleted:
            args += [kind, key]
        await self._script("apply", [self.key("all")], args)

    async def remove_ended_before(self, at: float, limit: int = 1000) -> list[str]:
        """Oldest ended first (ties by id); a terminal task without ``ended_at`` is kept."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._redis()
        if limit == 0 or math.isnan(at):
            return []
        args = [self._tag, self._fence_key, self._fence_token, "(" + _score(at), limit]
        ids = await self._script("remove_ended", [self.key("ended")], args)
        return [i.decode() for i in ids]

    # -- reads ----------------------------------------------------------------------------

    async def list_ended_before(self, at: float, limit: int = 1000) -> list[TaskRecord]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._redis()
        if limit == 0 or math.isnan(at):
            return []
        args = [self._tag, "(" + _score(at), limit]
        blobs = await self._script("list_ended", [self.key("ended")], args)
        decode = self._task_decoder.decode
        return [decode(blob) for blob in blobs]

    async def load_active(self) -> list[TaskRecord]:
        out: list[TaskRecord] = []
        after: str | None = None
        while True:
            page = await self._page(self.key("active"), after, LOAD_PAGE)
            out += page
            if len(page) < LOAD_PAGE:
                return out
            after = page[-1].id

    async def get_task(self, task_id: str) -> TaskRecord | None:
        blob = await self._call(self._redis().hget(self.key("t", task_id), "r"))
        return None if blob is None else self._task_decoder.decode(blob)

    async def get_events(self, task_id: str) -> list[EventRecord]:
        by_seq = await self._call(self._redis().hgetall(self.key("ev", task_id)))
        decode = self._event_decoder.decode
        return [decode(by_seq[seq]) for seq in sorted(by_seq, key=int)]

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
        if action is not None and state is not None:
            index = self.key("sa", state, action)
        elif action is not None:
            index = self.key("action", action)
        elif state is not None:
            index = self.key("state", state)
        else:
            index = self.key("all")
        self._redis()
        if limit == 0:
            return []
        return await self._page(index, after, limit)

    async def _page(self, index: str, after: str | None, limit: int) -> list[TaskRecord]:
        # All scores are 0, so the set is in byte order of the ids: UTF-8 byte order is code
        # point order, the order the other engines list in.
        start = "-" if after is None else "(" + after
        blobs = await self._script("list", [index], [self._tag, start, limit])
        decode = self._task_decoder.decode
        return [decode(blob) for blob in blobs]

    async def list_meta(self, kind: str) -> dict[str, Any]:
        raw = await self._call(self._redis().hgetall(self.key("meta", kind)))
        decode = self._any_decoder.decode
        entries = {key.decode(): value for key, value in raw.items()}
        return {key: decode(entries[key]) for key in sorted(entries)}

    async def get_meta(self, kind: str, key: str) -> Any:
        blob = await self._call(self._redis().hget(self.key("meta", kind), key))
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
        await self._call(self._redis().set(self.key("hb", name), value, px=ttl_ms))

    async def alive(self, pattern: str = "*") -> dict[str, str]:
        """The heartbeats whose name matches the glob ``pattern`` and have not expired, by name.

        Uses SCAN, so it costs a walk of the keyspace: meant for a handful of hubs polled
        every few seconds, not for a hot path.
        """
        client = self._redis()
        head = self.key("hb", "")
        match = _glob_escape(head) + pattern
        keys: list[bytes] = []
        try:
            async for k in client.scan_iter(match=match, count=1000):
                keys.append(k)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc
        if not keys:
            return {}
        values = await self._call(client.mget(keys))
        return {
            k.decode()[len(head) :]: v.decode()
            for k, v in zip(keys, values, strict=True)
            if v is not None  # expired between the scan and the read
        }


# hiredis packs a command into one buffer, grown as it goes; redis-py's packer into a list of
# ~6 KB chunks. For a huge batch (a subscription that routes 100,000 waiting tasks at once) the
# one buffer raised the hub's peak memory by ~150 MiB, so commands with more arguments than
# this (~700 tasks) are packed by redis-py.
HIREDIS_MAX_ARGS = 20_000


class _HiredisPacking:
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
        packed: Any = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        return [hiredis.pack_command(packed)]


def _pack_with_hiredis(client: Client) -> None:
    """Give the client's connections (not made yet) hiredis' packer, whatever their class
    (TCP, TLS, Unix socket; one per cluster node)."""
    if isinstance(client, RedisCluster):
        kwargs = client.connection_kwargs
        kwargs["connection_class"] = _packing(kwargs.get("connection_class", Connection))
    else:
        pool = client.connection_pool
        pool.connection_class = _packing(pool.connection_class)


def _packing(cls: type[Any]) -> type[Any]:
    return type(cls.__name__, (_HiredisPacking, cls), {})
