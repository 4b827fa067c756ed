"""The store URLs' schemes, known without importing an engine (or its client library)."""

from __future__ import annotations

# The redis engine's URL schemes -> (the scheme redis-py parses, a Redis Cluster client?):
# one server or a cluster, plain or TLS. Here, not in store/redis.py, so that telling a redis
# URL apart needs no import of redis-py.
REDIS_URL_SCHEMES = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
}
# Every URL scheme of the redis engine: a single Redis or a Redis Cluster, plain or TLS.
REDIS_SCHEMES = tuple(f"{scheme}://" for scheme in REDIS_URL_SCHEMES)
