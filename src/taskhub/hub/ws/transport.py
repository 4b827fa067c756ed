"""uvicorn's WebSocket protocol (websockets, sans-I/O), tuned for a hub's traffic.

Four changes, all measured (docs/performance.md, "Fourth pass" and "Fifth pass"; docs/decisions.md,
"Sequential p50, second pass"):

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
- Whole text frames are cut out of the bytes read before websockets' protocol parses them, and
  text frames are made without it (:mod:`taskhub.wsframes`): the protocol still gets every
  other frame, and keeps the state machine.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from taskhub.wsframes import TextFrames, text_frame

EXTENSION = "taskhub.ws"


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    receiver: Callable[[str | bytes], None] | None = None  # takes each data frame once set
    held = False  # the receiver stopped reading (see hold)
    cutter: TextFrames | None = None  # made on the first bytes read

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the whole text frames cut out before websockets' protocol parses
        them (taskhub.wsframes): each goes to the app as uvicorn's ``handle_text`` would
        send it, and every other frame to uvicorn's handlers, in the order they came."""
        cutter = self.cutter
        if cutter is None:
            cutter = self.cutter = TextFrames(self.conn, max_size=self.config.ws_max_size)
        events = cutter.receive(data)
        if cutter.fed:
            conn = self.conn
            if conn.parser_exc is not None:  # as uvicorn: nothing of this read is handed on
                self.handle_parser_exception()
                return
            if conn.handshake_exc is not None and not self.handshake_initiated:
                self.handle_handshake_exception()
                return
        for event in events:
            if type(event) is bytes:  # handle_text's steps for a whole frame
                self.curr_msg_data_type = "text"
                self.frames = [event]
                self.send_receive_event_to_app()
            elif isinstance(event, Request):
                self.handle_connect(event)
            elif isinstance(event, Frame):
                self.handle_frame(event)

    def handle_frame(self, event: Frame) -> None:
        """uvicorn's ``handle_events`` for one frame the protocol parsed."""
        opcode = event.opcode
        if opcode is Opcode.CONT:
            self.handle_cont(event)
        elif opcode is Opcode.TEXT:
            self.handle_text(event)
        elif opcode is Opcode.BINARY:
            self.handle_bytes(event)
        elif opcode is Opcode.PING:
            self.handle_ping()
        elif opcode is Opcode.PONG:
            self.handle_pong(event)
        elif opcode is Opcode.CLOSE:
            self.handle_close(event)

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
            or self.conn.state is not State.OPEN  # where websockets' send_text would refuse
        ):
            return False
        # Made here rather than by websockets' send_text, which would also make a Frame of it
        # (taskhub.wsframes); the protocol keeps no state of the data frames it sends.
        self.transport.write(text_frame(data))
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
