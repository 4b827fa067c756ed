"""Scheduling over a real hub: delays, priorities, once_every, dead letters, durable queues,
schedules and retention, through the client, the HTTP API and the config file."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Server
from taskhub import config as cfg
from taskhub.errors import InvalidOption, PermissionDenied, TaskFailed, TaskNotFound
from tests.conftest import ClientFactory, ServerFactory, until


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


async def test_delay_string_and_aware_at(make_client: ClientFactory) -> None:
    client = await make_client("svc")
    seen: list[float] = []

    @client.sub("job:run")
    async def run(task: Any) -> str:
        seen.append(time.time())
        return "ok"

    await run
    start = time.time()
    assert await client.pub("job:run", delay="300ms").get_result(timeout=5) == "ok"
    assert seen[0] - start >= 0.28
    at = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=200)
    assert await client.pub("job:run", at=at).get_result(timeout=5) == "ok"
    with pytest.raises(ValueError, match="timezone-aware"):
        client.pub("job:run", at=dt.datetime.now())
    with pytest.raises(InvalidOption, match="'soon'"):
        client.pub("job:run", delay="soon")


async def test_priority_orders_a_groups_waiting_tasks(make_client: ClientFactory) -> None:
    pub = await make_client("pub")
    handles = [pub.pub("job:run", p, priority=p) for p in (0, 5, 1, 9, 0)]
    for h in handles:
        await h.accepted()
    order: list[int] = []
    worker = await make_client("w")

    @worker.sub("job:run", concurrency=1)
    async def run(task: Any) -> None:
        order.append(await task.get_payload())

    await until(lambda: len(order) == 5)
    assert order == [9, 5, 1, 0, 0]


async def test_once_every_returns_the_waiting_task(make_client: ClientFactory) -> None:
    client = await make_client("svc")
    first = await client.pub("mail:digest", {"n": 1}, key="u1", once_every="1h").accepted()
    second = await client.pub("mail:digest", {"n": 2}, key="u1", once_every=3600).accepted()
    other = await client.pub("mail:digest", key="u2", once_every="1h").accepted()
    assert first == second != other
    task = await client.get(first)
    assert task["options"]["once_every"] == 3600.0


async def test_dead_letters_list_show_requeue(make_client: ClientFactory) -> None:
    client = await make_client("svc")
    calls: list[int] = []

    @client.sub("job:flaky")
    async def flaky(task: Any) -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError(f"boom {len(calls)}")
        return "fine"

    await flaky
    handle = client.pub("job:flaky", {"n": 7}, retries=1, backoff=0.05)
    with pytest.raises(TaskFailed, match="boom 2"):
        await handle.get_result(timeout=5)
    task_id = await handle.accepted()
    [entry] = await client.dead_letters()
    assert entry["id"] == task_id
    assert entry["error"]["reason"] == "error"
    assert "payload" not in entry
    full = await client.dead_letter(task_id)
    assert full["payload"] == {"n": 7}
    assert full["deliveries"][0]["tries"] == 2
    new_id = await client.requeue(task_id)
    assert new_id != task_id
    assert await client.dead_letters() == []
    with pytest.raises(TaskNotFound):
        await client.requeue(task_id)  # requeued already
    new = await until(lambda: _ended(client, new_id))
    assert new["state"] == "success" and new["result"] == "fine"
    assert new["options"]["requeued_from"] == task_id


async def _ended(client: Any, task_id: str) -> Any:
    task = await client.get(task_id)
    return task if task["state"] in ("success", "fail", "end") else None


async def test_durable_queue_accumulates_and_purges(make_client: ClientFactory) -> None:
    worker = await make_client("w")

    @worker.sub("job:batch", group="batchers", durable=True)
    async def batch(task: Any) -> None: ...

    await batch
    await worker.close()
    pub = await make_client("pub")
    handles = [pub.pub("job:batch", i) for i in range(3)]
    for h in handles:
        await h.accepted()
    [q] = [q for q in await pub.queues() if q["group"] == "batchers"]
    assert q == {
        "action": "job:batch",
        "group": "batchers",
        "durable": True,
        "workers": 0,
        "credit": 0,
        "waiting": 3,
        "in_flight": 0,
    }
    assert await pub.purge("job:batch", "batchers") == 3
    with pytest.raises(TaskFailed, match="purged"):
        await handles[0].get_result(timeout=5)
    assert await pub.purge("job:batch", "batchers", forget=True) == 0
    assert not any(q["group"] == "batchers" for q in await pub.queues())


async def test_schedules_over_the_client(make_client: ClientFactory) -> None:
    client = await make_client("ops")
    got = await client.schedule(
        "reports/nightly",
        "0 3 * * *",
        "report:build",
        {"k": 1},
        timezone="Europe/Oslo",
        priority=2,
        delay="5m",
    )
    assert got["options"] == {"priority": 2, "delay": 300.0}
    next_at = dt.datetime.fromtimestamp(got["next_at"], dt.UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Oslo")
    )
    assert (next_at.hour, next_at.minute) == (3, 0)
    [listed] = await client.schedules()
    assert listed["name"] == "reports/nightly" and listed["owner"] == "ops"
    with pytest.raises(InvalidOption, match="cron"):
        await client.schedule("bad", "every night", "report:build")
    with pytest.raises(InvalidOption, match="Mars"):
        await client.schedule("bad", "* * * * *", "report:build", timezone="Mars/Base")
    await client.unschedule("reports/nightly")
    assert await client.schedules() == []
    with pytest.raises(TaskNotFound):
        await client.unschedule("reports/nightly")


async def test_http_schedules_queues_dead_letters(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    r = await http.put(
        "/v1/schedules/daily",
        json={"cron": "*/10 * * * *", "action": "job:run", "options": {"once_every": "1m"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["options"]["once_every"] == 60.0
    assert [s["name"] for s in (await http.get("/v1/schedules")).json()] == ["daily"]
    assert (await http.get("/v1/schedules/daily")).json()["cron"] == "*/10 * * * *"
    r = await http.put("/v1/schedules/x", json={"cron": "nope", "action": "job:run"})
    assert r.status_code == 422 and "cron" in r.json()["message"]
    assert (await http.delete("/v1/schedules/daily")).status_code == 200
    assert (await http.get("/v1/schedules/daily")).status_code == 404

    r = await http.post("/v1/tasks", json={"action": "job:later", "options": {"delay": "PT1H"}})
    assert r.status_code == 201, r.text
    r = await http.post("/v1/tasks", json={"action": "job:later", "options": {"delay": "1 eon"}})
    assert r.status_code == 422 and "'eon'" in r.json()["message"]

    worker = await make_client("w")

    @worker.sub("job/sub:fail", group="g", durable=True)
    async def boom(task: Any) -> None:
        raise ValueError("nope")

    await boom
    r = await http.post("/v1/tasks", json={"action": "job/sub:fail"})
    task_id = r.json()["id"]
    r = await http.get(f"/v1/tasks/{task_id}/result", params={"wait": 5})
    assert r.status_code == 409
    queues = (await http.get("/v1/queues")).json()
    assert {"action": "job/sub:fail", "group": "g"}.items() <= queues[0].items()
    r = await http.get("/v1/queues/job/sub:fail/g")
    assert r.status_code == 200 and r.json()["durable"] is True
    assert (await http.get("/v1/queues/job/sub:fail/nope")).status_code == 404
    [dead] = (await http.get("/v1/dead-letters")).json()
    assert dead["id"] == task_id and dead["error"]["message"] == "nope"
    assert (await http.get(f"/v1/dead-letters/{task_id}")).json()["payload"] is None
    r = await http.post(f"/v1/dead-letters/{task_id}/requeue")
    assert r.status_code == 201 and r.json()["requeued_from"] == task_id
    # the copy fails again (the handler always raises): a new dead letter, the old one is gone
    ids = [d["id"] for d in (await http.get("/v1/dead-letters")).json()]
    assert task_id not in ids
    r = await http.delete("/v1/queues/job/sub:fail/g", params={"forget": "true"})
    assert r.status_code == 200 and r.json()["forgotten"] is True


async def test_admin_ops_respect_permissions(make_server: ServerFactory) -> None:
    from taskhub import Client

    server = await make_server(
        creds=[{"name": "narrow", "key": "k", "pub_permissions": ["mine"], "sub_permissions": []}]
    )
    async with Client(server.url, name="narrow", key="k") as client:
        with pytest.raises(PermissionDenied):
            await client.schedule("s", "* * * * *", "theirs:run")
        with pytest.raises(PermissionDenied):
            await client.purge("mine:run", "g")
        await client.schedule("s", "* * * * *", "mine:run")
        assert [s["name"] for s in await client.schedules()] == ["s"]


async def test_retention_sweeps_and_archives(make_server: ServerFactory, tmp_path: Path) -> None:
    from taskhub import Client

    archive = tmp_path / "archive.jsonl"
    server = await make_server(retention=0.1, archive=str(archive))
    assert server.hub is not None and server.hub.retention is not None
    async with Client(server.url, name="svc") as client:

        @client.sub("job:quick")
        async def quick(task: Any) -> int:
            return 1

        await quick
        task_id = await client.pub("job:quick").accepted()
        await until(lambda: _ended(client, task_id))
        await asyncio.sleep(0.15)
        await server.hub.retention.sweep()
        assert await server.hub.store.get_task(task_id) is None
        [line] = archive.read_text().splitlines()
        doc = json.loads(line)
        assert doc["task"]["id"] == task_id and doc["task"]["state"] == "success"
        assert doc["events"][0]["type"] == "init"


async def test_config_file_actions_schedules_and_intervals(tmp_path: Path) -> None:
    path = tmp_path / "taskhub.toml"
    path.write_text(
        """
[server]
store = "memory://"
port = 0
retention = "2 days"
idempotency_window = "10m"
archive = "archive.jsonl"

[[actions]]
name = "email:send"
retries = 3
backoff = "2s"
backoff_max = "1m"

[[schedules]]
name = "nightly"
cron = "0 3 * * *"
action = "report:build"
payload = {kind = "daily"}
timezone = "Europe/Oslo"
"""
    )
    server = cfg.load(path, env={})
    assert server.retention == 172800.0
    assert server.defaults.idempotency_window == 600.0
    assert server.defaults.actions == {
        "email:send": {"retries": 3, "backoff": 2.0, "backoff_max": 60.0}
    }
    await server.start()
    try:
        assert server.hub is not None
        [s] = server.hub.scheduler.views()
        assert (s["name"], s["owner"], s["source"]) == ("nightly", "config", "config")
        assert s["payload"] == {"kind": "daily"}
    finally:
        await server.stop()
    path.write_text('[server]\nstore = "memory://"\n[[actions]]\nname = "e:s"\nretrys = 1\n')
    with pytest.raises(InvalidOption, match="retrys"):
        cfg.load(path, env={})
