"""Reaching Redis for the engine: the store URL, the client (one server, or a Redis Cluster)
with its timeouts and retries, the checks made on connecting, and Redis' errors turned into
the store's (:class:`~taskhub.errors.StoreUnavailable`, :class:`~taskhub.errors.StoreFenced`).
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.store.redis.packing import pack_with_hiredis
from taskhub.store.redis.scripts import knows_script_flags
from taskhub.store.urls import REDIS_URL_SCHEMES

log = logging.getLogger("taskhub.store.redis")

# The two clients: one server (or a proxy in front of a cluster), or a Redis Cluster.
Client: TypeAlias = aioredis.Redis | RedisCluster
DEFAULT_PREFIX = "taskhub"
# Query parameters whose value is a secret: masked like the password in messages and logs.
SECRET_PARAMS = ("password", "ssl_password")
# Connection trouble, on either client: the store is unavailable. The cluster client raises
# ClusterError (CLUSTERDOWN, too many redirects) and RedisClusterException (no node of the
# cluster reachable, a slot not covered) where the single-node client raises ConnectionError.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException)
# What a script answers when its fence check fails (common.lua, check_fence).
FENCED = "TASKHUB_FENCED"
# Replies that mean the server cannot serve writes now (out of memory, a read-only replica
# after a failover, a failed RDB save, loading, a busy script, bad credentials, too few
# replicas for min-replicas-to-write): the store is unavailable, not the batch wrong.
UNAVAILABLE_CODES = (
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


def safe_url(url: str) -> str:
    """The URL without its password (nor ``password``/``ssl_password`` query values), for
    messages and logs."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in SECRET_PARAMS for key, _ in query):
        masked = [(key, "***" if key in SECRET_PARAMS else value) for key, value in query]
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


class StoreUrl(NamedTuple):
    """A store URL taken apart: what redis-py connects to, the key prefix, a Cluster or not."""

    redis_url: str
    prefix: str
    cluster: bool


def parse_url(url: str) -> StoreUrl:
    """``redis://[[user]:password@]host[:port][/db][?prefix=NAME]``, ``rediss://`` for TLS,
    ``redis+cluster://host:port[?prefix=NAME]`` (``rediss+cluster://``) for a Redis Cluster;
    ValueError naming what is wrong (the password masked)."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_URL_SCHEMES or not parts.hostname:
        raise ValueError(
            f"bad redis store URL {safe_url(url)!r}: use redis://host:port/db, "
            "rediss://host:port/db (TLS) or redis+cluster://host:port (a Redis Cluster), "
            "optionally with ?prefix=NAME"
        )
    scheme, cluster = REDIS_URL_SCHEMES[parts.scheme]
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "cluster" for key, _ in query):
        raise ValueError(
            f"bad redis store URL {safe_url(url)!r}: for a Redis Cluster write "
            "redis+cluster://host:port (rediss+cluster:// with TLS), not ?cluster="
        )
    if cluster and parts.path.strip("/") not in ("", "0"):
        raise ValueError(
            f"bad redis store URL {safe_url(url)!r}: a Redis Cluster has database 0 only"
        )
    prefixes = [value for key, value in query if key == "prefix"]
    rest = [(key, value) for key, value in query if key != "prefix"]
    parts = parts._replace(scheme=scheme, query=urlencode(rest, quote_via=quote))
    if cluster:
        parts = parts._replace(path="")
    prefix = prefixes[-1] if prefixes else DEFAULT_PREFIX
    return StoreUrl(urlunsplit(parts), prefix, cluster)


def client_options(
    *,
    socket_timeout: float | None,
    connect_timeout: float,
    health_check_interval: int,
    cluster: bool,
) -> dict[str, Any]:
    """redis-py's options for the engine's client (``socket_timeout`` None: the caller bounds
    each call itself)."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        # Pings a connection idle this long before reusing it, so a connection the server or a
        # load balancer dropped is noticed before a batch is sent on it.
        "health_check_interval": health_check_interval,
        # A timed-out or dropped call is retried a few times: every script here is idempotent
        # (a replayed batch rewrites the same records and events).
        "retry_on_timeout": True,
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=3),
        "decode_responses": False,
    }
    if cluster:
        # The cluster client retries timeouts and connection errors itself (after refreshing
        # its slot map) as often as ``retry`` says; it has no such option.
        del options["retry_on_timeout"]
    return options


async def connect(
    redis_url: str, options: dict[str, Any], *, cluster: bool, url: str
) -> tuple[Client, bool]:
    """A client that answered a ping, and whether its server knows script flags (Redis 7+).

    ValueError for what redis-py refuses in the URL; StoreUnavailable (naming ``url``, the
    URL without secrets) when the server cannot be reached.
    """
    client: Client
    try:
        if cluster:
            client = RedisCluster.from_url(redis_url, **options)
        else:
            client = aioredis.Redis.from_url(redis_url, **options)
    except (ValueError, TypeError, RedisClusterException) as exc:
        # redis-py's URL parsing (a bad db number, an option the client does not take)
        raise ValueError(f"bad redis store URL {url!r}: {exc}") from exc
    pack_with_hiredis(client)
    try:
        # The cluster client first learns the slot map from the seed node (CLUSTER SLOTS),
        # then pings every node.
        await client.ping()
        flags = await knows_script_flags(client, url)
    except (*CONNECTION_ERRORS, ResponseError) as exc:
        await client.aclose()
        raise StoreUnavailable(f"cannot reach redis store {url}: {exc}", url=url) from exc
    if not flags:
        log.warning(
            "redis store %s: this Redis has no script flags (Redis < 7): when it is full "
            "(maxmemory, noeviction) it still takes batches and grows past maxmemory; "
            "Redis 7 or later refuses them with OOM",
            url,
        )
    return client, flags


async def check_eviction(client: Client, key: str, url: str) -> None:
    """Warn when Redis may evict keys under memory pressure: it would drop tasks. ``key``: a
    key of the store (on a Cluster, its primary is asked)."""
    try:
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(key)
            config: dict[Any, Any] = await client.config_get("maxmemory-policy", target_nodes=node)
        else:
            config = await client.config_get("maxmemory-policy")
    except (ResponseError, *CONNECTION_ERRORS):
        return  # managed services often disable CONFIG; docs/redis.md says what to set
    # redis-py answers CONFIG GET with str keys and values (it decodes them itself), bytes
    # only in releases before that: read either.
    value = config.get("maxmemory-policy", config.get(b"maxmemory-policy", "noeviction"))
    policy = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if policy != "noeviction":
        log.warning(
            "redis store %s has maxmemory-policy %s: Redis may silently evict tasks; "
            "set maxmemory-policy noeviction",
            url,
            policy,
        )


def store_error(exc: ResponseError, url: str, fence: str) -> Exception:
    """What a Redis error reply means for the store: StoreFenced (a script's fence check
    failed; ``fence`` is the fence key), StoreUnavailable (the server cannot serve writes
    now), or ``exc`` itself (a real error: a bug, a wrong key type)."""
    message = str(exc)
    if FENCED in message:
        return StoreFenced(
            f"redis store {url}: write refused, this writer was fenced out "
            f"({fence} no longer holds its token)",
            url=url,
            fence=fence,
        )
    # redis-py strips the code of the errors it has a class for (OOM, READONLY, MOVED...)
    # from the message and keeps it as status_code.
    code = getattr(exc, "status_code", None) or message.split(" ", 1)[0]
    wrapped = _WRAPPED.match(message)
    if wrapped is not None:
        code, message = wrapped[1], f"{wrapped[1]} {wrapped[2]}"
    if code in UNAVAILABLE_CODES:
        if not message.startswith(code):
            message = f"{code} {message}"
        return StoreUnavailable(f"redis store {url} is unavailable: {message}", url=url)
    return exc
