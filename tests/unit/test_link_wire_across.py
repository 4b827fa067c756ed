"""The link entries of the HTTP API, schedules and pull consumers across hubs
(``wire.AcrossToLeader`` and ``wire.Reply``): each crosses a frame as it was made, options and
payloads as JSON, and a reply's error keeps its code and details."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from taskhub.errors import PartitionUnavailable, PermissionDenied, from_wire
from taskhub.hub.link import wire
from taskhub.lifecycle import Credentials

CALLER = wire.caller_of(Credentials("web", sub_permissions=("a",), pub_permissions=("a:b",)))
ENTRIES: list[Any] = [
    wire.Publish(1, 3, CALLER, [wire.PubItem("a:b", {"n": [1, 2]}, {"delay": "7 days"})]),
    wire.CancelTask(2, 3, CALLER, "01M97VJAYP01B8ZGNJKRAYCQDT"),
    wire.StartChain(3, 0, CALLER, [{"action": "a:b", "payload": None}], True, None),
    wire.WaitTask(4, 1, "01M97VJAYP01B8ZGNJKRAYCQDT", 2.5),
    wire.TaskEvents(5, 1, "01M97VJAYP01B8ZGNJKRAYCQDT", 4, 15.0),
    wire.Emit(6, CALLER, "news.today", {"n": 1}),
    wire.Fire(2, "config", "a:b", [1], {"timeout": 5}, {"schedule": "s", "slot": 60.0}),
    wire.Fire(2, "config", "a:b", None, {}, {"schedule": "s", "slot": 60.0}, 9, "01M97VJAYP"),
    wire.TakeBack("conn", 2, "01M97VJAYP01B8ZGNJKRAYCQDT", 3, "lease_expired", True),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: type(e).__name__)
def test_each_entry_crosses_as_it_was_made(entry: Any) -> None:
    (back,) = wire.decode_to_leader(wire.frames([wire.encode_entry(entry)])[0])
    assert back == entry and isinstance(back, wire.ACROSS)


def test_the_caller_crosses_with_its_permissions_and_no_connection_limit() -> None:
    creds = wire.caller_creds(CALLER)
    assert (creds.name, creds.sub_permissions, creds.pub_permissions) == ("web", ("a",), ("a:b",))
    assert creds.max_connections is None  # counted where the caller is, on the origin


def test_a_reply_carries_a_value_or_an_error_that_keeps_its_code() -> None:
    ok = wire.Reply(7, msgspec.Raw(b'["01M97VJAYP01B8ZGNJKRAYCQDT",true]'))
    denied = PermissionDenied("'web' may not publish 'x:y'", action="x:y")
    unled = PartitionUnavailable("partition 3 has no leader", partition=3, retry_after=1)
    frame = wire.frames(
        [
            wire.encode_entry(ok),
            wire.encode_entry(wire.Reply(8, error=denied.to_wire())),
            wire.encode_entry(wire.Reply(9, error=unled.to_wire())),
        ]
    )[0]
    got_ok, got_denied, got_unled = wire.decode_to_origin(frame)
    assert isinstance(got_ok, wire.Reply) and bytes(got_ok.value) == bytes(ok.value)
    assert isinstance(got_denied, wire.Reply) and got_denied.error is not None
    err = from_wire(got_denied.error)
    assert isinstance(err, PermissionDenied) and err.details == {"action": "x:y"}
    assert isinstance(got_unled, wire.Reply) and got_unled.error is not None
    again = from_wire(got_unled.error)
    assert isinstance(again, PartitionUnavailable) and again.details["retry_after"] == 1
