"""The publisher's :class:`Handle`: waiting, cancelled waiters, refusals, lost answers,
reconnects, repeated keys, and that a finished handle is freed by reference counting."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from taskhub import Client, ConnectionClosed, NoResult, PermissionDenied, TaskFailed
from taskhub.errors import FrameTooLarge
from tests.conftest import ClientFactory, ServerFactory, until


async def _echo_worker(make_client: ClientFactory, action: str = "echo:say") -> Client:
    worker = await make_client("worker")
    await worker.sub(action, lambda t: t.id, concurrency=8)
    return worker


async def test_every_way_to_wait_gives_the_result(make_client: ClientFactory) -> None:
    await _echo_worker(make_client)
    pub = await make_client("pub")
    handle = pub.pub("echo:say")
    first, second = handle.get_result(), handle.get_result(timeout=5)
    assert await handle.accepted() == handle.id
    results = await asyncio.gather(first, second, handle, handle.get_result("unused"))
    assert results == [handle.id] * 4
    assert handle.done and handle.state == "success" and handle.result == handle.id
    # Once done, every form answers at once, again and again.
    assert await handle == handle.id
    assert await handle.get_result(timeout=0) == handle.id
    assert await handle.accepted() == handle.id


async def test_a_cancelled_or_timed_out_waiter_leaves_the_handle_alone(
    make_client: ClientFactory,
) -> None:
    release = asyncio.Event()
    worker = await make_client("worker")

    async def slow(task: Any) -> Any:
        await release.wait()
        return "late"

    await worker.sub("slow:run", slow)
    pub = await make_client("pub")
    handle = pub.pub("slow:run")
    with pytest.raises(TimeoutError):
        await handle.get_result(timeout=0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle.get_result(), 0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle.accepted(), 0)  # the waiter dies; acceptance does not
    assert await handle.get_result("default", timeout=0.05) == "default"
    waiter = asyncio.ensure_future(handle)
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not handle.done
    assert await handle.accepted() == handle.id
    for _ in range(20):  # polling: the waiters that gave up are not kept
        assert await handle.get_result(None, timeout=0) is None
    waiters = handle._end_waiters
    assert not isinstance(waiters, list) or len(waiters) <= 8
    several = [handle.get_result(None, timeout=0.01) for _ in range(12)]
    assert await asyncio.gather(*several) == [None] * 12
    assert isinstance(handle._end_waiters, list) and len(handle._end_waiters) == 12
    assert await handle.get_result(None, timeout=0) is None
    assert isinstance(handle._end_waiters, list) and len(handle._end_waiters) == 1
    handle.note = "an attribute of the application's own"  # type: ignore[attr-defined]
    release.set()
    assert await handle.get_result(timeout=5) == "late"
    assert handle.note == "an attribute of the application's own"  # type: ignore[attr-defined]


async def test_events_and_callbacks(make_client: ClientFactory) -> None:
    worker = await make_client("worker")

    async def work(task: Any) -> Any:
        await task.update(1)
        await task.update(2)
        return "done"

    await worker.sub("job:run", work)
    pub = await make_client("pub")
    seen: list[tuple[str, Any]] = []
    handle = pub.pub("job:run")
    handle.on("start", lambda h: seen.append(("start", h.state)))
    handle.on("update", lambda h: seen.append(("update", h.last_update)))

    async def on_success(h: Any) -> None:
        await asyncio.sleep(0)
        seen.append(("success", h.result))

    handle.on("success", on_success)
    assert await handle == "done"
    await until(lambda: ("success", "done") in seen)
    assert seen == [("start", "start"), ("update", 1), ("update", 2), ("success", "done")]


async def test_failures_and_refusals(make_server: ServerFactory) -> None:
    server = await make_server(creds=[{"name": "pub", "key": "k", "pub_permissions": ["allowed"]}])
    async with (
        Client(server.url, name="pub", key="k") as pub,
        Client(server.url, name="pub", key="k") as peer,
    ):
        refused = pub.pub("secret:read")
        with pytest.raises(PermissionDenied):
            await refused.accepted()
        with pytest.raises(PermissionDenied):
            await refused.get_result()
        with pytest.raises(PermissionDenied):
            await refused.get_result(timeout=1)
        with pytest.raises(PermissionDenied):
            await refused
        assert await refused.get_result("fallback") == "fallback"
        assert refused.done and refused.id is None
        with pytest.raises(PermissionDenied):
            await refused.cancel()

        failing = pub.pub("allowed:run")
        failing.on("fail", lambda h: None)
        await failing.accepted()
        assert failing.id is not None
        await peer.cancel(failing.id)
        with pytest.raises(TaskFailed, match="cancel"):
            await failing.get_result()
        assert await failing.get_result(None) is None
        assert failing.error is not None and failing.exception().reason == "cancelled"

        gc.collect()
        gc.disable()
        try:  # a refused handle is freed by reference counting too
            refused = pub.pub("secret:read")
            gone = weakref.ref(refused)
            assert await refused.get_result(None) is None
            del refused
            await asyncio.sleep(0)  # the loop lets go of the future that woke this test
            assert gone() is None
        finally:
            gc.enable()


async def test_no_result_when_every_worker_drops(make_client: ClientFactory) -> None:
    worker = await make_client("worker")

    async def drop(task: Any) -> None:
        await task.drop()

    await worker.sub("job:drop", drop)
    pub = await make_client("pub")
    with pytest.raises(NoResult):
        await pub.pub("job:drop").get_result(timeout=5)


async def test_a_repeated_key_follows_the_first_task(make_client: ClientFactory) -> None:
    await _echo_worker(make_client)
    pub = await make_client("pub")
    first = pub.pub("echo:say", key="once")
    result = await first.get_result(timeout=5)
    again = pub.pub("echo:say", key="once")  # created=False: the task has already ended
    assert await again.get_result(timeout=5) == result == first.id == again.id
    assert again.state == "success"


async def test_a_finished_handle_is_freed_by_reference_counting(
    make_client: ClientFactory,
) -> None:
    await _echo_worker(make_client)
    pub = await make_client("pub")
    await pub.pub("echo:say").get_result(timeout=5)  # warm: the subscription is in place
    gc.collect()
    gc.disable()
    try:
        refs = []
        for wait in ("get_result", "await", "accepted+timeout"):
            handle = pub.pub("echo:say")
            refs.append(weakref.ref(handle))
            if wait == "get_result":
                assert await handle.get_result() == handle.id
            elif wait == "await":
                assert await handle == handle.id
            else:
                await handle.accepted()
                assert await handle.get_result(timeout=5) == handle.id
            del handle
        await asyncio.sleep(0)
        assert [r() for r in refs] == [None] * len(refs)
        assert pub._link.handles == {}
    finally:
        gc.enable()


# --- a scripted hub: what a real hub cannot be made to do on cue ---------------------------
Script = Callable[[ServerConnection, int, dict[str, Any]], Any]


@contextlib.asynccontextmanager
async def _scripted_hub(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """A WebSocket server that greets like a hub and hands every message it reads, with the
    number of the connection (from 1), to ``script``."""
    connections: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(len(connections) + 1)
        number = len(connections)
        await ws.send(json.dumps({"op": "welcome", "protocol": 1, "max_frame": 1 << 20}))
        async for frame in ws:
            data = json.loads(frame)
            for msg in data if isinstance(data, list) else [data]:
                await script(ws, number, msg)

    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", connections


async def test_a_pub_whose_answer_was_lost_fails_with_connection_closed() -> None:
    async def script(ws: ServerConnection, number: int, msg: dict[str, Any]) -> None:
        if msg["op"] != "pub":
            return
        if number == 1:
            await ws.close()  # the answer never comes
            return
        # Later connections answer, with the task's events in the same frame.
        task = f"T{msg['ref']}"
        ok = {"op": "ok", "ref": msg["ref"], "task": task, "state": "init", "created": True}
        start = {"op": "event", "task": task, "type": "start", "state": "start", "at": 1.0}
        done = {"op": "event", "task": task, "type": "success", "state": "success", "at": 2.0}
        await ws.send(json.dumps([ok, start, dict(done, data={"n": msg["payload"]})]))

    async with (
        _scripted_hub(script) as (url, connections),
        Client(url, name="pub", max_backoff=0.05) as pub,
    ):
        lost = [pub.pub("a:b", i) for i in range(3)]
        for handle in lost:
            with pytest.raises(ConnectionClosed, match="may or may not have been accepted"):
                await handle.accepted()
            with pytest.raises(ConnectionClosed):
                await handle.get_result()
            assert await handle.get_result("gone") == "gone"
            assert handle.done and handle.id is None
        await until(lambda: pub.connected and len(connections) == 2)
        handle = pub.pub("a:b", 7)
        assert await handle.get_result(timeout=5) == {"n": 7}
        assert pub._conn._pending == {}


async def test_a_followed_handle_catches_up_after_a_reconnect(
    make_client: ClientFactory,
) -> None:
    release = asyncio.Event()
    worker = await make_client("worker")

    async def slow(task: Any) -> Any:
        await release.wait()
        return "while you were away"

    await worker.sub("slow:run", slow)
    pub = await make_client("pub", max_backoff=0.05)
    gate = asyncio.Event()
    dial = pub._conn._dial

    async def gated_dial() -> Any:
        await gate.wait()
        return await dial()

    pub._conn._dial = gated_dial  # type: ignore[method-assign]
    handle = pub.pub("slow:run")
    seen: list[str] = []
    handle.on("success", lambda h: seen.append(h.state))
    task_id = await handle.accepted()
    await until(lambda: task_id in worker._handlers.working)
    assert pub._conn._ws is not None
    await pub._conn._ws.close()
    await until(lambda: not pub.connected)
    release.set()  # the task ends while the publisher is away
    reader = await make_client("reader")
    await until(lambda: _state(reader, task_id), timeout=5)
    assert not handle.done
    gate.set()
    assert await handle.get_result(timeout=5) == "while you were away"
    assert seen == ["success"]
    assert pub._link.handles == {}


def _state(client: Client, task_id: str) -> Any:
    async def check() -> bool:
        task = await client.get(task_id)
        return bool(task["state"] == "success")

    return check()


async def test_a_burst_over_the_frame_limit_is_sent_in_several_frames(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_frame=10_000)
    async with Client(server.url, name="pub") as pub:
        sent: list[bytes] = []
        conn = pub._conn
        wire = conn._ws
        assert wire is not None
        send_text = wire.send_text  # every text frame passes here, sent at once or queued

        def spy(data: bytes) -> None:
            sent.append(data)
            send_text(data)

        wire.send_text = spy  # type: ignore[method-assign]
        handles = [pub.pub("a:b", {"n": i, "pad": "x" * 100}) for i in range(200)]
        too_big = pub.pub("a:b", "x" * 20_000)  # refused alone, the others go
        handles += [pub.pub("a:b", i) for i in range(5)]
        with pytest.raises(FrameTooLarge, match="10000"):
            await too_big.accepted()
        ids = await asyncio.gather(*(h.accepted() for h in handles))
        assert len(set(ids)) == len(handles)
        assert len(sent) > 1 and all(len(frame) <= 10_000 for frame in sent)
        assert [json.loads(f) for f in sent if f.startswith(b"[")]  # batches, not one by one


async def test_a_payload_that_is_not_json_raises_at_pub(make_client: ClientFactory) -> None:
    await _echo_worker(make_client)
    pub = await make_client("pub")
    with pytest.raises(TypeError):
        pub.pub("echo:say", object())  # raised here, not lost in the next flush
    assert pub._conn._pending == {}
    assert await pub.pub("echo:say").get_result(timeout=5)


async def test_the_same_key_twice_in_flight_finishes_both_handles(
    make_client: ClientFactory,
) -> None:
    """The second pub of a key answers with the first task (created=False) while it still
    runs: both handles are that task's, and both get its result."""
    release = asyncio.Event()

    async def slow(task: Any) -> str:
        await release.wait()
        return "done"

    worker = await make_client("worker")
    await worker.sub("job:slow", slow)
    pub = await make_client("pub")
    first = pub.pub("job:slow", key="k")
    second = pub.pub("job:slow", key="k")
    assert await first.accepted() == await second.accepted()
    release.set()
    assert await second.get_result(timeout=5) == "done"
    assert await first.get_result(timeout=5) == "done"
    assert pub._link.handles == {} and pub._link.same_task == {}


async def test_done_callbacks_fire_once_for_every_way_a_handle_ends(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``add_done_callback``: called once per callback when the task succeeds, fails or is
    refused, in a later loop turn when the handle is already done; ``outcome()`` then gives
    what ``get_result()`` would. A callback that raises is logged and spares the others."""
    server = await make_server(
        creds=[
            {"name": "pub", "key": "k", "pub_permissions": ["ok"]},
            {"name": "worker", "key": "w", "sub_permissions": ["ok"]},
        ]
    )
    async with (
        Client(server.url, name="worker", key="w") as worker,
        Client(server.url, name="pub", key="k") as pub,
    ):

        async def run(task: Any) -> Any:
            payload = await task.get_payload()
            if payload == "boom":
                raise ValueError("boom")
            return payload

        await worker.sub("ok:run", run)
        calls: list[tuple[str, Any]] = []

        def record(handle: Any) -> None:
            try:
                calls.append(("result", handle.outcome()))
            except Exception as exc:
                calls.append((type(exc).__name__, handle.action))

        def broken(handle: Any) -> None:
            raise RuntimeError("a bug in a callback")

        good, bad, refused = pub.pub("ok:run", "fine"), pub.pub("ok:run", "boom"), pub.pub("no:run")
        with pytest.raises(asyncio.InvalidStateError):
            good.outcome()
        for handle in (good, bad, refused):
            handle.add_done_callback(broken)
            handle.add_done_callback(record)
        with caplog.at_level("ERROR", logger="taskhub"):
            await until(lambda: len(calls) == 3)
        assert sorted(calls) == [
            ("PermissionDenied", "no:run"),
            ("TaskFailed", "ok:run"),
            ("result", "fine"),
        ]
        assert sum("done callback" in r.getMessage() for r in caplog.records) == 3
        # Already done: called in a later loop turn, not from add_done_callback itself.
        good.add_done_callback(record)
        assert len(calls) == 3
        await until(lambda: len(calls) == 4)
        assert calls[-1] == ("result", "fine")
        await asyncio.sleep(0.05)
        assert len(calls) == 4  # each callback once


async def test_a_revoke_read_with_its_offer_frees_the_slot(make_client: ClientFactory) -> None:
    """The revoke and the offer of one delivery handled in the same loop turn: its handler's
    runner is cancelled before its first step, and the slot and its books are freed anyway
    (a slot kept would make a graceful stop wait its whole grace for nothing)."""
    worker = await make_client("worker")
    ran: list[str] = []
    await worker.sub("slot:free", lambda t: ran.append(t.id), concurrency=1)
    handlers = worker._handlers
    offer = {"op": "offer", "task": "01J0000000000000000000000Z", "attempt": 1}
    offer.update(action="slot:free", group="", publisher="p", created_at=0.0, payload=None)
    handlers.offered(offer)
    handlers.revoke({"op": "revoke", "task": offer["task"], "attempt": 1, "reason": "cancelled"})
    await until(lambda: not handlers.running)
    assert ran == []
    assert handlers.working == {}
    assert handlers.subs["slot:free"].claimed == 0


async def test_a_sub_sent_again_and_lost_leaves_no_unretrieved_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscription is sent again at every reconnect; when that connection is lost before
    the answer, the request's ConnectionClosed is read, not left for asyncio to log as
    "Future exception was never retrieved" (seen with a hub-to-hub link closing with 1013)."""

    async def script(ws: ServerConnection, number: int, msg: dict[str, Any]) -> None:
        if msg["op"] != "sub":
            return
        if number == 1:
            await ws.send(json.dumps({"op": "ok", "ref": msg["ref"]}))
            await ws.close(1013)
        elif number <= 3:
            await ws.close(1013)  # the sub sent again is never answered
        else:
            await ws.send(json.dumps({"op": "ok", "ref": msg["ref"]}))

    async with (
        _scripted_hub(script) as (url, connections),
        Client(url, name="worker", max_backoff=0.05) as worker,
    ):
        await worker.sub("a:b", lambda t: None)
        await until(lambda: len(connections) >= 4 and worker.connected)
        gc.collect()
        await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
