"""A redis:// leader keeps its lease while its event loop is busy, and lets it go when the
loop hangs (docs/deployment.md, "Leadership: lease, renewal, step-down"); so does a hub of
several partitions with every partition lease it holds, on a sqlite file and on Redis
("Partition leases").

The busy loop is a real one: the test keeps the hub's event loop computing, as a worker
subscribing to an action with 100,000 waiting tasks did for seconds (the hub routes them all in
one step).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskhub import Client, Server
from taskhub.hub.keeper import PartitionKeeper
from taskhub.store import open_leader_lock, open_partition_leases
from taskhub.store.lock import Token
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


# --- a hub of several partitions, on a sqlite file and on Redis --------------------------

P = 4


@pytest.fixture(params=["sqlite", "redis"])
async def member(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    """A hub that leads all P partitions by their leases (docs/deployment.md, "Partition
    leases")."""
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = f"{redisproc.shared().url}?prefix=renewp{uuid.uuid4().hex[:8]}"
    server = Server(store=store, port=0, partitions=P, lease=LEASE)
    await server.start()
    keeper = _keeper(server)
    await until(lambda: keeper.led() == list(range(P)), timeout=10)
    yield server
    await server.stop()


def _keeper(server: Server) -> PartitionKeeper:
    assert server.membership is not None and server.membership.keeper is not None
    return server.membership.keeper


async def holders(server: Server) -> dict[int, str | None]:
    leases = open_partition_leases(server.store_url, P)
    await leases.open()
    try:
        return {p: await leases.holder(p) for p in range(P)}
    finally:
        await leases.close()


async def test_a_hub_whose_loop_is_busy_for_several_leases_keeps_its_partitions(
    member: Server,
) -> None:
    keeper = _keeper(member)
    tokens = dict(keeper.tokens)
    hub = member.hub
    assert hub is not None
    parts = list(hub.parts)
    busy(4 * LEASE)  # the hub's loop does not run for four leases
    await asyncio.sleep(LEASE)  # and then runs again: whatever it lost, it would see by now
    assert keeper.tokens == tokens  # the same tenures: no partition was lost and taken again
    assert keeper.led() == list(range(P)) and hub.parts == parts
    assert await holders(member) == tokens
    async with Client(member.url, name="svc") as client:
        await client.sub("busy:check", lambda task: "ok")
        assert await client.pub("busy:check", 1).get_result(timeout=10) == "ok"


async def test_a_hub_whose_loop_hangs_lets_its_partitions_go(member: Server) -> None:
    keeper = _keeper(member)
    assert keeper.renewer is not None
    keeper.renewer.stall = 2 * LEASE  # (ten leases by default)
    tokens = dict(keeper.tokens)
    busy(2 * LEASE + 2 * LEASE)  # past the stall limit, and a lease after it
    # Nothing renewed them, so they ran out in the store: the hub (the only one) takes each
    # again, with a new tenure, and serves.
    await until(lambda: keeper.led() == list(range(P)), timeout=10)
    assert all(keeper.tokens[p] != tokens[p] for p in range(P))
    assert await holders(member) == keeper.tokens
    async with Client(member.url, name="svc") as client:
        await client.sub("hang:check", lambda task: "ok")
        assert await client.pub("hang:check", 1).get_result(timeout=10) == "ok"


async def test_a_lease_taken_from_the_hub_is_lost_and_taken_again(member: Server) -> None:
    keeper = _keeper(member)
    token = keeper.tokens[2]
    leases = open_partition_leases(member.store_url, P)
    await leases.open()
    try:
        assert await leases.release(2, token)  # as another hub's take would, after a stall
    finally:
        await leases.close()
    # The renewal thread's next renewal is refused: the hub stops leading partition 2, then
    # (the only hub) takes it again in a new tenure; the other partitions keep theirs.
    await until(lambda: keeper.leads(2) and keeper.tokens[2] != token, timeout=10)
    assert Token.parse(keeper.tokens[2]).epoch == Token.parse(token).epoch + 1
    assert keeper.led() == list(range(P))
