"""The WebSocket endpoint: authenticate, then feed frames to the hub and write its answers."""

from __future__ import annotations

import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketState

from taskhub import protocol as p
from taskhub.errors import (
    AuthenticationFailed,
    StoreUnavailable,
    TaskHubError,
    TooManyConnections,
)
from taskhub.hub.auth import parse_bearer
from taskhub.hub.hub import Hub
from taskhub.hub.ws.feed import FrameFeed
from taskhub.hub.ws.outbox import Outbox
from taskhub.hub.ws.transport import EXTENSION
from taskhub.ids import new_id
from taskhub.lifecycle import Credentials, Message, Peer

log = logging.getLogger("taskhub.ws")

# Close codes in the private range, so a client can tell why it was turned away.
CLOSE_AUTH = 4401
CLOSE_TOO_MANY = 4429
CLOSE_TRY_AGAIN = 1013


def welcome(hub: Hub, peer: Peer) -> Message:
    """The first message on a connection: who the hub and the peer are, and the frame limit."""
    return {
        "op": "welcome",
        "protocol": p.PROTOCOL_VERSION,
        "hub": hub.name,
        "connection": peer.id,
        "service": peer.service,
        "max_frame": hub.limits.max_frame,
        "max_batch": p.MAX_BATCH,  # it takes batched messages of at most this many items
    }


async def serve_connection(ws: WebSocket, hub: Hub) -> None:
    """Serve one WebSocket connection until it closes."""
    if hub.draining:  # shutting down (server.py): refused, the client retries elsewhere/later
        await ws.close(code=1012)
        return
    creds = await _admit(ws, hub)
    if creds is None:
        return
    peer = Peer(new_id(), creds)
    if ws.client is not None:  # the address it came from, for the dashboard
        peer.remote = ws.client.host
    try:
        await ws.accept()
    except Exception:
        hub.registry.release_connection(creds)
        raise
    # Under taskhub's own uvicorn protocol frames are written and handed over directly.
    direct = ws.scope.get("extensions", {}).get(EXTENSION)
    outbox = Outbox(ws, peer, hub.limits, direct)
    hub.attach(peer, outbox.send, outbox.close)
    hub.lc.send(peer, welcome(hub, peer))
    hub.kick()
    log.debug("connection %s opened for %s", peer.id, peer.service)
    feed = FrameFeed(hub, peer, direct, direct.config.ws_max_queue if direct is not None else 32)
    if direct is not None:
        direct.receiver = feed  # frames from now on skip the ASGI queue
    try:
        await _receive(ws, feed)
    except Exception:  # a transport failure: the connection is over, the hub goes on
        log.debug("connection %s failed", peer.id, exc_info=True)
    finally:
        if direct is not None:
            direct.receiver = None
        feed.cancel()
        hub.detach(peer)
        await outbox.stop()
        if ws.application_state != WebSocketState.DISCONNECTED and not outbox.slow:
            with contextlib.suppress(Exception):
                await ws.close()
        log.debug("connection %s closed", peer.id)


async def _admit(ws: WebSocket, hub: Hub) -> Credentials | None:
    """The connection's credentials, its connection counted; None once it is refused."""
    try:
        name, key = parse_bearer(ws.headers.get("authorization"))
        address = ws.client.host if ws.client else None
        creds = await hub.registry.authenticate(name, key, address)
        await hub.registry.claim_connection(creds)
    except AuthenticationFailed as exc:
        log.info("refused a connection: %s", exc.message)
        await _refuse(ws, exc, CLOSE_AUTH)
        return None
    except TooManyConnections as exc:
        log.info("refused a connection: %s", exc.message)
        await _refuse(ws, exc, CLOSE_TOO_MANY)
        return None
    except StoreUnavailable as exc:
        # The hubs' count of its connections cannot be read (hub/slots.py): "try again", as
        # a hub without a leader says, so a client retries even its first connection.
        log.warning("refused a connection: %s", exc.message)
        await ws.accept()
        await ws.close(code=CLOSE_TRY_AGAIN, reason=exc.message[:120])
        return None
    return creds


async def _refuse(ws: WebSocket, exc: TaskHubError, code: int) -> None:
    await ws.accept()
    await ws.send_text(p.encode([p.error_msg(exc)]).decode())
    await ws.close(code=code, reason=exc.message[:120])


async def _receive(ws: WebSocket, feed: FrameFeed) -> None:
    """Take frames until the disconnect. Under taskhub's protocol they reach ``feed``
    directly, and only the disconnect (and what came before the switch) comes this way."""
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
