"""A close the hub decides counts no try (issue 19): when a hub sends a worker's connection
away (1013: a link broke, a partition's leader changed; 1012: a partition handed off or
lost), its started deliveries go back to their groups without a try counted, on this hub and
on every hub its connection reached over the link; a connection that is lost (the worker's
socket dies) still counts one, as does the hand-back of a hub stopping past its grace
(tests/e2e/test_shutdown.py). Two real hubs on loopback, as
test_hub_link.py: hub B's clients reach partition 1 at hub A."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from taskhub import Client, Server, TaskFailed
from taskhub.hub.link import wire
from taskhub.partitions import partition_of_id
from tests.conftest import ServerFactory, until
from tests.integration.test_hub_link import action_in, links

P = 2


@pytest.fixture
async def hubs(make_server: ServerFactory) -> tuple[Server, Server]:
    """Hubs A and B of one deployment: B's clients reach partition 1 at A."""
    a = await make_server(partitions=P, name="hub-a")
    b = await make_server(partitions=P, name="hub-b")
    links(b).secret = links(a).secret
    assert b.hub is not None
    b.hub.router.place(1, links(b).remote(1, a.http_url))
    return a, b


async def client(server: Server, name: str) -> Client:
    return await Client(server.url, name=name, connect_timeout=5, max_backoff=0.2).connect()


class Held:
    """A worker's handler that holds each task's first run until released (its connection
    is closed meanwhile) and finishes every later run at once."""

    def __init__(self) -> None:
        self.runs: dict[str, list[int]] = {}
        self.release = asyncio.Event()

    async def __call__(self, task: Any) -> str:
        runs = self.runs.setdefault(task.id, [])
        runs.append(task.attempt)
        if len(runs) == 1:
            await self.release.wait()
        return f"done {task.attempt}"

    def started(self, ids: list[str]) -> bool:
        return all(i in self.runs for i in ids)


async def _tries(publisher: Client, task_id: str) -> int:
    task = await publisher.get(task_id)
    tries: int = task["deliveries"][0]["tries"]
    return tries


async def test_a_broken_link_gives_back_the_started_tasks_of_both_hubs_without_a_try(
    hubs: tuple[Server, Server],
) -> None:
    """The link from B to A breaks with a worker on B holding a started task of each hub's
    partition: B closes the worker (1013), A detaches it. Neither close is the worker's
    loss: with ``max_attempts=1`` both tasks run again and succeed, no try counted."""
    a, b = hubs
    held = Held()
    worker, publisher = await client(b, "worker"), await client(b, "publisher")
    try:
        for p in range(P):
            await worker.sub(action_in(p), held, concurrency=2)
        handles = [publisher.pub(action_in(p), p, max_attempts=1) for p in range(P)]
        ids = [await h.accepted() for h in handles]
        assert [partition_of_id(i) for i in ids] == [0, 1]
        await until(lambda: held.started(ids))
        link = links(b).links[wire.link_url(a.http_url)]
        assert link.ws is not None
        await link.ws.close()  # the link breaks: B closes the worker with 1013
        results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 10)
        assert results == ["done 2", "done 2"]
        assert [held.runs[i] for i in ids] == [[1, 2], [1, 2]]
        assert [await _tries(publisher, i) for i in ids] == [0, 0]
    finally:
        held.release.set()
        await worker.close()
        await publisher.close()


async def test_a_new_leader_for_one_partition_counts_no_try_on_the_old_one(
    hubs: tuple[Server, Server],
) -> None:
    """B places a new slot for partition 1 (its leader changed, as the leases place it): the
    worker that reached the old slot is closed (1013) and detached from A with ``lost``
    false, so the started task it held there goes back without a try, and runs again once
    the worker has reconnected to the partition's slot."""
    a, b = hubs
    assert b.hub is not None
    held = Held()
    worker, publisher = await client(b, "worker"), await client(b, "publisher")
    try:
        await worker.sub(action_in(1), held, concurrency=2)  # the first run still holds one
        handle = publisher.pub(action_in(1), "x", max_attempts=1)
        task_id = await handle.accepted()
        await until(lambda: held.started([task_id]))
        b.hub.router.place(1, links(b).remote(1, a.http_url))  # the old slot retires
        assert await asyncio.wait_for(handle.get_result(), 10) == "done 2"
        assert await _tries(publisher, task_id) == 0
    finally:
        held.release.set()
        await worker.close()
        await publisher.close()


async def _raw_worker(server: Server, actions: list[str]) -> ClientConnection:
    ws = await connect(server.url + "/v1/ws", additional_headers={"Authorization": "Bearer w:"})
    assert json.loads(await ws.recv())["op"] == "welcome"
    for ref, action in enumerate(actions):
        await ws.send(json.dumps({"op": "sub", "action": action, "ref": ref}))
    return ws


async def _pick_up_offers(ws: ClientConnection, n: int) -> None:
    """Pick up ``n`` offers (started, as far as the hub knows), then wait for the ``ok``s."""
    picked = 0
    async with asyncio.timeout(10):
        while picked < n:
            data = json.loads(await ws.recv())
            for m in data if isinstance(data, list) else [data]:
                if m["op"] == "offer":
                    pickup = {"op": "pickup", "task": m["task"], "attempt": m["attempt"]}
                    await ws.send(json.dumps({**pickup, "ref": 100 + picked}))
                    picked += 1


async def test_a_worker_whose_socket_dies_still_counts_a_try_on_both_hubs(
    hubs: tuple[Server, Server],
) -> None:
    """A real loss: the worker's socket is cut (no close frame). What it had started, on
    B's partition and on A's over the link, counts a try: with ``max_attempts=1`` both fail
    with reason ``attempts``."""
    _, b = hubs
    publisher = await client(b, "publisher")
    ws = await _raw_worker(b, [action_in(0), action_in(1)])
    try:
        handles = [publisher.pub(action_in(p), p, max_attempts=1) for p in range(P)]
        ids = [await h.accepted() for h in handles]
        await _pick_up_offers(ws, P)

        async def started() -> bool:
            return [(await publisher.get(i))["state"] for i in ids] == ["start", "start"]

        await until(started)
        ws.transport.abort()  # the worker is gone: no close frame, the socket just dies
        for h in handles:
            with pytest.raises(TaskFailed) as failed:
                await asyncio.wait_for(h.get_result(), 10)
            assert failed.value.reason == "attempts"
            assert "connection_lost" in str(failed.value)
        assert [await _tries(publisher, i) for i in ids] == [1, 1]
    finally:
        await publisher.close()
