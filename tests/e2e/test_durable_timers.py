"""Durable timers and queues across a real hub restart (SQLite): a delayed task that fell due
while the hub was down is delivered after the restart exactly once, and a durable group keeps
accumulating tasks while no worker is connected."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import Client
from tests.e2e.hubproc import HubProcess


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(f"sqlite:///{tmp_path / 'hub.db'}").start()
    yield proc
    proc.stop()


async def _wait_connected(*clients: Client) -> None:
    for _ in range(200):
        if all(c.connected for c in clients):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("clients did not reconnect")


async def test_delayed_task_due_while_down_is_delivered_once_after_restart(
    hub: HubProcess,
) -> None:
    runs: list[str] = []
    async with Client(hub.url, name="worker", max_backoff=0.2) as worker:

        async def later(task: Any) -> str:
            runs.append(task.id)
            return "done"

        await worker.sub("reminder:send", later)
        async with Client(hub.url, name="publisher") as pub:
            task_id = await pub.pub("reminder:send", delay="1500ms").accepted()
        hub.kill()  # kill -9 before it is due
        await asyncio.sleep(2.0)  # it falls due while the hub is down
        hub.start()
        await _wait_connected(worker)
        for _ in range(200):
            if runs:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # room for a duplicate, if there were one
        async with Client(hub.url, name="publisher") as pub:
            task = await pub.get(task_id)
    assert runs == [task_id]
    assert task["state"] == "success"
    hub.stop()  # a graceful restart, then another: still exactly once
    hub.start()
    async with Client(hub.url, name="worker") as worker:
        await worker.sub("reminder:send", lambda t: runs.append(t.id))
        await asyncio.sleep(0.5)
    assert runs == [task_id]


async def test_durable_queue_accumulates_across_restarts(hub: HubProcess) -> None:
    async with Client(hub.url, name="batcher") as worker:
        await worker.sub("report:build", lambda t: None, group="reports", durable=True)
    hub.kill()
    hub.start()  # nobody connected: the group exists again from the store
    async with Client(hub.url, name="publisher") as pub:
        ids = [await pub.pub("report:build", i).accepted() for i in range(3)]
        [queue] = [q for q in await pub.queues() if q["group"] == "reports"]
        assert (queue["durable"], queue["workers"], queue["waiting"]) == (True, 0, 3)
    hub.kill()
    hub.start()
    seen: dict[str, Any] = {}
    async with (
        Client(hub.url, name="late") as late,
        Client(hub.url, name="batcher") as worker,
    ):
        # a group that subscribes only now gets nothing: the tasks were routed to "reports"
        await late.sub("report:build", lambda t: seen.setdefault("late", t.id), group="late")

        async def build(task: Any) -> str:
            seen[task.id] = await task.get_payload()
            return "built"

        await worker.sub("report:build", build, group="reports", concurrency=3)
        for _ in range(200):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert sorted(seen) == sorted(ids)
    assert sorted(seen.values()) == [0, 1, 2]
