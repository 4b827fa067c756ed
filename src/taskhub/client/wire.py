"""One WebSocket connection to a hub: websockets' sans-I/O :class:`ClientProtocol` over an
asyncio transport of our own (docs/decisions.md, "The client's WebSocket is sans-I/O").

Bytes read go into the protocol and its events come out: each whole text frame is handed to
:attr:`Wire.on_frame` as it is parsed, pings are answered (the protocol queues the pong) in
the same call, and what the protocol wants written is written at once. Only websockets'
public API is used: ``ClientProtocol``, ``Frame``/``Opcode``, ``State``, its exceptions. The
hub's whole text frames are cut out before the protocol parses them, and ours are made without
it (:mod:`taskhub.wsframes`): websockets' Python per frame was a third of a publisher's time.

Another thread may write a frame too (:meth:`Wire.send_text_now`: a worker's handler thread
sends its result without waking the connection's loop). Every use of the protocol and every
write hold :attr:`Wire.lock`, and a frame is written from another thread only while the
transport holds nothing unwritten (its own writes, from the loop's thread, then happen under
the lock too), so frames never interleave on the socket.

Another thread may also read (:meth:`Wire.receive_from`, a worker's handler loop while it is
idle: the offer it reads starts its handler with no hand-over between threads). The transport
then stops reading (:meth:`Wire.share_reading`) and whoever reads does so under the lock, so
the protocol gets the bytes in order; what the protocol answers (a pong) is written from that
thread, or, if frames wait in the transport, left for the loop to write first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
import threading
from collections.abc import Callable
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import ConnectionClosedError, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.uri import parse_uri

from taskhub.version import __version__
from taskhub.wsframes import Keys, TextFrames, text_frame

log = logging.getLogger("taskhub.client")

# The transport's buffer above which frames wait in the client instead (as websockets'
# asyncio client's default write_limit): a hub that reads slowly holds back the client's
# frames, never an unbounded pile of bytes in the transport.
WRITE_LIMIT = 32 * 1024
# How long a closing handshake (ours or the hub's) may take before the TCP connection is cut.
CLOSE_TIMEOUT = 10.0
USER_AGENT = f"taskhub-python/{__version__}"
# At most this much is read from the socket at a time by receive_from (then again if full).
READ_SIZE = 256 * 1024

Data = bytes | bytearray | memoryview


class Wire(asyncio.Protocol):
    """One connection: :func:`dial` makes it; :attr:`opened` resolves once the opening
    handshake is done, :attr:`lost` once the TCP connection ended. Frames are sent with
    :meth:`send_text` (at once, or held while the transport is full: :attr:`paused`)."""

    def __init__(
        self, protocol: ClientProtocol, request: Request, max_size: int | None = None
    ) -> None:
        self.protocol = protocol
        # The hub's text frames are cut out before the protocol, and ours made without it
        # (taskhub.wsframes): the rest of what websockets does per frame, for every frame.
        self._frames = TextFrames(protocol, max_size=max_size)
        self._keys = Keys()
        self._request = request
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.first: asyncio.Future[bytes] = loop.create_future()  # the hub's first frame
        # Whole text frames from the hub, as they are parsed; None until the owner takes
        # them (frames that come before are kept in `_early`, in order).
        self.on_frame: Callable[[Data], None] | None = None
        self._early: list[Data] = []
        self._fragments: list[Data] | None = None  # a fragmented text message so far
        self.paused = False  # the transport's buffer is over WRITE_LIMIT
        self.on_resume: Callable[[], None] | None = None
        self._ping: bytes | None = None  # the keepalive ping not answered yet
        self._cut: asyncio.TimerHandle | None = None
        self.loop = loop
        self.lock = threading.Lock()  # the protocol and every write (see the module's doc)
        # For send_text_now: a file descriptor of our own for the socket (a duplicate, so
        # that it stays valid until we close it, whatever the transport does), and the bytes
        # of a frame such a write could not finish (written first by whoever writes next).
        self._fd: int | None = None
        self._tail = b""
        self._thread = threading.get_ident()  # the loop's
        self.ended = False  # the TCP connection ended (read an EOF, or lost): read no more
        self._collected: list[Data] | None = None  # receive_from's frames, while it reads
        self._reading_on_loop = False  # the loop watches _fd itself (shared reading)
        # receive_from reads into one buffer (under the lock), made on its first read: a new
        # bytes object of READ_SIZE per read would be an mmap and a munmap each time.
        self._buffer: bytearray | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (whose transports are not asyncio.Transport subclasses)
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_LIMIT)
        sock = transport.get_extra_info("socket")
        if transport.get_extra_info("sslcontext") is None and sock is not None:
            self._fd = os.dup(sock.fileno())  # TLS: the loop writes everything
        with self.lock:
            self.protocol.send_request(self._request)
            self._write_out()

    def data_received(self, data: bytes) -> None:
        frames = self._frames
        with self.lock:
            events = frames.receive(data)
            fed = frames.fed
            if fed:
                self._write_out()  # a pong, the echo of a close, an EOF
        if fed:
            self._take_events(events)
        else:  # whole text frames only: nothing for the protocol's state to say
            for payload in events:
                self._deliver(payload)

    def eof_received(self) -> None:
        with self.lock:
            events = self._frames.eof()
            self._write_out()
        self._take_events(events)

    def connection_lost(self, exc: Exception | None) -> None:
        with self.lock:
            self.protocol.receive_eof()  # idempotent: the state becomes CLOSED
            self.ended = True
            self.read_on_loop(None)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._cut is not None:
            self._cut.cancel()
        closed = _close_exc(self.protocol)
        _settle(self.opened, ConnectionError(f"the connection closed: {closed}"))
        _settle(self.first, closed)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()

    # --- reading -----------------------------------------------------------------------------
    def _take_events(self, events: list[Any]) -> None:
        protocol = self.protocol
        for event in events:
            if type(event) is bytes:  # a whole text frame's payload (taskhub.wsframes)
                self._deliver(event)
            elif isinstance(event, Frame):
                self._frame(event)
            elif protocol.handshake_exc is None:  # the handshake's response: accepted
                _settle(self.opened, None)
        if protocol.handshake_exc is not None:
            _settle(self.opened, protocol.handshake_exc)
        if protocol.close_expected() and self._cut is None and self.transport is not None:
            # The hub closes the TCP connection after the closing handshake: cut it if not.
            loop = asyncio.get_running_loop()
            self._cut = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT:
            if frame.fin:
                self._deliver(frame.data)
            else:
                self._fragments = [frame.data]
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(frame.data)
            if frame.fin:
                whole, self._fragments = b"".join(self._fragments), None
                self._deliver(whole)
        elif opcode is Opcode.PONG and frame.data == self._ping:
            self._ping = None
        elif opcode is Opcode.CLOSE and not self.first.done():
            # Closed before saying anything (1013 from a hub without a cluster leader): said
            # now, not once the hub has closed the TCP connection too.
            p = self.protocol  # it has answered the close frame by now
            closed = ConnectionClosedError(p.close_rcvd, p.close_sent, p.close_rcvd_then_sent)
            _settle(self.first, closed)
        # PING: the protocol queued the pong. CLOSE: it answered. BINARY: a hub sends none.

    def _deliver(self, data: Data) -> None:
        if self._collected is not None:
            self._collected.append(data)
        elif self.on_frame is not None:
            self.on_frame(data)
        elif not self.first.done():
            self.first.set_result(bytes(data))
        else:
            self._early.append(data)

    def take_frames(self, on_frame: Callable[[Data], None]) -> None:
        """From now on, hand every text frame to ``on_frame``, first those read meanwhile."""
        early, self._early = self._early, []
        self.on_frame = on_frame
        for data in early:
            on_frame(data)

    # --- reading from any thread -------------------------------------------------------------
    @property
    def fd(self) -> int | None:
        """The wire's own duplicate of the socket (None over TLS, or once closed): readers on
        other threads duplicate it again for themselves, on the loop."""
        return self._fd

    def share_reading(self) -> bool:
        """On the loop, once open: stop the transport's reading; from now on the socket is
        read with :meth:`receive_from`, from any thread. False (nothing changed) over TLS."""
        if self._fd is None or self.transport is None:
            return False
        self.transport.pause_reading()
        return True

    def read_on_loop(self, callback: Callable[[], None] | None) -> None:
        """On the loop: call ``callback`` whenever the socket is readable (None: stop)."""
        if self._reading_on_loop:
            self.loop.remove_reader(cast(int, self._fd))
            self._reading_on_loop = False
        if callback is not None and self._fd is not None and not self.ended:
            self.loop.add_reader(self._fd, callback)
            self._reading_on_loop = True

    def receive_from(self, fd: int) -> list[Data]:
        """With :attr:`lock` held, from any thread: read what the socket (``fd``, a duplicate
        of it) holds, feed it to the protocol, write what the protocol answers and return the
        whole text frames read. Afterwards :attr:`ended` says whether the connection ended."""
        if self.ended:
            return []
        protocol = self.protocol
        buf = self._buffer
        if buf is None:
            buf = self._buffer = bytearray(READ_SIZE)
        events: list[Any] = []
        while True:
            try:
                n = os.readv(fd, (buf,))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset by the hub: as an end of stream
                n = 0
            if not n:
                self.ended = True
                events.extend(self._frames.eof())
                break
            # a copy: the protocol (or the frames held back) keeps what it is given
            events.extend(self._frames.receive(buf[:n]))
            if n < READ_SIZE:
                break
        self._write_any()
        frames: list[Data] = []
        self._collected = frames
        try:
            for event in events:
                if type(event) is bytes:
                    self._deliver(event)
                elif isinstance(event, Frame):
                    self._frame(event)
        finally:
            self._collected = None
        if self.ended or protocol.close_expected():
            self.loop.call_soon_threadsafe(self._closing)
        return frames

    def _closing(self) -> None:
        """On the loop: the hub closed (a close frame or the end of the stream, read by
        receive_from): close the transport, cutting it if the hub does not."""
        transport = self.transport
        if transport is None or self.lost.done():
            return
        if self.ended:
            transport.close()
        if self._cut is None:
            self._cut = self.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def _write_any(self) -> None:
        """Write what the protocol has for the network, the lock held, from any thread: on
        the loop through the transport; elsewhere straight to the socket if nothing waits in
        the transport, else behind what waits (the loop is woken to write it)."""
        if threading.get_ident() == self._thread:
            self._write_out()
            return
        out = [self._tail]
        eof = False
        for data in self.protocol.data_to_send():
            if data:
                out.append(data)
            else:
                eof = True
        self._tail = b"".join(out)
        if self._tail:
            self._write_direct()
        if eof:  # the protocol's end of stream: written by the loop, after the rest
            self.loop.call_soon_threadsafe(self._write_eof)

    def _write_direct(self) -> None:
        """Write ``_tail`` to the socket from this thread if the transport holds nothing
        (else, or for what the socket does not take, the loop writes it)."""
        fd, transport = self._fd, self.transport
        if fd is not None and transport is not None and not transport.get_write_buffer_size():
            try:
                n = os.write(fd, self._tail)
            except BlockingIOError:
                n = 0
            except OSError:  # the connection is gone: the loop finds out and says so
                self._tail = b""
                return
            self._tail = self._tail[n:]
        if self._tail:
            self.loop.call_soon_threadsafe(self._write_tail)

    # --- writing -----------------------------------------------------------------------------
    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    def send_text(self, data: bytes) -> None:
        """Write ``data`` as one text frame now (JSON is UTF-8: no str in between); on the
        connection's loop."""
        with self.lock:
            transport = self.transport
            if self.protocol.state is State.OPEN and transport is not None:
                if self._tail:
                    tail, self._tail = self._tail, b""
                    transport.write(tail)
                transport.write(text_frame(data, self._keys.next()))
                return
            self.protocol.send_text(data)  # raises InvalidState, as before
            self._write_out()

    def send_text_now(self, data: bytes) -> bool:
        """From a thread other than the loop's: write ``data`` as one text frame at once, if
        nothing waits to be written before it (the transport's buffer is empty, it is not
        TLS). False: nothing was sent; send it through the loop instead."""
        with self.lock:
            fd, transport = self._fd, self.transport
            if (
                fd is None
                or transport is None
                or self.paused
                or self._tail
                or transport.get_write_buffer_size()
                or not self.open
            ):
                return False
            self._tail = text_frame(data, self._keys.next())
            self._write_direct()  # what the socket does not take goes first when the loop writes
        return True

    def _write_tail(self) -> None:
        with self.lock:
            self._write_out()

    def _write_eof(self) -> None:
        with self.lock:
            self._write_out()
            transport = self.transport
            if transport is not None and not transport.is_closing():
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()

    def _write_out(self) -> None:
        """Write what the protocol has for the network (the lock held, on the loop)."""
        transport = self.transport
        if transport is None:
            return
        if self._tail:
            tail, self._tail = self._tail, b""
            transport.write(tail)
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the protocol's end of stream (b"")
                transport.write_eof()
            else:
                transport.close()

    def keepalive(self) -> bool:
        """Send a ping; False if the one sent before was not answered (the connection is
        then failed: the hub is gone or too slow)."""
        if not self.open:
            return True
        if self._ping is not None:
            self.fail(1011, "keepalive ping timeout")
            return False
        self._ping = os.urandom(4)
        with self.lock:
            self.protocol.send_ping(self._ping)
            self._write_out()
        return True

    def fail(self, code: int, reason: str) -> None:
        """End the connection at once (with a close frame, if it is still open)."""
        with self.lock:
            self.protocol.fail(code, reason)
            self._write_out()
        if self.transport is not None:
            self.transport.close()  # flushes the close frame, then closes
            loop = asyncio.get_running_loop()
            self._cut = self._cut or loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    async def close(self, code: int = 1000) -> None:
        """The closing handshake: send a close frame, wait (at most CLOSE_TIMEOUT) for the hub
        to answer and close the TCP connection, then cut it."""
        if self.protocol.state is State.OPEN:
            with self.lock:
                self.protocol.send_close(code)
                self._write_out()
        elif self.transport is not None and not self.lost.done():
            self.transport.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self.lost)
        except TimeoutError:
            pass
        finally:
            if self.transport is not None and not self.lost.done():
                self.transport.abort()


async def dial(
    url: str, *, authorization: str, max_size: int, ssl: Any, timeout: float
) -> tuple[Wire, bytes]:
    """Connect to ``url`` (``ws://`` or ``wss://``) and return the open connection with the
    hub's first frame. Raises OSError, TimeoutError, websockets' InvalidHandshake (e.g.
    InvalidStatus), or its ConnectionClosed if the hub closed before saying anything."""
    uri = parse_uri(url)
    if uri.secure and ssl is None:
        ssl = ssl_module.create_default_context()
    elif not uri.secure and ssl is not None:
        raise ValueError(f"an ssl context was given for {url}: use a wss:// URL")
    protocol = ClientProtocol(uri, max_size=max_size)  # no extensions: no compression
    request = protocol.connect()
    request.headers["Authorization"] = authorization
    request.headers["User-Agent"] = USER_AGENT
    loop = asyncio.get_running_loop()
    wire: Wire | None = None
    try:
        async with asyncio.timeout(timeout):
            _, wire = await loop.create_connection(
                lambda: Wire(protocol, request, max_size),
                uri.host,
                uri.port,
                ssl=ssl,
                server_hostname=uri.host if ssl is not None else None,
            )
            await wire.opened
            first = await wire.first
    except TimeoutError:
        if wire is not None and wire.transport is not None:
            wire.transport.abort()
        raise TimeoutError(f"no answer within {timeout:g}s (connect_timeout)") from None
    except BaseException:
        if wire is not None and wire.transport is not None:
            wire.transport.abort()
        raise
    return wire, first


def _close_exc(protocol: ClientProtocol) -> Exception:
    """Why the connection ended, with the close codes (websockets' ConnectionClosed)."""
    try:
        return protocol.close_exc
    except AssertionError:  # not CLOSED yet: ended during the opening handshake
        return ConnectionError("the connection closed during the opening handshake")


def _settle(fut: asyncio.Future[Any], outcome: Any) -> None:
    """Resolve ``fut`` once: an exception (or a websockets ConnectionClosed) or a result."""
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
        fut.exception()  # read: an unawaited failure is no "never retrieved" warning
    else:
        fut.set_result(outcome)


__all__ = ["CLOSE_TIMEOUT", "WRITE_LIMIT", "InvalidHandshake", "Wire", "WsClosed", "dial"]
