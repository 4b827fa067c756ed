"""The Redis store engine (``redis://``, ``rediss://``, ``redis+cluster://``): several hubs
share one Redis or Redis Cluster (docs/redis.md).

``engine`` is the :class:`RedisStore`; ``lock`` its leader lock (:class:`RedisLeaderLock`);
``connection`` the URL, the client and the errors; ``scripts`` loads the Lua scripts (the
``*.lua`` files here); ``packing`` gives redis-py hiredis' command packer.
"""

from __future__ import annotations

from taskhub.store.redis.connection import DEFAULT_PREFIX
from taskhub.store.redis.engine import RedisStore
from taskhub.store.redis.lock import RedisLeaderLock
from taskhub.store.redis.packing import HIREDIS_MAX_ARGS

__all__ = ["DEFAULT_PREFIX", "HIREDIS_MAX_ARGS", "RedisLeaderLock", "RedisStore"]
