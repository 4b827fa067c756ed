"""Long frames: the hub applies one in chunks and answers each before the next; the client
sends a long burst in frames as it is made."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from taskhub import Client, Server
from taskhub.client.connection import EARLY_SEND
from taskhub.hub.ws import CHUNK, FrameFeed, HubWebSocketProtocol
from taskhub.ids import new_id
from taskhub.records import TaskRecord
from taskhub.store.memory import MemoryStore
from tests.conftest import ServerFactory, until


async def _raw(server: Server, name: str, **kwargs: Any) -> ClientConnection:
    ws = await connect(
        server.url + "/v1/ws", additional_headers={"Authorization": f"Bearer {name}:"}, **kwargs
    )
    assert json.loads(await ws.recv())["op"] == "welcome"
    return ws


def _msgs(frame: str | bytes) -> list[dict[str, Any]]:
    data = json.loads(frame)
    return data if isinstance(data, list) else [data]


@pytest.mark.parametrize(("quick_apply", "chunked"), [(1.0, True), (0.0, False)])
async def test_a_long_frame_is_committed_in_chunks_when_writes_are_quick(
    server: Server, quick_apply: float, chunked: bool
) -> None:
    """With a quick store the first pubs of a long frame reach the worker while the hub is
    still applying the rest (the worker gets several frames of offers); with a slow one the
    frame is committed whole (one frame of offers), as more, smaller writes cost more there."""
    assert server.hub is not None
    server.hub.quick_apply = quick_apply
    worker, publisher = await _raw(server, "worker"), await _raw(server, "publisher")
    sub = {"op": "sub", "action": "pipe:run", "concurrency": 1000, "ref": 1}
    await worker.send(json.dumps(sub))
    assert _msgs(await worker.recv()) == [{"op": "ok", "ref": 1}]
    n = CHUNK * 5 + 3
    pubs = [{"op": "pub", "action": "pipe:run", "payload": i, "ref": i} for i in range(n)]
    await publisher.send(json.dumps(pubs))
    frames: list[list[dict[str, Any]]] = []
    async with asyncio.timeout(5):
        while sum(len(f) for f in frames) < n:
            frames.append([m for m in _msgs(await worker.recv()) if m["op"] == "offer"])
    offered = [m["payload"] for f in frames for m in f]
    assert offered == list(range(n))  # every pub offered once, in order
    if chunked:
        assert len(frames) > 1 and len(frames[0]) <= CHUNK
    else:
        assert len(frames) == 1
    answers: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(answers) < n:
            answers += _msgs(await publisher.recv())
    assert sorted(a["ref"] for a in answers if a["op"] == "ok") == list(range(n))
    await worker.close()
    await publisher.close()


async def test_a_long_burst_leaves_the_client_while_it_is_being_made() -> None:
    """The client sends a frame once EARLY_SEND bytes are queued instead of one frame at the
    end of the loop turn: the hub can start on a burst while the publisher is still in it."""
    frames: list[list[dict[str, Any]]] = []
    sizes: list[int] = []
    got_all = asyncio.Event()
    n = 2000

    async def hub(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"op": "welcome", "protocol": 1, "max_frame": 1 << 20}))
        async for frame in ws:
            pubs = [m for m in _msgs(frame) if m["op"] == "pub"]  # not the client's hello
            if not pubs:
                continue
            frames.append(pubs)
            sizes.append(len(frame))
            if sum(map(len, frames)) >= n:
                got_all.set()

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="p") as client:
            before = len(frames)  # 0: only pubs are kept
            for i in range(n):  # one loop turn: ~130 KiB of pubs
                client.pub("burst:run", {"i": i, "pad": "x" * 40})
            async with asyncio.timeout(5):
                await got_all.wait()
    burst = frames[before:]
    # About EARLY_SEND each: the message that crossed it, and the commas between messages.
    assert len(burst) >= 2 and max(sizes[before:]) < EARLY_SEND + 2048
    assert [m["payload"]["i"] for f in burst for m in f] == list(range(n))


async def test_frames_keep_their_order_while_the_socket_is_full() -> None:
    """A frame is written at once while the transport takes data; once it is full, frames
    wait in the client, and every frame made later goes behind them, never overtakes them:
    the hub receives every message in the order it was made.

    The narrowest window is forced on purpose: when the full transport takes data again,
    frames made in the same callback (before the waiting ones are written) must still go
    behind them."""
    received: list[int] = []
    reading = asyncio.Event()
    n, turns = 40, 60
    made = 0

    def publish(client: Client) -> None:
        nonlocal made
        for i in range(made, made + n):
            client.pub("burst:run", {"i": i, "pad": "x" * 30_000})
        made += n

    async def hub(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"op": "welcome", "protocol": 1, "max_frame": 1 << 24}))
        await reading.wait()  # nothing is read meanwhile: the client's socket fills up
        async for frame in ws:
            received.extend(m["payload"]["i"] for m in _msgs(frame) if m["op"] == "pub")

    async with serve(hub, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="p") as client:
            conn = client._conn
            wire = conn._ws
            assert wire is not None
            resume = wire.on_resume
            assert resume is not None
            forced: list[int] = []

            def resume_writing() -> None:
                if not forced:  # the first time the full transport takes data again
                    publish(client)
                    conn._send_out()  # made before the waiting frames are written
                    forced.append(len(conn._held))
                resume()

            wire.on_resume = resume_writing
            paused = False
            for turn in range(turns):  # a frame of ~1.2 MB per loop turn
                publish(client)
                await asyncio.sleep(0)
                paused = paused or wire.paused
                if turn == turns // 2:  # full by now; the socket drains while more are made
                    assert paused and conn._held
                    reading.set()
            await until(lambda: len(received) >= made, timeout=20)
    assert received == list(range(made))
    assert forced and forced[0] > 0  # the window was forced: frames were waiting


class StallingStore(MemoryStore):
    """The memory engine, with task reads that wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def get_task(self, task_id: str) -> TaskRecord | None:
        await self.go.wait()
        return await super().get_task(task_id)


async def test_the_hub_reads_ahead_a_bounded_number_of_frames(
    make_server: ServerFactory,
) -> None:
    """Frames are not read one at a time (no pause and resume per frame), but a client that
    sends faster than the hub applies is held at the socket: the hub stops reading once
    ``ws_max_queue`` frames wait, and loses none of them."""
    store = StallingStore()
    server = await make_server(store=store)
    ws = await _raw(server, "flood", compression=None)
    n, pad = 400, 50_000  # 20 MB in all: more than the socket buffers hold
    ids = [new_id() for _ in range(n + 1)]

    async def flood() -> None:
        for i in range(1, n + 1):  # each `get` of an unknown task reads the (stalled) store
            await ws.send(json.dumps({"op": "get", "task": ids[i], "ref": i}) + " " * pad)

    sender = asyncio.create_task(flood())
    try:
        assert server.listener is not None
        [proto] = [
            c
            for c in server.listener.uvicorn.server_state.connections
            if isinstance(c, HubWebSocketProtocol)
        ]
        await until(lambda: proto.read_paused)
        await asyncio.sleep(0.2)  # had it gone on reading, more frames would queue meanwhile
        # What one read of the socket (up to 256 KiB) brings is parsed before the pause.
        feed = proto.receiver
        assert isinstance(feed, FrameFeed)  # frames skip uvicorn's queue: they wait in its backlog
        waiting = proto.queue.qsize() + len(feed.backlog)
        assert waiting <= server.listener.uvicorn.config.ws_max_queue + 256 * 1024 // pad
        assert not sender.done()  # the client is held back by full socket buffers
    finally:
        store.go.set()
    refs: list[int] = []
    async with asyncio.timeout(20):
        while len(refs) < n:
            for msg in _msgs(await ws.recv()):
                assert msg["op"] == "error" and msg["code"] == "task_not_found", msg
                refs.append(msg["ref"])
        await sender
    assert refs == list(range(1, n + 1))
    await ws.close()


async def test_the_pickup_leaves_before_the_handler_runs(server: Server, make_client: Any) -> None:
    """Every handler's ``pickup`` leaves before its code runs, so a handler that blocks its
    event loop is known to have started (issue 15, item 11; test_blocked_handler.py), even
    one done at once. The hub stores start, then success."""
    hub = server.hub
    assert hub is not None
    worker = await make_client("worker")
    seen: list[tuple[str, str]] = []  # (op, payload tag) of what the worker sent
    tags: dict[str, str] = {}
    handle_msg = hub.handle

    def spy(peer: Any, msg: Any) -> Any:
        if peer.service == "worker" and hasattr(msg, "task"):
            seen.append((type(msg).__name__.lower(), tags.get(msg.task, "?")))
        return handle_msg(peer, msg)

    hub.handle = spy  # type: ignore[method-assign]

    async def run(task: Any) -> Any:
        tag = await task.get_payload()  # inline: no wait
        tags[task.id] = tag
        if tag == "waits":
            await asyncio.sleep(0.02)
        elif tag == "updates":
            await task.update(1)
        return tag

    await worker.sub("job:run", run, concurrency=4)
    pub = await make_client("publisher")
    for tag in ("instant", "waits", "updates"):
        handle = pub.pub("job:run", tag)
        assert await handle.get_result(timeout=5) == tag
        events = await hub.store.get_events(await handle.accepted())
        assert [e.type for e in events if e.type in ("start", "success")] == ["start", "success"]
    assert seen == [
        ("pickup", "instant"),
        ("return", "instant"),
        ("pickup", "waits"),
        ("return", "waits"),
        ("pickup", "updates"),
        ("update", "updates"),
        ("return", "updates"),
    ]


async def test_the_hub_serves_under_uvicorns_own_websocket_protocol() -> None:
    """Mounted in a server without taskhub's protocol (here uvicorn's stock sans-I/O one), the
    hub reads frames through ASGI ``receive()``: tasks still make the round trip, frames that
    wait for the store are answered in order, and a flood is held at the socket by that
    server's own queue (the hub takes a frame only once the one before is applied)."""
    import uvicorn
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from taskhub.hub.app import create_app
    from taskhub.hub.hub import Hub

    store = StallingStore()
    hub = Hub(store)
    await hub.start()
    config = uvicorn.Config(
        create_app(hub), host="127.0.0.1", port=0, ws="websockets-sansio", lifespan="off"
    )
    config.log_config = None
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with Client(url, name="worker") as worker, Client(url, name="pub") as pub:
            await worker.sub("echo:say", lambda t: t.id)
            handle = pub.pub("echo:say")
            assert await handle.get_result(timeout=5) == handle.id
        ws = await connect(
            url + "/v1/ws", additional_headers={"Authorization": "Bearer raw:"}, compression=None
        )
        assert json.loads(await ws.recv())["op"] == "welcome"
        n, pad = 400, 50_000  # 20 MB: more than the socket buffers hold

        async def flood() -> None:
            for i in range(n):  # each `get` of an unknown task waits for the stalled store
                await ws.send(json.dumps({"op": "get", "task": new_id(), "ref": i}) + " " * pad)

        sender = asyncio.create_task(flood())
        [proto] = [
            c for c in server.server_state.connections if isinstance(c, WebSocketsSansIOProtocol)
        ]
        await until(lambda: proto.read_paused)  # uvicorn's queue filled: the socket is held
        await asyncio.sleep(0.2)
        assert proto.queue.qsize() <= config.ws_max_queue + 256 * 1024 // pad
        assert not sender.done()
        store.go.set()
        refs: list[int] = []
        async with asyncio.timeout(20):
            while len(refs) < n:
                refs += [m["ref"] for m in _msgs(await ws.recv()) if m["op"] == "error"]
            await sender
        assert refs == list(range(n))
        await ws.close()
    finally:
        store.go.set()
        server.should_exit = True
        await serving
        await hub.stop()
