"""Publish, work, update and return over real WebSocket connections."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskhub import Client, NoResult, Server, TaskCancelled, TaskContext, TaskFailed, TaskTimeout
from tests.conftest import ClientFactory


async def test_result_and_updates_reach_the_publisher(make_client: ClientFactory) -> None:
    worker = await make_client("emailer")
    publisher = await make_client("web")
    seen: list[Any] = []

    @worker.sub("email/bulk:send", concurrency=4)
    async def send_bulk(task: Any) -> Any:
        emails = await task.get_payload()
        for i in range(3):
            await task.update({"sent": i})
        return {"sent": len(emails), "by": task.group}

    await send_bulk
    handle = publisher.pub("email/bulk:send", ["a", "b"])
    handle.on("update", lambda h: seen.append(h.last_update))
    assert await handle.get_result() == {"sent": 2, "by": "emailer"}
    assert seen == [{"sent": 0}, {"sent": 1}, {"sent": 2}]
    task = await publisher.get(handle.id or "")
    assert task["state"] == "success"
    assert task["updates"] == 3


async def test_each_group_gets_the_task_once(make_client: ClientFactory) -> None:
    got: dict[str, list[str]] = {"a1": [], "a2": [], "b": []}

    def worker(label: str) -> Any:
        async def handler(task: Any) -> Any:
            got[label].append(task.id)
            await task.drop()

        return handler

    a1, a2, b = await make_client("alpha"), await make_client("alpha"), await make_client("beta")
    await a1.sub("geo:geocode", worker("a1"))
    await a2.sub("geo:geocode", worker("a2"))
    await b.sub("geo:geocode", worker("b"))
    pub = await make_client("web")
    handles = [pub.pub("geo:geocode", i) for i in range(10)]
    for h in handles:
        with pytest.raises(NoResult):
            await h.get_result()
    ids = {h.id for h in handles}
    assert set(got["b"]) == ids and len(got["b"]) == 10
    assert sorted(got["a1"] + got["a2"]) == sorted(ids)  # alpha got each once, shared
    assert got["a1"] and got["a2"]  # round robin spread the work


async def test_first_return_wins_and_others_hear_success(make_client: ClientFactory) -> None:
    slow_saw_success = asyncio.Event()

    async def fast(task: Any) -> Any:
        return "fast"

    async def slow(task: Any) -> Any:
        task.on("success", lambda t: slow_saw_success.set())
        await slow_saw_success.wait()
        return "slow"  # ignored: the task already succeeded

    await (await make_client("fast")).sub("race:run", fast)
    await (await make_client("slow")).sub("race:run", slow)
    pub = await make_client("web")
    assert await pub.pub("race:run").get_result() == "fast"
    await asyncio.wait_for(slow_saw_success.wait(), 5)


async def test_handler_exception_fails_the_task(make_client: ClientFactory) -> None:
    worker = await make_client("w")

    @worker.sub("math:divide")
    async def divide(task: Any) -> Any:
        a, b = await task.get_payload()
        return a / b

    await divide
    pub = await make_client("web")
    assert await pub.pub("math:divide", [6, 3]).get_result() == 2
    with pytest.raises(TaskFailed) as info:
        await pub.pub("math:divide", [1, 0]).get_result()
    assert info.value.error_type == "ZeroDivisionError"
    assert "division by zero" in str(info.value)
    assert await pub.pub("math:divide", [1, 0]).get_result(default="oops") == "oops"


async def test_retries_then_success(make_client: ClientFactory, server: Server) -> None:
    assert server.hub is not None
    server.hub.lc.defaults.retry_backoff = 0.01
    calls: list[int] = []
    worker = await make_client("w")

    @worker.sub("flaky:run")
    async def flaky(task: Any) -> Any:
        calls.append(task.attempt)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return len(calls)

    await flaky
    pub = await make_client("web")
    assert await pub.pub("flaky:run", retries=3).get_result(timeout=10) == 3
    assert calls == sorted(calls) and len(set(calls)) == 3  # a new attempt each time


async def test_drop_everywhere_means_no_result(make_client: ClientFactory) -> None:
    async def dropper(task: Any) -> Any:
        await task.drop()
        return "ignored"

    await (await make_client("w")).sub("log:write", dropper)
    handle = (await make_client("web")).pub("log:write", "x")
    with pytest.raises(NoResult):
        await handle.get_result()
    assert handle.state == "end"


async def test_end_timeout_cancels_the_worker(make_client: ClientFactory) -> None:
    cancelled = asyncio.Event()

    async def stuck(task: Any) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await (await make_client("w")).sub("slow:run", stuck)
    pub = await make_client("web")
    with pytest.raises(TaskTimeout) as info:
        await pub.pub("slow:run", timeout=0.3).get_result()
    assert info.value.reason == "timeout"
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_start_timeout_without_workers(make_client: ClientFactory) -> None:
    pub = await make_client("web")
    with pytest.raises(TaskTimeout) as info:
        await pub.pub("nobody:home", start_timeout=0.2).get_result()
    assert info.value.reason == "start_timeout"


async def test_pooled_task_waits_for_a_subscriber(make_client: ClientFactory) -> None:
    pub = await make_client("web")
    handle = pub.pub("late:join", 41)
    await handle.accepted()
    await asyncio.sleep(0.1)
    worker = await make_client("w")

    async def inc(task: Any) -> Any:
        return await task.get_payload() + 1

    await worker.sub("late:join", inc)
    assert await handle.get_result(timeout=5) == 42


async def test_cancel_reaches_the_worker(make_client: ClientFactory) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def long(task: Any) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await (await make_client("w")).sub("job:long", long)
    pub = await make_client("web")
    handle = pub.pub("job:long")
    await asyncio.wait_for(started.wait(), 5)
    await handle.cancel()
    with pytest.raises(TaskCancelled):
        await handle.get_result()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_observer_sees_but_is_not_waited_for(make_client: ClientFactory) -> None:
    observed: list[Any] = []

    async def watch(task: Any) -> None:
        observed.append(await task.get_payload())
        await task.update("observer was here")

    async def work(task: Any) -> Any:
        await asyncio.sleep(0.05)
        return "done"

    await (await make_client("auditor")).sub("order:place", watch, observe=True)
    await (await make_client("shop")).sub("order:place", work)
    pub = await make_client("web")
    updates: list[Any] = []
    handle = pub.pub("order:place", {"id": 7}).on("update", lambda h: updates.append(h.last_update))
    assert await handle.get_result() == "done"
    assert observed == [{"id": 7}]
    assert updates == ["observer was here"]


async def test_large_payload_is_fetched_lazily(make_client: ClientFactory, server: Server) -> None:
    assert server.hub is not None
    limit = server.hub.lc.defaults.inline_payload_limit
    big = "x" * (limit + 10)
    worker = await make_client("w")
    inline: list[bool] = []

    async def size(task: Any) -> Any:
        inline.append(task._has_payload)
        return len(await task.get_payload())

    await worker.sub("blob:size", size)
    pub = await make_client("web")
    assert await pub.pub("blob:size", big).get_result() == len(big)
    assert await pub.pub("blob:size", "small").get_result() == 5
    assert inline == [False, True]


async def test_task_payload_is_there_once_fetched_and_says_so_before(
    make_client: ClientFactory, server: Server
) -> None:
    assert server.hub is not None
    big = "x" * (server.hub.lc.defaults.inline_payload_limit + 10)
    worker = await make_client("w")
    seen: list[Any] = []

    async def look(task: TaskContext) -> int:
        try:
            seen.append(task.payload)
        except RuntimeError as exc:  # large, not fetched yet: the error says what to do
            seen.append(str(exc))
        fetched = await task.get_payload()
        assert task.payload is fetched
        return len(fetched)

    await worker.sub("blob:look", look)
    pub = await make_client("web")
    assert await pub.pub("blob:look", "small").get_result() == 5
    assert await pub.pub("blob:look", big).get_result() == len(big)
    assert seen[0] == "small"
    assert "await task.get_payload()" in seen[1]


async def test_idempotency_key_returns_the_same_task(make_client: ClientFactory) -> None:
    pub = await make_client("web")
    first = pub.pub("mail:send", 1, key="order-7")
    second = pub.pub("mail:send", 2, key="order-7")
    assert await first.accepted() == await second.accepted()


async def test_worker_that_dies_gives_the_task_back(
    make_client: ClientFactory, server: Server
) -> None:
    started = asyncio.Event()
    doomed = await make_client("w")

    async def hang(task: Any) -> Any:
        started.set()
        await asyncio.sleep(30)

    await doomed.sub("img:resize", hang)
    pub = await make_client("web")
    handle = pub.pub("img:resize", "cat.png")
    await asyncio.wait_for(started.wait(), 5)
    await doomed.close()  # the connection dies holding a started delivery

    async def resize(task: Any) -> Any:
        return f"resized {await task.get_payload()} on attempt {task.attempt}"

    await (await make_client("w")).sub("img:resize", resize)
    assert await handle.get_result(timeout=5) == "resized cat.png on attempt 2"


async def test_client_over_a_list_of_urls(server: Server) -> None:
    dead = "ws://127.0.0.1:9"  # nothing listens there
    async with Client([dead, server.url], name="w", connect_timeout=5) as client:
        await client.sub("ping:pong", lambda t: "pong")
        assert await client.pub("ping:pong").get_result(timeout=5) == "pong"
