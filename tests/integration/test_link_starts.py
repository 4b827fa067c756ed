"""A client's ``starts`` capability crosses the hub-to-hub link (issue 19): a publisher on hub B
whose hello said ``"starts": true`` gets the start of a task in a partition hub A leads as one
``starts`` message, as it would from its own hub, not as a ``start`` event
(docs/protocol.md, "starts"). Two real hubs on loopback, as tests/integration/test_hub_link.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect

from taskhub import Server
from tests.conftest import ServerFactory
from tests.integration.test_hub_link import P, action_in, client, two_hubs


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


async def _hello_late(hub: Server, action: str) -> tuple[list[Any], list[Any], str]:
    """Two tasks of ``action`` published through ``hub``, ``hello`` with ``starts`` sent
    between them: what the connection read for each, and the second task's id."""
    headers = {"Authorization": "Bearer publisher:"}
    seen: list[list[dict[str, Any]]] = []
    async with connect(hub.url + "/v1/ws", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        for ref in (1, 3):
            await ws.send(json.dumps({"op": "pub", "action": action, "payload": 2, "ref": ref}))
            async with asyncio.timeout(10):
                answer = json.loads(await ws.recv())
            assert answer["op"] == "ok" and answer["ref"] == ref, answer
            seen.append(await _frames_until_success(ws, answer["task"]))
            if ref == 1:
                await ws.send(json.dumps({"op": "hello", "starts": True, "ref": 2}))
                async with asyncio.timeout(10):
                    assert json.loads(await ws.recv()) == {"op": "ok", "ref": 2}
    return seen[0], seen[1], answer["task"]


@pytest.mark.parametrize("where", ["another hub", "this hub"])
async def test_a_hello_after_the_first_message_reaches_the_partition(
    make_server: ServerFactory, where: str
) -> None:
    """``hello`` said only after a first ``pub`` to partition 1 (which made its peer, or told
    the leader over the link who the connection is, without ``starts``): the next task's
    start still comes as a ``starts`` message (docs/protocol.md: a later ``hello`` replaces
    the earlier one). Partition 1 is led by hub A, the publisher on B; or one hub leads
    both partitions."""
    if where == "another hub":
        a, b = await two_hubs(make_server)
    else:
        a = b = await make_server(partitions=P)
    worker = await client(a, "worker")
    try:
        await worker.sub(action_in(1), lambda t: t.payload * 2)
        before, after, second = await _hello_late(b, action_in(1))
    finally:
        await worker.close()
    assert [m for m in before if m.get("type") == "start"], before  # no hello yet: an event
    assert [m for m in after if m.get("op") == "starts"] == [{"op": "starts", "tasks": [second]}]
    assert not [m for m in after if m.get("op") == "event" and m.get("type") == "start"], after
