"""A hub of several partitions (docs/deployment.md, "Partitions"), through the public API:
tasks spread over the partitions and all complete, chains cross them, a wildcard watch sees
them all, a timeout fires once, and a restart (sqlite) restores every partition's tasks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from taskhub import Client, Server, TaskTimeout, TooManyConnections
from taskhub.partitions import partition_of, partition_of_id
from tests.conftest import ServerFactory, until

P = 4


def actions_in(partitions: set[int], n: int = 1) -> list[str]:
    """``n`` actions in each of ``partitions`` (of P), found by the documented formula."""
    out: dict[int, list[str]] = {p: [] for p in partitions}
    i = 0
    while any(len(v) < n for v in out.values()):
        action = f"job{i}:run"
        where = partition_of(action, "", P)
        if where in out and len(out[where]) < n:
            out[where].append(action)
        i += 1
    return [a for p in sorted(out) for a in out[p]]


@pytest.fixture
async def hub(make_server: ServerFactory) -> Server:
    return await make_server(partitions=P, pickup_window=1.0)


@pytest.fixture
async def clients(hub: Server) -> AsyncIterator[list[Client]]:
    made = [Client(hub.url, name=name, connect_timeout=5) for name in ("worker", "publisher")]
    for c in made:
        await c.connect()
    yield made
    for c in made:
        await c.close()


async def test_tasks_of_many_actions_spread_and_all_complete(
    hub: Server, clients: list[Client]
) -> None:
    worker, publisher = clients
    actions = actions_in(set(range(P)), n=3)
    for action in actions:
        await worker.sub(action, lambda t, a=action: {"done": a, "n": t.payload}, concurrency=4)
    handles = [publisher.pub(a, i) for i in range(5) for a in actions]
    results = await asyncio.gather(*(h.get_result() for h in handles))
    assert results == [{"done": a, "n": i} for i in range(5) for a in actions]
    # every task's id names the partition of its action; all four partitions worked
    assert {partition_of_id(h.id) for h in handles} == set(range(P))
    for h, a in zip(handles, [a for _ in range(5) for a in actions], strict=True):
        assert partition_of_id(h.id) == partition_of(a, "", P)
    # a task of any partition is read back by id
    got = await publisher.get(handles[-1].id)
    assert got["state"] == "success"


async def test_a_chain_crossing_partitions_completes(hub: Server, clients: list[Client]) -> None:
    worker, publisher = clients
    first, second, third = actions_in({0, 2, 3})
    await worker.sub(first, lambda t: t.payload + 1)
    await worker.sub(second, lambda t: t.previous_result * 10)
    await worker.sub(third, lambda t: [t.previous_result, "end"])
    handle = publisher.chain([(first, 1), (second, None), (third, None)])
    assert await handle.get_result() == [20, "end"]
    group = publisher.group([(third, 7), (first, 5), (first, 6)])
    assert await group.get_result() == [[None, "end"], 6, 7]


async def test_a_batch_over_partitions_is_answered_before_its_tasks_events(hub: Server) -> None:
    """A ``pubs`` whose items fall in several partitions is answered once every one stored
    them; its tasks' events must not reach the publisher before that answer names them (a
    client drops events of a task it cannot name yet). The worker returns each task as it is
    offered, on a raw socket: the events come as fast as they can."""
    actions = actions_in(set(range(P)))
    worker, publisher = await _raw(hub, "worker"), await _raw(hub, "publisher")
    for action in actions:
        await worker.send(json.dumps({"op": "sub", "action": action, "concurrency": 8}))
    await worker.send(json.dumps({"op": "sub", "action": actions[-1], "concurrency": 8, "ref": 1}))
    while not any(m.get("ref") == 1 for m in _msgs(await worker.recv())):
        pass

    async def work() -> None:
        while True:
            for m in _msgs(await worker.recv()):
                if m["op"] == "offer":
                    ret = {"op": "return", "task": m["task"], "attempt": m["attempt"]}
                    await worker.send(json.dumps(ret))

    items = [{"action": a, "payload": i} for i in range(3) for a in actions]
    working = asyncio.create_task(work())
    try:
        await publisher.send(json.dumps({"op": "pubs", "ref": 2, "items": items}))
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while sum(m.get("type") == "success" for m in got) < len(items):
                got += _msgs(await publisher.recv())
    finally:
        working.cancel()
        await worker.close()
        await publisher.close()
    assert got[0]["op"] == "ok" and got[0]["ref"] == 2
    assert {m["task"] for m in got[1:]} == {item["task"] for item in got[0]["items"]}


async def _raw(server: Server, name: str) -> ClientConnection:
    ws = await connect(
        server.url + "/v1/ws", additional_headers={"Authorization": f"Bearer {name}:"}
    )
    assert json.loads(await ws.recv())["op"] == "welcome"
    return ws


def _msgs(frame: str | bytes) -> list[dict[str, Any]]:
    data = json.loads(frame)
    return data if isinstance(data, list) else [data]


async def test_a_frame_wakes_only_the_partitions_it_changed(
    hub: Server, clients: list[Client]
) -> None:
    worker, publisher = clients
    (action,) = actions_in({2})
    await worker.sub(action, lambda t: t.payload)
    assert await publisher.pub(action, 0).get_result() == 0
    pipelines = [part.pipeline for part in hub.hub.parts]
    before = [p.rounds for p in pipelines]
    for i in range(1, 6):
        assert await publisher.pub(action, i).get_result() == i
    woken = [p.rounds - was for p, was in zip(pipelines, before, strict=True)]
    # Every frame (pub, return) was partition 2's: the other flushers slept through them.
    assert woken[2] >= 5
    assert [woken[i] for i in (0, 1, 3)] == [0, 0, 0]


async def test_a_wildcard_watch_sees_tasks_of_every_partition(
    hub: Server, clients: list[Client]
) -> None:
    worker, publisher = clients
    actions = actions_in(set(range(P)))
    for action in actions:
        await worker.sub(action, lambda t: "ok")
    seen: dict[str, set[str]] = {}
    async with publisher.watch(">") as events:
        handles = [publisher.pub(a) for a in actions]
        await asyncio.gather(*(h.get_result() for h in handles))
        async with asyncio.timeout(5):
            async for ev in events:
                seen.setdefault(ev["task"], set()).add(ev["type"])
                if all("success" in seen.get(h.id, ()) for h in handles):
                    break
    assert {partition_of_id(t) for t in seen} == set(range(P))
    # unwatching ends it everywhere: a task of another partition is not streamed any more
    late = publisher.pub(actions[-1])
    await late.get_result()
    assert late.id not in seen


async def test_a_timeout_fires_once(hub: Server, clients: list[Client]) -> None:
    worker, publisher = clients
    (action,) = actions_in({3})
    started = asyncio.Event()

    async def stuck(task: Any) -> Any:
        started.set()
        await asyncio.sleep(30)

    await worker.sub(action, stuck)
    fails: list[dict[str, Any]] = []
    async with publisher.watch(action) as events:

        async def count() -> None:
            async for ev in events:
                if ev["type"] == "fail":
                    fails.append(ev)

        counting = asyncio.ensure_future(count())
        handle = publisher.pub(action, timeout=0.3)
        with pytest.raises(TaskTimeout) as info:
            await handle.get_result()
        assert info.value.reason == "timeout"
        await until(lambda: fails)
        # Another round trip through the same partition: had a second timer fired, its
        # event would have reached the watch before this task's.
        await worker.unsub(action)
        await worker.sub(action, lambda t: "fine")
        assert await publisher.pub(action).get_result() == "fine"
        counting.cancel()
    assert [f["task"] for f in fails] == [handle.id]
    assert partition_of_id(handle.id) == 3


async def test_healthz_lists_the_partitions_and_connections_are_counted_once(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        partitions=P,
        creds=[{"name": "solo", "key": "k", "pub_permissions": ["*"], "max_connections": 1}],
    )
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        r = await http.get("/healthz")
    assert r.json() == {"status": "ok", "role": "standalone", "partitions": [0, 1, 2, 3]}
    async with Client(server.url, name="solo", key="k") as first:
        for action in actions_in(set(range(P))):  # its messages reach every partition
            await first.pub(action).accepted()
        with pytest.raises(TooManyConnections):
            await Client(server.url, name="solo", key="k", connect_timeout=5).connect()


def db_files(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.glob("hub*.db"))


async def test_a_restart_restores_every_partitions_tasks(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    actions = actions_in(set(range(P)))
    first = Server(store=store, port=0, partitions=P)
    async with first, Client(first.url, name="publisher") as publisher:
        ids = [await publisher.pub(a, a).accepted() for a in actions]  # nobody subscribed
    assert db_files(tmp_path) == [
        "hub.db",
        "hub.p0.db",
        "hub.p1.db",
        "hub.p2.db",
        "hub.p3.db",
    ]
    again = Server(store=store, port=0, partitions=P)
    async with again, Client(again.url, name="worker") as worker:
        done: dict[str, str] = {}

        def work(task: Any) -> str:
            done[task.id] = task.payload
            return "ok"

        for action in actions:
            await worker.sub(action, work)
        await until(lambda: len(done) == len(ids))
        assert done == dict(zip(ids, actions, strict=True))
        for task_id in ids:
            assert (await worker.get(task_id))["state"] in ("start", "success")


async def test_the_http_api_routes_by_partition(hub: Server, clients: list[Client]) -> None:
    """Publishing, reading, waiting for, listing, cancelling; queues and dead letters; a pull
    consumer: over HTTP too, every partition is reached."""
    worker, _ = clients
    actions = actions_in(set(range(P)))
    for action in actions[:2]:
        await worker.sub(action, lambda t: t.payload * 2)

    async def boom(task: Any) -> None:
        raise ValueError("nope")

    await worker.sub(actions[2], boom, group="g", durable=True)
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        ids = []
        for i, action in enumerate(actions):
            r = await http.post("/v1/tasks", json={"action": action, "payload": i})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        assert [partition_of_id(i) for i in ids] == [partition_of(a, "", P) for a in actions]
        for i, task_id in enumerate(ids[:2]):
            r = await http.get(f"/v1/tasks/{task_id}/result", params={"wait": 5})
            assert r.json()["result"] == i * 2
        r = await http.post("/v1/tasks:batch", json={"tasks": [{"action": a} for a in actions]})
        assert r.status_code == 201
        assert (await http.get(f"/v1/tasks/{ids[2]}/result", params={"wait": 5})).status_code == 409
        # the list holds every partition's tasks, in id order
        listed = [
            t["id"] for t in (await http.get("/v1/tasks", params={"limit": 100})).json()["tasks"]
        ]
        assert set(ids) <= set(listed) and listed == sorted(listed)
        # nobody takes actions[3]: cancel it, in its partition
        r = await http.delete(f"/v1/tasks/{ids[3]}")
        assert r.status_code == 200 and r.json()["state"] == "fail"
        # the operator's views: queues and dead letters of every partition
        queues = {(q["action"], q["group"]) for q in (await http.get("/v1/queues")).json()}
        assert (actions[2], "g") in queues and (actions[0], "worker") in queues
        dead = {d["id"] for d in (await http.get("/v1/dead-letters")).json()}
        assert ids[2] in dead
        metrics = (await http.get("/metrics")).text  # the gauges count every partition
        for action in actions[:3]:
            assert f'taskhub_queue_workers{{action="{action}"' in metrics, action
        # a pull consumer of an action of partition 3
        r = await http.post("/v1/consumers", json={"actions": [actions[3]], "group": "pull"})
        assert r.status_code == 201
        consumer, headers = (
            r.json()["consumer_id"],
            {"X-Consumer-Token": r.json()["consumer_token"]},
        )
        r = await http.post(f"/v1/consumers/{consumer}/fetch", params={"wait": 5}, headers=headers)
        assert r.status_code == 200 and r.json()["action"] == actions[3]  # the batch's
        task_id = r.json()["task_id"]
        r = await http.post(
            f"/v1/consumers/{consumer}/commit",
            json={"task_id": task_id, "result": "y"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        r = await http.get(f"/v1/tasks/{task_id}/result", params={"wait": 5})
        assert r.json()["result"] == "y"


async def test_several_partitions_need_a_store_url() -> None:
    from taskhub.errors import InvalidOption
    from taskhub.store.memory import MemoryStore

    server = Server(store=MemoryStore(), port=0, partitions=2)
    with pytest.raises(InvalidOption, match="partitions = 2 needs a store URL"):
        await server.start()
    await server.stop()


async def test_a_chain_crossing_partitions_survives_a_restart(tmp_path: Path) -> None:
    """The chain is held in its first step's partition, its waiting second step in another:
    after a restart each partition restores its part and the chain completes."""
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    first_action, second_action = actions_in({1, 3})
    one = Server(store=store, port=0, partitions=P)
    async with one, Client(one.url, name="a") as client:
        await client.sub(first_action, lambda t: t.payload + 1)
        handle = client.chain([(first_action, 1), (second_action, None)])
        await handle.accepted()
        # wait until the first step is done and the second is published (no one takes it)
        async with httpx.AsyncClient(base_url=one.http_url) as http:

            async def second_waits() -> bool:
                r = await http.get("/v1/tasks", params={"action": second_action})
                return bool(r.json()["tasks"])

            await until(second_waits)
        chain_id = handle.id
    assert partition_of_id(chain_id) == 1
    again = Server(store=store, port=0, partitions=P)
    async with again, Client(again.url, name="b") as client:
        await client.sub(second_action, lambda t: [t.previous_result, "done"])
        async with httpx.AsyncClient(base_url=again.http_url) as http:
            r = await http.get(f"/v1/tasks/{chain_id}/result", params={"wait": 10})
        assert r.json()["result"] == [2, "done"], r.text
