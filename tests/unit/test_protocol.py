"""Frame decoding of the WebSocket protocol (taskhub.protocol)."""

from __future__ import annotations

import json
import sys

import pytest

from taskhub import protocol as p
from taskhub.errors import ProtocolError, UnknownOperation


def frame(*msgs: object) -> bytes:
    return json.dumps(msgs[0] if len(msgs) == 1 else list(msgs)).encode()


ACK = {"op": "ack", "task": "t1", "attempt": 1}


def test_single_message() -> None:
    [msg] = p.decode_frame(frame(ACK))
    assert msg == p.Ack(task="t1", attempt=1)


def test_single_message_from_str() -> None:
    [msg] = p.decode_frame(json.dumps({"op": "return", "task": "t", "attempt": 2, "result": [1]}))
    assert isinstance(msg, p.Return)
    assert p.plain(msg.result) == [1]


def test_payload_and_result_pass_through_as_written() -> None:
    """The hub keeps a pub's payload and a return's result as their JSON text, copied out of
    the frame (which may then be freed), with null as None."""
    data = b'[{"op":"pub","action":"a:b","payload":{"k": [1, 2.50, "\\u00e9"]}},' + (
        b'{"op":"return","task":"t","attempt":1,"result":null},{"op":"pub","action":"a:b"}]'
    )
    refs = sys.getrefcount(data)
    pub, ret, bare = p.decode_frame(data)
    assert isinstance(pub, p.Pub) and isinstance(ret, p.Return) and isinstance(bare, p.Pub)
    assert sys.getrefcount(data) > refs  # the decoded Raw is a view into the frame
    kept = p.kept(pub.payload, "payload")
    result, none = p.kept(ret.result, "result"), p.kept(bare.payload, "payload")
    del pub, ret
    assert sys.getrefcount(data) == refs  # the kept copy does not hold the frame
    assert bytes(kept) == b'{"k": [1, 2.50, "\\u00e9"]}'  # not re-encoded: spacing, 2.50
    assert p.plain(kept) == {"k": [1, 2.5, "\u00e9"]}
    assert result is None and none is None
    # Raw nested in what the hub builds (a group's results) decodes too.
    assert p.plain([kept, None, {"r": kept}]) == [
        {"k": [1, 2.5, "\u00e9"]},
        None,
        {"r": {"k": [1, 2.5, "\u00e9"]}},
    ]


def test_payload_that_cannot_be_decoded_is_refused() -> None:
    """1e400 is JSON and passes as Raw, but no store could read the task back."""
    [pub] = p.decode_frame(b'{"op":"pub","action":"a:b","payload":{"x":[1e400]}}')
    assert isinstance(pub, p.Pub)
    with pytest.raises(ProtocolError, match=r"payload cannot be read as JSON: Number out of"):
        p.kept(pub.payload, "payload")


def test_array_of_messages_keeps_order() -> None:
    msgs = p.decode_frame(
        frame(
            {"op": "pub", "action": "a:b", "payload": {"x": 1}, "ref": 1},
            {"op": "sub", "action": "a:b", "concurrency": 4},
            {"op": "update", "task": "t", "attempt": 1, "data": "half"},
            {"op": "fail", "task": "t", "attempt": 1, "error": {"type": "KeyError"}},
        )
    )
    assert [type(m) for m in msgs] == [p.Pub, p.Sub, p.Update, p.Fail]
    pub, sub, upd, fail = msgs
    assert isinstance(pub, p.Pub) and pub.ref == 1 and p.plain(pub.payload) == {"x": 1}
    assert isinstance(sub, p.Sub) and sub.concurrency == 4 and sub.observe is False
    assert isinstance(upd, p.Update) and upd.data == "half"
    assert isinstance(fail, p.Fail) and fail.error.type == "KeyError" and fail.retry is True


def test_pub_options_decoded() -> None:
    [msg] = p.decode_frame(
        frame({"op": "pub", "action": "a:b", "options": {"delay": 5, "priority": 3, "key": "k"}})
    )
    assert isinstance(msg, p.Pub)
    assert msg.options == p.PubOptions(delay=5.0, priority=3, key="k")


def test_one_bad_message_in_a_batch_others_survive() -> None:
    msgs = p.decode_frame(
        frame(
            ACK,
            {"op": "ack", "task": "t2", "attempt": "one", "ref": 7},
            {"op": "pickup", "task": "t3", "attempt": 2},
        )
    )
    assert len(msgs) == 3
    assert msgs[0] == p.Ack(task="t1", attempt=1)
    assert msgs[2] == p.Pickup(task="t3", attempt=2)
    bad = msgs[1]
    assert isinstance(bad, p.Bad)
    assert bad.ref == 7  # so the error can be matched to the request
    assert "message 1" in bad.error.message
    assert "attempt" in bad.error.message  # names the field
    assert bad.error.code == "bad_message"


def test_missing_required_field_named() -> None:
    [bad] = p.decode_frame(frame({"op": "ack", "attempt": 1}))
    assert isinstance(bad, p.Bad)
    assert "task" in bad.error.message


def test_unknown_op_named() -> None:
    msgs = p.decode_frame(frame(ACK, {"op": "frobnicate", "ref": 2}))
    assert msgs[0] == p.Ack(task="t1", attempt=1)
    bad = msgs[1]
    assert isinstance(bad, p.Bad)
    assert isinstance(bad.error, UnknownOperation)
    assert "'frobnicate'" in bad.error.message
    assert bad.error.code == "unknown_op"
    assert bad.ref == 2


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        ({"task": "t"}, "missing field 'op'"),
        (5, "JSON object"),
        ("ack", "JSON object"),
    ],
)
def test_not_a_message(msg: object, why: str) -> None:
    msgs = p.decode_frame(frame(ACK, msg))
    assert msgs[0] == p.Ack(task="t1", attempt=1)
    assert isinstance(msgs[1], p.Bad)
    assert why in msgs[1].error.message


def test_unknown_options_field_named() -> None:
    [bad] = p.decode_frame(frame({"op": "pub", "action": "a:b", "options": {"bogus": 1}}))
    assert isinstance(bad, p.Bad)
    assert "bogus" in bad.error.message
    assert "options" in bad.error.message


def test_unknown_top_level_field_is_tolerated() -> None:
    [msg] = p.decode_frame(frame({**ACK, "future_field": True}))
    assert msg == p.Ack(task="t1", attempt=1)


@pytest.mark.parametrize("data", [b"nope", b"{", b"", b"   ", "{'op': 'ack'}"])
def test_non_json_raises_protocol_error(data: bytes | str) -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        p.decode_frame(data)


def test_truncated_array_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        p.decode_frame(b'[{"op": "ack"}, {')


def test_truncated_object_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        p.decode_frame(b'{"op": "ack", "task": 5')


def test_encode_one_or_many() -> None:
    assert json.loads(p.encode([{"op": "ok"}])) == {"op": "ok"}
    assert json.loads(p.encode([{"op": "ok"}, {"op": "ok", "ref": 2}])) == [
        {"op": "ok"},
        {"op": "ok", "ref": 2},
    ]


def test_error_msg_carries_code_ref_and_extra() -> None:
    msg = p.error_msg(UnknownOperation("nope"), 4, task="t")
    assert msg == {"op": "error", "code": "unknown_op", "message": "nope", "ref": 4, "task": "t"}
    assert p.error_msg(RuntimeError("boom"))["code"] == "internal"
