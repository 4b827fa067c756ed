"""Broadcast events over real WebSocket connections: subscribe, emit, wildcards, permissions,
reconnects and the slow-subscriber policy."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed as WsClosed

from taskhub import Client, PermissionDenied, Server
from taskhub.errors import InvalidAction
from tests.conftest import ClientFactory, ServerFactory, until


async def test_emit_reaches_every_matching_subscriber_but_the_sender(
    make_client: ClientFactory,
) -> None:
    a, b, c = await make_client("a"), await make_client("b"), await make_client("c")
    got: dict[str, list[tuple[str, Any]]] = {"a": [], "b": [], "c": []}
    await a.subscribe("orders:*", lambda d, t: got["a"].append((t, d)))

    async def async_handler(data: Any, topic: str) -> None:
        await asyncio.sleep(0)
        got["b"].append((topic, data))

    await b.subscribe("orders/>", async_handler)
    await c.subscribe("billing:paid", lambda d, t: got["c"].append((t, d)))

    assert await a.emit("orders:new", {"id": 1}) == 0  # only a matches, and a sent it
    assert await c.emit("orders:new", {"id": 2}) == 1
    assert await c.emit("orders/eu:new", 3) == 1
    assert await a.emit("billing:paid", None) == 1
    await until(lambda: len(got["a"]) == 1 and len(got["b"]) == 1 and len(got["c"]) == 1)
    assert got == {
        "a": [("orders:new", {"id": 2})],
        "b": [("orders/eu:new", 3)],
        "c": [("billing:paid", None)],
    }


async def test_two_patterns_deliver_once_and_unsubscribe_stops(make_client: ClientFactory) -> None:
    sub, pub = await make_client("sub"), await make_client("pub")
    seen: list[str] = []
    await sub.subscribe("done", lambda d, t: seen.append(f"exact {d}"))
    await sub.subscribe(">", lambda d, t: seen.append(f"all {d}"))
    assert await pub.emit("done", 1) == 1  # one message on the wire ...
    await until(lambda: len(seen) == 2)
    assert sorted(seen) == ["all 1", "exact 1"]  # ... fanned out to both local handlers
    await sub.unsubscribe(">")
    await sub.unsubscribe("done")
    assert await pub.emit("done", 2) == 0


async def test_emit_and_subscribe_need_permission(make_server: ServerFactory) -> None:
    server = await make_server(
        creds=[
            {"name": "shop", "key": "k", "pub_permissions": ["orders"], "sub_permissions": []},
            {"name": "audit", "key": "k", "sub_permissions": ["orders"], "pub_permissions": []},
        ]
    )
    async with (
        Client(server.url, name="shop", key="k") as shop,
        Client(server.url, name="audit", key="k") as audit,
    ):
        seen: list[Any] = []
        await audit.subscribe("orders:*", lambda d, t: seen.append(d))
        with pytest.raises(PermissionDenied, match="may not subscribe to '>'"):
            await audit.subscribe(">", lambda d, t: None)
        with pytest.raises(PermissionDenied, match=r"may not subscribe to 'orders\.\*'"):
            await audit.subscribe("orders.*", lambda d, t: None)
        with pytest.raises(PermissionDenied, match="may not emit on 'billing:paid'"):
            await shop.emit("billing:paid")
        with pytest.raises(PermissionDenied):
            await audit.emit("orders:new")
        assert await shop.emit("orders:new", 7) == 1
        await until(lambda: seen == [7])


async def test_bad_topics_are_refused(make_client: ClientFactory) -> None:
    c = await make_client("c")
    with pytest.raises(InvalidAction):
        await c.emit("orders:*", 1)  # a wildcard is for subscribing only
    with pytest.raises(InvalidAction):
        await c.subscribe("orders:ne*", lambda d, t: None)
    with pytest.raises(InvalidAction):  # and the hub checks too, for other clients
        await c._conn.request({"op": "emit", "topic": "a b"})


async def test_subscriptions_come_back_after_a_reconnect(make_client: ClientFactory) -> None:
    sub, pub = await make_client("sub", max_backoff=0.1), await make_client("pub")
    seen: list[Any] = []
    await sub.subscribe("ping", lambda d, t: seen.append(d))
    assert sub._conn._ws is not None
    await sub._conn._ws.close()  # the connection drops; the client dials again
    await until(lambda: not sub.connected)
    await until(lambda: sub.connected)

    async def delivered() -> bool:
        return await pub.emit("ping", "again") == 1

    await until(delivered)
    await until(lambda: "again" in seen)


async def test_a_subscriber_that_never_reads_is_disconnected(
    server: Server, make_client: ClientFactory
) -> None:
    assert server.hub is not None
    server.hub.limits.max_send_queue = 4  # frames waiting for one slow reader
    fast = await make_client("fast")
    got: list[int] = []
    await fast.subscribe("feed", lambda d, t: got.append(d["n"]))
    url = server.url + "/v1/ws"
    # max_queue=1: the websockets library stops reading the socket once one frame waits.
    async with connect(url, max_queue=1, compression=None, max_size=None) as slow:
        assert json.loads(await slow.recv())["op"] == "welcome"
        await slow.send(json.dumps({"op": "subscribe", "topic": "feed", "ref": 1}))
        assert json.loads(await slow.recv()) == {"op": "ok", "ref": 1}
        pub = await make_client("pub")
        blob = "x" * 100_000
        n = 0
        # Emit until the hub gives up on the slow reader (socket buffers first fill up).
        async with asyncio.timeout(30):
            while await pub.emit("feed", {"n": n, "blob": blob}) == 2:
                n += 1
        assert n > 4  # the hub stopped counting it: it is being closed
        with pytest.raises(WsClosed) as info:
            while True:
                await slow.recv()  # drain what it was sent, then meet the close
        assert info.value.rcvd is not None and info.value.rcvd.code == 4008
    await until(lambda: len(got) == n + 1)  # the fast reader lost nothing
    assert got == list(range(n + 1))
    assert await pub.emit("feed", {"n": -1}) == 1  # the slow one's subscription is gone
