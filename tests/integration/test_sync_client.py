"""taskhub.sync.Client against a real hub: blocking handlers, blocking publishers.

The hub runs on the test's event loop, so the blocking code runs in a thread
(``asyncio.to_thread``): a blocking call on the loop's own thread would stall the hub.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from taskhub import Server, TaskCancelled, TaskFailed
from taskhub.sync import Client, Task


async def test_blocking_worker_and_sync_publisher(server: Server) -> None:
    def scenario() -> None:
        threads: set[str] = set()
        go = threading.Event()  # updates only once the publisher listens for them
        with Client(server.url, name="worker") as worker, Client(server.url, name="pub") as pub:

            def resize(task: Task) -> Any:
                threads.add(threading.current_thread().name)
                go.wait(5)
                task.update({"step": "started"})
                time.sleep(0.2)  # blocking on purpose: it runs in a pool thread
                return {"size": task.payload["w"] * 2, "attempt": task.attempt}

            worker.sub("image:resize", resize, concurrency=2)
            updates: list[Any] = []
            handles = []
            for w in range(4):
                h = pub.pub("image:resize", {"w": w})
                h.on("update", lambda h: updates.append(h.last_update))
                handles.append(h)
            assert all(h.id for h in handles)
            started = time.monotonic()
            go.set()
            results = [h.get_result(timeout=10) for h in handles]
            elapsed = time.monotonic() - started
            assert [r["size"] for r in results] == [0, 2, 4, 6]
            assert elapsed < 0.75  # two at a time: about 0.4 s, not 0.8 s
            assert all(name.startswith("taskhub-image:resize") for name in threads)
            assert len(threads) == 2
            for _ in range(100):  # updates are events: they may trail the results a little
                if len(updates) == 4:
                    break
                time.sleep(0.01)
            assert updates == [{"step": "started"}] * 4
            task = pub.get(handles[0].id)
            assert task["state"] == "success"
            assert task["result"]["size"] == 0

    await asyncio.to_thread(scenario)


async def test_decorator_failures_default_and_timeout(server: Server) -> None:
    def scenario() -> None:
        with Client(server.url, name="svc") as c:

            @c.sub("math:div")
            def div(task: Task) -> Any:
                return task.payload[0] / task.payload[1]

            assert div.__name__ == "div"  # the decorator hands the function back
            assert c.pub("math:div", [6, 3]).get_result(timeout=5) == 2
            failing = c.pub("math:div", [1, 0])
            with pytest.raises(TaskFailed, match="ZeroDivisionError"):
                failing.get_result(timeout=5)
            assert failing.get_result(default=None) is None
            pooled = c.pub("nobody:listens")
            with pytest.raises(TimeoutError):
                pooled.get_result(timeout=0.2)
            assert pooled.get_result(default="nothing yet", timeout=0.2) == "nothing yet"
            assert c.get(pooled.id)["state"] == "init"

    await asyncio.to_thread(scenario)


async def test_cancel_reaches_a_blocking_handler(server: Server) -> None:
    def scenario() -> None:
        seen: list[str | None] = []
        picked = threading.Event()
        with Client(server.url, name="svc") as c:

            def slow(task: Task) -> Any:
                picked.set()
                for _ in range(500):  # a cooperative handler: looks at revoked between steps
                    if task.revoked:
                        seen.append(task.revoked)
                        return None
                    time.sleep(0.01)
                return "too late"

            c.sub("slow:job", slow)
            h = c.pub("slow:job")
            assert picked.wait(5)
            h.cancel()
            with pytest.raises(TaskCancelled):
                h.get_result(timeout=5)
            for _ in range(200):
                if seen:
                    break
                time.sleep(0.01)
            assert seen == ["cancelled"]
            assert c.get(h.id)["state"] == "fail"

    await asyncio.to_thread(scenario)


async def test_blocking_call_from_a_loop_callback_is_refused(server: Server) -> None:
    def scenario() -> None:
        errors: list[BaseException] = []
        go = threading.Event()
        with Client(server.url, name="svc") as c:

            def echo(task: Task) -> Any:
                go.wait(5)
                task.update("halfway")
                return task.payload

            c.sub("echo:say", echo)
            h = c.pub("echo:say", "hi")

            def on_update(handle: Any) -> None:
                try:
                    c.get(handle.id)  # from the loop thread: would wait on itself forever
                except RuntimeError as exc:
                    errors.append(exc)

            h.on("update", on_update)
            go.set()
            assert h.get_result(timeout=5) == "hi"
        assert len(errors) == 1
        assert "loop thread" in str(errors[0])

    await asyncio.to_thread(scenario)


def test_not_connected_is_a_clear_error() -> None:
    c = Client("ws://127.0.0.1:1", name="x")
    with pytest.raises(RuntimeError, match="not connected"):
        c.get("01")
