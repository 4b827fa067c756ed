"""``task.success(result)``: a handler sends its result before it returns (seed 004's
``task.success(result)``), over a real hub and real clients, async and sync.

What the worker sends is read off its connection (every message passes ``Connection._queue``):
the hub ignores a second ``return`` and a ``fail`` after the task succeeded, so only the wire
shows whether the client sent one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from taskhub import Client, NoResult, Server
from taskhub.client.connection import Connection
from taskhub.errors import NotHolding, TaskHubError
from taskhub.sync import Client as SyncClient
from taskhub.sync import Task
from tests.conftest import ClientFactory, until


def record_sent(conn: Connection) -> list[dict[str, Any]]:
    """Every message ``conn`` sends from now on, decoded, in order."""
    sent: list[dict[str, Any]] = []
    queue = conn._queue

    def spy(part: bytes) -> None:
        sent.append(json.loads(part))
        queue(part)

    conn._queue = spy  # type: ignore[method-assign]
    return sent


def endings(sent: list[dict[str, Any]], task_id: str) -> list[str]:
    """The ops sent for one task that end a delivery (``ack``/``pickup`` left out), in order."""
    return [m["op"] for m in sent if m.get("task") == task_id and m["op"] not in _RECEIPTS]


_RECEIPTS = frozenset(("ack", "pickup"))


async def settled(client: Client) -> None:
    """Every handler has finished and whatever it sends has been queued."""
    await until(lambda: not client._handlers.working)


async def test_success_sends_the_result_at_once_and_the_return_value_is_ignored(
    make_client: ClientFactory,
) -> None:
    worker = await make_client("w")
    sent = record_sent(worker._conn)
    release = asyncio.Event()

    @worker.sub("report:build")
    async def build(task: Any) -> Any:
        await task.success({"pages": await task.get_payload()})
        await release.wait()  # the publisher has the result while the handler still runs
        return "ignored"

    await build
    pub = await make_client("web")
    handle = pub.pub("report:build", 3)
    assert await handle.get_result(timeout=5) == {"pages": 3}
    assert (await pub.get(handle.id or ""))["result"] == {"pages": 3}
    release.set()
    await settled(worker)
    assert endings(sent, handle.id or "") == ["return"]
    (ret,) = [m for m in sent if m["op"] == "return"]
    assert ret["result"] == {"pages": 3} and ret["attempt"] == 1


async def test_success_without_a_result_is_a_success_with_none(
    make_client: ClientFactory,
) -> None:
    worker = await make_client("w")

    @worker.sub("ping:send")
    async def ping(task: Any) -> Any:
        await task.success()
        return "ignored"

    await ping
    handle = (await make_client("web")).pub("ping:send")
    assert await handle.get_result(timeout=5) is None  # not NoResult: the task succeeded
    assert handle.state == "success"


async def test_a_second_success_or_a_drop_after_it_raises_and_sends_nothing(
    make_client: ClientFactory,
) -> None:
    worker = await make_client("w")
    sent = record_sent(worker._conn)
    refused: list[BaseException] = []

    @worker.sub("job:run")
    async def run(task: Any) -> Any:
        await task.success("first")
        for step in (lambda: task.success("second"), task.drop):
            try:
                await step()
            except NotHolding as exc:
                refused.append(exc)
        return "ignored"

    await run
    handle = (await make_client("web")).pub("job:run")
    assert await handle.get_result(timeout=5) == "first"
    await settled(worker)
    assert endings(sent, handle.id or "") == ["return"]
    assert len(refused) == 2
    assert "success() was already called" in str(refused[0])
    assert handle.id in str(refused[0]) and "job:run" in str(refused[0])
    assert "success() was already called" in str(refused[1])


async def test_success_after_drop_raises_and_sends_nothing(make_client: ClientFactory) -> None:
    worker = await make_client("w")
    sent = record_sent(worker._conn)
    refused: list[BaseException] = []

    @worker.sub("log:write")
    async def write(task: Any) -> Any:
        await task.drop()
        try:
            await task.success("too late")
        except NotHolding as exc:
            refused.append(exc)
        return "ignored"

    await write
    handle = (await make_client("web")).pub("log:write")
    with pytest.raises(NoResult):
        await handle.get_result(timeout=5)
    await settled(worker)
    assert endings(sent, handle.id or "") == ["drop"]
    assert len(refused) == 1 and "it was dropped" in str(refused[0])


@pytest.mark.parametrize("how", ["RuntimeError", "second success() left uncaught"])
async def test_an_exception_after_success_is_logged_not_sent(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    worker = await make_client("w")
    sent = record_sent(worker._conn)

    @worker.sub("mail:send")
    async def send(task: Any) -> Any:
        await task.success({"sent": 1})
        if how == "RuntimeError":
            raise RuntimeError("cleanup failed")
        await task.success({"sent": 2})  # raises NotHolding, a TaskHubError

    await send
    pub = await make_client("web")
    with caplog.at_level(logging.ERROR, logger="taskhub.client"):
        handle = pub.pub("mail:send")
        assert await handle.get_result(timeout=5) == {"sent": 1}
        await settled(worker)
    assert endings(sent, handle.id or "") == ["return"]  # no fail
    assert (await pub.get(handle.id or ""))["state"] == "success"
    (record,) = [r for r in caplog.records if "after task.success()" in r.getMessage()]
    assert handle.id in record.getMessage()
    assert record.exc_info is not None
    expected = RuntimeError if how == "RuntimeError" else TaskHubError
    assert isinstance(record.exc_info[1], expected)


async def test_an_exception_after_drop_is_logged_not_sent(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """As after success(): the delivery is over, so a later exception is logged, and no fail
    goes to the hub (which would only refuse it). The task ends without a result."""
    worker = await make_client("w")
    sent = record_sent(worker._conn)

    @worker.sub("mail:skip")
    async def skip(task: Any) -> Any:
        await task.drop()
        raise RuntimeError("cleanup failed")

    await skip
    pub = await make_client("web")
    with caplog.at_level(logging.ERROR, logger="taskhub.client"):
        handle = pub.pub("mail:skip")
        with pytest.raises(NoResult):
            await handle.get_result(timeout=5)
        await settled(worker)
    assert endings(sent, handle.id or "") == ["drop"]  # no fail
    (record,) = [r for r in caplog.records if "after task.drop()" in r.getMessage()]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_sync_task_success(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    def scenario() -> tuple[list[dict[str, Any]], list[BaseException], dict[str, str]]:
        refused: list[BaseException] = []
        with SyncClient(server.url, name="w") as worker, SyncClient(server.url, name="p") as pub:
            assert worker._client is not None
            sent = record_sent(worker._client._conn)

            def handle(task: Task) -> Any:
                task.success({"got": task.payload})
                try:
                    task.success("again")
                except NotHolding as exc:
                    refused.append(exc)
                if task.payload == "raise":
                    raise ValueError("after the result")
                return "ignored"

            worker.sub("sync:job", handle)
            ids = {}
            for payload in ("plain", "raise"):
                h = pub.pub("sync:job", payload)
                assert h.get_result(timeout=5) == {"got": payload}
                ids[payload] = h.id
                assert pub.get(h.id)["state"] == "success"
            for _ in range(500):  # the handlers' last words are queued after the results
                if worker._client is not None and not worker._client._handlers.working:
                    break
                time.sleep(0.01)
            return sent, refused, ids

    with caplog.at_level(logging.ERROR, logger="taskhub.client"):
        sent, refused, ids = await asyncio.to_thread(scenario)
    for task_id in ids.values():
        assert endings(sent, task_id) == ["return"]  # once, and no fail
    assert len(refused) == 2 and all("already called" in str(e) for e in refused)
    logged = [r for r in caplog.records if "after task.success()" in r.getMessage()]
    assert len(logged) == 1 and ids["raise"] in logged[0].getMessage()
