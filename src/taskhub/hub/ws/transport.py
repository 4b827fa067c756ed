"""uvicorn's WebSocket protocol (websockets, sans-I/O), tuned for a hub's traffic.

Three changes, all measured (docs/performance.md, "Fourth pass" and "Fifth pass"):

- uvicorn stops reading the socket after every message until the app has taken it, then reads
  again: two ``epoll_ctl`` calls per frame. Here reading stops only when ``ws_max_queue``
  messages wait (flow control is kept: a client that outruns the hub still fills its socket
  buffer, not the hub's memory).
- :meth:`write_text` writes a text frame to the socket at once, without a coroutine and a
  writer task in between. :mod:`taskhub.hub.ws.endpoint` finds it in the ASGI scope's
  extensions (``"taskhub.ws"``) and falls back to ``websocket.send`` where it is missing
  (another server, or before the handshake).
- Once :mod:`taskhub.hub.ws.endpoint` sets :attr:`receiver`, each whole data frame is handed
  to it as it is parsed, instead of going through an :class:`asyncio.Queue`, an event and a
  coroutine resumption (uvicorn's ``receive``, then Starlette's) a loop turn later. The
  receiver keeps the frames in order itself and calls :meth:`hold` / :meth:`release` for flow
  control; ``websocket.disconnect`` still arrives through ``receive``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

EXTENSION = "taskhub.ws"


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    receiver: Callable[[str | bytes], None] | None = None  # takes each data frame once set
    held = False  # the receiver stopped reading (see hold)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:  # the handshake was accepted; the ASGI task has not run yet
            scope["extensions"][EXTENSION] = self

    def send_receive_event_to_app(self) -> None:
        receiver = self.receiver
        if receiver is not None and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if self.curr_msg_data_type == "text":
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    pass  # uvicorn's way below: logged, and the connection closed with 1007
                else:
                    self.frames = []
                    receiver(text)
                    return
            else:
                self.frames = []
                receiver(data)
                return
        # uvicorn pauses reading after each message unless it is already paused: say it is, then
        # pause only once the queue is long.
        paused = self.read_paused
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and self.queue.qsize() >= self.config.ws_max_queue:
            self.read_paused = True
            self.transport.pause_reading()

    def keepalive_timeout(self) -> None:
        """The peer stopped answering pings: the hub gives the connection up and offers what
        it held to other workers. Reset it rather than close it: a close leaves what is still
        queued for the peer (offers among it) to the kernel, which delivers it if the network
        heals, long after those tasks went elsewhere (issue #15, a cut between hubs). With
        ``SO_LINGER`` 0 the kernel drops it and answers the peer with a reset. The abort also
        frees at once what a peer that stopped reading held: uvicorn's ``transport.close()``
        waits for a buffer that never drains."""
        transport = self.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        super().keepalive_timeout()
        transport.abort()

    def hold(self) -> None:
        """Stop reading the socket: the receiver has frames enough waiting."""
        if not self.held:
            self.held = True
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()

    def release(self) -> None:
        """Read again, after :meth:`hold`."""
        if self.held:
            self.held = False
            if self.read_paused and self.queue.empty():
                self.read_paused = False
                self.transport.resume_reading()

    def write_text(self, data: bytes) -> bool:
        """Write ``data`` (UTF-8 JSON) as one text frame now; False if the connection cannot
        take it synchronously (closing, or the transport asked us to wait), and the caller
        sends it the ASGI way instead."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
        ):
            return False
        try:
            self.conn.send_text(data)
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def close_slow(self, code: int, reason: str, grace: float) -> None:
        """Close a connection whose peer reads too slowly, as uvicorn closes for the ASGI
        ``websocket.close`` but without waiting for the socket to take more (it never may):
        the close frame goes behind what the transport holds, the app hears the disconnect at
        once, and the transport is aborted, freeing its buffer, if it is still open after
        ``grace`` seconds."""
        if not self.close_sent and not self.transport.is_closing():
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            with contextlib.suppress(InvalidState):
                self.conn.send_close(code, reason)
                self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()  # flushes what it holds, then closes: if the peer reads
        self.abort_after(grace)

    def abort_after(self, grace: float) -> None:
        """Abort the transport in ``grace`` seconds unless the connection is gone by then."""
        self.loop.call_later(grace, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.disconnected:
            self.transport.abort()
