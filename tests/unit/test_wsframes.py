"""taskhub.wsframes against websockets' own protocol: the same bytes, cut anywhere, give the
same messages, events, answers and states, whether the text frames are cut out or not."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import pytest
import websockets.frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from taskhub import wsframes
from taskhub.wsframes import Keys, TextFrames, text_frame

MAX = 70_000  # the protocols' max_size here: both length forms (126, 127) fit under it
SIZES = [0, 1, 7, 125, 126, 127, 300, 65535, 65536, MAX, MAX + 1]


@dataclass
class Spec:
    kind: str
    size: int


def payload(size: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(size))


def frames_of(specs: list[Spec], *, mask: bool) -> bytes:
    """The bytes of ``specs``' frames as a peer that masks (``mask``) or not sends them."""
    out = []
    for n, spec in enumerate(specs):
        data = payload(spec.size, n)
        if spec.kind == "text":
            frames = [Frame(Opcode.TEXT, data)]
        elif spec.kind == "fragments":
            third = len(data) // 3
            frames = [
                Frame(Opcode.TEXT, data[:third], fin=False),
                Frame(Opcode.CONT, data[third : 2 * third], fin=False),
                Frame(Opcode.CONT, data[2 * third :]),
            ]
        elif spec.kind == "binary":
            frames = [Frame(Opcode.BINARY, data)]
        elif spec.kind in ("ping", "pong"):
            op = Opcode.PING if spec.kind == "ping" else Opcode.PONG
            frames = [Frame(op, data[:125])]
        elif spec.kind == "close":
            frames = [Frame(Opcode.CLOSE, b"\x03\xe8bye")]
        elif spec.kind == "rsv":  # RSV1 set without an extension that uses it
            raw = Frame(Opcode.TEXT, data).serialize(mask=mask, extensions=[])
            out.append(bytes([raw[0] | 0x40]) + raw[1:])
            continue
        elif spec.kind == "unfinished":  # a text frame whose message never ends
            frames = [Frame(Opcode.TEXT, data, fin=False)]
        else:  # "wrongmask": masked the other way round
            out.append(Frame(Opcode.TEXT, data).serialize(mask=not mask, extensions=[]))
            continue
        out.extend(f.serialize(mask=mask, extensions=[]) for f in frames)
    return b"".join(out)


KINDS = ["text"] * 6 + [
    "fragments",
    "binary",
    "ping",
    "pong",
    "close",
    "rsv",
    "unfinished",
    "wrongmask",
]
specs = st.lists(
    st.builds(Spec, st.sampled_from(KINDS), st.sampled_from(SIZES)), min_size=1, max_size=8
)
cuts = st.lists(st.integers(min_value=0, max_value=1_000_000), max_size=12)


def chunks(data: bytes, points: list[int]) -> list[bytes]:
    at = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(at) if b > a]


def plain(event: Any) -> Any:
    """An event as both sides are compared: a whole text frame as its payload."""
    if isinstance(event, bytes):
        return ("message", event)
    if isinstance(event, Frame):
        if event.opcode is Opcode.TEXT and event.fin:
            return ("message", event.data)
        return ("frame", event.opcode, event.data, event.fin)
    return type(event).__name__


def sent(protocol: Protocol, *, masked: bool) -> list[Any]:
    """What ``protocol`` has to send, as frames read back (a client's masks are random)."""
    out = []
    for data in protocol.data_to_send():
        if not data:
            out.append("eof")
            continue
        reader = ServerProtocol(state=State.OPEN) if masked else _client(State.OPEN)
        reader.receive_data(data)
        out.extend(plain(e) for e in reader.events_received())
    return out


def _client(state: State = State.CONNECTING) -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://hub.test/ws"), state=state, max_size=MAX)


def state_of(p: Protocol) -> Any:
    return (p.state, type(p.parser_exc).__name__, p.close_rcvd and p.close_rcvd.code)


def answer(client: ClientProtocol) -> bytes:
    """The server's 101 for ``client``'s handshake request."""
    server = ServerProtocol()
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    server.send_response(server.accept(server.events_received()[0]))
    return b"".join(server.data_to_send())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, cuts)
def test_a_client_reads_what_websockets_reads(spec: list[Spec], points: list[int]) -> None:
    ref, tested = _client(), _client()
    head_ref, head = answer(ref), answer(tested)
    frames = TextFrames(tested, max_size=MAX)
    body = frames_of(spec, mask=False)
    seen_ref: list[Any] = []
    seen: list[Any] = []
    for part in chunks(head_ref + body, points):
        ref.receive_data(part)
        seen_ref += [plain(e) for e in ref.events_received()] + sent(ref, masked=True)
        seen_ref.append(state_of(ref))
    cut_out = False
    for n, part in enumerate(chunks(head + body, points)):
        # A worker's handler loop reads into a bytearray (Wire.receive_from)
        events = frames.receive(bytearray(part) if n % 2 else part)
        cut_out = cut_out or any(type(e) is bytes for e in events)
        seen += [plain(e) for e in events] + sent(tested, masked=True)
        seen.append(state_of(tested))
    # A whole text frame first (a hub's welcome) is cut out.
    assert cut_out or not (spec[0].kind == "text" and spec[0].size <= MAX)
    ref.receive_eof()
    seen_ref += [plain(e) for e in ref.events_received()] + sent(ref, masked=True)
    seen += [plain(e) for e in frames.eof()] + sent(tested, masked=True)
    assert seen == seen_ref
    assert state_of(tested) == state_of(ref)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, cuts, st.booleans())
def test_a_hub_reads_what_websockets_reads(
    spec: list[Spec], points: list[int], early: bool
) -> None:
    """``early``: the client sends its frames before the hub has answered the handshake (the
    frames are then never cut out: the protocol was given bytes beyond the request)."""
    client = _client()
    client.send_request(client.connect())
    request = b"".join(client.data_to_send())
    body = frames_of(spec, mask=True)
    ref = ServerProtocol(max_size=MAX)
    tested = ServerProtocol(max_size=MAX)
    frames = TextFrames(tested, max_size=MAX)
    first = request + body if early else request
    events_ref: list[Any] = []
    events: list[Any] = []
    for part in chunks(first, points):
        ref.receive_data(part)
        events_ref += ref.events_received()
        events += frames.receive(part)
    assert [plain(e) for e in events] == [plain(e) for e in events_ref]
    # Both read the request (the first event): answer it, then the client's frames come.
    ref.send_response(ref.accept(events_ref[0]))
    tested.send_response(tested.accept(events[0]))
    ref.data_to_send()
    tested.data_to_send()
    seen_ref: list[Any] = []
    seen: list[Any] = []
    cut_out = False
    for part in chunks(b"" if early else body, points):
        ref.receive_data(part)
        seen_ref += [plain(e) for e in ref.events_received()] + sent(ref, masked=False)
        seen_ref.append(state_of(ref))
        events = frames.receive(part)
        cut_out = cut_out or any(type(e) is bytes for e in events)
        seen += [plain(e) for e in events] + sent(tested, masked=False)
        seen.append(state_of(tested))
    # Cut out once the hub has answered, unless bytes came before (then never).
    if early:
        assert not cut_out
    elif spec[0].kind == "text" and spec[0].size <= MAX:
        assert cut_out
    ref.receive_eof()
    seen_ref += [plain(e) for e in ref.events_received()] + sent(ref, masked=False)
    seen += [plain(e) for e in frames.eof()] + sent(tested, masked=False)
    assert seen == seen_ref
    assert state_of(tested) == state_of(ref)


@pytest.mark.parametrize("size", SIZES[:-1])
def test_a_frame_made_here_reads_back_as_websockets_reads_its_own(size: int) -> None:
    data = payload(size, 3)
    keys = Keys()
    readers: list[tuple[bytes | None, Protocol]] = [
        (keys.next(), ServerProtocol(state=State.OPEN)),
        (None, _client(State.OPEN)),
    ]
    for key, reader in readers:
        reader.receive_data(text_frame(data, key))
        (frame,) = reader.events_received()
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, data)
        assert reader.state is State.OPEN


def test_masking_keys_come_from_the_system_pool_and_differ() -> None:
    keys = Keys()
    seen = [keys.next() for _ in range(3000)]  # across three reads of the pool
    assert all(len(k) == 4 for k in seen)
    assert len(set(seen)) > 2900  # 32 random bits each: a few repeats at most


def test_frames_are_masked_as_websockets_masks_its_own() -> None:
    """The one place where a websockets internal is used (its C masking): if an upgrade
    moves it, this fails rather than the frames quietly taking our slower fallback."""
    assert wsframes.apply_mask is websockets.frames.apply_mask
    assert wsframes.apply_mask(wsframes.apply_mask(b"hello", b"abcd"), b"abcd") == b"hello"


def test_the_fallback_masking_gives_websockets_bytes() -> None:
    """Where a websockets release no longer has ``apply_mask``, ours masks the same bytes."""
    for n in (0, 1, 3, 4, 5, 125, 126, 300, 70_000):
        data = os.urandom(n)
        assert wsframes.xor_mask(data, b"\x01\x82\xff\x10") == websockets.frames.apply_mask(
            data, b"\x01\x82\xff\x10"
        )
