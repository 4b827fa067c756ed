"""Hubs that lead partitions by their leases (docs/deployment.md, "Partition leases"), in one
process over a real SQLite file and a real Redis: two hubs split the partitions and say so on
/healthz, a partition the hub does not lead is reached over the hub-to-hub link (also by the
HTTP API's writes, its pull consumers and the schedules), a hand-off moves a partition with its
tasks, and partition 0's schedules run on its leader only."""

from __future__ import annotations

import asyncio
import functools
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Client, Server
from taskhub.errors import PartitionUnavailable, TaskNotFound
from taskhub.partitions import partition_of_id
from tests import redisproc
from tests.conftest import ServerFactory, until
from tests.conftest import action_in as conftest_action_in

P = 4
LEASE = 1.5  # seconds; room for a loaded machine (0.6 lapsed under the whole suite)


action_in = partial(conftest_action_in, partitions=P)


@pytest.fixture(params=["sqlite", "redis"])
def make_hub(
    request: pytest.FixtureRequest, tmp_path: Path, make_server: ServerFactory
) -> ServerFactory:
    """conftest's make_server, every hub on one store (a SQLite file, a Redis prefix)."""
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = redisproc.shared_url("leased")
    return functools.partial(make_server, store=store, partitions=P, lease=LEASE)


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


async def test_one_hub_leads_every_partition_at_start(make_hub: ServerFactory) -> None:
    one = await make_hub()
    body = await health(one)
    assert body == {"status": "ok", "role": "member", "partitions": [0, 1, 2, 3], "leaders": {}}
    async with Client(one.url, name="w") as c:
        await c.sub(action_in(3), lambda t: t.payload * 2)
        assert await c.pub(action_in(3), 21).get_result() == 42


async def test_two_hubs_split_the_partitions_and_name_each_other(make_hub: ServerFactory) -> None:
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
    leaders = body["leaders"]
    # every one named (a partition just handed off has no leader for a round)
    named = set(leaders) == {str(p) for p in partitions} and all(leaders.values())
    return body if named else None


async def test_a_partition_led_elsewhere_is_reached_over_the_link(make_hub: ServerFactory) -> None:
    """A publisher on hub two and a worker on hub two both reach a partition hub one leads
    (over the hub-to-hub link), and so does the HTTP API's publishing."""
    one = await make_hub()
    two = await make_hub()
    led_one, _ = await split(one, two)
    await until(lambda: _named(two, led_one), timeout=20, step=0.05)
    elsewhere = action_in(led_one[0])
    async with (
        Client(two.url, name="pub", connect_timeout=5) as c,
        Client(two.url, name="w", connect_timeout=5) as w,
    ):
        await w.sub(elsewhere, lambda t: t.payload + 1)
        handle = c.pub(elsewhere, 1)
        assert await handle.get_result() == 2
        assert one.hub is not None and two.hub is not None
        assert await one.hub.router.local(led_one[0]).find(handle.id) is not None
        assert (await c.get(handle.id))["state"] == "success"  # read over the link
    async with httpx.AsyncClient() as http:  # the HTTP API's publishing crosses it too
        answer = await http.post(
            f"{two.http_url}/v1/tasks", json={"action": elsewhere, "payload": 1}
        )
    assert answer.status_code == 201
    assert partition_of_id(answer.json()["id"]) == led_one[0]
    assert await one.hub.router.local(led_one[0]).find(answer.json()["id"]) is not None


async def test_listings_batches_and_reads_cross_hubs(make_hub: ServerFactory) -> None:
    """With the partitions split between two hubs, hub two's clients see every partition: a
    batch of pubs spanning both hubs is answered once, in order; the HTTP API reads a task
    and lists the tasks of every partition over the link. Both hubs read one link secret,
    made by the first in the deployment's store."""
    one = await make_hub()
    two = await make_hub()
    led_one, led_two = await split(one, two)
    await until(lambda: _named(two, led_one), timeout=5, step=0.05)
    await until(lambda: _named(one, led_two), timeout=5, step=0.05)
    assert one.hub is not None and two.hub is not None
    assert one.hub.links is not None and two.hub.links is not None
    secret = one.hub.links.secret  # type: ignore[attr-defined]
    assert secret and two.hub.links.secret == secret  # type: ignore[attr-defined]
    actions = [action_in(p) for p in range(P)]
    async with (
        Client(two.url, name="w", connect_timeout=5) as w,
        Client(two.url, name="pub", connect_timeout=5) as c,
    ):
        for action in actions:
            await w.sub(action, lambda t: t.payload * 10)
        handles = c.pub_many([(actions[i % P], i) for i in range(2 * P)])  # one pubs frame
        results = [await h.get_result(timeout=10) for h in handles]
        assert results == [10 * i for i in range(2 * P)]
    at = next(i for i, h in enumerate(handles) if partition_of_id(h.id) in led_one)
    async with httpx.AsyncClient() as http:
        got = (await http.get(f"{two.http_url}/v1/tasks/{handles[at].id}")).json()
        listed = (await http.get(f"{two.http_url}/v1/tasks", params={"limit": 100})).json()
    assert got["state"] == "success" and got["result"] == 10 * at
    assert {t["id"] for t in listed["tasks"]} == {h.id for h in handles}


async def test_a_watch_covers_the_partitions_that_moved_to_another_hub(
    make_hub: ServerFactory,
) -> None:
    """A wildcard watch made while its hub led every partition keeps seeing every
    partition's tasks once a second hub took some of them (over the link)."""
    one = await make_hub()
    async with (
        Client(one.url, name="watcher", connect_timeout=5) as watcher,
        watcher.watch(">") as events,
    ):
        two = await make_hub()
        _, led_two = await split(one, two)
        await until(lambda: _named(one, led_two), timeout=5, step=0.05)
        async with (
            Client(one.url, name="w", connect_timeout=5) as w,
            Client(two.url, name="pub", connect_timeout=5) as c,
        ):
            for p in range(P):
                await w.sub(action_in(p), lambda t: t.payload)
            handles = [c.pub(action_in(p), p) for p in range(P)]
            assert [await h.get_result(timeout=10) for h in handles] == list(range(P))
        seen: set[str] = set()
        async with asyncio.timeout(10):
            async for ev in events:
                if ev["type"] == "success":
                    seen.add(ev["task"])
                if seen >= {h.id for h in handles}:
                    break
    assert {partition_of_id(h.id) for h in handles} == set(range(P))


async def test_a_stopping_hub_hands_its_partitions_and_tasks_over(make_hub: ServerFactory) -> None:
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


async def test_schedules_live_on_the_leader_of_partition_0(make_hub: ServerFactory) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, _ = await split(one, two)
    leader, other = (one, two) if 0 in led_one else (two, one)
    assert leader.hub is not None and other.hub is not None
    assert leader.hub.scheduler.views() == []
    with pytest.raises(PartitionUnavailable):
        other.hub.scheduler  # noqa: B018 - the property raises: no scheduler runs there


async def test_a_batch_spanning_partitions_led_by_both_hubs_is_accepted_whole(
    make_hub: Any,
) -> None:
    one = await make_hub()
    two = await make_hub()
    led_one, led_two = await split(one, two)
    await until(lambda: _named(two, led_one), timeout=5, step=0.05)
    here, elsewhere = action_in(led_two[0]), action_in(led_one[0])
    async with Client(two.url, name="pub", connect_timeout=5) as c:
        handles = c.pub_many([(here, 1), (elsewhere, 2), (here, 3)])
        for h in handles:  # the item led by hub one is stored there, over the link
            assert (await c.get(await h.accepted()))["state"] == "init"
        assert partition_of_id(handles[1].id) == led_one[0]
        # a task id of a partition led elsewhere: its leader answers (no such task)
        with pytest.raises(TaskNotFound):
            await c.get(_id_in(led_one[0]))


def _id_in(partition: int) -> str:
    """A well-formed task id naming ``partition`` (made by that partition's id factory)."""
    from taskhub.ids import UlidFactory

    return UlidFactory(partition=partition)()


async def test_a_watch_sees_the_partitions_its_hub_comes_to_lead(make_hub: ServerFactory) -> None:
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


async def test_a_pull_consumers_calls_reach_the_hub_that_started_it(
    make_hub: ServerFactory,
) -> None:
    """Behind a load balancer a consumer's calls land on any hub: the consumer's id names the
    hub that started it, and another hub runs the call there over the link, with the caller's
    credentials and the answer (status and body) that hub gives."""
    from tests.integration.test_consumers import Puller

    one = await make_hub()
    two = await make_hub()
    led_one, led_two = await split(one, two)
    await until(lambda: _named(one, led_two), timeout=20, step=0.05)
    await until(lambda: _named(two, led_one), timeout=20, step=0.05)
    action = action_in(1)
    async with (
        httpx.AsyncClient(base_url=one.http_url, timeout=10) as at_one,
        httpx.AsyncClient(base_url=two.http_url, timeout=10) as at_two,
        Client(two.url, name="web", connect_timeout=5) as publisher,
    ):
        started = await Puller(at_one, {"actions": [action], "lease": 30}).start()
        assert "." in started.id  # <id>.<member id of hub one>
        puller = Puller(at_two, {})  # every call of it through hub two
        puller.id, puller.headers = started.id, started.headers
        handle = publisher.pub(action, {"n": 1})
        lease = await puller.fetch(wait=10)
        assert lease is not None and lease["task_id"] == handle.id
        updated = await puller.call("update", task_id=handle.id, data={"pct": 50})
        assert updated.status_code == 200 and updated.json()["state"] == "start", updated.text
        done = await puller.call("commit", task_id=handle.id, result={"ok": 1})
        assert done.json() == {"task_id": handle.id, "state": "success"}, done.text
        assert await handle.get_result(timeout=10) == {"ok": 1}
        # the home hub's own answers, status and code, whichever hub was asked
        again = await puller.call("commit", task_id=handle.id, result=2)
        assert again.status_code == 409, again.text
        wrong = await at_two.post(
            f"/v1/consumers/{started.id}/fetch", headers={"X-Consumer-Token": "nope"}
        )
        assert wrong.status_code == 401 and wrong.json()["code"] == "auth_failed"
        stopped = await puller.stop()
        assert stopped.json() == {"consumer_id": started.id, "handed_back": 0}, stopped.text
        assert (await started.call("drop", task_id=handle.id)).status_code == 404  # at one too
        # an id naming no live hub: 404, as an unknown consumer
        gone = f"{started.id.split('.')[0]}.0123456789abcdef"
        r = await at_two.post(f"/v1/consumers/{gone}/fetch", headers=started.headers)
        assert r.status_code == 404 and r.json()["code"] == "consumer_not_found"
