"""A partition no hub leads for a moment (docs/deployment.md, "Partition leases"), with hubs
in one process over a real SQLite file and a real Redis: a message for it waits up to a lease
for its next leader instead of failing, is answered ``partition_unavailable`` when none comes
in time (and the Python client sends it again), and a chain's step that ends meanwhile moves
its chain on once the partition is led. The partition is kept leaderless by a lease a
"foreign" holder takes in the store (it names no hub), which runs out after a set time."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from taskhub import Client, Server
from taskhub.client import retry
from taskhub.hub.keeper import PartitionKeeper
from taskhub.partitions import partition_of_id
from taskhub.store import open_partition_leases
from tests import redisproc
from tests.conftest import action_in as conftest_action_in
from tests.conftest import until

P = 4
LEASE = 1.5  # seconds: what a message waits at most for its partition's leader
FOREIGN = "foreign "  # a holder naming no hub (its URL is empty): nobody to reach


action_in = partial(conftest_action_in, partitions=P)


class Deployment:
    """Hubs on one store, and the store's leases to take a partition from under them."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.servers: list[Server] = []
        self.leases = open_partition_leases(store, P)

    async def hub(self, **settings: Any) -> Server:
        server = Server(store=self.store, port=0, partitions=P, lease=LEASE, **settings)
        await server.start()
        self.servers.append(server)
        return server

    async def take(self, partition: int, seconds: float) -> None:
        """A foreign holder takes the (free) lease of ``partition`` for ``seconds``."""
        token = await self.leases.take(partition, FOREIGN, int(seconds * 1000))
        assert token is not None, f"partition {partition}'s lease is not free"

    async def steal(self, server: Server, partition: int, seconds: float) -> None:
        """``server`` loses ``partition`` (as when it paused past its lease) to a foreign
        holder for ``seconds``; the hub finds out at its next renewal."""
        keeper = keeper_of(server)
        assert await self.leases.release(partition, keeper.tokens[partition])
        await self.take(partition, seconds)


def keeper_of(server: Server) -> PartitionKeeper:
    assert server.membership is not None and server.membership.keeper is not None
    return server.membership.keeper


@pytest.fixture(params=["sqlite", "redis"])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = redisproc.shared_url("unled")
    made = Deployment(store)
    await made.leases.open()
    yield made
    for server in reversed(made.servers):
        await server.stop()
    await made.leases.close()


async def health(server: Server) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(f"{server.http_url}/healthz")).json()
        return body


async def split(one: Server, two: Server) -> tuple[list[int], list[int]] | None:
    """The partitions each hub leads once they lead two each and both name every leader."""
    bodies = [await health(one), await health(two)]
    a, b = (body["partitions"] for body in bodies)
    named = all(all(body["leaders"].values()) for body in bodies)
    return (a, b) if len(a) == len(b) == 2 and named else None


async def pub_raw(
    server: Server, action: str, timeout: float = 10.0
) -> tuple[dict[str, Any], float]:
    """A bare ``pub`` over a WebSocket (no client retries): the hub's answer, and how long it
    took to come."""
    async with connect(server.url + "/v1/ws") as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        sent = time.monotonic()
        await ws.send(json.dumps({"op": "pub", "ref": 1, "action": action, "payload": 1}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if msg.get("ref") == 1:
                return msg, time.monotonic() - sent


async def test_a_pub_waits_for_a_partition_being_taken_over(deployment: Deployment) -> None:
    """No hub holds partition 1 when the hub starts (a foreign lease, out in 0.8 s): a pub for
    it waits and is accepted once the hub takes the partition; no error, no retry."""
    await deployment.take(1, 0.8)
    hub = await deployment.hub()
    assert 1 not in (await health(hub))["partitions"]
    answer, _ = await pub_raw(hub, action_in(1))
    assert answer["op"] == "ok", answer
    assert partition_of_id(answer["task"]) == 1
    assert 1 in (await health(hub))["partitions"]
    async with Client(hub.url, name="w") as w:  # the task was stored and is offered
        done = asyncio.get_running_loop().create_future()
        await w.sub(action_in(1), lambda t: done.set_result(t.id))
        assert await asyncio.wait_for(done, 10) == answer["task"]


async def test_past_a_lease_without_leader_the_answer_is_partition_unavailable(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """Partition 2 stays leaderless longer than a lease (3.5 s): a bare pub is answered
    partition_unavailable after about a lease, naming the partition; the Python client,
    answered so, sends its pub again after the hub's retry_after and it is accepted."""
    await deployment.take(2, 3.5)
    hub = await deployment.hub()
    answer, waited = await pub_raw(hub, action_in(2))
    assert answer["op"] == "error" and answer["code"] == "partition_unavailable", answer
    assert answer["details"]["partition"] == 2 and answer["details"]["retry_after"] == 1
    assert "no leader right now" in answer["message"]
    assert waited >= LEASE * 0.8  # it was held, not answered at once
    caplog.set_level(logging.INFO, logger="taskhub.client")
    async with Client(hub.url, name="p") as c:
        handle = c.pub(action_in(2), 2)
        task_id = await asyncio.wait_for(handle.accepted(), 20)
    assert partition_of_id(task_id) == 2
    assert any("sending it again" in r.getMessage() for r in caplog.records)


async def test_a_batch_spanning_a_leaderless_partition_waits_for_it(
    deployment: Deployment,
) -> None:
    """A ``pubs`` whose items fall in a led partition and in one being taken over: one ok,
    every item accepted, once both are stored."""
    await deployment.take(3, 0.8)
    hub = await deployment.hub()
    items = [{"action": action_in(0)}, {"action": action_in(3)}, {"action": action_in(0)}]
    async with connect(hub.url + "/v1/ws") as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        await ws.send(json.dumps({"op": "pubs", "ref": 7, "items": items}))
        while (ok := json.loads(await asyncio.wait_for(ws.recv(), 10))).get("ref") != 7:
            pass
    assert ok["op"] == "ok", ok
    assert [partition_of_id(item["task"]) for item in ok["items"]] == [0, 3, 0]


async def test_a_chain_step_ending_while_its_chain_has_no_leader_moves_it_on(
    deployment: Deployment,
) -> None:
    """Hub one leads the chain's partition, hub two its second step's. While the second step
    runs, hub one loses the chain's partition (a foreign lease, 2 s) and hub two names no
    leader for it; the step ends on hub two then. Its end is held there, and once hub one
    leads the partition again the chain completes (before, the end was dropped: nobody
    would have moved the chain on)."""
    one, two = await deployment.hub(), await deployment.hub()
    led_one, led_two = await until(lambda: split(one, two), timeout=30, step=0.05)
    first, second = action_in(led_one[0], "first"), action_in(led_two[0], "second")
    chain_part = led_one[0]
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow(task: Any) -> Any:
        started.set()
        await finish.wait()
        return task.payload + 1

    async with (
        Client(two.url, name="w", connect_timeout=5) as w,
        Client(two.url, name="p", connect_timeout=5) as c,
    ):
        await w.sub(first, lambda t: t.payload * 10)
        await w.sub(second, slow)
        chain = c.chain([(first, 4), (second, None)])
        await asyncio.wait_for(started.wait(), 10)
        await deployment.steal(one, chain_part, 2.0)

        async def unnamed() -> bool:
            return (await health(two))["leaders"].get(str(chain_part)) == ""

        await until(unnamed, timeout=10, step=0.02)
        finish.set()  # the step ends on hub two while the chain's partition has no leader
        assert await asyncio.wait_for(chain.get_result(), 20) == 41
    assert chain_part in (await health(one))["partitions"]  # its share again


async def test_a_schedule_slot_for_a_leaderless_partition_publishes_once_it_is_led(
    deployment: Deployment,
) -> None:
    """Partition 0's hub keeps the schedules; the schedule's action falls in a partition the
    other hub leads, which has no leader (a foreign lease) when its slot comes. The slot is
    held and publishes there once the partition is led again (before, the scheduler met a
    slot with no way to fire and no task was published)."""
    shift = [0.0]  # the hubs' clock, moved to a few seconds before a minute's end

    def clock() -> float:
        return time.time() + shift[0]

    one, two = await deployment.hub(clock=clock), await deployment.hub(clock=clock)
    led_one, led_two = await until(lambda: split(one, two), timeout=30, step=0.05)
    keeper, other = (one, two) if 0 in led_one else (two, one)
    q = (led_two if keeper is one else led_one)[0]
    action = action_in(q, "tick")
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def run(task: Any) -> str:
        got.put_nowait(task)
        return "ran"

    async with httpx.AsyncClient(base_url=keeper.http_url, timeout=10) as http:
        # its "every minute" slot comes 4 s after this (a fake clock, not a minute's wait)
        slot = math.ceil(time.time() / 60 + 1) * 60
        shift[0] = slot - 4 - time.time()
        r = await http.put(
            "/v1/schedules/tick",
            json={"cron": "* * * * *", "action": action, "payload": {"n": 1}},
        )
        assert r.status_code == 200, r.text
    await deployment.steal(other, q, 6.0)  # no leader from before the slot to after it

    async def leader(named: bool) -> bool:
        return bool((await health(keeper))["leaders"].get(str(q))) is named

    await until(lambda: leader(False), timeout=8, step=0.02)
    assert clock() < slot  # the schedules' hub knew of no leader before the slot came
    await until(lambda: leader(True), timeout=30, step=0.05)  # past the slot: led again
    assert clock() >= slot
    # The worker comes now (a connection reaching the partition meanwhile would be closed
    # with 1013 when it lost its leader): the slot's task waits for it in its queue.
    async with Client(keeper.url, name="w", connect_timeout=5) as w:
        await w.sub(action, run)
        task = await asyncio.wait_for(got.get(), 30)
    assert task.payload == {"n": 1} and partition_of_id(task.id) == q


async def test_a_worker_keeps_its_subscription_past_a_long_leaderless_gap(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on the hub that leads its action's partition; the hub loses it to a foreign
    lease for longer than the client's resends last. The worker is closed with the partition,
    reconnects, and its subscription, refused meanwhile, is sent again until the partition is
    led: it then takes a task published there (before, the re-sent sub was given up with an
    error in the log, and the worker never took that action's tasks again).

    One resend instead of retry.TRIES (the same code, its limit reached sooner), so a gap of
    7 s outlasts the resends, as one of 12 s did with five."""
    monkeypatch.setattr(retry, "TRIES", 1)
    one, two = await deployment.hub(), await deployment.hub()
    led_one, _ = await until(lambda: split(one, two), timeout=30, step=0.05)
    q = led_one[0]
    action = action_in(q, "long")
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def run(task: Any) -> str:
        got.put_nowait(task)
        return "ran"

    async with Client(one.url, name="w", connect_timeout=5) as w:
        await w.sub(action, run)
        # Past the resends: the hub sees the loss (a third of a lease), the worker reconnects,
        # then two sends are held a lease each with a retry_after (1 to 1.5 s) between them:
        # ~5 s at most.
        await deployment.steal(one, q, 7.0)

        async def led_again() -> bool:
            body = await health(one)
            return q in body["partitions"] or bool(body["leaders"].get(str(q)))

        async def unled() -> bool:
            return not await led_again()

        await until(unled, timeout=10, step=0.02)  # the hub has seen it: no leader
        await until(led_again, timeout=30, step=0.05)
        async with Client(two.url, name="p", connect_timeout=5) as c:
            handle = c.pub(action, 7)
            assert await asyncio.wait_for(handle.get_result(), 30) == "ran"
        assert (await got.get()).payload == 7


async def test_a_keeper_takes_a_partition_as_soon_as_its_holder_lets_it_go(
    tmp_path: Path,
) -> None:
    """look_soon: a keeper that should lead a partition another holds reads its lease every
    poll and takes it once it is free, without waiting for its next round."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    leases = open_partition_leases(url, P)
    await leases.open()
    gained: list[int] = []

    async def on_gained(p: int, token: str) -> None:
        gained.append(p)

    keeper = PartitionKeeper(
        leases, instance="k", url="http://k", lease=30.0, poll=0.01, on_gained=on_gained
    )
    try:
        token = await leases.take(2, FOREIGN, 30_000)
        assert token is not None
        await keeper.tick()  # takes 0, 1, 3; 2 is held: it watches its lease
        assert sorted(gained) == [0, 1, 3]
        await leases.release(2, token)
        await until(lambda: 2 in gained, timeout=5)
        assert keeper.led() == [0, 1, 2, 3]
    finally:
        await keeper.stop()
        await leases.close()
