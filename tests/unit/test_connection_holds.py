"""Holds of a connection's frames behind answers that wait (``Connections.hold``): holds
overlap while the connection's later batches go on, and are released in the order they were
made, whatever order their answers come in."""

from __future__ import annotations

import json
from typing import Any

from taskhub.hub.connections import Connections
from taskhub.lifecycle import Credentials, Peer


def connection() -> tuple[Connections, Peer, list[Any]]:
    conns = Connections(clock=lambda: 0.0)
    peer = Peer("c1", Credentials("svc"))
    got: list[Any] = []
    conns.add(peer, lambda frame: got.append(json.loads(frame)))
    return conns, peer, got


def refs(got: list[Any]) -> list[object]:
    """The refs of the messages sent, in order (a frame holds one message or a list)."""
    return [m["ref"] for frame in got for m in (frame if isinstance(frame, list) else [frame])]


def test_overlapping_holds_are_released_in_the_order_they_were_made() -> None:
    conns, peer, got = connection()
    first = conns.hold(peer)
    conns.send(peer, conns.senders[peer], [{"op": "ok", "ref": 2}])  # after batch 1
    second = conns.hold(peer)
    conns.send_frame(peer, b'[{"op":"ok","ref":4}]')  # after batch 3
    assert conns.holds(peer) == 2 and got == []
    second([{"op": "ok", "ref": 3}])  # batch 3 answered first: still behind batch 1
    assert got == []
    first([{"op": "ok", "ref": 1}])
    assert refs(got) == [1, 2, 3, 4]
    assert conns.holds(peer) == 0
    conns.send(peer, conns.senders[peer], [{"op": "ok", "ref": 5}])  # no longer held
    assert refs(got) == [1, 2, 3, 4, 5]


def test_a_hold_of_a_closed_connection_sends_nothing() -> None:
    conns, peer, got = connection()
    release = conns.hold(peer)
    later = conns.hold(peer)
    conns.remove(peer)
    release([{"op": "ok", "ref": 1}])
    later([{"op": "ok", "ref": 2}])
    assert got == [] and conns.holds(peer) == 0 and peer not in conns.senders
