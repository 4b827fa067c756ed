"""A listener added late is called at once for what already happened (issue 15, item 15), as
the seeds' client does: ``h = client.pub(...)`` then ``h.on("update", cb)`` must not miss an
update that arrived in between. The tests take the extreme of that race: they add the
listeners only after everything happened."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskhub import Server, TaskFailed, sync
from tests.conftest import ClientFactory, until


async def test_late_listeners_on_a_handle(make_client: ClientFactory) -> None:
    async def work(task: Any) -> Any:
        await task.update({"step": 1})
        await task.update({"step": 2})
        return "done"

    await (await make_client("worker")).sub("job:run", work)
    pub = await make_client("pub")
    handle = pub.pub("job:run")
    assert await handle.get_result() == "done"
    seen: list[tuple[str, Any]] = []
    handle.on("update", lambda h: seen.append(("update", h.last_update)))
    handle.on("success", lambda h: seen.append(("success", h.result)))
    handle.on("fail", lambda h: seen.append(("fail", h.error)))  # did not happen: not called
    handle.on("end", lambda h: seen.append(("end", None)))
    assert seen == [("update", {"step": 2}), ("success", "done")]  # the latest update, once

    async def fails(task: Any) -> Any:
        raise RuntimeError("no")

    await (await make_client("worker2")).sub("job:fail", fails)
    failing = pub.pub("job:fail", max_attempts=1)
    with pytest.raises(TaskFailed):
        await failing.get_result()
    failed: list[str] = []
    failing.on("update", lambda h: failed.append("update")).on(
        "fail", lambda h: failed.append("fail")
    )
    assert failed == ["fail"]

    called = asyncio.Event()

    async def later(h: Any) -> None:  # an async listener added late runs too
        called.set()

    handle.on("update", later)
    await asyncio.wait_for(called.wait(), 5)


async def test_late_listener_on_a_task_context(make_client: ClientFactory) -> None:
    """An observer's task hears the worker's update, then a listener added late is called."""
    heard: list[Any] = []
    listened = asyncio.Event()

    async def observe(task: Any) -> None:
        await until(lambda: task.last_update is not None)
        task.on("update", lambda t: heard.append(t.last_update))
        listened.set()

    async def work(task: Any) -> Any:
        await task.update("half")
        await listened.wait()
        return "done"

    await (await make_client("auditor")).sub("order:place", observe, observe=True)
    await (await make_client("shop")).sub("order:place", work)
    pub = await make_client("web")
    assert await pub.pub("order:place").get_result() == "done"
    assert heard == ["half"]


async def test_sync_progress_pattern_misses_no_update(server: Server) -> None:
    def scenario() -> None:
        with (
            sync.Client(server.url, name="worker") as worker,
            sync.Client(server.url, name="pub") as pub,
        ):

            def work(task: sync.Task) -> Any:
                task.update(1)
                task.update(2)
                return "done"

            worker.sub("job:run", work)
            handle = pub.pub("job:run")
            assert handle.get_result(timeout=10) == "done"
            updates: list[Any] = []
            results: list[Any] = []
            handle.on("update", lambda h: updates.append(h.last_update))
            handle.on("success", lambda h: results.append(h._handle.result))
            assert updates == [2]
            assert results == ["done"]

    await asyncio.to_thread(scenario)
