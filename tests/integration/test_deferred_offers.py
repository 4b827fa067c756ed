"""An offer is written with its task's next change (``Lifecycle.defer_offers``; docs/decisions.md,
"An offer is written with the task's next change"): what is stored meanwhile restores the task
as still queued, a reader of the task's events still gets the offer, and a hub that stops
writes the offers it deferred."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Client, Server
from taskhub.lifecycle import Credentials, Peer
from taskhub.protocol import decode_frame
from taskhub.records import TaskRecord
from taskhub.store import Store, open_store
from tests import redisproc
from tests.conftest import until

ACTION = "slow:work"


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return redisproc.shared_url("deferred")
    return f"sqlite:///{tmp_path}/hub.db"


def _store(server: Server, task_id: str) -> Store:
    hub = server.leading
    assert hub is not None
    return hub.store_of(task_id)


async def _stored(server: Server, task_id: str) -> TaskRecord:
    """What the store holds of the task (not the hub's live record)."""
    rec = await _store(server, task_id).get_task(task_id)
    assert rec is not None
    return rec


async def _stored_event_types(server: Server, task_id: str) -> list[str]:
    return [ev.type for ev in await _store(server, task_id).get_events(task_id)]


class Worker:
    """A worker on the hub itself (no socket) that says only what the test tells it to: it
    neither acks nor picks up an offer by itself."""

    def __init__(self, server: Server) -> None:
        hub = server.leading  # with Redis: the leader, this process (the only hub)
        assert hub is not None
        self.hub = hub
        self.peer = Peer("w1", Credentials("slow", sub_permissions=("*",), pub_permissions=()))
        self.offers: list[dict[str, Any]] = []
        self.hub.attach(self.peer, self._got)

    def _got(self, frame: bytes) -> None:
        msgs = json.loads(frame)
        for m in msgs if isinstance(msgs, list) else [msgs]:
            if m["op"] == "offer":
                self.offers.append(m)

    def say(self, msg: dict[str, Any]) -> None:
        for m in decode_frame(json.dumps(msg).encode()):
            self.hub.handle(self.peer, m)
        self.hub.kick()


@pytest.fixture
async def server(store_url: str) -> AsyncIterator[Server]:
    server = Server(store=store_url, port=0, pickup_window=60.0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _second_offered(server: Server) -> tuple[Worker, str]:
    """Two tasks for a worker of credit 1: the second is offered when the first ends, in a
    batch that writes the first's end (the offer waits for the second's next change)."""
    worker = Worker(server)
    worker.say({"op": "sub", "action": ACTION, "concurrency": 1, "ref": 1})
    async with Client(server.url, name="pub") as client:
        first = await client.pub(ACTION, {"n": 1}).accepted()
        second = await client.pub(ACTION, {"n": 2}).accepted()
    await until(lambda: len(worker.offers) == 1)
    worker.say({"op": "return", "task": first, "attempt": 1, "result": "done", "ref": 2})
    await until(lambda: len(worker.offers) == 2)
    assert worker.offers[1]["task"] == second
    assert server.leading is not None
    await server.leading.flush()
    return worker, second


async def test_a_crash_before_the_start_restores_the_offered_task_as_queued(
    server: Server, store_url: str
) -> None:
    _, task_id = await _second_offered(server)
    # What a hub killed now leaves: the task as published, its delivery still to be offered
    # (recovery offers an offered delivery again anyway, without counting a try).
    rec = await _stored(server, task_id)
    assert rec.state == "init"
    assert [(d.state, d.attempt) for d in rec.deliveries] == [("pending", 0)]
    assert await _stored_event_types(server, task_id) == ["init"]


async def test_the_start_writes_the_offer_with_it(server: Server, store_url: str) -> None:
    worker, task_id = await _second_offered(server)
    worker.say({"op": "pickup", "task": task_id, "attempt": 1})
    assert server.leading is not None
    await server.leading.flush()
    rec = await _stored(server, task_id)
    assert rec.state == "start"
    assert [(d.state, d.attempt) for d in rec.deliveries] == [("started", 1)]
    assert await _stored_event_types(server, task_id) == ["init", "offer", "start"]


async def test_the_event_stream_has_the_offer(server: Server, store_url: str) -> None:
    _, task_id = await _second_offered(server)
    types: list[str] = []
    async with (
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
        http.stream("GET", f"/v1/tasks/{task_id}/events") as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                types.append(line.removeprefix("event: "))
            if "offer" in types:
                break
    assert types == ["init", "offer"]
    assert await _stored_event_types(server, task_id) == ["init", "offer"]


async def test_a_stopping_hub_writes_the_offers_it_deferred(store_url: str) -> None:
    server = Server(store=store_url, port=0, pickup_window=60.0)
    await server.start()
    try:
        _, task_id = await _second_offered(server)
    finally:
        await asyncio.wait_for(server.stop(), 30)
    # The offer is kept with the task (then the requeue of the worker's connection closed by
    # the stop); its delivery is offered again at the next start.
    store = open_store(store_url)
    await store.open()
    try:
        assert [ev.type for ev in await store.get_events(task_id)] == ["init", "offer", "requeue"]
        rec = await store.get_task(task_id)
    finally:
        await store.close()
    assert rec is not None
    assert [(d.state, d.attempt) for d in rec.deliveries] == [("pending", 1)]
