"""How a long frame is applied: in chunks, with the answers of each sent before the next."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from taskhub import Server
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
