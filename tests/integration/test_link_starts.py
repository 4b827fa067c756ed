"""A client's ``starts`` capability crosses the hub-to-hub link (issue 19): a publisher on hub B
whose hello said ``"starts": true`` gets the start of a task in a partition hub A leads as one
``starts`` message, as it would from its own hub, not as a ``start`` event
(docs/protocol.md, "starts"). Two real hubs on loopback, as tests/integration/test_hub_link.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from taskhub import Server
from tests.conftest import ServerFactory
from tests.integration.test_hub_link import action_in, client, two_hubs


async def _frames_until_success(ws: Any, task_id: str) -> list[dict[str, Any]]:
    """The messages the connection reads until its task's ``success`` event."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            data = json.loads(await ws.recv())
            for m in data if isinstance(data, list) else [data]:
                seen.append(m)
                done = m.get("op") == "event" and m.get("type") == "success"
                if done and m.get("task") == task_id:
                    return seen


async def _publish(b: Server, action: str) -> list[dict[str, Any]]:
    headers = {"Authorization": "Bearer publisher:"}
    async with connect(b.url + "/v1/ws", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        await ws.send(json.dumps({"op": "hello", "client": "raw", "starts": True}))
        await ws.send(json.dumps({"op": "pub", "action": action, "payload": 2, "ref": 1}))
        async with asyncio.timeout(10):
            answer = json.loads(await ws.recv())
        assert answer["op"] == "ok" and answer["ref"] == 1, answer
        seen = await _frames_until_success(ws, answer["task"])
    return [{"id": answer["task"]}, *seen]


async def test_starts_reach_a_client_of_another_hub(make_server: ServerFactory) -> None:
    """The publisher on B, its task in partition 1 (led by A), the worker on A: the start
    reaches it as ``{"op": "starts", "tasks": [id]}`` and no ``start`` event."""
    a, b = await two_hubs(make_server)
    worker = await client(a, "worker")
    try:
        await worker.sub(action_in(1), lambda t: t.payload * 2)
        first, *seen = await _publish(b, action_in(1))
    finally:
        await worker.close()
    task_id = first["id"]
    starts = [m for m in seen if m.get("op") == "starts"]
    assert starts == [{"op": "starts", "tasks": [task_id]}], seen
    assert not [m for m in seen if m.get("op") == "event" and m.get("type") == "start"], seen
