"""Pull consumers over real HTTP: leases, commits, expiry, stop, and sharing with WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskhub import NoResult, Server, TaskFailed
from tests.conftest import ClientFactory, ServerFactory


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


class Puller:
    """A pull consumer as an external service would drive it."""

    def __init__(self, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        self.http = http
        self.body = body
        self.id = ""
        self.headers: dict[str, str] = {}

    async def start(self) -> Puller:
        r = await self.http.post("/v1/consumers", json=self.body)
        assert r.status_code == 201, r.text
        self.id = r.json()["consumer_id"]
        self.headers = {"X-Consumer-Token": r.json()["consumer_token"]}
        return self

    async def call(self, step: str, **body: Any) -> httpx.Response:
        return await self.http.post(
            f"/v1/consumers/{self.id}/{step}", json=body, headers=self.headers
        )

    async def fetch(self, wait: float = 5) -> dict[str, Any] | None:
        r = await self.http.post(
            f"/v1/consumers/{self.id}/fetch", params={"wait": wait}, headers=self.headers
        )
        if r.status_code == 204:
            return None
        assert r.status_code == 200, r.text
        lease: dict[str, Any] = r.json()
        return lease

    async def stop(self) -> httpx.Response:
        return await self.http.delete(f"/v1/consumers/{self.id}", headers=self.headers)


async def test_pull_consumer_serves_a_websocket_task(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    puller = await Puller(http, {"actions": ["pdf:render"], "group": "renderers"}).start()
    publisher = await make_client("web")
    handle = publisher.pub("pdf:render", {"page": 1})
    updates: list[Any] = []
    handle.on("update", lambda h: updates.append(h.last_update))
    lease = await puller.fetch()
    assert lease is not None
    assert lease["action"] == "pdf:render" and lease["payload"] == {"page": 1}
    assert lease["attempt"] == 1 and lease["group"] == "renderers"
    assert (await puller.call("update", task_id=lease["task_id"], data={"pct": 50})).json()[
        "state"
    ] == "start"
    r = await puller.call("commit", task_id=lease["task_id"], result={"pages": 1})
    assert r.status_code == 200 and r.json() == {"task_id": lease["task_id"], "state": "success"}
    assert await handle.get_result(timeout=5) == {"pages": 1}
    assert updates == [{"pct": 50}]
    assert await puller.fetch(wait=0) is None  # nothing left: 204


async def test_a_websocket_result_reaches_a_pull_consumer_as_json(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    """The hub keeps a WebSocket worker's result as the JSON it sent; the next chain step's
    HTTP lease still shows it (payload and previous_result) as plain JSON, merged or not."""
    worker = await make_client("geo")
    await worker.sub("geo:locate", lambda t: {"lat": 59.9, "city": "Oslo"})
    puller = await Puller(http, {"actions": ["weather:get"]}).start()
    publisher = await make_client("web")
    for merge, declared, expected in [
        (False, None, {"lat": 59.9, "city": "Oslo"}),
        (True, {"units": "C"}, {"units": "C", "lat": 59.9, "city": "Oslo"}),
    ]:
        handle = publisher.chain(
            [("geo:locate", {"q": "Oslo"}), ("weather:get", declared)], merge_input=merge
        )
        lease = await puller.fetch()
        assert lease is not None
        assert lease["payload"] == expected
        assert lease["previous_result"] == {"lat": 59.9, "city": "Oslo"}
        await puller.call("commit", task_id=lease["task_id"], result={"t": 4})
        assert await handle.get_result(timeout=5) == {"t": 4}


@pytest.mark.parametrize("durable", [True, False])
async def test_a_durable_consumer_group_keeps_its_tasks_while_no_consumer_runs(
    http: httpx.AsyncClient, make_client: ClientFactory, durable: bool
) -> None:
    """With another group subscribed a task is not pooled: only a durable group gets its copy
    while none of its consumers is running, and a consumer started later fetches it."""
    release = asyncio.Event()
    worker = await make_client("indexer")

    async def index(task: Any) -> Any:
        await release.wait()  # holds the task: it stays live for the other group
        return "indexed"

    await worker.sub("doc:new", index)
    body = {"actions": ["doc:new"], "group": "archive", "durable": durable}
    first = await Puller(http, body).start()
    assert (await first.stop()).status_code == 200
    publisher = await make_client("web")
    handle = publisher.pub("doc:new", {"n": 1})
    await handle.accepted()
    later = await Puller(http, {"actions": ["doc:new"], "group": "archive"}).start()
    lease = await later.fetch(wait=0.3)
    if durable:
        assert lease is not None and lease["payload"] == {"n": 1} and lease["group"] == "archive"
    else:
        assert lease is None  # routed while the group had no consumer: only "indexer" got it
    release.set()
    assert await handle.get_result(timeout=5) == "indexed"
    r = await http.post("/v1/consumers", json={**body, "durable": "yes"})
    assert r.status_code == 400 and "durable" in r.text  # not a boolean: refused, named


async def test_pull_consumer_and_websocket_worker_share_a_group(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    worker = await make_client("svc")
    served: dict[str, list[str]] = {"ws": [], "http": []}

    async def handle(task: Any) -> Any:
        served["ws"].append(task.id)
        await asyncio.sleep(0.05)
        return "ws"

    await worker.sub("job:run", handle, group="crew")
    puller = await Puller(http, {"actions": ["job:run"], "group": "crew"}).start()
    ids = [
        (await http.post("/v1/tasks", json={"action": "job:run", "payload": i})).json()["id"]
        for i in range(12)
    ]

    async def pull() -> None:
        while len(served["ws"]) + len(served["http"]) < len(ids):
            lease = await puller.fetch(wait=0.2)
            if lease is not None:
                served["http"].append(lease["task_id"])
                await asyncio.sleep(0.05)
                await puller.call("commit", task_id=lease["task_id"], result="http")

    await asyncio.wait_for(pull(), 15)
    assert sorted(served["ws"] + served["http"]) == sorted(ids)  # each task once, in one group
    assert served["ws"] and served["http"]
    results = {
        (await http.get(f"/v1/tasks/{i}/result", params={"wait": 5})).json()["result"] for i in ids
    }
    assert results == {"ws", "http"}


async def test_an_expired_lease_is_offered_again(http: httpx.AsyncClient) -> None:
    puller = await Puller(http, {"actions": ["slow:job"], "lease": 0.3}).start()
    task_id = (await http.post("/v1/tasks", json={"action": "slow:job"})).json()["id"]
    first = await puller.fetch()
    assert first is not None and first["task_id"] == task_id and first["attempt"] == 1
    assert first["lease_expires_at"] > 0
    await asyncio.sleep(0.5)  # the lease lapses: the task goes back to the group
    again = await puller.fetch()
    assert again is not None and again["task_id"] == task_id and again["attempt"] == 2
    task = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert task["deliveries"][0]["tries"] == 1  # a lapsed lease counts as a try
    r = await puller.call("commit", task_id=task_id, result="late but fine")
    assert r.json()["state"] == "success"


async def test_a_lapsed_lease_cannot_report_progress_but_can_still_win(
    http: httpx.AsyncClient,
) -> None:
    a = await Puller(http, {"actions": ["lap:job"], "group": "g", "lease": 0.3}).start()
    b = await Puller(http, {"actions": ["lap:job"], "group": "g", "lease": 30}).start()
    task_id = (await http.post("/v1/tasks", json={"action": "lap:job"})).json()["id"]
    first = await a.fetch(wait=2)  # round robin: the first worker of the group gets it
    assert first is not None and first["task_id"] == task_id
    await asyncio.sleep(0.5)  # a's lease lapses; round robin offers the task to b
    again = await b.fetch(wait=2)
    assert again is not None and again["attempt"] == 2
    r = await a.call("update", task_id=task_id, data=1)
    assert r.status_code == 409 and r.json()["code"] == "stale_attempt"
    r = await a.call("commit", task_id=task_id, result="late")  # the first return wins
    assert r.status_code == 200 and r.json()["state"] == "success"
    r = await b.call("update", task_id=task_id, data=2)
    assert r.status_code == 409 and r.json()["code"] == "not_holding"


async def test_updates_renew_the_lease(http: httpx.AsyncClient) -> None:
    puller = await Puller(http, {"actions": ["long:job"], "lease": 0.4}).start()
    task_id = (await http.post("/v1/tasks", json={"action": "long:job"})).json()["id"]
    assert await puller.fetch() is not None
    for i in range(4):
        await asyncio.sleep(0.2)
        r = await puller.call("update", task_id=task_id, data=i)
        assert r.status_code == 200, r.text
    assert (await puller.call("commit", task_id=task_id, result=1)).json()["state"] == "success"
    task = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert task["deliveries"][0]["attempt"] == 1


async def test_stop_hands_leases_back_to_the_group(http: httpx.AsyncClient) -> None:
    a = await Puller(http, {"actions": ["q:work"], "group": "g", "lease": 60}).start()
    task_id = (await http.post("/v1/tasks", json={"action": "q:work"})).json()["id"]
    lease = await a.fetch()
    assert lease is not None and lease["task_id"] == task_id
    b = await Puller(http, {"actions": ["q:work"], "group": "g"}).start()
    assert await b.fetch(wait=0.1) is None  # a holds it
    r = await a.stop()
    assert r.status_code == 200 and r.json() == {"consumer_id": a.id, "handed_back": 1}
    again = await b.fetch()
    assert again is not None and again["task_id"] == task_id and again["attempt"] == 2
    task = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert task["deliveries"][0]["tries"] == 0  # handed back, not lost: no try counted
    r = await a.call("commit", task_id=task_id, result="x")
    assert r.status_code == 404 and r.json()["code"] == "consumer_not_found"


async def test_fail_drop_and_retry(http: httpx.AsyncClient, make_client: ClientFactory) -> None:
    puller = await Puller(http, {"actions": ["f:x"]}).start()
    publisher = await make_client("web")
    handle = publisher.pub("f:x", None, retries=0)
    lease = await puller.fetch()
    assert lease is not None
    r = await puller.call(
        "fail", task_id=lease["task_id"], error={"type": "IOError", "message": "disk"}
    )
    assert r.json()["state"] == "fail"
    with pytest.raises(TaskFailed, match="disk"):
        await handle.get_result(timeout=5)
    handle = publisher.pub("f:x")
    lease = await puller.fetch()
    assert lease is not None
    assert (await puller.call("drop", task_id=lease["task_id"])).json()["state"] == "end"
    with pytest.raises(NoResult):
        await handle.get_result(timeout=5)


async def test_consumer_errors(make_server: ServerFactory) -> None:
    server = await make_server(
        creds=[
            {"name": "a", "key": "ka", "sub_permissions": ["job"], "pub_permissions": ["job"]},
            {"name": "b", "key": "kb", "sub_permissions": ["job"], "max_connections": 1},
        ]
    )
    async with (
        httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": "Bearer a:ka"}
        ) as http_a,
        httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": "Bearer b:kb"}
        ) as http_b,
    ):
        c = await Puller(http_a, {"actions": ["job:run"]}).start()
        url = f"/v1/consumers/{c.id}/fetch"
        r = await http_a.post(url)
        assert r.status_code == 401 and "X-Consumer-Token" in r.json()["message"]
        r = await http_a.post(url, headers={"X-Consumer-Token": "wrong"})
        assert r.status_code == 401 and r.json()["code"] == "auth_failed"
        r = await http_b.post(url, headers=c.headers)
        assert r.status_code == 403 and "'a'" in r.json()["message"]
        r = await http_a.post("/v1/consumers/nope/fetch", headers=c.headers)
        assert r.status_code == 404 and r.json()["code"] == "consumer_not_found"
        r = await c.call("commit", task_id="nope", result=1)
        assert r.status_code == 409 and r.json()["code"] == "not_holding"
        r = await c.call("commit", result=1)
        assert r.status_code == 400 and "task_id" in r.json()["message"]
        for body, words in [
            ({"actions": ["job:run"], "concurrency": 0}, "concurrency"),
            ({"actions": ["job:run"], "lease": 0}, "lease"),
            ({"actions": ["job run"]}, "job run"),
        ]:
            r = await http_a.post("/v1/consumers", json=body)
            assert r.status_code == 422 and words in r.json()["message"], r.text
        r = await http_a.post("/v1/consumers", json={"actions": []})
        assert r.status_code == 400 and "actions" in r.json()["message"]
        # a consumer counts as a connection of its service
        await Puller(http_b, {"actions": ["job:run"]}).start()
        r = await http_b.post("/v1/consumers", json={"actions": ["job:run"]})
        assert r.status_code == 429 and r.json()["code"] == "too_many_connections"


async def test_a_silent_consumer_is_stopped(http: httpx.AsyncClient) -> None:
    puller = await Puller(http, {"actions": ["q:quiet"], "lease": 0.1}).start()
    await asyncio.sleep(0.6)  # more than 3 leases without a word
    r = await puller.call("fetch")
    assert r.status_code == 404 and r.json()["code"] == "consumer_not_found"


async def test_partition_key_orders_work_within_a_group(http: httpx.AsyncClient) -> None:
    puller = await Puller(http, {"actions": ["acct:post"], "concurrency": 5}).start()
    ids = []
    for i in range(3):
        body = {"action": "acct:post", "payload": i, "options": {"partition_key": "acct-1"}}
        ids.append((await http.post("/v1/tasks", json=body)).json()["id"])
    other = (
        await http.post(
            "/v1/tasks", json={"action": "acct:post", "options": {"partition_key": "acct-2"}}
        )
    ).json()["id"]
    got = [await puller.fetch(), await puller.fetch()]
    assert [g["task_id"] for g in got if g] == [ids[0], other]
    assert await puller.fetch(wait=0.2) is None  # acct-1's next waits for the first
    for expected in ids[1:]:
        await puller.call("commit", task_id=got[0]["task_id"] if got[0] else "", result=None)
        nxt = await puller.fetch()
        assert nxt is not None and nxt["task_id"] == expected
        got[0] = nxt


async def test_websocket_publisher_can_set_a_partition_key(make_client: Any) -> None:
    """Tasks of one partition run one at a time in publish order, even with spare credit."""
    running: list[int] = []
    order: list[int] = []

    async def work(task: Any) -> Any:
        n = await task.get_payload()
        running.append(n)
        assert len(running) == 1, "two tasks of one partition ran at once"
        await asyncio.sleep(0.01)
        order.append(n)
        running.remove(n)
        return n

    worker = await make_client("w")
    await worker.sub("acct:post", work, concurrency=8)
    pub = await make_client("p")
    handles = [pub.pub("acct:post", i, partition_key="acct-1") for i in range(6)]
    assert [await h.get_result(timeout=10) for h in handles] == list(range(6))
    assert order == list(range(6))
