"""The worker runtime in-process (issue 16): Worker + @worker.task against a real hub from
taskhub.testing, over real WebSocket connections."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import taskhub.testing
from taskhub import Client, Reject, Retry, TaskCancelled, TaskFailed, TaskTimeout, Worker
from taskhub.worker import SyncTask, Task
from tests.conftest import ServerFactory


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with taskhub.testing.hub(retries=0, max_attempts=5) as hub_url:
        yield hub_url


async def test_async_and_plain_handlers_return_results(url: str) -> None:
    worker = Worker(url, name="w")
    seen: list[str] = []

    @worker.task("math:double")
    async def double(task: Task) -> int:
        await task.update({"got": task.payload})
        return int(task.payload) * 2

    @worker.task("text:upper")
    def upper(task: SyncTask) -> str:
        seen.append(threading.current_thread().name)
        task.update("working")
        return str(task.payload).upper()

    async with worker, Client(url, name="pub") as client:
        assert await client.pub("math:double", 21).get_result(timeout=10) == 42
        assert await client.pub("text:upper", "abc").get_result(timeout=10) == "ABC"
    assert seen and seen[0].startswith("taskhub-text:upper")  # a thread of its pool


async def test_retry_offers_again_after_the_delay_and_counts_a_try(url: str) -> None:
    worker = Worker(url, name="w")
    attempts: list[int] = []

    @worker.task("job:retry")
    async def flaky(task: Task) -> str:
        attempts.append(task.attempt)
        if len(attempts) == 1:
            raise Retry(delay="0.05s")
        return "second time"

    @worker.task("job:retry-sync")
    def flaky_sync(task: SyncTask) -> str:
        if task.attempt == 1:
            raise Retry(delay=0)
        return f"attempt {task.attempt}"

    async with worker, Client(url, name="pub") as client:
        handle = client.pub("job:retry")  # retries=0 at the hub: Retry still retries
        assert await handle.get_result(timeout=10) == "second time"
        assert attempts == [1, 2]
        task = await client.get(await handle.accepted())
        assert task["deliveries"][0]["tries"] == 1  # the Retry counted as a try
        assert await client.pub("job:retry-sync").get_result(timeout=10) == "attempt 2"


async def test_reject_fails_at_once_into_the_dead_letters(url: str) -> None:
    worker = Worker(url, name="w")
    calls: list[int] = []

    @worker.task("job:reject", retries=5)
    async def no(task: Task) -> None:
        calls.append(task.attempt)
        raise Reject("malformed order")

    @worker.task("job:reject-sync", retries=5)
    def no_sync(task: SyncTask) -> None:
        raise Reject("no thanks")

    async with worker, Client(url, name="pub") as client:
        handle = client.pub("job:reject")
        with pytest.raises(TaskFailed, match="malformed order"):
            await handle.get_result(timeout=10)
        assert calls == [1]
        task_id = await handle.accepted()
        assert task_id in [d["id"] for d in await client.dead_letters()]
        h2 = client.pub("job:reject-sync")
        with pytest.raises(TaskFailed, match="no thanks"):
            await h2.get_result(timeout=10)
        assert (await client.get(await h2.accepted()))["error"]["type"] == "Reject"


async def test_worker_declared_retries_and_timeout_apply_unless_the_publisher_sets_them(
    url: str,
) -> None:
    worker = Worker(url, name="w")
    tries: dict[str, int] = {}

    @worker.task("job:flaky", retries=2, backoff=0)
    async def flaky(task: Task) -> str:
        tries[task.id] = tries.get(task.id, 0) + 1
        if tries[task.id] < 3:
            raise ValueError(f"try {tries[task.id]}")
        return "ok"

    @worker.task("job:slow", timeout=0.3)
    async def slow(task: Task) -> None:
        await asyncio.Event().wait()  # never done: the worker's timeout ends it

    async with worker, Client(url, name="pub") as client:
        assert await client.pub("job:flaky").get_result(timeout=10) == "ok"
        with pytest.raises(TaskFailed, match="try 1"):  # the publisher's retries=0 wins
            await client.pub("job:flaky", retries=0).get_result(timeout=10)
        with pytest.raises(TaskTimeout):
            await client.pub("job:slow").get_result(timeout=10)


async def test_a_revoke_cancels_a_handler_the_handler_loop_started_itself(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery the handler loop started as it read the offer is not known to the
    connection's loop while it runs (docs/decisions.md): a revoke read meanwhile still
    cancels its handler, its listeners hear it, and its slot is free again."""
    caplog.set_level(logging.INFO, "taskhub.worker")
    worker = Worker(url, name="w")
    started, cancelled = threading.Event(), threading.Event()
    heard: list[str | None] = []

    @worker.task("job:revoked", concurrency=1)
    async def waits(task: Task) -> str:
        if task.payload == "quick":
            return "quick"
        task.on("revoke", lambda t: heard.append(t.revoked))
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async with worker, Client(url, name="pub") as client:
        handle = client.pub("job:revoked", "wait")
        assert await asyncio.to_thread(started.wait, 10)
        await handle.cancel()
        assert await asyncio.to_thread(cancelled.wait, 10)
        with pytest.raises(TaskCancelled):
            await handle.get_result(timeout=10)
        assert await client.pub("job:revoked", "quick").get_result(timeout=10) == "quick"
    assert heard == ["cancelled"]
    assert any("taken away" in r.getMessage() for r in caplog.records)


async def test_extend_keeps_a_long_task_alive(url: str) -> None:
    worker = Worker(url, name="w")

    @worker.task("job:long", timeout=0.5)
    async def long(task: Task) -> str:
        await task.extend("30s")
        await asyncio.sleep(1.0)  # past the worker's 0.5 s timeout
        return "done"

    async with worker, Client(url, name="pub") as client:
        assert await client.pub("job:long").get_result(timeout=10) == "done"


async def test_a_raising_handler_leaves_its_traceback_in_the_log_and_the_task(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(url, name="w")

    @worker.task("job:boom", retries=1, backoff=0)
    async def explode(task: Task) -> None:
        raise KeyError(f"missing {task.attempt}")

    caplog.set_level(logging.INFO, "taskhub.worker")
    async with worker, Client(url, name="pub") as client:
        handle = client.pub("job:boom")
        with pytest.raises(TaskFailed):
            await handle.get_result(timeout=10)
        task = await client.get(await handle.accepted())
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
            view = (await http.get(f"/v1/tasks/{task['id']}")).json()
    assert view["error"]["traceback"] == task["error"]["traceback"]  # the HTTP API has it too
    error = task["error"]
    assert "in explode" in error["traceback"]
    assert "KeyError: 'missing 2'" in error["traceback"]
    assert "taskhub/worker.py" not in error["traceback"]  # the handler's frames only
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2  # each try
    assert failures[0].exc_info is not None
    text = logging.Formatter().formatException(failures[0].exc_info)
    assert "in explode" in text
    assert any("received job:boom" in r.getMessage() for r in caplog.records)


async def test_a_handler_that_blocks_its_loop_keeps_the_connection_runs_once_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The hub drops a peer that does not answer pings within 0.5 s: a connection sharing its
    # thread with a 3 s time.sleep would be lost and the task offered again.
    caplog.set_level(logging.INFO, "taskhub.worker")
    async with taskhub.testing.hub(ping_interval=0.5, ping_timeout=0.5) as url:
        worker = Worker(url, name="w", ping_interval=0.5)
        runs: list[int] = []

        @worker.task("job:block", concurrency=2)
        async def blocker(task: Task) -> str:
            runs.append(task.attempt)
            time.sleep(3)  # noqa: ASYNC251 - the point of the test
            return "slept"

        @worker.task("job:quick")
        def quick(task: SyncTask) -> str:
            return "quick"

        async with worker, Client(url, name="pub", ping_interval=0.5) as client:
            handle = client.pub("job:block")
            await asyncio.sleep(0.5)
            # Another handler's result goes out while the handler loop is blocked.
            assert await client.pub("job:quick").get_result(timeout=2) == "quick"
            assert await handle.get_result(timeout=20) == "slept"
            task = await client.get(await handle.accepted())
    assert runs == [1]
    assert task["deliveries"][0]["attempt"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("blocker" in w and "blocked" in w for w in warnings), warnings


async def test_stop_lets_a_running_task_finish_within_the_grace(url: str) -> None:
    worker = Worker(url, name="w")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    @worker.task("job:finish")
    async def finish(task: Task) -> str:
        loop.call_soon_threadsafe(started.set)
        await asyncio.sleep(0.5)
        return "finished"

    async with Client(url, name="pub") as client:
        await worker.__aenter__()
        handle = client.pub("job:finish")
        await started.wait()
        await asyncio.to_thread(worker.stop, 10)
        assert await handle.get_result(timeout=10) == "finished"


async def test_stop_past_the_grace_hands_back_without_counting_a_try(url: str) -> None:
    first = Worker(url, name="w")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    runs: list[str] = []

    @first.task("job:stuck")
    async def stuck(task: Task) -> str:
        runs.append("first")
        loop.call_soon_threadsafe(started.set)
        await asyncio.sleep(60)
        return "first"

    second = Worker(url, name="w")

    @second.task("job:stuck")
    async def ok(task: Task) -> str:
        runs.append("second")
        return "second"

    async with Client(url, name="pub") as client:
        await first.__aenter__()
        handle = client.pub("job:stuck")
        await started.wait()
        await asyncio.to_thread(first.stop, 0.2)
        async with second:
            assert await handle.get_result(timeout=10) == "second"
        task = await client.get(await handle.accepted())
    assert runs == ["first", "second"]
    assert task["deliveries"][0]["tries"] == 0  # handed back: no try counted


async def test_testing_fixture_serves_a_hub(taskhub_url: str) -> None:
    async with Client(taskhub_url, name="p") as client:
        assert await client.queues() == []


def test_a_worker_without_tasks_or_with_a_bad_option_says_so() -> None:
    with pytest.raises(ValueError, match="no tasks"):
        Worker().start()
    with pytest.raises(ValueError, match="retries"):
        Worker().task("a:b", retries=-1)
    with pytest.raises(ValueError, match="pool"):
        Worker().task("a:b", pool="fibers")  # type: ignore[arg-type]
    worker = Worker()

    @worker.task("a:b")
    def one(task: Any) -> None: ...

    with pytest.raises(ValueError, match="already"):
        worker.task("a:b")(one)


def test_the_blocking_clients_sub_declares_worker_defaults_too() -> None:
    from taskhub.sync import Client as SyncClient
    from taskhub.sync import Task as SyncClientTask

    tries: list[int] = []
    with taskhub.testing.running_hub() as hub_url, SyncClient(hub_url, name="w") as client:

        @client.sub("job:once", retries=1, backoff=0)
        def once(task: SyncClientTask) -> str:
            tries.append(task.attempt)
            if len(tries) == 1:
                raise RuntimeError("first try fails")
            return "second"

        assert client.pub("job:once").get_result(timeout=10) == "second"
    assert tries == [1, 2]


async def test_an_offer_that_arrives_while_draining_is_handed_back_not_dropped(url: str) -> None:
    # The hub applies a frame in order: the return of t1 frees the credit and t2 is offered
    # to A before A's unsub (sent in the same frame) is applied. A must hand t2 back.
    release_t1 = asyncio.Event()
    ran_on_a: list[str] = []
    async with Client(url, name="svc") as a, Client(url, name="pub") as publisher:

        async def on_a(task: Any) -> str:
            ran_on_a.append(task.id)
            await release_t1.wait()
            return "a"

        await a.sub("job:drain", on_a)
        t1 = publisher.pub("job:drain")
        for _ in range(500):
            if ran_on_a:
                break
            await asyncio.sleep(0.01)
        t2 = publisher.pub("job:drain")
        await t2.accepted()
        release_t1.set()
        for _ in range(10_000):  # until t1's return is queued
            if not a.working:
                break
            await asyncio.sleep(0)
        await a.drain()
        assert await t1.get_result(timeout=10) == "a"
        async with Client(url, name="svc") as b:

            async def on_b(task: Any) -> str:
                return "b"

            await b.sub("job:drain", on_b)
            assert await t2.get_result(timeout=10) == "b"
            task = await b.get(await t2.accepted())
    assert len(ran_on_a) == 1
    assert task["deliveries"][0]["tries"] == 0


async def test_where_handlers_run(url: str) -> None:
    worker = Worker(url, name="w")
    main_thread = threading.current_thread().name

    @worker.task("where:async")
    async def in_loop(task: Task) -> str:
        return threading.current_thread().name

    @worker.task("where:inline", pool="async")
    def inline(task: SyncTask) -> str:
        task.update("from the handler loop")  # blocks that loop, never the connection
        return threading.current_thread().name

    @worker.task("where:thread")
    def threaded(task: SyncTask) -> str:
        return threading.current_thread().name

    async with worker, Client(url, name="pub") as client:
        names = [
            await client.pub(action).get_result(timeout=10)
            for action in ("where:async", "where:inline", "where:thread")
        ]
    assert names[0] == names[1] == "taskhub-worker-handlers"
    assert names[2].startswith("taskhub-where:thread")
    assert main_thread not in names


@pytest.mark.parametrize("pool", ["async", "threads"])
async def test_a_result_leaves_while_the_connection_loop_is_busy(url: str, pool: str) -> None:
    """A handler's result is written from the thread it ran on, at once: the publisher has
    it even while the worker's connection loop is busy (that loop wakes later only to end
    the delivery's bookkeeping), so a result costs no wake-up of the connection's thread."""
    worker = Worker(url, name="w")
    started, go = threading.Event(), threading.Event()

    @worker.task("busy:async")
    async def on_the_handler_loop(task: Task) -> str:
        started.set()
        await asyncio.to_thread(go.wait, 10)
        return "done"

    @worker.task("busy:threads")
    def in_a_thread(task: SyncTask) -> str:
        started.set()
        go.wait(10)
        return "done"

    received, freed = threading.Event(), threading.Event()

    def busy() -> None:  # on the connection's loop: it does nothing else meanwhile
        go.set()  # the handler returns now
        received.wait(10)
        freed.set()

    async with worker, Client(url, name="pub") as client:
        handle = client.pub(f"busy:{pool}")
        assert await asyncio.to_thread(started.wait, 10)
        assert worker._run is not None
        worker._run.conn.loop.call_soon_threadsafe(busy)
        try:
            assert await handle.get_result(timeout=8) == "done"
            assert not freed.is_set()  # it came while the connection's loop was still busy
        finally:
            received.set()
        assert await client.pub(f"busy:{pool}").get_result(timeout=10) == "done"  # and on


async def test_results_written_from_many_threads_at_once_keep_their_frames_whole(
    url: str,
) -> None:
    """Results leave from the handlers' threads, several at a time, large enough that the
    socket takes them in parts while the connection's loop writes too (pickups, acks): every
    frame arrives whole (the hub would drop a connection that sent a broken one)."""
    worker = Worker(url, name="w")

    @worker.task("big:echo", concurrency=8)
    def echo(task: SyncTask) -> dict[str, Any]:
        return {"n": task.payload, "pad": "x" * 300_000}

    async with worker, Client(url, name="pub") as client:
        handles = [client.pub("big:echo", n) for n in range(80)]
        results = await asyncio.gather(*(h.get_result(timeout=60) for h in handles))
    assert [r["n"] for r in results] == list(range(80))
    assert all(len(r["pad"]) == 300_000 for r in results)


class _HoldTheConnectionThread:
    """Blocks a running worker's connection thread (a call on its loop that waits until
    ``let_go`` is set): that thread then does nothing else."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.holding = threading.Event()
        self.let_go = threading.Event()

    def start(self) -> None:
        run = self.worker._run
        assert run is not None
        run.conn.loop.call_soon_threadsafe(self._hold)

    def _hold(self) -> None:
        self.holding.set()
        self.let_go.wait(30)


async def test_an_idle_handler_loop_reads_its_offers_and_runs_them_itself(url: str) -> None:
    """While the handler loop is free it reads the connection itself: an offer for an async
    handler starts there and its result leaves from there, with no hand-over by the
    connection's thread (docs/performance.md). Shown by holding that thread: tasks still
    run, one after another, and their results arrive while it is held."""
    worker = Worker(url, name="w")
    hold = _HoldTheConnectionThread(worker)

    @worker.task("job:first")
    async def first(task: Task) -> str:
        return threading.current_thread().name

    @worker.task("job:next", concurrency=4)
    async def after(task: Task) -> int:
        await asyncio.sleep(0)
        return int(task.payload) + 1

    async with worker, Client(url, name="pub") as client:
        assert await client.pub("job:first").get_result(timeout=10) == ("taskhub-worker-handlers")
        hold.start()
        assert await asyncio.to_thread(hold.holding.wait, 10)  # held from now on
        try:
            for n in range(5):
                assert await client.pub("job:next", n).get_result(timeout=10) == n + 1
            # Offered together (an `offers` message), started all the same.
            handles = [client.pub("job:next", n) for n in range(20)]
            results = await asyncio.gather(*(h.get_result(timeout=10) for h in handles))
            assert results == [n + 1 for n in range(20)]
            assert not hold.let_go.is_set()  # all of that while the thread was held
        finally:
            hold.let_go.set()
        assert await client.pub("job:next", 10).get_result(timeout=10) == 11


async def test_after_a_reconnect_the_handler_loop_reads_the_new_connection(
    make_server: ServerFactory,
) -> None:
    """The handler loop reads each connection the worker makes: after the hub it used is gone
    and it dialled the next one, its tasks still run while the connection thread is held."""
    first, second = await make_server(), await make_server()
    worker = Worker([first.url, second.url], name="w", max_backoff=0.2)
    hold = _HoldTheConnectionThread(worker)

    @worker.task("job:again", concurrency=2)
    async def again(task: Task) -> int:
        return int(task.payload) * 2

    async with worker:
        async with Client(first.url, name="pub") as client:
            assert await client.pub("job:again", 1).get_result(timeout=10) == 2
        await first.stop()
        async with Client(second.url, name="pub") as client:
            assert await client.pub("job:again", 2).get_result(timeout=20) == 4
            hold.start()
            assert await asyncio.to_thread(hold.holding.wait, 10)
            try:
                for n in range(3, 7):
                    assert await client.pub("job:again", n).get_result(timeout=10) == 2 * n
                assert not hold.let_go.is_set()
            finally:
                hold.let_go.set()


async def test_a_result_json_cannot_carry_fails_its_task_from_either_kind_of_handler(
    url: str,
) -> None:
    """A result sent from the handler's own thread (encode_return) is checked as any other:
    not sent from there, the connection's loop fails the delivery naming what is wrong."""
    worker = Worker(url, name="w")

    @worker.task("job:set", retries=0)
    async def a_set(task: Task) -> Any:
        return {"tags": {"a"}}

    @worker.task("job:nan", retries=0)
    def a_nan(task: SyncTask) -> Any:
        return [1, float("nan")]

    @worker.task("job:fine", retries=0)
    def fine(task: SyncTask) -> Any:
        return (1, "two")  # a tuple is a JSON array

    async with worker, Client(url, name="pub") as client:
        with pytest.raises(TaskFailed, match=r"result\['tags'\] is a set"):
            await client.pub("job:set").get_result(timeout=10)
        with pytest.raises(TaskFailed, match=r"result\[1\] is float\('nan'\)"):
            await client.pub("job:nan").get_result(timeout=10)
        assert await client.pub("job:fine").get_result(timeout=10) == [1, "two"]
