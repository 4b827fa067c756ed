"""The Redis store engine (``redis://``, ``rediss://``, ``redis+cluster://``): several hubs
share one Redis or Redis Cluster (docs/redis.md). The engine is :mod:`.engine`."""

from __future__ import annotations

from taskhub.store.redis.engine import DEFAULT_PREFIX, HIREDIS_MAX_ARGS, RedisStore

__all__ = ["DEFAULT_PREFIX", "HIREDIS_MAX_ARGS", "RedisStore"]
