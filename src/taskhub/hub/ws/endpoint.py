"""The WebSocket endpoint: authenticate, then feed frames to the hub and write its answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable

from starlette.websockets import WebSocket, WebSocketState

from taskhub import protocol as p
from taskhub.errors import (
    AuthenticationFailed,
    FrameTooLarge,
    ProtocolError,
    TaskHubError,
    TooManyConnections,
)
from taskhub.hub.auth import parse_bearer
from taskhub.hub.hub import Hub
from taskhub.hub.ws.transport import EXTENSION, HubWebSocketProtocol
from taskhub.ids import new_id
from taskhub.lifecycle import Message, Peer
from taskhub.protocol import Bad, Inbound

log = logging.getLogger("taskhub.ws")

# Close codes in the private range, so a client can tell why it was turned away.
CLOSE_AUTH = 4401
CLOSE_TOO_MANY = 4429
CLOSE_TOO_SLOW = 4008
# Messages of one frame applied before the flusher gets a turn (see serve_connection).
CHUNK = 32


class FrameFeed:
    """Applies one connection's frames in order: at once, in the protocol's callback, while
    none waits; behind the one that waits otherwise (a message that reads the store, or the
    flusher's turn between chunks of a long frame). While frames wait it holds the socket
    once ``max_queue`` of them have come, as uvicorn's own queue would."""

    def __init__(
        self, hub: Hub, peer: Peer, proto: HubWebSocketProtocol | None, max_queue: int
    ) -> None:
        self.hub = hub
        self.peer = peer
        self.proto = proto
        self.max_queue = max_queue
        self.backlog: deque[str | bytes] = deque()  # frames that came while one waits
        self.resuming: asyncio.Task[None] | None = None  # applies the rest, then the backlog

    def __call__(self, data: str | bytes) -> None:
        if self.resuming is not None:
            self.backlog.append(data)
            if self.proto is not None and len(self.backlog) >= self.max_queue:
                self.proto.hold()
            return
        msgs = self._parse(data)
        if msgs is None:
            return
        stop = self._apply(msgs, 0)
        if stop is not None:
            self.resuming = asyncio.get_running_loop().create_task(self._resume(msgs, *stop))

    async def finish(self) -> None:
        """Wait until every frame received so far is applied."""
        if self.resuming is not None:
            await asyncio.shield(self.resuming)

    def cancel(self) -> None:
        if self.resuming is not None:
            self.resuming.cancel()

    def _parse(self, data: str | bytes) -> list[Inbound | Bad] | None:
        """The frame's messages; None, with the error sent, if none can be read."""
        hub = self.hub
        try:
            if len(data) > hub.limits.max_frame:  # text frames are measured in characters
                raise FrameTooLarge(
                    f"frame of {len(data)} bytes/characters is over the limit "
                    f"of {hub.limits.max_frame}; none of its messages were applied"
                )
            return p.decode_frame(data)
        except ProtocolError as exc:  # FrameTooLarge is one too
            hub.lc.send(self.peer, p.error_msg(exc))
            hub.kick()
            return None

    def _apply(
        self, msgs: list[Inbound | Bad], i: int
    ) -> tuple[int, Awaitable[None] | None] | None:
        """Apply ``msgs[i:]`` until one needs the store, or a chunk ends with more to come:
        where to go on and what to wait for first; None once the frame is applied."""
        hub, peer, n = self.hub, self.peer, len(msgs)
        while i < n:
            pending = hub.handle(peer, msgs[i])
            i += 1
            if pending is not None:
                return i, pending
            if i % CHUNK == 0 and i < n and hub.commit_now:
                # Let the flusher commit and send what this much caused before going on:
                # a worker gets the offers its first returns freed while the hub is still
                # applying the rest, instead of hub and worker taking turns being idle.
                return i, None
        hub.kick()
        return None

    async def _resume(
        self, msgs: list[Inbound | Bad], i: int, pending: Awaitable[None] | None
    ) -> None:
        try:
            while True:
                if pending is not None:
                    await pending
                else:
                    self.hub.kick()
                    await asyncio.sleep(0)
                stop = self._apply(msgs, i)
                while stop is None and self.backlog:
                    parsed = self._parse(self.backlog.popleft())
                    if parsed is not None:
                        msgs = parsed
                        stop = self._apply(msgs, 0)
                if stop is None:
                    return
                i, pending = stop
        except Exception:  # a bug: say so and end the connection, rather than lose frames
            log.exception("applying frames from %s failed; closing it", self.peer.service)
            self.backlog.clear()
            if self.proto is not None:
                self.proto.transport.close()
        finally:
            self.resuming = None
            if self.proto is not None:
                self.proto.release()


def welcome(hub: Hub, peer: Peer) -> Message:
    """The first message on a connection: who the hub and the peer are, and the frame limit."""
    return {
        "op": "welcome",
        "protocol": p.PROTOCOL_VERSION,
        "hub": hub.name,
        "connection": peer.id,
        "service": peer.service,
        "max_frame": hub.limits.max_frame,
    }


async def _refuse(ws: WebSocket, exc: TaskHubError, code: int) -> None:
    await ws.accept()
    await ws.send_text(p.encode([p.error_msg(exc)]).decode())
    await ws.close(code=code, reason=exc.message[:120])


async def serve_connection(ws: WebSocket, hub: Hub) -> None:  # noqa: C901  #18: split
    if hub.draining:  # shutting down (server.py): refused, the client retries elsewhere/later
        await ws.close(code=1012)
        return
    try:
        name, key = parse_bearer(ws.headers.get("authorization"))
        address = ws.client.host if ws.client else None
        creds = await hub.registry.authenticate(name, key, address)
        hub.registry.claim_connection(creds)
    except AuthenticationFailed as exc:
        log.info("refused a connection: %s", exc.message)
        await _refuse(ws, exc, CLOSE_AUTH)
        return
    except TooManyConnections as exc:
        log.info("refused a connection: %s", exc.message)
        await _refuse(ws, exc, CLOSE_TOO_MANY)
        return

    peer = Peer(new_id(), creds)
    if ws.client is not None:  # the address it came from, for the dashboard
        peer.remote = ws.client.host
    try:
        await ws.accept()
    except Exception:
        hub.registry.release_connection(creds)
        raise
    frames: asyncio.Queue[bytes] = asyncio.Queue()
    limits = hub.limits
    # Under taskhub's own uvicorn protocol a frame is written at once, in the flusher's turn;
    # the writer task only takes over while frames wait (the socket is full, or closing).
    direct = ws.scope.get("extensions", {}).get(EXTENSION)
    writing = False  # the writer holds a frame: later ones must queue behind it
    waiting = 0  # bytes of the frames queued for the writer, and the one it is writing
    slow = False  # closed as too slow: nothing more is queued, the transport may be aborted

    def send(frame: bytes) -> None:
        nonlocal waiting
        if slow:
            return
        if direct is not None and not writing and frames.empty() and direct.write_text(frame):
            return
        if waiting + len(frame) > limits.max_send_buffer or frames.qsize() >= limits.max_send_queue:
            too_slow(len(frame))
            return
        waiting += len(frame)
        frames.put_nowait(frame)

    def too_slow(size: int) -> None:
        """The peer reads too slowly: free what waits for it and close the connection. The
        close frame waits behind what its socket already holds, so where the peer does not
        read at all the transport is aborted after ``ping_timeout`` (docs/operations.md)."""
        nonlocal slow, waiting
        slow = True
        peer.open = False
        log.warning(
            "connection %s (%s) reads too slowly (%d bytes in %d frames waiting, %d more to "
            "send; limits %d bytes, %d frames); closing it",
            peer.id,
            peer.service,
            waiting,
            frames.qsize(),
            size,
            limits.max_send_buffer,
            limits.max_send_queue,
        )
        while not frames.empty():
            frames.get_nowait()
        waiting = 0
        write_task.cancel()  # it may wait forever for the socket to take its frame
        if direct is not None:
            direct.close_slow(CLOSE_TOO_SLOW, "reader too slow", limits.ping_timeout)
        else:
            closing = asyncio.ensure_future(close_other_server())
            closing.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def close_other_server() -> None:
        # Under another ASGI server the transport is out of reach: close the ASGI way, and
        # give up waiting after ping_timeout (that server's own keepalive ends the rest).
        async with asyncio.timeout(limits.ping_timeout):
            await ws.close(code=CLOSE_TOO_SLOW, reason="reader too slow")

    async def writer() -> None:
        nonlocal writing, waiting
        while True:
            frame = await frames.get()
            writing = True
            await ws.send_text(frame.decode())
            writing = False
            waiting -= len(frame)

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, reason=reason)

    write_task = asyncio.create_task(writer())
    hub.attach(peer, send, close)
    hub.lc.send(peer, welcome(hub, peer))
    hub.kick()
    log.debug("connection %s opened for %s", peer.id, peer.service)
    feed = FrameFeed(hub, peer, direct, direct.config.ws_max_queue if direct is not None else 32)
    if direct is not None:
        direct.receiver = feed  # frames from now on skip the ASGI queue
    try:
        while True:
            message = await ws.receive()  # frames that came before, then the disconnect
            if message["type"] == "websocket.disconnect":
                break
            data: bytes | str | None = message.get("bytes") or message.get("text")
            if data is not None:
                feed(data)
                # Under another server the next frame is taken only once this one is applied,
                # so that server's own queue fills and holds the socket, as before the feed.
                await feed.finish()
        await feed.finish()  # what came before the close is applied, as it was read
    except Exception:  # a transport failure: the connection is over, the hub goes on
        log.debug("connection %s failed", peer.id, exc_info=True)
    finally:
        if direct is not None:
            direct.receiver = None
        feed.cancel()
        hub.detach(peer)
        write_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await write_task
        if ws.application_state != WebSocketState.DISCONNECTED and not slow:
            with contextlib.suppress(Exception):
                await ws.close()
        log.debug("connection %s closed", peer.id)
