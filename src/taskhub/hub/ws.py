"""The WebSocket endpoint: authenticate, then feed frames to the hub and write its answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
from taskhub.hub.hub import Hub, welcome
from taskhub.hub.ws_protocol import EXTENSION
from taskhub.ids import new_id
from taskhub.lifecycle import Peer

log = logging.getLogger("taskhub.ws")

# Close codes in the private range, so a client can tell why it was turned away.
CLOSE_AUTH = 4401
CLOSE_TOO_MANY = 4429
CLOSE_TOO_SLOW = 4008
# Messages of one frame applied before the flusher gets a turn (see serve_connection).
CHUNK = 32


async def _refuse(ws: WebSocket, exc: TaskHubError, code: int) -> None:
    await ws.accept()
    await ws.send_text(p.encode([p.error_msg(exc)]).decode())
    await ws.close(code=code, reason=exc.message[:120])


async def serve_connection(ws: WebSocket, hub: Hub) -> None:
    if hub.draining:  # shutting down (server.py): refused, the client retries elsewhere/later
        await ws.close(code=1012)
        return
    try:
        name, key = parse_bearer(ws.headers.get("authorization"))
        creds = await asyncio.to_thread(hub.registry.authenticate, name, key)
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
    try:
        await ws.accept()
    except Exception:
        hub.registry.release_connection(creds)
        raise
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    limits = hub.limits
    # Under taskhub's own uvicorn protocol a frame is written at once, in the flusher's turn;
    # the writer task only takes over while frames wait (the socket is full, or closing).
    direct = ws.scope.get("extensions", {}).get(EXTENSION)
    writing = False  # the writer holds a frame: later ones must queue behind it

    def send(frame: bytes) -> None:
        if direct is not None and not writing and frames.empty() and direct.write_text(frame):
            return
        if frames.qsize() >= limits.max_send_queue:
            if peer.open:  # once: the writer stops at the marker, nothing more is queued
                log.warning(
                    "connection %s (%s) reads too slowly; closing it", peer.id, peer.service
                )
                peer.open = False
                frames.put_nowait(None)
            return
        frames.put_nowait(frame)

    async def writer() -> None:
        nonlocal writing
        while True:
            frame = await frames.get()
            if frame is None:
                await ws.close(code=CLOSE_TOO_SLOW, reason="reader too slow")
                return
            writing = True
            await ws.send_text(frame.decode())
            writing = False

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, reason=reason)

    hub.attach(peer, send, close)
    hub.lc.send(peer, welcome(hub, peer))
    hub.kick()
    log.debug("connection %s opened for %s", peer.id, peer.service)
    write_task = asyncio.create_task(writer())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data: bytes | str | None = message.get("bytes") or message.get("text")
            if data is None:
                continue
            if len(data) > limits.max_frame:  # text frames are measured in characters
                err = FrameTooLarge(
                    f"frame of {len(data)} bytes/characters is over the limit "
                    f"of {limits.max_frame}; none of its messages were applied"
                )
                hub.lc.send(peer, p.error_msg(err))
                hub.kick()
                continue
            try:
                msgs = p.decode_frame(data)
            except ProtocolError as exc:
                hub.lc.send(peer, p.error_msg(exc))
                hub.kick()
                continue
            for i, msg in enumerate(msgs, 1):
                pending = hub.handle(peer, msg)
                if pending is not None:
                    await pending
                if i % CHUNK == 0 and i < len(msgs) and hub.commit_now:
                    # Let the flusher commit and send what this much caused before going on:
                    # a worker gets the offers its first returns freed while the hub is still
                    # applying the rest, instead of hub and worker taking turns being idle.
                    hub.kick()
                    await asyncio.sleep(0)
            hub.kick()
    except Exception:  # a transport failure: the connection is over, the hub goes on
        log.debug("connection %s failed", peer.id, exc_info=True)
    finally:
        hub.detach(peer)
        write_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await write_task
        if ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()
        log.debug("connection %s closed", peer.id)
