"""The HTTP API, the pull consumers and the schedules across hubs (docs/deployment.md, "The
hub-to-hub link"), with two real hubs on loopback: hub B reaches partition 1 at hub A
(``Router.place``, as the partition leases place it). Every call goes to B over real HTTP;
the work is done by a WebSocket worker on A, or by a pull consumer on B."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskhub import Client, Server
from taskhub.partitions import partition_of_id
from tests.conftest import ServerFactory, until
from tests.integration.test_consumers import Puller
from tests.integration.test_hub_link import action_in, client, clients, lead_elsewhere, two_hubs

P = 2
THERE = action_in(1)  # led by A, reached from B over the link
HERE = action_in(0)  # led by B


@pytest.fixture
async def hubs(make_server: ServerFactory) -> tuple[Server, Server]:
    return await two_hubs(make_server)


@pytest.fixture
async def http(hubs: tuple[Server, Server]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hubs[1].http_url, timeout=10) as c:
        yield c


async def stored_on(server: Server, task_id: str) -> dict[str, Any] | None:
    assert server.hub is not None
    rec = await server.hub.parts[partition_of_id(task_id)].find(task_id)
    return None if rec is None else {"state": rec.state, "action": rec.action}


async def test_publish_on_b_of_a_partition_a_leads_and_wait_for_its_result(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, b = hubs
    async with clients((a, "worker")) as (worker,):
        await worker.sub(THERE, lambda t: {"double": t.payload * 2})
        r = await http.post("/v1/tasks", json={"action": THERE, "payload": 21})
        assert r.status_code == 201, r.text
        task = r.json()
        assert partition_of_id(task["id"]) == 1 and task["action"] == THERE
        assert (await stored_on(a, task["id"])) is not None  # stored on A, not on B
        assert (await stored_on(b, task["id"])) is None
        # the long poll waits on A, the partition's hub
        got = await http.get(f"/v1/tasks/{task['id']}/result", params={"wait": 5})
        assert got.status_code == 200 and got.json()["result"] == {"double": 42}


async def test_a_key_dedupes_across_hubs_and_errors_keep_their_status(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    body = {"action": THERE, "payload": 1, "options": {"key": "k1", "delay": 60}}
    first = await http.post("/v1/tasks", json=body)
    again = await http.post("/v1/tasks", json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    # the leader refuses what the lifecycle refuses, with the code and status it would give
    bad = await http.post("/v1/tasks", json={"action": THERE, "options": {"delay": "soon"}})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_option"
    assert "soon" in bad.json()["message"]
    # still waiting after the wait: 202 with the task, from A
    poll = await http.get(f"/v1/tasks/{first.json()['id']}/result", params={"wait": 0.2})
    assert poll.status_code == 202 and poll.json()["state"] == "init"


async def test_permissions_cross_with_the_callers_credentials(make_server: ServerFactory) -> None:
    creds = [
        {"name": "pub", "key": "k" * 24, "pub_permissions": [THERE]},
        {"name": "reader", "key": "r" * 24, "sub_permissions": [THERE]},
    ]
    a = await make_server(creds, partitions=P, name="hub-a")
    b = await make_server(creds, partitions=P, name="hub-b")
    lead_elsewhere(b, 1, a)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as http:
        ok = await http.post(
            "/v1/tasks",
            json={"action": THERE, "options": {"delay": 60}},
            headers={"Authorization": f"Bearer pub:{'k' * 24}"},
        )
        assert ok.status_code == 201, ok.text
        assert ok.json()["publisher"] == "pub"  # published on A as the caller B authenticated
        denied = await http.post(
            "/v1/tasks",
            json={"action": THERE},
            headers={"Authorization": f"Bearer reader:{'r' * 24}"},
        )
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
        cancel = await http.delete(
            f"/v1/tasks/{ok.json()['id']}", headers={"Authorization": f"Bearer reader:{'r' * 24}"}
        )
        assert cancel.status_code == 403  # neither its publisher nor allowed to publish it


async def test_a_batch_spanning_both_hubs(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, b = hubs
    tasks = [
        {"action": HERE, "payload": 0},
        {"action": THERE, "payload": 1, "options": {"key": "same"}},
        {"action": THERE, "payload": 2},
        {"action": HERE, "payload": 3},
    ]
    r = await http.post("/v1/tasks:batch", json={"tasks": tasks})
    assert r.status_code == 201, r.text
    body = r.json()
    assert [partition_of_id(t["id"]) for t in body["tasks"]] == [0, 1, 1, 0]
    assert [t["action"] for t in body["tasks"]] == [t["action"] for t in tasks]
    assert body["created"] == [True, True, True, True]
    for t in body["tasks"]:
        assert (await stored_on(a if partition_of_id(t["id"]) == 1 else b, t["id"])) is not None
    # the key found the earlier task on A: nothing new, 200
    again = await http.post("/v1/tasks:batch", json={"tasks": [tasks[1]]})
    assert again.status_code == 200 and again.json()["created"] == [False]
    assert again.json()["tasks"][0]["id"] == body["tasks"][1]["id"]
    # an item refused by the checks on B: nothing is published on either hub
    before = len((await http.get("/v1/tasks")).json()["tasks"])
    bad = await http.post(
        "/v1/tasks:batch", json={"tasks": [{"action": THERE}, {"action": "no colon"}]}
    )
    assert bad.status_code == 422 and bad.json()["details"]["index"] == 1
    assert len((await http.get("/v1/tasks")).json()["tasks"]) == before


async def test_cancel_through_b(hubs: tuple[Server, Server], http: httpx.AsyncClient) -> None:
    a, _ = hubs
    r = await http.post("/v1/tasks", json={"action": THERE, "payload": 1})
    task_id = r.json()["id"]
    gone = await http.delete(f"/v1/tasks/{task_id}")
    assert gone.status_code == 200, gone.text
    assert gone.json()["state"] == "fail" and gone.json()["error"]["reason"] == "cancelled"
    assert (await stored_on(a, task_id)) == {"state": "fail", "action": THERE}
    twice = await http.delete(f"/v1/tasks/{task_id}")
    assert twice.status_code == 409 and twice.json()["code"] == "task_ended"
    result = await http.get(f"/v1/tasks/{task_id}/result")
    assert result.status_code == 409 and result.json()["code"] == "task_cancelled"
    from taskhub.ids import UlidFactory

    unknown = await http.delete(f"/v1/tasks/{UlidFactory(partition=1)()}")
    assert unknown.status_code == 404 and unknown.json()["code"] == "task_not_found"


async def test_a_pull_consumer_on_b_works_a_partition_a_leads(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = hubs
    puller = await Puller(http, {"actions": [THERE, HERE], "group": "g", "concurrency": 2}).start()
    async with clients((a, "web")) as (publisher,):
        big = "x" * (100 * 1024)  # over the inline payload limit: fetched over the link
        handles = [publisher.pub(THERE, {"n": 1}), publisher.pub(THERE, big)]
        here = (await http.post("/v1/tasks", json={"action": HERE, "payload": "local"})).json()
        leases = [await puller.fetch() for _ in range(3)]
        by_task = {lease["task_id"]: lease for lease in leases if lease is not None}
        assert set(by_task) == {h.id for h in handles} | {here["id"]}
        assert by_task[handles[1].id]["payload"] == big
        assert by_task[handles[0].id]["payload"] == {"n": 1}
        assert by_task[here["id"]]["payload"] == "local"
        assert await puller.fetch(wait=0) is None
        step = await puller.call("update", task_id=handles[0].id, data={"pct": 50})
        assert step.json() == {"task_id": handles[0].id, "state": "start"}
        step = await puller.call("extend", task_id=handles[0].id, duration="10m")
        assert step.status_code == 200, step.text
        step = await puller.call("commit", task_id=handles[0].id, result={"ok": 1})
        assert step.json() == {"task_id": handles[0].id, "state": "success"}
        assert await handles[0].get_result(timeout=5) == {"ok": 1}
        # a step on a lease that is over: the leader's 409, as at home
        again = await puller.call("commit", task_id=handles[0].id, result=2)
        assert again.status_code == 409, again.text
        failed = await puller.call(
            "fail", task_id=handles[1].id, error={"type": "Boom", "message": "no"}, retry=False
        )
        assert failed.json()["state"] == "fail"
        dropped = await puller.call("drop", task_id=here["id"])  # the local one, beside them
        assert dropped.json() == {"task_id": here["id"], "state": "end"}
        stopped = await puller.stop()
        assert stopped.status_code == 200
        assert a.hub is not None
        assert (await stored_on(a, handles[1].id)) == {"state": "fail", "action": THERE}


async def test_a_lapsed_lease_goes_back_on_a_counting_a_try(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = hubs
    async with clients((a, "web")) as (publisher,):
        handle = publisher.pub(THERE, 7, max_attempts=5)
        puller = await Puller(http, {"actions": [THERE], "lease": 0.2}).start()
        first = await puller.fetch()
        assert first is not None and first["attempt"] == 1
        # not committed within its lease: A takes it back, a try counted, and offers it again
        second = await puller.fetch(wait=5)
        assert second is not None and second["task_id"] == handle.id
        assert second["attempt"] >= 2
        got = (await http.get(f"/v1/tasks/{handle.id}")).json()
        assert got["deliveries"][0]["tries"] >= 1


async def test_a_stopped_consumer_hands_its_lease_back_on_a(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = hubs
    async with clients((a, "web"), (a, "worker")) as (publisher, worker):
        handle = publisher.pub(THERE, 7)
        puller = await Puller(http, {"actions": [THERE], "group": "worker"}).start()
        lease = await puller.fetch()
        assert lease is not None and lease["task_id"] == handle.id
        assert (await puller.stop()).json()["handed_back"] == 1
        # handed back, uncounted: a WebSocket worker of the group on A gets it
        await worker.sub(THERE, lambda t: "done")
        assert await handle.get_result(timeout=10) == "done"
        got = (await http.get(f"/v1/tasks/{handle.id}")).json()
        assert got["deliveries"][0]["tries"] == 0  # the hand-back counted no try


async def test_a_broken_link_stops_the_consumer_that_used_it(
    make_server: ServerFactory,
) -> None:
    a = await make_server(partitions=P, pickup_window=1.0, name="hub-a")
    b = await make_server(partitions=P, pickup_window=1.0, name="hub-b")
    lead_elsewhere(b, 1, a)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as http:
        puller = await Puller(http, {"actions": [THERE]}).start()
        await a.stop()  # A goes away: the link breaks
        r = await until(
            lambda: _fetch_status(puller), timeout=10
        )  # stopped: its next call answers 404 (start a new one, as a client reconnects)
        assert r == 404


async def test_a_consumers_calls_on_another_hub_say_where_it_lives(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = hubs
    puller = await Puller(http, {"actions": [THERE]}).start()
    async with httpx.AsyncClient(base_url=a.http_url, timeout=10) as other:
        r = await other.post(
            f"/v1/consumers/{puller.id}/fetch", params={"wait": 0}, headers=puller.headers
        )
    assert r.status_code == 404 and r.json()["code"] == "consumer_not_found"
    assert "served by the hub that started it" in r.json()["message"]


async def _fetch_status(puller: Puller) -> int | None:
    r = await puller.http.post(
        f"/v1/consumers/{puller.id}/fetch", params={"wait": 0}, headers=puller.headers
    )
    return r.status_code if r.status_code == 404 else None


async def test_a_schedule_on_b_fires_into_a_partition_a_leads(
    make_server: ServerFactory,
) -> None:
    shift = [0.0]  # B's clock, moved just before a minute's end when the schedule is made
    a = await make_server(partitions=P, name="hub-a")
    b = await make_server(partitions=P, name="hub-b", clock=lambda: time.time() + shift[0])
    lead_elsewhere(b, 1, a)
    worker = await Client(a.url, name="worker", connect_timeout=5).connect()
    try:
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def run(task: Any) -> str:
            got.put_nowait(task)
            return "ran"

        await worker.sub(THERE, run)
        async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as http:
            # its "every minute" slot comes 4 s after this (a fake clock, not a minute's wait;
            # room for a loaded machine to take the PUT before the slot)
            slot = math.ceil(time.time() / 60 + 1) * 60
            shift[0] = slot - 4 - time.time()
            r = await http.put(
                "/v1/schedules/minutely",
                json={"cron": "* * * * *", "action": THERE, "payload": {"from": "b"}},
            )
            assert r.status_code == 200, r.text
            assert r.json()["next_at"] == slot  # not missed while the PUT was taken
        task = await asyncio.wait_for(got.get(), 30)
        assert task.payload == {"from": "b"} and partition_of_id(task.id) == 1
        assert (await stored_on(a, task.id)) is not None  # published on A, partition 1's hub
    finally:
        await worker.close()


async def test_post_add_on_b_starts_a_chain_held_on_a(make_server: ServerFactory) -> None:
    """Seed 000's `POST /add`: a chain whose first step A leads is held there, its next step
    runs on B; another chain is held on B. Both complete."""
    a, b = await two_hubs(make_server, both_ways=True)  # each leads one, reaches the other
    async with clients((a, "wa"), (b, "wb")) as (wa, wb):
        await wa.sub(THERE, lambda t: {"n": t.payload["n"] + 1})
        await wb.sub(HERE, lambda t: {"n": t.payload["n"] * 10})
        body = [
            {"tasks": [{"task": THERE, "input": {"n": 1}}, {"task": HERE}]},
            {"tasks": [{"task": HERE, "input": {"n": 2}}, {"task": THERE}]},
        ]
        async with httpx.AsyncClient(base_url=b.http_url, timeout=20) as http:
            r = await http.post("/add", json=body)
            assert r.status_code == 201, r.text
            first, second = r.json()["chains"]
            assert partition_of_id(first) == 1 and partition_of_id(second) == 0
            assert (await stored_on(a, first)) is not None  # held by A
            wait = {"wait": 10}
            got = [await http.get(f"/v1/tasks/{c}/result", params=wait) for c in (first, second)]
        assert [g.json()["result"] for g in got] == [{"n": 20}, {"n": 21}]


async def test_a_tasks_event_stream_on_b_follows_it_on_a(
    hubs: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = hubs
    gate = asyncio.Event()
    worker = await client(a, "worker")
    try:

        async def run(task: Any) -> str:
            await task.update({"pct": 50})
            await gate.wait()
            return "done"

        await worker.sub(THERE, run)
        task_id = (await http.post("/v1/tasks", json={"action": THERE})).json()["id"]
        seen: list[tuple[str, str]] = []
        async with http.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    seen.append(("event", line[7:]))
                    if line == "event: update":
                        gate.set()  # the rest comes live, over the link
                elif line.startswith("id: "):
                    seen.append(("id", line[4:]))
        types = [v for k, v in seen if k == "event"]
        assert types[0] == "init" and "update" in types and types[-1] == "success"
        ids = [int(v) for k, v in seen if k == "id"]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # again with Last-Event-ID: only the later events, and it ends (the task ended)
        again = await http.get(
            f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(ids[-2])}
        )
        assert again.text.count("event: ") == 1 and "event: success" in again.text
    finally:
        gate.set()
        await worker.close()


async def test_an_http_broadcast_on_a_reaches_the_topics_at_b(make_server: ServerFactory) -> None:
    """Partition 0's hub (B) holds the topics: `POST /v1/events/{topic}` on A goes there."""
    a = await make_server(partitions=P, name="hub-a")
    b = await make_server(partitions=P, name="hub-b")
    lead_elsewhere(a, 0, b)
    async with clients((a, "listener")) as (listener,):
        got: list[Any] = []
        await listener.subscribe("news.*", lambda data, topic: got.append((topic, data)))
        async with httpx.AsyncClient(base_url=a.http_url, timeout=10) as http:
            r = await http.post("/v1/events/news.today", json={"n": 1})
        assert r.status_code == 202 and r.json() == {"topic": "news.today", "delivered": 1}
        await until(lambda: got)
        assert got == [("news.today", {"n": 1})]


async def test_the_dashboards_cancel_and_retry_on_b_act_on_a(make_server: ServerFactory) -> None:
    creds = [
        {"name": "ops", "key": "ops-key", "pub_permissions": ["admin"]},
        {"name": "svc", "key": "svc-key", "sub_permissions": ["*"], "pub_permissions": ["*"]},
    ]
    admin, svc = {"Authorization": "Bearer ops:ops-key"}, {"Authorization": "Bearer svc:svc-key"}
    a = await make_server(creds, partitions=P, name="hub-a")
    b = await make_server(creds, partitions=P, name="hub-b")
    lead_elsewhere(b, 1, a)
    async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as http:
        waiting = await http.post(
            "/v1/tasks", json={"action": THERE, "options": {"delay": 600}}, headers=svc
        )
        task_id = waiting.json()["id"]
        out = await http.post(f"/v1/dashboard/tasks/{task_id}/cancel", headers=admin)
        assert out.status_code == 200, out.text
        assert out.json()["error"] == {"reason": "cancelled", "message": "cancelled by ops"}
        retried = await http.post(f"/v1/dashboard/tasks/{task_id}/retry", headers=admin)
        assert retried.status_code == 200, retried.text
        copy = retried.json()["task"]
        assert partition_of_id(copy) == 1 and (await stored_on(a, copy)) is not None
        got = (await http.get(f"/v1/tasks/{copy}", headers=svc)).json()
        assert got["options"]["retried_from"] == task_id and got["publisher"] == "ops"
