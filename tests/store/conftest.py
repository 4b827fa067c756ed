"""Store test fixtures: one real redis-server for the session (see tests/redisproc.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import redisproc


@pytest.fixture(scope="session")
def redis_server() -> Iterator[redisproc.RedisProcess]:
    """The session's shared redis-server; fails (never skips) when it cannot be started."""
    server = redisproc.shared()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[redisproc.RedisCluster]:
    """The session's shared 3-primary Redis Cluster (the conformance suite uses it too)."""
    cluster = redisproc.shared_cluster()
    yield cluster
    cluster.cleanup()
