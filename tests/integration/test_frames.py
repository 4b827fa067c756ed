"""Long frames: the hub applies one in chunks and answers each before the next; the client
sends a long burst in frames as it is made."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from taskhub import Client, Server
from taskhub.client.connection import EARLY_SEND
from taskhub.hub.ws import CHUNK


async def _raw(server: Server, name: str) -> ClientConnection:
    ws = await connect(
        server.url + "/v1/ws", additional_headers={"Authorization": f"Bearer {name}:"}
    )
    assert json.loads(await ws.recv())["op"] == "welcome"
    return ws


def _msgs(frame: str | bytes) -> list[dict[str, Any]]:
    data = json.loads(frame)
    return data if isinstance(data, list) else [data]


@pytest.mark.parametrize(("quick_apply", "chunked"), [(1.0, True), (0.0, False)])
async def test_a_long_frame_is_committed_in_chunks_when_writes_are_quick(
    server: Server, quick_apply: float, chunked: bool
) -> None:
    """With a quick store the first pubs of a long frame reach the worker while the hub is
    still applying the rest (the worker gets several frames of offers); with a slow one the
    frame is committed whole (one frame of offers), as more, smaller writes cost more there."""
    assert server.hub is not None
    server.hub.quick_apply = quick_apply
    worker, publisher = await _raw(server, "worker"), await _raw(server, "publisher")
    sub = {"op": "sub", "action": "pipe:run", "concurrency": 1000, "ref": 1}
    await worker.send(json.dumps(sub))
    assert _msgs(await worker.recv()) == [{"op": "ok", "ref": 1}]
    n = CHUNK * 5 + 3
    pubs = [{"op": "pub", "action": "pipe:run", "payload": i, "ref": i} for i in range(n)]
    await publisher.send(json.dumps(pubs))
    frames: list[list[dict[str, Any]]] = []
    async with asyncio.timeout(5):
        while sum(len(f) for f in frames) < n:
            frames.append([m for m in _msgs(await worker.recv()) if m["op"] == "offer"])
    offered = [m["payload"] for f in frames for m in f]
    assert offered == list(range(n))  # every pub offered once, in order
    if chunked:
        assert len(frames) > 1 and len(frames[0]) <= CHUNK
    else:
        assert len(frames) == 1
    answers: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(answers) < n:
            answers += _msgs(await publisher.recv())
    assert sorted(a["ref"] for a in answers if a["op"] == "ok") == list(range(n))
    await worker.close()
    await publisher.close()


async def test_a_long_burst_leaves_the_client_while_it_is_being_made() -> None:
    """The client sends a frame once EARLY_SEND bytes are queued instead of one frame at the
    end of the loop turn: the hub can start on a burst while the publisher is still in it."""
    frames: list[list[dict[str, Any]]] = []
    sizes: list[int] = []
    got_all = asyncio.Event()
    n = 2000

    async def hub(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"op": "welcome", "protocol": 1, "max_frame": 1 << 20}))
        async for frame in ws:
            frames.append(_msgs(frame))
            sizes.append(len(frame))
            if sum(map(len, frames)) >= n:
                got_all.set()

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="p") as client:
            before = len(frames)
            for i in range(n):  # one loop turn: ~130 KiB of pubs
                client.pub("burst:run", {"i": i, "pad": "x" * 40})
            async with asyncio.timeout(5):
                await got_all.wait()
    burst = frames[before:]
    # About EARLY_SEND each: the message that crossed it, and the commas between messages.
    assert len(burst) >= 2 and max(sizes[before:]) < EARLY_SEND + 2048
    assert [m["payload"]["i"] for f in burst for m in f] == list(range(n))
