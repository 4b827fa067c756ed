"""One vocabulary of task states: the HTTP API answers with the states (``init``, ``start``,
...) and its ``?state=`` filter takes a state or the dashboard's label for it (``waiting``,
``running``, ``failed``, ``ended``), over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskhub import Server
from tests.conftest import ClientFactory


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


async def _ids(http: httpx.AsyncClient, state: str) -> list[str]:
    r = await http.get("/v1/tasks", params={"state": state})
    assert r.status_code == 200, r.text
    return [t["id"] for t in r.json()["tasks"]]


async def _publish(http: httpx.AsyncClient, action: str) -> str:
    r = await http.post("/v1/tasks", json={"action": action})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_state_filter_takes_the_state_or_its_label(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    worker = await make_client("states")
    release = asyncio.Event()

    async def hold(task: Any) -> Any:
        await release.wait()
        return "late"

    async def boom(task: Any) -> Any:
        raise ValueError("no")

    async def ok(task: Any) -> Any:
        return "ok"

    await worker.sub("states:hold", hold)
    await worker.sub("states:boom", boom)
    await worker.sub("states:ok", ok)
    waiting = await _publish(http, "states:nobody")  # no worker: stays init
    running = await _publish(http, "states:hold")
    failed = await _publish(http, "states:boom")
    succeeded = await _publish(http, "states:ok")

    async def state_of(task_id: str) -> str:
        return str((await http.get(f"/v1/tasks/{task_id}")).json()["state"])

    for _ in range(500):  # until the worker has started, failed and finished them
        states = [await state_of(t) for t in (running, failed, succeeded)]
        if states == ["start", "fail", "success"]:
            break
        await asyncio.sleep(0.02)
    assert states == ["start", "fail", "success"]
    assert await state_of(waiting) == "init"  # answers use the states, not the labels

    for state, label, expected in (
        ("init", "waiting", waiting),
        ("start", "running", running),
        ("fail", "failed", failed),
    ):
        assert await _ids(http, state) == [expected]
        assert await _ids(http, label) == [expected]
    assert await _ids(http, "success") == [succeeded]
    assert await _ids(http, "end") == await _ids(http, "ended") == []
    release.set()


async def test_an_unknown_state_is_refused_naming_every_word(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/tasks", params={"state": "done"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "bad_message"
    assert "query parameter 'state'" in body["message"] and "'done'" in body["message"]
    for word in ("init (waiting)", "start (running)", "success", "fail (failed)", "end (ended)"):
        assert word in body["message"]


async def test_the_openapi_lists_states_and_labels(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    params = spec["paths"]["/v1/tasks"]["get"]["parameters"]
    state = next(p for p in params if p["name"] == "state")
    words = state["schema"]["anyOf"][0]["enum"] if "anyOf" in state["schema"] else []
    assert set(words) == {
        "init", "start", "success", "fail", "end", "waiting", "running", "failed", "ended",
    }  # fmt: skip


async def test_the_cli_filters_by_a_label_too(server: Server, make_client: ClientFactory) -> None:
    from tests.integration.test_cli import cli

    c = await make_client("p")
    ids = [await c.pub("labels:wait", i).accepted() for i in range(2)]
    for word in ("waiting", "init"):
        run = await cli("tasks", "ls", "--state", word, "--json", "--url", server.url)
        assert run.code == 0, run.stderr
        assert [t["id"] for t in json.loads(run.stdout)["tasks"]] == ids
        assert {t["state"] for t in json.loads(run.stdout)["tasks"]} == {"init"}
