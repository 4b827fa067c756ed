"""The hub-to-hub link's frames (taskhub.hub.link.wire): a client's messages cross unchanged,
the bad ones with the origin's own error; frames are cut; a malformed frame is one error."""

from __future__ import annotations

import json

import msgspec
import pytest

from taskhub import protocol as p
from taskhub.errors import ProtocolError, UnknownOperation
from taskhub.hub.link import wire

FRAME = (
    b'[{"op":"pubs","ref":3,"items":[{"action":"a:b","payload":{"n":[1,2]}},{"action":5}]},'
    b'{"op":"nope","ref":4},'
    b'{"op":"return","task":"01M97VJAYP01B8ZGNJKRAYCQDT","attempt":1,"result":{"x":1e3}},'
    b'{"op":"hello","client":"c","batch":true}]'
)


def crossed(msg: p.Inbound | p.Bad) -> p.Inbound | p.Bad:
    entry = wire.In("conn", 1, msgspec.Raw(wire.encode_msg(msg)))
    (back,) = wire.decode_to_leader(wire.frames([wire.encode_entry(entry)])[0])
    assert isinstance(back, wire.In) and back.conn == "conn" and back.part == 1
    return wire.decode_msg(back.msg)


def test_messages_cross_as_they_were_decoded_bad_ones_with_their_error() -> None:
    pubs, unknown, ret, hello = (crossed(m) for m in p.decode_frame(FRAME))
    assert isinstance(pubs, p.Pubs) and pubs.ref == 3
    good, bad = pubs.items
    assert isinstance(good, p.Pub) and bytes(good.payload) == b'{"n":[1,2]}'
    assert isinstance(bad, p.Bad) and "Expected `str`, got `int`" in bad.error.message
    assert bad.error.details == {"index": 1}
    assert isinstance(unknown, p.Bad) and isinstance(unknown.error, UnknownOperation)
    assert unknown.ref == 4 and "unknown op 'nope'" in unknown.error.message
    assert isinstance(ret, p.Return) and bytes(ret.result) == b'{"x":1e3}'
    assert isinstance(hello, p.Hello) and hello.batch and hello.client == "c"


def test_frames_are_cut_and_every_entry_kept() -> None:
    entry = wire.encode_entry(wire.Out("c", msgspec.Raw(b'"' + b"x" * 100_000 + b'"')))
    out = wire.frames([entry] * 12)
    assert len(out) > 1 and all(len(f) < wire.FRAME_BYTES + len(entry) + 2 for f in out)
    got = [e for f in out for e in wire.decode_to_origin(f)]
    assert len(got) == 12 and all(isinstance(e, wire.Out) for e in got)
    assert wire.frames([]) == []


@pytest.mark.parametrize(
    "frame", [b"not json", b'{"k":"in"}', b'[["in", "c"]]', b'[["bogus", 1]]', b"[" * 5000]
)
def test_a_malformed_frame_is_one_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed link frame"):
        wire.decode_to_leader(frame)
    with pytest.raises(ProtocolError, match="malformed link frame"):
        wire.decode_to_origin(frame)


def test_link_url() -> None:
    assert wire.link_url("http://h:1/") == "ws://h:1/v1/link"
    assert wire.link_url("https://h:1") == "wss://h:1/v1/link"
    assert wire.link_url("ws://h:1") == "ws://h:1/v1/link"


def test_the_busiest_entries_joined_by_hand_read_as_their_structs() -> None:
    msg = wire.encode_msg(p.Ack(task="01M97VJAYP01B8ZGNJKRAYCQDT", attempt=2))
    frame = b'{"op":"offer","task":"x"}'
    (entry,) = wire.decode_to_leader(b"[" + wire.in_prefix('c"1', 7) + msg + b"]]")
    assert isinstance(entry, wire.In) and (entry.conn, entry.part) == ('c"1', 7)
    assert isinstance(wire.decode_msg(entry.msg), p.Ack)
    (out,) = wire.decode_to_origin(b"[" + wire.out_prefix("c2") + frame + b"]]")
    assert isinstance(out, wire.Out) and out.conn == "c2" and bytes(out.frame) == frame


def test_a_detach_says_whether_the_connection_was_lost_and_reads_the_old_form() -> None:
    """``lost`` is false for a connection the origin hub closed (no try counted); a hub of an
    earlier version sends ``["detach", conn]`` (lost) and reads the new form's extra item as
    nothing."""
    (sent,) = wire.decode_to_leader(wire.frames([wire.encode_entry(wire.Detach("c", False))])[0])
    assert sent == wire.Detach("c", False)
    (old,) = wire.decode_to_leader(b'[["detach","c"]]')
    assert old == wire.Detach("c", True)

    class OldDetach(msgspec.Struct, array_like=True, tag_field="k", tag="detach"):
        conn: str

    assert msgspec.json.decode(b'["detach","c",false]', type=OldDetach) == OldDetach("c")


def test_a_connections_frames_of_one_link_frame_join_in_order() -> None:
    """The origin writes a client's frames of one link frame as one: the messages of each (an
    object, or an array of them), in order."""
    frames = [b'{"op":"offer","task":"a"}', b'[{"op":"ok","ref":1},{"op":"event"}]', b"[]"]
    assert json.loads(wire.joined(frames)) == [
        {"op": "offer", "task": "a"},
        {"op": "ok", "ref": 1},
        {"op": "event"},
    ]
    assert wire.joined(frames[:1]) == frames[0]  # one frame: as it came
