"""Chains and groups over real connections: the hub runs them, not the publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskhub import Client, PermissionDenied, Server, TaskFailed
from taskhub.errors import InvalidAction, InvalidOption
from tests.conftest import ClientFactory, ServerFactory, until


async def geo_and_weather(worker: Client) -> list[Any]:
    seen: list[Any] = []

    async def geocode(task: Any) -> Any:
        seen.append(("geo", await task.get_payload(), task.previous_result))
        return {"lat": 59.9, "lon": 10.7}

    async def forecast(task: Any) -> Any:
        seen.append(("wx", await task.get_payload(), task.previous_result))
        return "rain"

    await worker.sub("geo:geocode", geocode)
    await worker.sub("weather:forecast", forecast)
    return seen


async def test_chain_passes_each_result_to_the_next_step(make_client: ClientFactory) -> None:
    seen = await geo_and_weather(await make_client("w"))
    pub = await make_client("web")
    steps: list[Any] = []
    handle = pub.chain([("geo:geocode", "Oslo"), ("weather:forecast", None)])
    handle.on("step", lambda h: steps.append(h.state))
    assert await handle.get_result(timeout=5) == "rain"
    assert seen == [
        ("geo", "Oslo", None),
        ("wx", {"lat": 59.9, "lon": 10.7}, {"lat": 59.9, "lon": 10.7}),
    ]
    view = await pub.get(handle.id or "")
    assert view["action"] == "taskhub:chain" and view["state"] == "success"
    assert view["options"]["chain"]["results"] == [{"lat": 59.9, "lon": 10.7}, "rain"]
    assert len(steps) == 4  # two published, two ended


async def test_group_runs_steps_in_parallel(make_client: ClientFactory) -> None:
    worker = await make_client("w")
    both = asyncio.Event()
    running = 0

    async def slow(task: Any) -> Any:
        nonlocal running
        running += 1
        if running == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)  # only finishes if both run at once
        return await task.get_payload() * 10

    await worker.sub("calc:slow", slow, concurrency=2)
    pub = await make_client("web")
    assert await pub.group([("calc:slow", 1), ("calc:slow", 2)]).get_result(timeout=5) == [10, 20]


async def test_a_failing_step_fails_the_chain_naming_it(make_client: ClientFactory) -> None:
    worker = await make_client("w")
    await worker.sub("a:run", lambda t: 1)

    def boom(task: Any) -> Any:
        raise KeyError("no such city")

    await worker.sub("b:run", boom)
    pub = await make_client("web")
    with pytest.raises(TaskFailed) as info:
        await pub.chain([("a:run", 0), ("b:run", None), ("a:run", None)]).get_result(timeout=5)
    assert "step 1 (b:run) failed" in str(info.value)
    assert info.value.error_type == "KeyError"


async def test_a_bad_chain_is_refused_whole(make_server: ServerFactory) -> None:
    server = await make_server(
        creds=[{"name": "web", "key": "k", "pub_permissions": ["geo"], "sub_permissions": []}]
    )
    async with Client(server.url, name="web", key="k") as pub:
        with pytest.raises(PermissionDenied, match=r"step 1 \(weather:forecast\)"):
            await pub.chain([("geo:geocode", 1), ("weather:forecast", None)]).accepted()
        with pytest.raises(InvalidAction):
            pub.chain([("geo:geocode", 1), ("not an action", None)])  # checked locally too
        with pytest.raises(InvalidOption, match=r"step 0 \(geo:geocode\): option .timeout."):
            await pub.chain([("geo:geocode", 1, {"timeout": -1})]).accepted()


async def test_a_chain_survives_its_publisher_leaving(
    server: Server, make_client: ClientFactory
) -> None:
    release = asyncio.Event()
    worker = await make_client("w")

    async def first(task: Any) -> Any:
        await release.wait()
        return {"n": 1}

    async def second(task: Any) -> Any:
        return {"n": task.previous_result["n"] + 1}

    await worker.sub("s:one", first)
    await worker.sub("s:two", second)
    async with Client(server.url, name="web") as pub:
        chain_id = await pub.chain([("s:one", None), ("s:two", None)]).accepted()
    release.set()  # the publisher is gone; the hub carries on
    async with Client(server.url, name="web") as later:

        async def succeeded() -> Any:
            view = await later.get(chain_id)
            return view if view["state"] == "success" else None

        view = await until(succeeded)
    assert view["result"] == {"n": 2}


async def test_add_chain_merges_inputs_for_the_http_api(
    server: Server, make_client: ClientFactory
) -> None:
    worker = await make_client("w")
    payloads: list[Any] = []

    async def run(task: Any) -> Any:
        payloads.append(await task.get_payload())
        return {"seen": len(payloads)}

    await worker.sub("task:run", run)
    assert server.hub is not None
    from taskhub.lifecycle import Credentials

    chain_id = server.hub.add_chain(
        Credentials("http"),
        [
            {"action": "task:run", "payload": {"stuff": 1}},
            {"action": "task:run", "payload": {"stuff": 101, "seen": 0}},
        ],
        merge_input=True,
    )
    pub = await make_client("http")

    async def succeeded() -> bool:
        return bool((await pub.get(chain_id))["state"] == "success")

    await until(succeeded)
    assert payloads == [{"stuff": 1}, {"stuff": 101, "seen": 1}]
    with pytest.raises(Exception, match="step 1"):
        server.hub.add_chain(Credentials("http"), [{"action": "a:b"}, {"task": "x"}])
