"""A ``returns`` batch against the same returns sent one ``return`` at a time, on a real hub
(memory:// store, frames in and out): the credit a batch gives back is offered once, at its
end (docs/performance.md, "hub: sixteenth pass"), and every peer still hears the same messages
in the same order, the batch's ``ok`` after its offers."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from taskhub import protocol as p
from taskhub.hub.hub import Hub
from taskhub.lifecycle import Credentials, Peer
from taskhub.store import open_store

ACTION = "mail:send"
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """A hub with a publisher and ``workers`` workers of one group attached, what each peer
    hears, and the task ids in publish order (``names`` turns them into t0, t1, ...)."""

    def __init__(self, workers: int, concurrency: int) -> None:
        self.hub = Hub(open_store("memory://"), clock=FakeClock())
        self.heard: dict[Peer, list[Any]] = {}
        self.publisher = self._attach("pub", "publisher")
        self.workers = [self._attach(f"w{i}", "worker") for i in range(workers)]
        self.credit = concurrency
        self.ids: list[str] = []

    async def start(self) -> Wire:
        await self.hub.start()
        for i, w in enumerate(self.workers):
            self.send(w, {"op": "sub", "action": ACTION, "concurrency": self.credit, "ref": i})
        return self

    def _attach(self, name: str, creds: str) -> Peer:
        peer = Peer(name, Credentials(creds))
        self.heard[peer] = []
        self.hub.attach(peer, functools.partial(self._hear, peer))
        return peer

    def _hear(self, peer: Peer, frame: bytes) -> None:
        msgs = _dec.decode(frame)
        self.heard[peer].extend(msgs if isinstance(msgs, list) else [msgs])

    def send(self, peer: Peer, msg: dict[str, Any]) -> None:
        for m in p.decode_frame(_enc.encode(msg)):
            self.hub.handle(peer, m)
        self.hub.kick()

    async def publish(self, n: int) -> None:
        items = [{"action": ACTION, "payload": {"i": i}} for i in range(n)]
        self.send(self.publisher, {"op": "pubs", "items": items, "ref": 99})
        await self.hub.flush()
        ok = next(m for m in self.heard[self.publisher] if m.get("ref") == 99)
        self.ids = [item["task"] for item in ok["items"]]

    def offered(self, worker: Peer) -> list[str]:
        return [m["task"] for m in self.heard[worker] if m["op"] == "offer"]

    def names(self, msgs: list[Any]) -> list[Any]:
        """``msgs`` with each task id as its publish index: two hubs' ids differ."""
        index = {tid: f"t{i}" for i, tid in enumerate(self.ids)}

        def name(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: name(v) for k, v in value.items()}
            if isinstance(value, list):
                return [name(v) for v in value]
            return index.get(value, value) if isinstance(value, str) else value

        return [name(m) for m in msgs]


async def _both(returns: list[tuple[int, int]], workers: int = 2) -> tuple[Wire, Wire]:
    """Two hubs given the same burst; ``returns`` (worker, task index) sent as one
    ``returns`` per worker to the first, as single ``return``s to the second."""
    batch, single = await Wire(workers, 2).start(), await Wire(workers, 2).start()
    for wire in (batch, single):
        await wire.publish(10)
        for w in wire.workers:
            wire.heard[w].clear()
        wire.heard[wire.publisher].clear()
    by_worker: dict[int, list[int]] = {}
    for index, t in returns:
        by_worker.setdefault(index, []).append(t)
    for index, tasks in by_worker.items():
        items = [{"task": batch.ids[t], "attempt": 1, "result": t} for t in tasks]
        batch.send(batch.workers[index], {"op": "returns", "items": items, "ref": 7})
        for t in tasks:
            msg = {"op": "return", "task": single.ids[t], "attempt": 1, "result": t}
            single.send(single.workers[index], msg)
    for wire in (batch, single):
        await wire.hub.flush()
    return batch, single


async def test_a_batch_of_returns_offers_what_single_returns_would_and_then_answers() -> None:
    # Two workers of credit 2, offered in turn: w0 holds t0, t2 and w1 t1, t3; six wait.
    # w0 returns t0 and t1 (w1's: the first return wins, w1 hears the success and its credit
    # comes back), then w1 returns t2 (w0's, the same way).
    batch, single = await _both([(0, 0), (0, 1), (1, 2)])
    w0, w1 = (batch.names(batch.heard[w]) for w in batch.workers)
    ok = {"op": "ok", "ref": 7}
    assert [(m["op"], m.get("task")) for m in w0] == [
        ("offer", "t4"),  # the credit w0's batch gave back, before the batch's ok
        ("ok", None),
        ("event", "t2"),  # w1's batch: t2 succeeded
        ("offer", "t6"),
    ]
    assert [(m["op"], m.get("task")) for m in w1] == [
        ("event", "t1"),
        ("offer", "t5"),
        ("ok", None),
    ]
    for got, ws in zip((w0, w1), single.workers, strict=True):
        assert [m for m in got if m != ok] == single.names(single.heard[ws])
    assert batch.names(batch.heard[batch.publisher]) == single.names(single.heard[single.publisher])
    for t in range(10):
        got = await batch.hub.store.get_events(batch.ids[t])
        want = await single.hub.store.get_events(single.ids[t])
        assert [(e.seq, e.type, e.group, e.service, e.data) for e in got] == [
            (e.seq, e.type, e.group, e.service, e.data) for e in want
        ]
    await batch.hub.stop()
    await single.hub.stop()


async def test_credit_given_back_before_and_after_a_refused_item_is_offered() -> None:
    """An item that fails (a result the hub cannot keep; a task the worker does not hold)
    is answered with its index, and the credit of the items around it is still offered."""
    wire = await Wire(1, 3).start()
    await wire.publish(6)
    w = wire.workers[0]
    wire.heard[w].clear()
    items = [
        {"task": wire.ids[0], "attempt": 1, "result": 1},
        {"task": wire.ids[5], "attempt": 1, "result": 2},  # never offered to w
        {"task": wire.ids[1], "attempt": 1},
        {"task": wire.ids[2], "attempt": 1, "result": 3},
    ]
    frame = _enc.encode({"op": "returns", "items": items, "ref": 8}).replace(
        b'"attempt":1}', b'"attempt":1,"result":1e400}'
    )
    for m in p.decode_frame(frame):
        wire.hub.handle(w, m)
    wire.hub.kick()
    await wire.hub.flush()
    heard = wire.names(wire.heard[w])
    errors = [m for m in heard if m["op"] == "error"]
    # t1's result could not be kept: it failed (no retries), its credit back too.
    assert [(m["task"], m["details"]["index"]) for m in errors] == [("t5", 1), ("t1", 2)]
    assert [m["task"] for m in heard if m["op"] == "offer"] == ["t3", "t4", "t5"]
    assert heard[-1] == {"op": "ok", "ref": 8}
    t1 = await wire.hub.store.get_task(wire.ids[1])
    assert t1 is not None and t1.state == "fail"
    await wire.hub.stop()
