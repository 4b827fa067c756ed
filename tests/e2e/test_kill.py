"""A hub killed with SIGKILL loses no accepted task (SQLite), and clients carry on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import Client
from tests.e2e.hubproc import HubProcess, consume, ended


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(f"sqlite:///{tmp_path / 'hub.db'}").start()
    yield proc
    proc.stop()


async def test_accepted_tasks_survive_kill_9(hub: HubProcess) -> None:
    n = 200
    async with Client(hub.url, name="publisher") as pub:
        handles = [pub.pub("order:ship", i) for i in range(n)]
        ids = [await h.accepted() for h in handles]  # the hub has answered: it promised
    hub.restart()
    seen = await consume(hub.url, ["order:ship"], n)
    assert sorted(seen) == sorted(ids)
    assert sorted(seen.values()) == list(range(n))


async def test_started_task_is_offered_again_after_kill_9(hub: HubProcess) -> None:
    started = asyncio.Event()
    async with Client(hub.url, name="publisher") as pub:
        handle = pub.pub("video:encode", "cat.mp4")
        async with Client(hub.url, name="encoder") as first:

            async def hang(task: Any) -> Any:
                await task.update("working")  # answered only once the start is stored
                started.set()
                await asyncio.sleep(60)

            await first.sub("video:encode", hang)
            await asyncio.wait_for(started.wait(), 10)
            hub.kill()
        task_id = await handle.accepted()
    hub.start()
    async with Client(hub.url, name="encoder") as second:

        async def encode(task: Any) -> Any:
            return {"attempt": task.attempt, "file": await task.get_payload()}

        await second.sub("video:encode", encode)
        async with Client(hub.url, name="publisher") as pub:
            for _ in range(100):
                task = await pub.get(task_id)
                if task["state"] == "success":
                    break
                await asyncio.sleep(0.05)
    assert task["state"] == "success"
    assert task["result"]["file"] == "cat.mp4"
    assert task["deliveries"][0]["tries"] == 1  # the lost attempt was counted


async def test_clients_reconnect_and_resubscribe_after_a_restart(hub: HubProcess) -> None:
    async with (
        Client(hub.url, name="w", max_backoff=0.2) as worker,
        Client(hub.url, name="p", max_backoff=0.2) as pub,
    ):
        await worker.sub("echo:say", lambda t: t.id)
        assert await pub.pub("echo:say").get_result(timeout=5)
        hub.kill()
        hub.start()
        for _ in range(100):
            if worker.connected and pub.connected:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the worker's subscription land
        handle = pub.pub("echo:say")
        assert await handle.get_result(timeout=10) == handle.id


async def test_tasks_offered_and_started_in_a_burst_survive_kill_9(hub: HubProcess) -> None:
    # Killed mid-burst: some deliveries offered and not started (their offers are written with
    # the task's next change, so the store still has them queued), some started, some done.
    n = 300
    done: list[Any] = []
    async with Client(hub.url, name="publisher") as pub:
        ids = [await h.accepted() for h in [pub.pub("photo:resize", i) for i in range(n)]]
        async with Client(hub.url, name="resizer") as worker:

            async def resize(task: Any) -> Any:
                payload = await task.get_payload()
                await asyncio.sleep(0.01)
                done.append(payload)
                return payload

            await worker.sub("photo:resize", resize, concurrency=8)
            for _ in range(500):
                if len(done) >= 40:
                    break
                await asyncio.sleep(0.01)
            hub.kill()
    hub.start()
    async with Client(hub.url, name="resizer") as worker:
        await worker.sub("photo:resize", lambda task: "again", concurrency=32)
        ends = [await ended(hub.url, task_id, timeout=30) for task_id in ids]
    assert [t["state"] for t in ends] == ["success"] * n
