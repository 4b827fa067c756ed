"""taskhub.sync.Client against a real hub: blocking handlers, blocking publishers.

The hub runs on the test's event loop, so the blocking code runs in a thread
(``asyncio.to_thread``): a blocking call on the loop's own thread would stall the hub.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import pytest

from taskhub import Server, TaskCancelled, TaskFailed
from taskhub.errors import TaskNotFound
from taskhub.sync import Client, Handle, Task


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


async def test_done_callbacks_collect_results_without_blocking(server: Server) -> None:
    """``add_done_callback`` on a sync handle: called once, in the loop thread, with the sync
    handle, for successes and failures alike and for a handle already done; ``outcome()``
    then gives the result or raises, and raises ``InvalidStateError`` before."""

    def scenario() -> None:
        with Client(server.url, name="svc") as c:
            go = threading.Event()

            def div(task: Task) -> Any:
                go.wait(5)
                return task.payload[0] // task.payload[1]

            c.sub("math:idiv", div, concurrency=4)
            done: queue.Queue[tuple[Handle, str, Any]] = queue.Queue()

            def collect(handle: Handle) -> None:
                try:
                    done.put((handle, threading.current_thread().name, handle.outcome()))
                except TaskFailed as exc:
                    done.put((handle, threading.current_thread().name, exc))

            handles = [c.pub("math:idiv", [10 * i, 2 if i != 3 else 0]) for i in range(8)]
            with pytest.raises(asyncio.InvalidStateError, match="not ended"):
                handles[0].outcome()
            for h in handles:
                h.add_done_callback(collect)
            go.set()
            got = {}
            for _ in handles:
                handle, thread, outcome = done.get(timeout=5)
                assert isinstance(handle, Handle) and thread != threading.current_thread().name
                got[handle.id] = outcome
            assert done.empty()  # once per callback
            assert [got[h.id] for h in handles if h is not handles[3]] == [0, 5, 10, 20, 25, 30, 35]
            assert isinstance(got[handles[3].id], TaskFailed)
            assert "ZeroDivisionError" in str(got[handles[3].id])
            handles[0].add_done_callback(collect)  # already done: called all the same
            assert done.get(timeout=5)[2] == 0
            with pytest.raises(TaskFailed):
                handles[3].outcome()

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


async def test_chain_and_group(server: Server) -> None:
    def scenario() -> None:
        with Client(server.url, name="svc") as c:
            c.sub("num:double", lambda task: task.payload * 2)
            c.sub("kv:merge", lambda task: task.payload)
            chained = c.chain([("num:double", 3), ("num:double", None)])
            assert isinstance(chained, Handle) and chained.id
            assert chained.get_result(timeout=5) == 12
            merged = c.chain([("kv:merge", {"a": 1}), ("kv:merge", {"b": 2})], merge_input=True)
            assert merged.get_result(timeout=5) == {"a": 1, "b": 2}
            grouped = c.group([("num:double", 1), ("num:double", 2), ("num:double", 5)])
            assert isinstance(grouped, Handle)
            assert grouped.get_result(timeout=5) == [2, 4, 10]

    await asyncio.to_thread(scenario)


async def test_subscribe_emit_unsubscribe(server: Server) -> None:
    def scenario() -> None:
        got: list[tuple[Any, str, str]] = []
        arrived = threading.Event()
        with Client(server.url, name="a") as listener, Client(server.url, name="b") as emitter:

            def on_order(data: Any, topic: str) -> None:
                if data == "bad":
                    raise ValueError("a failing handler is logged, not fatal")
                got.append((data, topic, threading.current_thread().name))
                if len(got) == 2:
                    arrived.set()

            listener.subscribe("orders:*", on_order)
            assert emitter.emit("orders:new", "bad") == 1
            assert emitter.emit("orders:new", {"id": 1}) == 1
            assert emitter.emit("orders:paid", {"id": 1}) == 1
            assert emitter.emit("users:new", "not matched") == 0
            assert arrived.wait(5)
            assert [(d, t) for d, t, _ in got] == [
                ({"id": 1}, "orders:new"),
                ({"id": 1}, "orders:paid"),
            ]
            assert all(name.startswith("taskhub-event-orders:*") for _, _, name in got)
            listener.unsubscribe("orders:*")
            assert emitter.emit("orders:new", {"id": 2}) == 0

    await asyncio.to_thread(scenario)


async def test_watch_is_a_blocking_iterator(server: Server) -> None:
    def scenario() -> None:
        with Client(server.url, name="ops") as watcher, Client(server.url, name="w") as worker:

            def send(task: Task) -> Any:
                task.update("half")
                return "sent"

            worker.sub("email:send", send)
            worker.sub("sms:send", lambda task: "ok")
            with watcher.watch("email:*") as events:
                handle = worker.pub("email:send", {"to": "a"})
                assert worker.pub("sms:send").get_result(timeout=5) == "ok"  # not watched
                assert handle.get_result(timeout=5) == "sent"
                got = [events.get(timeout=5) for _ in range(5)]
                with pytest.raises(TimeoutError):
                    events.get(timeout=0.1)
            assert [e["type"] for e in got] == ["init", "offer", "start", "update", "success"]
            assert {e["task"] for e in got} == {handle.id}
            assert got[4]["data"] == "sent"
            assert list(events) == []  # closed: the iteration ends
            assert not watcher._async()._link.watches  # unwatched on exit

            small = watcher.watch("email:send", maxsize=2)
            assert worker.pub("email:send").get_result(timeout=5) == "sent"
            for _ in range(500):  # the last events may trail the result
                if small.dropped == 3:
                    break
                time.sleep(0.01)
            small.close()
            kept = list(small)
            assert [e["type"] for e in kept] == ["update", "success"]  # the newest are kept
            assert small.dropped == 3

    await asyncio.to_thread(scenario)


async def test_schedule_round_trip(server: Server) -> None:
    def scenario() -> None:
        with Client(server.url, name="ops") as c:
            got = c.schedule("reports/nightly", "0 3 * * *", "report:build", {"k": 1}, priority=2)
            assert got["options"] == {"priority": 2} and got["next_at"] > time.time()
            [listed] = c.schedules()
            assert listed["name"] == "reports/nightly" and listed["owner"] == "ops"
            c.unschedule("reports/nightly")
            assert c.schedules() == []
            with pytest.raises(TaskNotFound):
                c.unschedule("reports/nightly")

    await asyncio.to_thread(scenario)


async def test_dead_letter_requeue_payload_queues_purge(server: Server) -> None:
    def scenario() -> None:
        calls: list[int] = []
        with Client(server.url, name="svc") as c:

            def flaky(task: Task) -> Any:
                calls.append(1)
                if len(calls) <= 2:
                    raise RuntimeError(f"boom {len(calls)}")
                return "fine"

            c.sub("job:flaky", flaky)
            h = c.pub("job:flaky", {"n": 7}, retries=1, backoff=0.05)
            with pytest.raises(TaskFailed, match="boom 2"):
                h.get_result(timeout=5)
            [entry] = c.dead_letters()
            assert entry["id"] == h.id and "payload" not in entry
            assert c.dead_letters("other:action") == []
            assert c.dead_letter(h.id)["payload"] == {"n": 7}
            new_id = c.requeue(h.id)
            assert new_id != h.id and c.dead_letters() == []
            for _ in range(500):
                if c.get(new_id)["state"] == "success":
                    break
                time.sleep(0.01)
            assert c.get(new_id)["result"] == "fine"
            assert c.payload(new_id) == {"n": 7}

            c.sub("job:batch", lambda task: None, group="batchers", durable=True)
            c.unsub("job:batch")
            handles = [c.pub("job:batch", i) for i in range(3)]
            [q] = [q for q in c.queues() if q["group"] == "batchers"]
            assert q["waiting"] == 3 and q["durable"] and q["workers"] == 0
            assert c.purge("job:batch", "batchers", forget=True) == 3
            with pytest.raises(TaskFailed, match="purged"):
                handles[0].get_result(timeout=5)
            assert not any(q["group"] == "batchers" for q in c.queues())

    await asyncio.to_thread(scenario)
