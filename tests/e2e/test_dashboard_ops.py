"""The dashboard's operations over plain HTTP against a real hub: the actions (cancel, retry,
re-queue, purge) and who may use them, the search, the workers' hello, chains and the
charts' series. The same steps in the browser are in test_dashboard_fleet.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from taskhub import Client, Server
from tests.conftest import ServerFactory, until

CREDS: list[dict[str, Any]] = [
    {"name": "ops", "key": "ops-key", "pub_permissions": ["admin"]},
    {"name": "svc", "key": "svc-key", "sub_permissions": ["job"], "pub_permissions": ["job"]},
    {"name": "other", "key": "other-key", "sub_permissions": ["job"], "pub_permissions": ["job"]},
]
ADMIN = {"Authorization": "Bearer ops:ops-key"}
SVC = {"Authorization": "Bearer svc:svc-key"}
OTHER = {"Authorization": "Bearer other:other-key"}


@pytest.fixture
async def hub_server(make_server: ServerFactory) -> Server:
    return await make_server(creds=CREDS, pickup_window=1.0)


@pytest.fixture
async def http(hub_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub_server.http_url, timeout=10) as client:
        yield client


async def _state(http: httpx.AsyncClient, task_id: str, state: str) -> dict[str, Any]:
    async def check() -> Any:
        body = (await http.get(f"/v1/dashboard/tasks/{task_id}", headers=ADMIN)).json()
        return body if body["state"] == state else None

    result: dict[str, Any] = await until(check)
    return result


async def test_every_action_needs_an_admin(http: httpx.AsyncClient) -> None:
    actions = [
        "/v1/dashboard/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel",
        "/v1/dashboard/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry",
        "/v1/dashboard/dead-letters/01ARZ3NDEKTSV4RRFFQ69G5FAV/requeue",
        "/v1/dashboard/queues/job:run/svc/purge",
    ]
    for path in actions:
        assert (await http.post(path)).status_code == 401, path
        refused = await http.post(path, headers=SVC)  # may publish job:run, but no admin
        assert refused.status_code == 403, path
        assert "'admin' permission" in refused.json()["message"]
    # with the session cookie, a change needs the page's header too (no cross-site form)
    await http.post("/v1/dashboard/login", json={"name": "ops", "key": "ops-key"})
    for path in actions:
        refused = await http.post(path)
        assert refused.status_code == 403 and "x-taskhub-dashboard" in refused.json()["message"]


async def test_cancel_retry_and_purge(hub_server: Server, http: httpx.AsyncClient) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    runs = 0
    async with Client(hub_server.url, name="svc", key="svc-key") as svc:

        @svc.sub("job:hang")
        async def hang(task: Any) -> Any:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()  # the worker was told to stop
                raise

        @svc.sub("job:flaky")
        async def flaky(task: Any) -> Any:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise ValueError("first run fails")
            return {"run": runs, "payload": await task.get_payload()}

        # cancel a running task
        running = await svc.pub("job:hang", {"n": 1}).accepted()
        await started.wait()
        out = await http.post(f"/v1/dashboard/tasks/{running}/cancel", headers=ADMIN)
        assert out.status_code == 200 and out.json()["state"] == "fail"
        assert out.json()["error"] == {"reason": "cancelled", "message": "cancelled by ops"}
        await asyncio.wait_for(cancelled.wait(), 10)
        again = await http.post(f"/v1/dashboard/tasks/{running}/cancel", headers=ADMIN)
        assert again.status_code == 409 and "already ended" in again.json()["message"]

        # retry a failed one: a fresh copy, published by the admin
        failed = await svc.pub("job:flaky", {"rows": 3}, priority=2).accepted()
        await _state(http, failed, "fail")
        retried = await http.post(f"/v1/dashboard/tasks/{failed}/retry", headers=ADMIN)
        assert retried.status_code == 200, retried.text
        new_id = retried.json()["task"]
        assert new_id != failed and retried.json()["retried_from"] == failed
        copy = await _state(http, new_id, "success")
        assert copy["result"] == {"run": 2, "payload": {"rows": 3}}
        assert copy["publisher"] == "ops"
        assert copy["options"]["retried_from"] == failed and copy["options"]["priority"] == 2
        refused = await http.post(f"/v1/dashboard/tasks/{new_id}/retry", headers=ADMIN)
        assert refused.status_code == 409 and "not failed" in refused.json()["message"]
        unknown = await http.post("/v1/dashboard/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry")
        assert unknown.status_code == 401
        unknown = await http.post(
            "/v1/dashboard/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/retry", headers=ADMIN
        )
        assert unknown.status_code == 404

        # purge: the waiting deliveries fail (purged), the one a worker holds is left to it
        started.clear()
        held = await svc.pub("job:hang", None).accepted()
        await started.wait()
        waiting = [await svc.pub("job:hang", {"i": i}).accepted() for i in range(3)]
        purged = await http.post("/v1/dashboard/queues/job:hang/svc/purge", headers=ADMIN)
        assert purged.json() == {"action": "job:hang", "group": "svc", "purged": 3}
        for task_id in waiting:
            body = await _state(http, task_id, "fail")
            assert body["error"]["reason"] == "purged"
        assert (await http.get(f"/v1/tasks/{held}", headers=SVC)).json()["state"] == "start"
        missing = await http.post("/v1/dashboard/queues/job:nope/svc/purge", headers=ADMIN)
        assert missing.status_code == 404


async def test_search_by_publisher_time_and_error_text(
    hub_server: Server, http: httpx.AsyncClient
) -> None:
    async with (
        Client(hub_server.url, name="svc", key="svc-key") as svc,
        Client(hub_server.url, name="other", key="other-key") as other,
    ):

        @svc.sub("job:import")
        async def imp(task: Any) -> Any:
            payload = await task.get_payload()
            if payload["row"] % 2:
                raise ValueError(f"Bad Row {payload['row']} in file.csv")
            return "ok"

        t0 = time.time()
        mine = [await svc.pub("job:import", {"row": i}).accepted() for i in range(4)]
        theirs = [await other.pub("job:import", {"row": i}).accepted() for i in range(4, 6)]
        await until(lambda: _ended(http, mine + theirs), timeout=10)
        t1 = time.time()

        async def ids(path: str, **params: Any) -> list[str]:
            # the task API takes a service's Bearer (admin is no right there), the dashboard
            # an admin's
            headers = SVC if path == "/v1/tasks" else ADMIN
            body = (await http.get(path, params=params, headers=headers)).json()
            return [t["id"] for t in body["tasks"]]

        for path in ("/v1/tasks", "/v1/dashboard/tasks"):
            assert await ids(path, error="bad row 3") == [mine[3]]  # any case
            assert await ids(path, error="file.csv") == [mine[1], mine[3], theirs[1]]
            assert await ids(path, publisher="other") == theirs
            assert await ids(path, publisher="other", error="row") == [theirs[1]]
            assert await ids(path, since=t0, until=t1) == mine + theirs
            assert await ids(path, since=t1) == []
            assert await ids(path, until=t0) == []
            assert await ids(path, state="success", publisher="svc") == [mine[0], mine[2]]
        assert await ids("/v1/dashboard/tasks", id=theirs[0]) == [theirs[0]]
        assert await ids("/v1/dashboard/tasks", id="01ARZ3NDEKTSV4RRFFQ69G5FAV") == []

        # paging: a cursor to go on from
        page = (
            await http.get("/v1/tasks", params={"error": "row", "limit": 2}, headers=SVC)
        ).json()
        assert [t["id"] for t in page["tasks"]] == [mine[1], mine[3]]
        rest = await ids("/v1/tasks", error="row", after=page["next"])
        assert rest == [theirs[1]]
        # the task API still shows only what the caller may read, and says what is wrong
        bad = await http.get("/v1/tasks", params={"since": "yesterday"}, headers=SVC)
        assert bad.status_code == 400 and "since" in bad.text


async def _ended(http: httpx.AsyncClient, task_ids: list[str]) -> bool:
    for task_id in task_ids:
        body = (await http.get(f"/v1/dashboard/tasks/{task_id}", headers=ADMIN)).json()
        if body.get("state") not in ("success", "fail"):
            return False
    return True


async def test_workers_show_their_hello_and_older_clients_still_work(
    hub_server: Server, http: httpx.AsyncClient
) -> None:
    ws_url = hub_server.url + "/v1/ws"
    async with (
        connect(ws_url, additional_headers=SVC) as old,
        connect(ws_url, additional_headers=SVC) as new,
    ):
        for ws in (old, new):
            assert json.loads(await ws.recv())["op"] == "welcome"
        # an older client: no hello at all, and it subscribes and works as before
        await old.send(json.dumps({"op": "sub", "action": "job:x", "ref": 1}))
        assert json.loads(await old.recv()) == {"op": "ok", "ref": 1}
        # a client in another language says who it is; fields it does not know are ignored
        hello = {"op": "hello", "client": "taskhub-js", "version": "2.0.0", "host": "box-7",
                 "pid": 4242, "flavour": "extra", "ref": 2}  # fmt: skip
        await new.send(json.dumps(hello))
        assert json.loads(await new.recv()) == {"op": "ok", "ref": 2}
        await new.send(json.dumps({"op": "hello", "pid": -1, "ref": 3}))
        error = json.loads(await new.recv())
        assert error["op"] == "error" and error["ref"] == 3 and "pid" in error["message"]

        conns = (await http.get("/v1/dashboard/connections", headers=ADMIN)).json()
        by_host = {c["host"]: c for c in conns}
        assert set(by_host) == {None, "box-7"}
        assert by_host["box-7"]["pid"] == 4242 and by_host["box-7"]["client"] == "taskhub-js"
        assert by_host["box-7"]["version"] == "2.0.0"
        older = by_host[None]
        assert older["pid"] is None and older["remote"] == "127.0.0.1"
        assert older["subscriptions"][0]["action"] == "job:x"


async def test_chains_are_shown_as_chains(hub_server: Server, http: httpx.AsyncClient) -> None:
    async with Client(hub_server.url, name="svc", key="svc-key") as svc:

        @svc.sub("job:add")
        async def add(task: Any) -> Any:
            payload = await task.get_payload()
            return payload + 1

        chain = svc.chain([("job:add", 1), ("job:add", None)])
        chain_id = await chain.accepted()
        assert await chain.get_result(timeout=10) == 3

        body = (await http.get("/v1/dashboard/tasks", headers=ADMIN)).json()
        rows = body["tasks"]
        assert {r["action"] for r in rows} == {"job:add"}  # not mixed in with user tasks
        steps = sorted(rows, key=lambda r: r["chain"]["step"])
        assert [r["chain"] for r in steps] == [
            {"task": chain_id, "step": 0},
            {"task": chain_id, "step": 1},
        ]
        chains = (await http.get("/v1/dashboard/tasks?kind=chain", headers=ADMIN)).json()
        assert [(r["id"], r["kind"]) for r in chains["tasks"]] == [(chain_id, "chain")]
        by_id = await http.get("/v1/dashboard/tasks", params={"id": chain_id}, headers=ADMIN)
        assert [r["kind"] for r in by_id.json()["tasks"]] == ["chain"]  # an id finds it anyway
        both = (await http.get("/v1/dashboard/tasks?kind=all", headers=ADMIN)).json()
        assert len(both["tasks"]) == 3
        stats = (await http.get("/v1/dashboard/stats", headers=ADMIN)).json()
        assert [r["action"] for r in stats["rates"]] == ["job:add"]
        assert stats["rates"][0]["published"] == 2  # the steps; the chain is not a task
        series = (await http.get("/v1/dashboard/series?span=5m", headers=ADMIN)).json()
        # a point a second, since the hub started (nothing was counted before)
        assert series["step"] == 1 and 1 <= len(series["t"]) <= 300
        assert hub_server.hub is not None
        assert series["t"][0] >= int(hub_server.hub.clock()) - 300
        assert sum(series["published"]) == 2 and sum(series["succeeded"]) == 2
        assert any(v is not None for v in series["run_p50"])
        bad = await http.get("/v1/dashboard/series?span=2w", headers=ADMIN)
        assert bad.status_code == 400 and "span" in bad.text


async def test_pull_consumers_are_listed_like_workers(
    hub_server: Server, http: httpx.AsyncClient
) -> None:
    started = await http.post(
        "/v1/consumers",
        json={"actions": ["job:render"], "group": "renderers", "concurrency": 2},
        headers={**SVC, "User-Agent": "render-farm/1.2"},
    )
    assert started.status_code == 201, started.text
    consumer = started.json()
    token = {**SVC, "X-Consumer-Token": consumer["consumer_token"]}
    task_id = (await http.post("/v1/tasks", json={"action": "job:render"}, headers=SVC)).json()[
        "id"
    ]
    lease = await http.post(f"/v1/consumers/{consumer['consumer_id']}/fetch?wait=5", headers=token)
    assert lease.json()["task_id"] == task_id

    [conn] = (await http.get("/v1/dashboard/connections", headers=ADMIN)).json()
    assert conn["id"] == consumer["consumer_id"] and conn["kind"] == "pull"
    assert conn["client"] == "render-farm/1.2" and conn["remote"] == "127.0.0.1"
    assert conn["host"] is None and conn["pid"] is None  # HTTP has no hello
    assert conn["leases"] == 1 and conn["last_seen"] > 0
    assert conn["subscriptions"] == [
        {"action": "job:render", "group": "renderers", "concurrency": 2, "inflight": 1,
         "observe": False}
    ]  # fmt: skip
    assert [t["task"] for t in conn["current"]] == [task_id]

    done = await http.post(
        f"/v1/consumers/{consumer['consumer_id']}/commit",
        json={"task_id": task_id, "result": "ok"},
        headers=token,
    )
    assert done.status_code == 200
    [conn] = (await http.get("/v1/dashboard/connections", headers=ADMIN)).json()
    assert (conn["processed"], conn["succeeded"], conn["leases"]) == (1, 1, 0)
