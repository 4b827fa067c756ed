"""What one connection has to send: written at once where it can be, queued where it cannot,
and the connection closed when a reader falls too far behind (docs/operations.md, "Slow
readers")."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket

from taskhub.hub.hub import Limits
from taskhub.hub.ws.transport import HubWebSocketProtocol
from taskhub.lifecycle import Peer

log = logging.getLogger("taskhub.ws")

CLOSE_TOO_SLOW = 4008  # private range: the client can tell why it was closed


class Outbox:
    """The hub's sender (:meth:`send`) and closer (:meth:`close`) for one connection.

    Under taskhub's own uvicorn protocol (``direct``) a frame is written at once, in the
    flusher's turn; a writer task only takes over while frames wait (the socket is full, or
    closing). Frames waiting cost at most ``limits.max_send_buffer`` bytes and
    ``limits.max_send_queue`` frames; past either, what waits is freed and the connection is
    closed with 4008.
    """

    def __init__(
        self, ws: WebSocket, peer: Peer, limits: Limits, direct: HubWebSocketProtocol | None
    ) -> None:
        self.ws = ws
        self.peer = peer
        self.limits = limits
        self.direct = direct
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.writing = False  # the writer holds a frame: later ones must queue behind it
        self.waiting = 0  # bytes of the frames queued for the writer, and the one it is writing
        self.slow = (
            False  # closed as too slow: nothing more is queued, the transport may be aborted
        )
        self.writer = asyncio.create_task(self._write_loop())

    def send(self, frame: bytes) -> None:
        if self.slow:
            return
        direct, frames = self.direct, self.frames
        if direct is not None and not self.writing and frames.empty() and direct.write_text(frame):
            return
        limits = self.limits
        if (
            self.waiting + len(frame) > limits.max_send_buffer
            or frames.qsize() >= limits.max_send_queue
        ):
            self._too_slow(len(frame))
            return
        self.waiting += len(frame)
        frames.put_nowait(frame)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, reason=reason)

    async def stop(self) -> None:
        """The connection is over: the writer stops, what waits is dropped."""
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.writer

    def _too_slow(self, size: int) -> None:
        """The peer reads too slowly: free what waits for it and close the connection. The
        close frame waits behind what its socket already holds, so where the peer does not
        read at all the transport is aborted after ``ping_timeout`` (docs/operations.md)."""
        self.slow = True
        peer, limits = self.peer, self.limits
        peer.open = False
        log.warning(
            "connection %s (%s) reads too slowly (%d bytes in %d frames waiting, %d more to "
            "send; limits %d bytes, %d frames); closing it",
            peer.id,
            peer.service,
            self.waiting,
            self.frames.qsize(),
            size,
            limits.max_send_buffer,
            limits.max_send_queue,
        )
        while not self.frames.empty():
            self.frames.get_nowait()
        self.waiting = 0
        self.writer.cancel()  # it may wait forever for the socket to take its frame
        if self.direct is not None:
            self.direct.close_slow(CLOSE_TOO_SLOW, "reader too slow", limits.ping_timeout)
        else:
            closing = asyncio.ensure_future(self._close_other_server())
            closing.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _close_other_server(self) -> None:
        # Under another ASGI server the transport is out of reach: close the ASGI way, and
        # give up waiting after ping_timeout (that server's own keepalive ends the rest).
        async with asyncio.timeout(self.limits.ping_timeout):
            await self.ws.close(code=CLOSE_TOO_SLOW, reason="reader too slow")

    async def _write_loop(self) -> None:
        while True:
            frame = await self.frames.get()
            self.writing = True
            await self.ws.send_text(frame.decode())
            self.writing = False
            self.waiting -= len(frame)
