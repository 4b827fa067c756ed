"""A redis:// leader keeps its lease while its event loop is busy, and lets it go when the
loop hangs (docs/deployment.md, "Leadership: lease, renewal, step-down").

The busy loop is a real one: the test keeps the hub's event loop computing, as a worker
subscribing to an action with 100,000 waiting tasks did for seconds (the hub routes them all in
one step).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from taskhub import Client, Server
from taskhub.store import open_leader_lock
from tests import redisproc
from tests.conftest import until

LEASE = 1.0


@pytest.fixture
async def leader() -> AsyncIterator[Server]:
    store = f"{redisproc.shared().url}?prefix=renew{uuid.uuid4().hex[:8]}"
    server = Server(store=store, port=0, lease=LEASE)
    await server.start()
    assert server.cluster is not None
    await until(lambda: server.cluster is not None and server.cluster.leading)
    yield server
    await server.stop()


def busy(seconds: float) -> None:
    """Keep the calling thread (the hub's loop) busy computing, as a long lifecycle step."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def owner(server: Server) -> str | None:
    lock = open_leader_lock(server.store_url)
    await lock.open()
    try:
        return await lock.owner()
    finally:
        await lock.close()


async def test_a_leader_whose_loop_is_busy_for_several_leases_keeps_leading(
    leader: Server,
) -> None:
    cluster = leader.cluster
    assert cluster is not None
    hub, token = cluster.hub, cluster.token
    cluster.changed.clear()
    busy(4 * LEASE)  # the hub's loop does not run for four leases
    await asyncio.sleep(LEASE)  # and then runs again: whatever it lost, it would see by now
    assert cluster.leading and cluster.hub is hub and not cluster.changed.is_set()
    assert await owner(leader) == token
    async with Client(leader.url, name="svc") as client:
        await client.sub("busy:check", lambda task: "ok")
        assert await client.pub("busy:check", 1).get_result(timeout=10) == "ok"


async def test_a_leader_whose_loop_hangs_lets_its_lease_go(leader: Server) -> None:
    cluster = leader.cluster
    assert cluster is not None and cluster.renewer is not None
    cluster.renewer.stall = 3 * LEASE  # (ten leases by default)
    hub = cluster.hub
    busy(3 * LEASE + 2 * LEASE)  # past the stall limit, and the lease after it
    assert not cluster.leading
    # It stepped down; the lease ran out in Redis, so a hub takes it again: here this one
    # (the only one), as a new leader with a new hub.
    await until(lambda: cluster.leading and cluster.hub is not None, timeout=10)
    assert cluster.hub is not hub
