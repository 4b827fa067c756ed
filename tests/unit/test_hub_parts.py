"""The hub's parts on their own: the dispatcher's table and the long-poll wakers."""

from __future__ import annotations

from typing import get_args

from taskhub import protocol as p
from taskhub.hub.hub import Hub
from taskhub.hub.wakers import Wakers
from taskhub.store import open_store


def test_every_inbound_message_has_an_op_in_the_dispatcher() -> None:
    """The dispatcher looks messages up by type: a message added to the protocol without an
    op would be dropped without an answer, so the table must cover every inbound type."""
    hub = Hub(open_store("memory://"))
    inbound = set(get_args(p.Inbound)) | {p.Bad}
    missing = sorted(t.__name__ for t in inbound - set(hub.dispatcher.ops))
    assert not missing, f"no dispatcher op for: {missing}"


def test_a_wait_is_woken_at_the_end_and_at_once_after_it() -> None:
    wakers = Wakers()
    woken: list[str] = []
    with wakers.waiting(lambda: woken.append("early")):
        assert len(wakers) == 1 and woken == []
        wakers.end()
        assert woken == ["early"]
    assert len(wakers) == 0
    with wakers.waiting(lambda: woken.append("late")):  # the hub is already shutting down
        assert woken == ["early", "late"]
    assert wakers.ended and len(wakers) == 0
