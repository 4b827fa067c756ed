"""``Lifecycle.publish_many`` (a ``pubs`` of one action without options, published together)
against ``publish`` one item at a time: the same tasks, records, events, offers and timers
(docs/performance.md, "hub: fourteenth pass")."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
import pytest

from taskhub.errors import PermissionDenied
from taskhub.lifecycle import Credentials, Defaults, Lifecycle, Peer, Task
from taskhub.records import TaskRecord

ACTION = "mail:send"


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"t{self.n:04d}"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


HEARD: dict[Lifecycle, dict[str, list[int]]] = {}


def _setup(
    *, workers: int, observe: bool = False, defaults: Defaults | None = None
) -> tuple[Lifecycle, Clock, Peer, list[Peer]]:
    clock = Clock()
    lc = Lifecycle(clock=clock, new_id=Ids(), defaults=defaults)
    lc.defer_offers = True  # as in every hub
    publisher = Peer("p", Credentials("publisher"))
    lc.connect(publisher)
    peers = []
    for i in range(workers):
        peer = Peer(f"w{i}", Credentials("worker"))
        lc.connect(peer)
        lc.subscribe(peer, ACTION, concurrency=2)
        peers.append(peer)
    if observe:
        watcher = Peer("o", Credentials("observer"))
        lc.connect(watcher)
        lc.subscribe(watcher, ACTION, observe=True)
        peers.append(watcher)
    lc.take_output()
    lc.take_writes()
    heard: dict[str, list[int]] = defaultdict(list)  # a watcher's listener: seqs per task
    lc.listeners.append(lambda task, ev: heard[ev.task_id].append(ev.seq))
    HEARD[lc] = heard
    return lc, clock, publisher, peers


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[TaskRecord]).decode


def _id(rec: TaskRecord) -> str:
    return rec.id


def _seen(lc: Lifecycle) -> dict[str, Any]:
    """What the lifecycle hands on: the records written, each task's events (in order) and
    the messages per peer."""
    batch = lc.take_writes()
    events: dict[str, list[Any]] = defaultdict(list)
    for ev in batch.events:
        events[ev.task_id].append(msgspec.structs.asdict(ev))
    out = {peer.id: msgs for peer, msgs in lc.take_output()}
    return {
        # As a store reads them back (equal values, whatever the encoding left out).
        "records": sorted(_decode(_encode(batch.tasks)), key=_id),
        "events": dict(events),
        "out": out,
        "counts": lc.counts,
        "live": sorted(lc.tasks),
        "heard": dict(HEARD[lc]),
    }


PAYLOADS = [msgspec.Raw(b'{"n":%d}' % i) for i in range(5)] + [None]


@pytest.mark.parametrize(
    ("workers", "observe", "defaults"),
    [
        (1, False, None),  # two offered, the rest waiting
        (2, True, None),  # round robin over two workers, and an observer
        (0, False, None),  # pooled: no group subscribes
        (1, False, Defaults(task_start_timeout=5.0)),  # start timers armed
    ],
)
def test_publish_many_is_publish_item_by_item(
    workers: int, observe: bool, defaults: Defaults | None
) -> None:
    one, one_clock, one_pub, _ = _setup(workers=workers, observe=observe, defaults=defaults)
    many, many_clock, many_pub, _ = _setup(workers=workers, observe=observe, defaults=defaults)
    singles = [one.publish(one_pub.creds, ACTION, p, None, peer=one_pub)[0] for p in PAYLOADS]
    done = many.publish_many(many_pub.creds, ACTION, list(PAYLOADS), many_pub)
    assert done is not None
    tasks, routed = done
    assert routed is bool(workers)
    assert [t.id for t in tasks] == [t.id for t in singles if isinstance(t, Task)]
    assert [t.followers for t in tasks] == [{many_pub}] * len(PAYLOADS)
    assert many_pub.following == one_pub.following
    if not workers:
        assert many.pooled[ACTION] == tasks
    assert _seen(many) == _seen(one)
    # What happens next is the same too: a start timeout fires for what still waits.
    one_clock.now = many_clock.now = 1_010.0
    one.advance()
    many.advance()
    assert _seen(many) == _seen(one)


def test_an_action_with_its_own_defaults_goes_item_by_item() -> None:
    lc, _, publisher, _ = _setup(workers=1, defaults=Defaults(actions={ACTION: {"retries": 2}}))
    assert lc.publish_many(publisher.creds, ACTION, [None], publisher) is None
    assert lc.tasks == {} and not lc.changed


def test_a_refused_action_publishes_nothing() -> None:
    lc, _, _, _ = _setup(workers=1)
    peer = Peer("x", Credentials("x", pub_permissions=("other",)))
    lc.connect(peer)
    with pytest.raises(PermissionDenied):
        lc.publish_many(peer.creds, ACTION, [None, None], peer)
    assert lc.tasks == {} and not lc.changed
