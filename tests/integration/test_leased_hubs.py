"""Hubs that lead partitions by their leases (docs/deployment.md, "Partition leases"), in one
process over a real SQLite file and a real Redis: two hubs split the partitions and say so on
/healthz, a request for a partition the hub does not lead is answered with a clear, retryable
error, a hand-off moves a partition with its tasks, and partition 0's schedules run on its
leader only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Client, Server
from taskhub.errors import PartitionUnavailable
from taskhub.partitions import partition_of
from tests import redisproc
from tests.conftest import until

P = 4
LEASE = 0.6


def action_in(partition: int) -> str:
    i = 0
    while partition_of(f"job{i}:run", "", P) != partition:
        i += 1
    return f"job{i}:run"


@pytest.fixture(params=["sqlite", "redis"])
async def make_hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Server] = []
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = f"{redisproc.shared().url}?prefix=leased{id(object())}"

    async def make(**kwargs: Any) -> Server:
        server = Server(store=store, port=0, partitions=P, lease=LEASE, **kwargs)
        await server.start()
        made.append(server)
        return server

    yield make
    for server in reversed(made):
        await server.stop()


async def health(server: Server) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(f"{server.http_url}/healthz")).json()
        return body


async def split(*servers: Server) -> list[list[int]]:
    """Wait until the servers lead every partition between them, each its fair share."""

    async def settled() -> list[list[int]] | None:
        led = [(await health(s))["partitions"] for s in servers]
        every = sorted(p for each in led for p in each)
        fair = all(P // len(servers) <= len(each) <= -(-P // len(servers)) for each in led)
        return led if every == list(range(P)) and fair else None

    result: list[list[int]] = await until(settled, timeout=30, step=0.05)
    return result


async def test_one_hub_leads_every_partition_at_start(make_hub: Any) -> None:
    one = await make_hub()
    body = await health(one)
    assert body == {"status": "ok", "role": "member", "partitions": [0, 1, 2, 3], "leaders": {}}
    async with Client(one.url, name="w") as c:
        await c.sub(action_in(3), lambda t: t.payload * 2)
        assert await c.pub(action_in(3), 21).get_result() == 42


async def test_two_hubs_split_the_partitions_and_name_each_other(make_hub: Any) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, led_two = await split(one, two)
    assert len(led_one) == len(led_two) == 2
    body = await until(
        lambda: _named(two, led_one), timeout=20, step=0.05
    )  # the leaders are read at the keeper's next round
    assert body["role"] == "member"
    assert body["leaders"] == {str(p): one.http_url for p in led_one}


async def _named(server: Server, partitions: list[int]) -> dict[str, Any] | None:
    body = await health(server)
    return body if set(body["leaders"]) == {str(p) for p in partitions} else None


async def test_a_partition_led_elsewhere_is_answered_with_a_clear_error(make_hub: Any) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, _ = await split(one, two)
    await until(lambda: _named(two, led_one), timeout=20, step=0.05)
    elsewhere = action_in(led_one[0])
    async with Client(two.url, name="pub", connect_timeout=5) as c:
        with pytest.raises(PartitionUnavailable) as caught:
            await c.pub(elsewhere, 1).accepted()
    assert f"partition {led_one[0]} is led by {one.http_url}" in caught.value.message
    assert caught.value.details["partition"] == led_one[0]
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{two.http_url}/v1/tasks", json={"action": elsewhere, "payload": 1}
        )
    assert answer.status_code == 503
    assert answer.json()["code"] == "partition_unavailable"
    assert answer.headers["retry-after"] == "1"


async def test_a_stopping_hub_hands_its_partitions_and_tasks_over(make_hub: Any) -> None:
    one = await make_hub()
    action = action_in(2)
    async with Client(one.url, name="pub") as c:
        accepted = [await c.pub(action, i).accepted() for i in range(5)]
    two = await make_hub()
    await split(one, two)
    await one.stop()  # SIGTERM's path: every lease released at once
    # Taken at its next round (tests/e2e/test_leased_hubs.py shows the leases are released,
    # not left to expire).
    led = await until(lambda: _all(two), timeout=20, step=0.02)
    assert led == list(range(P))
    got: list[int] = []
    async with Client(two.url, name="w") as w:
        done = asyncio.Event()

        def run(task: Any) -> None:
            got.append(task.payload)
            if len(got) == 5:
                done.set()

        await w.sub(action, run)
        await asyncio.wait_for(done.wait(), 10)
        assert sorted(got) == list(range(5))
        assert (await w.get(accepted[0]))["state"] in ("started", "success")


async def _all(server: Server) -> list[int] | None:
    led: list[int] = (await health(server))["partitions"]
    return led if led == list(range(P)) else None


async def test_schedules_live_on_the_leader_of_partition_0(make_hub: Any) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, _ = await split(one, two)
    leader, other = (one, two) if 0 in led_one else (two, one)
    assert leader.hub is not None and other.hub is not None
    assert leader.hub.scheduler.views() == []
    with pytest.raises(PartitionUnavailable):
        other.hub.scheduler  # noqa: B018 - the property raises: no scheduler runs there


async def test_a_batch_spanning_partitions_answers_each_item_led_elsewhere_with_the_error(
    make_hub: Any,
) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, led_two = await split(one, two)
    here, elsewhere = action_in(led_two[0]), action_in(led_one[0])
    async with Client(two.url, name="pub", connect_timeout=5) as c:
        handles = c.pub_many([(here, 1), (elsewhere, 2), (here, 3)])
        assert (await c.get(await handles[0].accepted()))["state"] == "init"
        with pytest.raises(PartitionUnavailable) as caught:
            await handles[1].accepted()
        assert caught.value.details["partition"] == led_one[0]
        assert (await c.get(await handles[2].accepted()))["state"] == "init"
        # a task id of a partition led elsewhere: reading it answers the same error
        with pytest.raises(PartitionUnavailable):
            await c.get(_id_in(led_one[0]))


def _id_in(partition: int) -> str:
    """A well-formed task id naming ``partition`` (made by that partition's id factory)."""
    from taskhub.ids import UlidFactory

    return UlidFactory(partition=partition)()


async def test_a_watch_sees_the_partitions_its_hub_comes_to_lead(make_hub: Any) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, _ = await split(one, two)
    moving = action_in(led_one[0])
    async with Client(two.url, name="ops", connect_timeout=5) as ops, ops.watch(">") as events:
        await one.stop()  # two takes its partitions over
        await until(lambda: _all(two), timeout=20, step=0.02)
        async with Client(two.url, name="pub", connect_timeout=5) as pub:
            task_id = await pub.pub(moving, 1).accepted()
        async with asyncio.timeout(10):
            async for ev in events:
                if ev["task"] == task_id:
                    break
