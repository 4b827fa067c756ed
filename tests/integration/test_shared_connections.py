"""``max_connections`` counted by hubs that share a store (hub/slots.py), two real hubs in
this process on one SQLite file, and one on a real redis-server: connections that race to
both hubs at once get exactly the limit between them; the refusal is today's one; a store that
cannot count refuses with 1013 ("try again"), never a traceback; one hub on memory:// counts
in its process as before."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from taskhub import Client, Server
from taskhub.errors import TooManyConnections
from tests.conftest import ServerFactory, until
from tests.redisproc import RedisProcess

NAME, KEY = "emailer", "k3y-of-the-emailer"


def creds(limit: int) -> list[dict[str, object]]:
    return [{"name": NAME, "key": KEY, "max_connections": limit}]


async def attempt(server: Server) -> Client | None:
    """A connection of the credential to ``server``; None when it was refused as too many."""
    try:
        return await Client(server.url, name=NAME, key=KEY, connect_timeout=5).connect()
    except TooManyConnections as exc:
        assert exc.message.startswith(f"'{NAME}' already has ")
        assert exc.message.endswith(" connection(s), its max_connections is 3")
        return None


async def admitted(server: Server) -> Client:
    """A connection to ``server``, once it is let in (the slots are written after a close)."""
    client: Client = await until(lambda: attempt(server), timeout=10.0)
    return client


async def test_connections_racing_to_two_hubs_get_the_limit_between_them(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    a = await make_server(creds(3), store=store, partitions=4, lease=10.0, name="hub-a")
    b = await make_server(creds(3), store=store, partitions=4, lease=10.0, name="hub-b")
    assert a.membership is not None and b.membership is not None  # leased hubs, one file
    # One at a time first (so each hub knows the key: a race of fresh key checks would be
    # throttled, docs/protocol.md): three connect, a fourth is refused, on either hub.
    first = [await admitted(hub) for hub in (a, b, a)]
    try:
        assert await attempt(b) is None
        assert await attempt(a) is None
    finally:
        for c in first:
            await c.close()
    await released(a, b)
    # Now ten at once, five to each hub: three get in between them.
    got = await asyncio.gather(*(attempt(hub) for hub in (a, b) * 5))
    accepted = [c for c in got if c is not None]
    try:
        assert len(accepted) == 3
        assert a.registry.held(NAME) + b.registry.held(NAME) == 3  # each counts its own
    finally:
        for c in accepted:
            await c.close()
    await released(a, b)
    last = [await attempt(hub) for hub in (b, b, a)]  # every slot was given back
    for c in last:
        assert c is not None
        await c.close()


async def released(*hubs: Server) -> None:
    """Wait until ``hubs`` saw every connection close and wrote their counts."""
    await until(lambda: all(hub.registry.held(NAME) == 0 for hub in hubs), timeout=10.0)
    for hub in hubs:
        assert hub.membership is not None
        await hub.membership.slots.settle()


async def test_one_hub_on_memory_counts_in_its_process(make_server: ServerFactory) -> None:
    server = await make_server(creds(3))
    assert server.membership is None and server.registry.shared is None
    first = await attempt(server)  # the key checked once: the race below skips scrypt
    got = await asyncio.gather(*(attempt(server) for _ in range(5)))
    accepted = [c for c in (first, *got) if c is not None]
    try:
        assert len(accepted) == 3
    finally:
        for c in accepted:
            await c.close()


async def test_a_store_that_cannot_count_says_try_again(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisProcess().start()
    try:
        url = f"{redis.url}?prefix=sharedconns"
        hub = await make_server(creds(3), store=url, partitions=4, lease=1.0)
        first = await Client(hub.url, name=NAME, key=KEY, connect_timeout=5).connect()
        await first.close()
        redis.kill()
        caplog.set_level(logging.WARNING, "taskhub.ws")
        headers = {"Authorization": f"Bearer {NAME}:{KEY}"}
        async with connect(hub.url + "/v1/ws", additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "redis store" in closed.value.rcvd.reason
        assert not [r for r in caplog.records if r.exc_info], "no traceback"
    finally:
        redis.cleanup()
