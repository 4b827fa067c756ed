"""A graceful hand-off, as a worker sees it (issue 19, dependability): when a hub joins and
another hands it partitions, a worker of the handing hub keeps its subscriptions there (it is
closed with 1012 and subscribes again where they are led now, also when it held no task),
and what it had started goes back to its group without a try: the hand-off writes it so, and
the next leader restores it as pending. Two leased hubs in this process on a real SQLite file
and on a real Redis (tests/integration/test_leased_hubs.py)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest

from taskhub import Client, Server
from taskhub.partitions import partition_of_id
from tests import redisproc
from tests.conftest import ServerFactory, until
from tests.integration.test_leased_hubs import LEASE, P, action_in, split


@pytest.fixture(params=["sqlite", "redis"])
def make_hub(
    request: pytest.FixtureRequest, tmp_path: Path, make_server: ServerFactory
) -> ServerFactory:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = redisproc.shared_url("handoff")
    return functools.partial(make_server, store=store, partitions=P, lease=LEASE)


def client(server: Server, name: str) -> Client:
    return Client(server.url, name=name, connect_timeout=5, max_backoff=0.2)


async def test_an_idle_worker_keeps_its_subscriptions_across_a_hand_off(
    make_hub: ServerFactory,
) -> None:
    """A worker subscribed to every partition on hub one, holding nothing, while hub two
    joins and takes half of them: tasks of every partition still reach it (before, the
    hand-off dropped its subscriptions there without closing it)."""
    one = await make_hub()
    async with client(one, "worker") as worker, client(one, "publisher") as pub:
        for p in range(P):
            await worker.sub(action_in(p), lambda t: t.payload + 1)
        await make_hub()  # hub two joins: hub one hands it its share
        await until(lambda: _led(one, P // 2), timeout=30, step=0.05)
        handles = [pub.pub(action_in(p), p) for p in range(P)]
        results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 30)
    assert results == [p + 1 for p in range(P)]


async def test_a_hand_off_gives_started_deliveries_back_without_a_try(
    make_hub: ServerFactory,
) -> None:
    """A worker on hub one holds a started task of every partition (``max_attempts=1``) when
    hub two joins and hub one hands it half the partitions: every task still succeeds, none
    counted a try (before, the new leader counted one for each started delivery it restored,
    and with one attempt those tasks failed "gave up after a hub restart")."""
    one = await make_hub()
    runs: dict[str, list[int]] = {}
    release = asyncio.Event()

    async def work(task: Any) -> str:
        runs.setdefault(task.id, []).append(task.attempt)
        await release.wait()
        return f"done {task.payload}"

    async with client(one, "worker") as worker, client(one, "publisher") as pub:
        for p in range(P):
            await worker.sub(action_in(p), work, concurrency=4)
        handles = [pub.pub(action_in(p), p, max_attempts=1) for p in range(P)]
        ids = [await h.accepted() for h in handles]
        await until(lambda: all(i in runs for i in ids), timeout=10)
        two = await make_hub()  # hub one hands off half the partitions, tasks started
        _, led_two = await split(one, two)
        moved = [i for i in ids if partition_of_id(i) in led_two]
        assert moved
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 30)
        assert results == [f"done {p}" for p in range(P)]
        tasks = [await pub.get(i) for i in ids]
    assert [t["state"] for t in tasks] == ["success"] * P
    assert [t["deliveries"][0]["tries"] for t in tasks] == [0] * P


async def _led(server: Server, n: int) -> bool:
    assert server.hub is not None
    return len(server.hub.led) == n
