"""Whole text frames cut out of a WebSocket byte stream before websockets' sans-I/O protocol
parses them, and text frames made without it: the busy path of both ends of a connection
(docs/decisions.md, "Sequential p50, second pass").

websockets parses every frame with a chain of generators and makes a ``Frame`` object of it;
for the frames a hub and its clients exchange (one unfragmented text frame per message batch,
a few hundred bytes) that was most of a client's time per frame. :class:`TextFrames` sits in
front of the protocol (``ClientProtocol`` or ``ServerProtocol``): while the connection is
open, each whole, final, unextended text frame of an allowed size is handed out as its payload
(unmasked where the peer masks), and every other byte goes to the protocol as before (pings,
closes, fragments, binary frames, anything malformed, everything before the handshake ends and
after the connection stops being open), so the protocol keeps the whole state machine: it only
ever sees whole frames, or a frame's bytes as they come, never one cut in two by us. A data
frame the protocol never sees changes none of its state (websockets counts only fragmented
messages, which always go to it).

:func:`text_frame` makes a text frame as ``Protocol.send_text`` would, with a masking key from
a pool of ``os.urandom`` bytes (websockets reads the system's random source once per frame).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from websockets.protocol import Protocol, Side, State


def xor_mask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (RFC 6455 section 5.3), as one integer
    operation: used only where websockets no longer has its ``apply_mask``."""
    n = len(data)
    if not n:
        return b""
    key = (bytes(mask) * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


apply_mask: Callable[[bytes | bytearray, bytes | bytearray], bytes]
try:
    # websockets' own C masking, which its frames use where it is built: 10x the pure
    # version on a frame of a few hundred bytes. It is not in websockets' documented API, so
    # a release that moves it falls back to ours (slower, the same bytes) rather than break;
    # tests/unit/test_wsframes.py checks that the one websockets.frames uses is found.
    from websockets.speedups import apply_mask
except ImportError:  # a websockets built without its C extension
    try:
        from websockets.utils import apply_mask
    except ImportError:  # pragma: no cover - a websockets release that moved it
        apply_mask = xor_mask

_FIN_TEXT = 0x81  # FIN, no RSV bits, opcode 1 (text)
_MASK_BIT = 0x80
# A handshake's head bigger than this is not looked into: its bytes all go to the protocol.
_MAX_HEAD = 64 * 1024
# The handshake's head has ended and the connection is not open yet (a server's, until it
# answers): frames are cut once it is, if no byte comes before.
_OPENING = b"opening"


class TextFrames:
    """What :meth:`receive` returns: whole text frames' payloads (``bytes``) and the
    protocol's events (``Frame``, ``Request``, ``Response`` objects), in the order their
    bytes came; on a server's side the frames come masked and are unmasked. ``max_size``:
    the largest message the protocol takes (its ``max_size``); a larger frame goes to the
    protocol, which refuses it."""

    __slots__ = (
        "_buf",
        "_fragmented",
        "_head",
        "_masked",
        "_passing",
        "_through",
        "fed",
        "max_size",
        "on",
        "protocol",
    )

    def __init__(self, protocol: Protocol, *, max_size: int | None) -> None:
        self.protocol = protocol
        self.max_size = max_size
        self.on = False  # cutting frames out (the handshake is over; the connection is open)
        self.fed = False  # the last receive() gave the protocol bytes (it may have output)
        self._head: bytes | None = b""  # the handshake's head so far; None: never cut
        self._buf = b""  # the start of a frame, not whole yet
        # A frame going to the protocol as its bytes come: its header so far while its
        # length is not known (_passing), then how many bytes of it are left (_through).
        self._passing: bytes | None = None
        self._through = 0
        self._fragmented = False  # a fragmented message is under way (its frames: the protocol's)
        self._masked = protocol.side is Side.SERVER  # a client masks what it sends

    def receive(self, data: bytes | bytearray) -> list[Any]:
        """Take ``data`` from the network."""
        if self.on:
            return self._cut(data)
        protocol = self.protocol
        head = self._head
        if head is _OPENING and protocol.state is State.OPEN:  # the server has answered
            self._head = None
            self.on = True
            return self._cut(data)
        self.fed = True
        if head is None or head is _OPENING:  # not cutting: everything to the protocol
            self._head = None
            protocol.receive_data(data)
            return protocol.events_received()
        # The handshake: find where its HTTP head ends and feed the protocol exactly that
        # much. Frames are cut from there on once the connection is open (a client's as soon
        # as it has read the answer, a server's once it has sent it) if the protocol has been
        # given nothing beyond the head meanwhile.
        seen = head + bytes(data)
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head = seen if len(seen) <= _MAX_HEAD else None
            protocol.receive_data(data)
            return protocol.events_received()
        cut = end + 4 - len(head)
        protocol.receive_data(data[:cut])
        events = protocol.events_received()
        rest = data[cut:]
        if protocol.state is State.OPEN:
            self._head = None
            self.on = True
            if rest:
                events.extend(self._cut(rest))
                self.fed = True
        elif rest:  # a server that has not answered yet, given bytes beyond the request
            self._head = None
            protocol.receive_data(rest)
            events.extend(protocol.events_received())
        else:
            self._head = _OPENING
        return events

    def eof(self) -> list[Any]:
        """The network ended: the protocol gets what was held back, then the end."""
        protocol = self.protocol
        self.on = False
        self._head = None
        if self._buf:
            protocol.receive_data(self._buf)
            self._buf = b""
        protocol.receive_eof()
        self.fed = True
        return protocol.events_received()

    def _cut(self, data: bytes | bytearray) -> list[Any]:
        protocol = self.protocol
        out: list[Any] = []
        fed = False
        buf = self._buf + data if self._buf else data
        self._buf = b""
        i, n = 0, len(buf)
        masked = self._masked
        while i < n:
            if self._passing is not None or self._through:
                i = self._pass(buf, i, out)
                fed = True
                continue
            if protocol.state is not State.OPEN:  # closing or failed: the protocol has the rest
                self.on = False
                protocol.receive_data(buf[i:])
                out.extend(protocol.events_received())
                fed = True
                break
            if n - i < 2:
                break
            b0, b1 = buf[i], buf[i + 1]
            if b0 == _FIN_TEXT and bool(b1 & _MASK_BIT) is masked and not self._fragmented:
                at, end = self._text(buf, i)
                if end > n:
                    break  # wait for the rest of this frame (or of its header)
                if at:
                    if masked:
                        out.append(apply_mask(buf[at + 4 : end], buf[at : at + 4]))
                    else:
                        out.append(bytes(buf[at:end]))  # bytes already: no copy
                    i = end
                    continue
            # Any other frame goes to the protocol from its first byte (it may refuse it by
            # its first two: a wrong mask bit, an unknown opcode).
            opcode = b0 & 0x0F
            if opcode in (1, 2) and not b0 & 0x80:
                self._fragmented = True
            elif opcode == 0 and b0 & 0x80:
                self._fragmented = False
            self._passing = b""
        if i < n and self.on and self._passing is None and not self._through:
            self._buf = bytes(buf[i:])
        self.fed = fed
        return out

    def _text(self, buf: bytes | bytearray, i: int) -> tuple[int, int]:
        """Where the payload (its masking key first, if masked) of the text frame at ``i``
        starts and where the frame ends: past the buffer while not all of it is here, a
        start of 0 where it is too large (the protocol refuses it)."""
        n = len(buf)
        length = buf[i + 1] & 0x7F
        at = i + 2
        if length == 126:
            if n - i < 4:
                return 0, n + 1
            length = (buf[i + 2] << 8) | buf[i + 3]
            at = i + 4
        elif length == 127:
            if n - i < 10:
                return 0, n + 1
            (length,) = struct.unpack_from("!Q", buf, i + 2)
            at = i + 10
        if self.max_size is not None and length > self.max_size:
            return 0, 0
        return at, at + (4 if self._masked else 0) + length

    def _pass(self, buf: bytes | bytearray, i: int, out: list[Any]) -> int:
        """Give the protocol the next bytes of the frame it is being given, from ``i``: its
        header until its length is known, then the rest; where the buffer goes on."""
        protocol = self.protocol
        passing = self._passing
        if passing is not None:
            k = min(len(buf) - i, _head_size(passing) - len(passing))
        else:
            k = min(len(buf) - i, self._through)
        part = buf[i : i + k]
        protocol.receive_data(part)
        out.extend(protocol.events_received())
        if passing is None:
            self._through -= k
            return i + k
        passing = bytes(passing) + bytes(part)
        if len(passing) == _head_size(passing):
            self._through = _body_size(passing)
            self._passing = None
        else:
            self._passing = passing
        return i + k


def _head_size(head: bytes) -> int:
    """The bytes of a frame's header up to its length's end, from its first two (2 until
    they are known)."""
    if len(head) < 2:
        return 2
    length = head[1] & 0x7F
    return 4 if length == 126 else 10 if length == 127 else 2


def _body_size(head: bytes) -> int:
    """The bytes of a frame after ``head`` (its masking key and payload)."""
    length = head[1] & 0x7F
    if length == 126:
        length = (head[2] << 8) | head[3]
    elif length == 127:
        (length,) = struct.unpack_from("!Q", head, 2)
    return (4 if head[1] & _MASK_BIT else 0) + length


class Keys:
    """Masking keys for one connection's frames (used under its lock), from ``os.urandom``,
    1,024 per read (RFC 6455 §5.3: from a strong source of entropy, unpredictable to whoever
    sees the frames)."""

    __slots__ = ("pool", "pos")

    def __init__(self) -> None:
        self.pool = b""
        self.pos = 0

    def next(self) -> bytes:
        pos = self.pos
        if pos >= len(self.pool):
            self.pool = os.urandom(4096)
            pos = 0
        self.pos = pos + 4
        return self.pool[pos : pos + 4]


def text_frame(data: bytes, key: bytes | None = None) -> bytes:
    """One final text frame of ``data`` (UTF-8): a server's, or with ``key`` a client's
    (masked with it)."""
    n = len(data)
    bit = 0 if key is None else _MASK_BIT
    if n < 126:
        head = bytes((_FIN_TEXT, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", _FIN_TEXT, bit | 126, n)
    else:
        head = struct.pack("!BBQ", _FIN_TEXT, bit | 127, n)
    if key is None:
        return head + data
    return head + key + apply_mask(data, key)
