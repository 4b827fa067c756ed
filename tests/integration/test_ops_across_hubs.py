"""The operator's listings and actions over every partition, whichever hub is asked
(docs/deployment.md, "The hub-to-hub link"): group queues, purge, dead letters and their
re-queue, over the WebSocket, HTTP and the CLI, with two real hubs on loopback. Hub B's slot
for partition 1 is the partition hub A leads, as the partition leases place it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from taskhub import Client, Server, TaskFailed
from taskhub.errors import PartitionUnavailable, TaskNotFound
from taskhub.hub.unled import UnledPartition
from taskhub.partitions import partition_of_id
from tests.conftest import ServerFactory, until
from tests.integration.test_cli import cli
from tests.integration.test_hub_link import action_in, client, clients, two_hubs
from tests.integration.test_leased_hubs import P as LEASED_P
from tests.integration.test_leased_hubs import _named, make_hub, split
from tests.integration.test_leased_hubs import action_in as leased_action
from tests.integration.test_leased_hubs import health as leased_health

__all__ = ["make_hub"]  # a fixture of the leased hubs' tests (a sqlite file, Redis)

P = 2


@pytest.fixture
async def hubs(make_server: ServerFactory) -> tuple[Server, Server]:
    return await two_hubs(make_server)  # partition 1 of B's deployment is led by A


async def failing(server: Server, action: str, payload: Any) -> str:
    """A task of ``action`` published and failed for good on ``server``: a dead letter."""
    async with clients((server, "flaky")) as (c,):
        await c.sub(action, lambda t: 1 / 0)
        handle = c.pub(action, payload)
        with pytest.raises(TaskFailed):
            await handle.get_result(timeout=10)
        return await handle.accepted()


async def test_dead_letters_of_every_hub_listed_shown_and_requeued(
    hubs: tuple[Server, Server],
) -> None:
    a, b = hubs
    there, here = action_in(1), action_in(0)
    on_a = await failing(a, there, {"on": "a"})  # partition 1: kept by A
    on_b = await failing(b, here, {"on": "b"})  # partition 0: B's own
    assert partition_of_id(on_a) == 1 and partition_of_id(on_b) == 0
    async with clients((b, "ops")) as (ops,):
        listed = await ops.dead_letters()
        assert [d["id"] for d in listed] == sorted([on_a, on_b])
        assert all("payload" not in d for d in listed)
        assert [d["id"] for d in await ops.dead_letters(there)] == [on_a]
        full = await ops.dead_letter(on_a)  # read by A, with its payload
        assert full["payload"] == {"on": "a"} and full["action"] == there
        with pytest.raises(TaskNotFound):  # A's 404 is B's 404
            await ops.dead_letter(on_a[:-1] + ("0" if on_a[-1] != "0" else "1"))

        worker = await client(a, "worker")
        try:
            await worker.sub(there, lambda t: ["fixed", t.payload])
            copy = await ops.requeue(on_a)  # published by A, in partition 1
            assert partition_of_id(copy) == 1
            done = await until(lambda: _ended(ops, copy), timeout=10)
            assert done["result"] == ["fixed", {"on": "a"}]
            assert done["options"]["requeued_from"] == on_a
        finally:
            await worker.close()
        assert [d["id"] for d in await ops.dead_letters()] == [on_b]
        with pytest.raises(TaskNotFound):
            await ops.requeue(on_a)  # requeued already

    async with httpx.AsyncClient(base_url=b.http_url) as http:
        assert [d["id"] for d in (await http.get("/v1/dead-letters")).json()] == [on_b]
        missing = await http.get(f"/v1/dead-letters/{on_a}")
        assert missing.status_code == 404 and missing.json()["code"] == "task_not_found"
    async with httpx.AsyncClient(base_url=a.http_url) as http:
        # A answers for its own deployment (its partition 0 is its own): B's letter is not there
        assert (await http.get("/v1/dead-letters")).json() == []


async def _ended(c: Client, task_id: str) -> Any:
    task = await c.get(task_id)
    return task if task["state"] in ("success", "fail") else None


async def test_queues_listed_shown_and_purged_across_hubs(hubs: tuple[Server, Server]) -> None:
    a, b = hubs
    there, here = action_in(1), action_in(0)
    worker = await client(a, "mailer")  # durable groups, then nobody to work
    await worker.sub(there, lambda t: None, group="far", durable=True)
    await worker.sub(here, lambda t: None, group="near", durable=True)
    await worker.close()
    async with clients((b, "publisher")) as (publisher,):
        for i in range(3):
            await publisher.pub(there, i).accepted()
        await publisher.pub(here).accepted()
        queues = {(q["action"], q["group"]): q for q in await publisher.queues()}
        # `here` was subscribed on A, so its group is in A's partition 0, not B's
        assert set(queues) == {(there, "far")}
        assert queues[there, "far"]["waiting"] == 3 and queues[there, "far"]["durable"]
        async with httpx.AsyncClient(base_url=b.http_url) as http:
            one = await http.get(f"/v1/queues/{there}/far")
            assert one.status_code == 200 and one.json()["waiting"] == 3
            nope = await http.get(f"/v1/queues/{there}/nobody")
            assert nope.status_code == 404, nope.text
            listed = (await http.get("/v1/queues")).json()
            assert [(q["action"], q["group"]) for q in listed] == [(there, "far")]

        shown = await cli("queues", "ls", "--json", "--url", b.url)
        assert shown.code == 0, shown.stderr
        assert [(q["action"], q["group"], q["waiting"]) for q in json.loads(shown.stdout)] == [
            (there, "far", 3)
        ]
        purged = await cli("queues", "purge", there, "far", "--url", b.url)
        assert purged.code == 0 and purged.stderr == "purged 3 deliveries\n", purged.stderr
        [q] = await publisher.queues()
        assert q["waiting"] == 0


async def test_a_partition_without_leader_is_named(hubs: tuple[Server, Server]) -> None:
    _, b = hubs
    assert b.hub is not None
    b.hub.router.place(1, UnledPartition(1, "", b.hub.front))  # as while a lease runs out
    async with clients((b, "ops")) as (ops,):
        with pytest.raises(PartitionUnavailable, match="partition 1 has no leader"):
            await ops.dead_letters()
        with pytest.raises(PartitionUnavailable, match="partition 1"):
            await ops.queues()
    async with httpx.AsyncClient(base_url=b.http_url) as http:
        r = await http.get("/v1/queues")
        assert r.status_code == 503 and r.json()["code"] == "partition_unavailable"
        stats = await http.get("/v1/dashboard/stats")  # the page names what it left out
        assert stats.status_code == 200 and stats.json()["missing"] == [1]
        assert stats.json()["hubs"] == [{"name": "hub-b", "partitions": [0]}]
        assert (await http.get("/metrics")).text.count("taskhub_partitions_leaderless 1.0") == 1


async def test_the_dashboard_and_metrics_cover_every_partition(
    hubs: tuple[Server, Server],
) -> None:
    a, b = hubs
    there = action_in(1)  # led by A
    release = asyncio.Event()

    async def slow(task: Any) -> Any:
        await release.wait()
        return task.payload

    worker, publisher = await client(b, "worker"), await client(b, "publisher")
    try:
        await worker.sub(there, slow, group="g", concurrency=1)
        handles = [publisher.pub(there, i) for i in range(3)]
        for h in handles:
            await h.accepted()
        async with httpx.AsyncClient(base_url=b.http_url) as http:

            async def running() -> Any:
                body = (await http.get("/v1/dashboard/stats")).json()
                return body if body["counts"]["running"] == 1 else None

            stats = await until(running, timeout=10)
            assert stats["counts"]["waiting"] == 2
            assert stats["hubs"] == [
                {"name": "hub-b", "partitions": [0]},
                {"name": "hub-a", "partitions": [1]},
            ]
            assert stats["missing"] == []
            [queue] = stats["queues"]
            assert (queue["action"], queue["group"], queue["waiting"], queue["inflight"]) == (
                there,
                "g",
                2,
                1,
            )
            conns = {c["service"]: c for c in stats["connections"]}
            assert set(conns) == {"worker", "publisher"}  # once each, though A serves them too
            w = conns["worker"]
            assert w["hub"] == "hub-b" and w["holding"] == 1
            assert [(s["action"], s["inflight"]) for s in w["subscriptions"]] == [(there, 1)]
            assert [t["task"] for t in w["current"]] == [handles[0].id]
            listed = (await http.get("/v1/dashboard/connections")).json()
            assert {c["id"] for c in listed} == {c["id"] for c in stats["connections"]}
            rows = (await http.get("/v1/dashboard/tasks")).json()["tasks"]
            assert [r["id"] for r in rows] == sorted((h.id for h in handles), reverse=True)
            # A newer task A ended in its own partition 0 (not B's deployment's) takes no
            # place in B's page of A's partition 1
            async with Client(a.url, name="own", connect_timeout=5) as own:
                await own.sub(action_in(0), lambda t: "a0")
                assert await own.pub(action_in(0)).get_result() == "a0"
            two = (await http.get("/v1/dashboard/tasks", params={"limit": 2})).json()["tasks"]
            assert [r["id"] for r in two] == [handles[2].id, handles[1].id]

            # the dashboard's cancel and retry of a task A leads, asked of B
            cancelled = await http.post(f"/v1/dashboard/tasks/{handles[2].id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["state"] == "fail"
            again = await http.post(f"/v1/dashboard/tasks/{handles[2].id}/cancel")
            assert again.status_code == 409 and again.json()["code"] == "task_ended"
            retried = await http.post(f"/v1/dashboard/tasks/{handles[2].id}/retry")
            assert retried.status_code == 200, retried.text
            copy = retried.json()["task"]
            assert partition_of_id(copy) == 1 and retried.json()["retried_from"] == handles[2].id
            text_b = (await http.get("/metrics")).text
        async with httpx.AsyncClient(base_url=a.http_url) as http:
            text_a = (await http.get("/metrics")).text
        # Each hub exports its own: the queue where its partition is led, the connections
        # where their clients are.
        assert f'taskhub_queue_inflight{{action="{there}",group="g"}} 1.0' in text_a
        assert f'action="{there}"' not in text_b.split("taskhub_queue_depth")[1]
        assert 'taskhub_connections{service="worker"} 1.0' in text_b
        assert 'taskhub_connections{service="worker"}' not in text_a
        assert "taskhub_partitions_led 1.0" in text_b and "taskhub_partitions_led 2.0" in text_a
        release.set()
        assert await asyncio.gather(*(h.get_result() for h in handles[:2])) == [0, 1]
        with pytest.raises(TaskFailed, match="cancelled"):
            await handles[2].get_result()
        done = await until(lambda: _ended(publisher, copy), timeout=10)
        assert done["result"] == 2 and done["options"]["retried_from"] == handles[2].id
    finally:
        release.set()
        await worker.close()
        await publisher.close()


async def test_leased_hubs_list_and_act_on_each_others_partitions(make_hub: Any) -> None:
    """Two hubs that split the partitions by their leases (a sqlite file, Redis): either
    one lists every dead letter and group queue and shows every hub's numbers."""
    one = await make_hub()
    two = await make_hub()
    led_one, led_two = await split(one, two)
    await until(lambda: _named(two, led_one), timeout=20, step=0.05)
    await until(lambda: _named(one, led_two), timeout=20, step=0.05)
    far, near = leased_action(led_one[0]), leased_action(led_two[0])
    dead = [await failing(two, far, "far"), await failing(two, near, "near")]
    async with Client(two.url, name="ops", connect_timeout=5) as ops:
        assert [d["id"] for d in await ops.dead_letters()] == sorted(dead)
        assert (await ops.dead_letter(dead[0]))["payload"] == "far"
        assert {q["action"] for q in await ops.queues()} == {far, near}
        copy = await ops.requeue(dead[0])  # kept and published by hub one
        assert partition_of_id(copy) == led_one[0]
        assert [d["id"] for d in await ops.dead_letters()] == [dead[1]]
    async with httpx.AsyncClient(base_url=one.http_url) as http:

        async def listed() -> Any:  # a lease that ran out on a loaded machine: 503, retry
            answer = await http.get("/v1/dead-letters")
            return answer.json() if answer.status_code == 200 else None

        assert [d["id"] for d in await until(listed, timeout=20)] == [dead[1]]

        async def whole() -> Any:
            body = (await http.get("/v1/dashboard/stats")).json()
            return body if body["missing"] == [] else None

        stats = await until(whole, timeout=20)
    assert sorted(p for h in stats["hubs"] for p in h["partitions"]) == list(range(LEASED_P))
    assert stats["counts"]["fail"] == 2  # each hub counted the one it led
    assert {q["action"] for q in stats["queues"]} == {far, near}


async def test_the_task_page_streams_the_events_of_a_task_another_hub_leads(
    hubs: tuple[Server, Server],
) -> None:
    a, b = hubs
    there = action_in(1)
    release = asyncio.Event()

    async def work(task: Any) -> Any:
        await task.update({"half": True})
        await release.wait()
        return "done"

    worker, publisher = await client(a, "worker"), await client(b, "publisher")
    try:
        await worker.sub(there, work)
        handle = publisher.pub(there)
        task_id = await handle.accepted()
        await until(lambda: _updated(publisher, task_id), timeout=10)
        types: list[str] = []
        seqs: list[int] = []
        async with (
            httpx.AsyncClient(base_url=b.http_url, timeout=15) as http,
            http.stream("GET", f"/v1/dashboard/tasks/{task_id}/events") as stream,
        ):
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    raise AssertionError("the dashboard's stream names no event")
                if line.startswith("data:"):
                    ev = json.loads(line[5:])
                    types.append(ev["type"])
                    seqs.append(ev["seq"])
                    if ev["type"] == "update":
                        release.set()  # the rest comes as A stores it
                    if ev["type"] == "success":
                        break
        assert types[0] == "init" and types[-1] == "success" and "update" in types
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        async with httpx.AsyncClient(base_url=b.http_url, timeout=15) as http:
            again = await http.get(  # resumed after its last event: nothing more
                f"/v1/dashboard/tasks/{task_id}/events",
                headers={"Last-Event-ID": str(seqs[-1])},
            )
        assert again.status_code == 200 and "data:" not in again.text
    finally:
        release.set()
        await worker.close()
        await publisher.close()


async def _updated(c: Client, task_id: str) -> bool:
    return bool((await c.get(task_id)).get("updates"))


async def test_the_workers_list_asks_the_hubs_that_lead_no_partition(make_hub: Any) -> None:
    """Three leased hubs over two partitions: one leads none, and its clients are still in
    the Workers list of a page another hub serves, with the work they hold where it is led."""
    # A lease long enough that none runs out while the test reads the pages (the spread is
    # settled by hand-offs, never by a lapse): on a loaded machine a 1.5 s lease lapsed once
    # and moved the idle hub's place to another hub mid-test.
    hubs = [await make_hub(partitions=P, name=f"hub-{i}", lease=10) for i in range(3)]

    async def settled() -> list[list[int]] | None:
        led = [(await leased_health(s))["partitions"] for s in hubs]
        spread = sorted(p for each in led for p in each) == [0, 1]
        return led if spread and all(len(each) <= 1 for each in led) else None

    led = await until(settled, timeout=30, step=0.05)
    idle = hubs[led.index([])]
    leader = hubs[led.index([1])]
    there = action_in(1)
    release = asyncio.Event()

    async def slow(task: Any) -> Any:
        await release.wait()
        return task.payload

    async with clients((idle, "worker"), (leader, "publisher")) as (worker, publisher):
        try:
            await worker.sub(there, slow, group="g", concurrency=1)
            handle = publisher.pub(there, 7)
            async with httpx.AsyncClient(base_url=leader.http_url) as http:

                async def listed() -> Any:
                    body = (await http.get("/v1/dashboard/stats")).json()
                    rows = [c for c in body["connections"] if c["service"] == "worker"]
                    # whole: a loaded machine's hub may miss ASK_TIMEOUT now and then
                    whole = body["missing"] == []
                    return body if whole and rows and rows[0]["holding"] == 1 else None

                stats = await until(listed, timeout=20)
            [row] = [c for c in stats["connections"] if c["service"] == "worker"]
            assert row["hub"] == idle.name
            assert [(s["action"], s["inflight"]) for s in row["subscriptions"]] == [(there, 1)]
            assert {"name": idle.name, "partitions": []} in stats["hubs"]
        finally:
            release.set()
        assert await handle.get_result(timeout=10) == 7
