"""The lifecycle's batches are sealed (``WriteBatch.sealed``): what it handed the store never
changes afterwards, however the task goes on, so the memory store keeps those records as they
are instead of encoding a copy of each (docs/performance.md, "A cheaper memory store")."""

from __future__ import annotations

from typing import Any

import msgspec

from taskhub.lifecycle import HELD, Task
from taskhub.lifecycle.chains import Chains
from taskhub.protocol import ChainStep
from taskhub.records import EventRecord, TaskRecord, WriteBatch
from taskhub.store.memory import MemoryStore
from tests.unit.test_lifecycle import ACTION, Hub

_encode = msgspec.json.Encoder().encode


class Sealing(Hub):
    """Drains like the hub's flusher and keeps, for every record and event it was handed,
    the object and its JSON at that moment, so :meth:`check` sees any later change."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.handed: list[tuple[TaskRecord | EventRecord, bytes]] = []
        self.batches: list[WriteBatch] = []
        self.chains = Chains(self.lc)

    def drain(self) -> None:
        batch = self.lc.take_writes()
        assert batch.sealed
        self.batches.append(batch)
        self.handed += [(r, _encode(r)) for r in (*batch.tasks, *batch.events)]
        self.events.extend(batch.events)
        for rec in batch.tasks:
            self.records[rec.id] = msgspec.json.decode(_encode(rec), type=TaskRecord)
        for peer, msgs in self.lc.take_output():
            self.inbox[peer].extend(msgs)

    def check(self) -> None:
        changed = [
            f"{type(obj).__name__} {_encode(obj).decode()} (was {was.decode()})"
            for obj, was in self.handed
            if _encode(obj) != was
        ]
        assert not changed, "handed over, then changed:\n" + "\n".join(changed)


def _work(h: Sealing, task: Task) -> None:
    """Every step that changes a record in place, each after a batch took the record."""
    w = h.worker("emailer", options={"timeout": 45.0})  # its declared timeout: on start
    [offer] = h.msgs(w, "offer")
    attempt = offer["attempt"]
    h.lc.ack(w, task.id, attempt)
    h.drain()
    h.lc.pickup(w, task.id, attempt)  # state, started_at, delivery state, options["timeout"]
    h.drain()
    h.lc.update(w, task.id, attempt, {"progress": [1, 2]})  # updates, last_update
    h.drain()
    h.tick(1)
    h.lc.extend(w, task.id, attempt, 600)  # options["timeout"]
    h.drain()
    h.lc.fail(w, task.id, attempt, {"type": "Boom", "message": "x"})  # tries, error, not_before
    h.drain()
    h.tick(5)  # the retry's backoff: offered again (attempt, state)
    [again] = h.msgs(w, "offer")
    h.lc.complete(w, task.id, again["attempt"], {"ok": True})  # the end
    h.drain()


def test_advancing_a_task_never_changes_what_a_batch_handed_over() -> None:
    h = Sealing()
    task = h.pub(payload={"to": ["x"]}, retries=1, backoff=1.0, timeout=30.0)
    h.drain()
    _work(h, task)
    assert task.ended
    assert len(h.batches) >= 7
    h.check()


async def test_the_memory_store_returns_the_earlier_write_after_the_task_moved_on() -> None:
    store = MemoryStore()
    await store.open()
    h = Sealing()
    task = h.pub(payload={"to": ["x"]}, retries=1, backoff=1.0, timeout=30.0)
    w = h.worker("emailer")
    h.drain()
    [first] = h.batches
    await store.apply(first)  # kept as it is, not encoded: the lifecycle sealed it
    written = msgspec.json.decode(_encode(first.tasks[0]), type=TaskRecord)
    assert written.state == "init" and written.deliveries[0].state == "offered"

    [offer] = h.msgs(w, "offer")
    h.lc.pickup(w, task.id, offer["attempt"])
    h.lc.update(w, task.id, offer["attempt"], {"progress": 1})
    h.lc.extend(w, task.id, offer["attempt"], 600)
    assert task.rec.state == "start" and task.rec.options["timeout"] == 600
    # Not written yet: the store still holds the first write, as it was.
    assert await store.get_task(task.id) == written
    assert [e.type for e in await store.get_events(task.id)] == ["init", "offer"]

    h.drain()
    for batch in h.batches[1:]:
        await store.apply(batch)
    got = await store.get_task(task.id)
    assert got is not None and got.state == "start" and got.updates == 1
    assert got.options["timeout"] == 600


def test_a_chains_progress_is_replaced_not_changed_in_place() -> None:
    h = Sealing()
    geo, wx = h.worker("geo", "geo:geocode"), h.worker("wx", "weather:forecast")
    plan = [ChainStep("geo:geocode", "Oslo"), ChainStep("weather:forecast", None)]
    chain = h.chains.start(h.peer("web").creds, plan)
    h.drain()
    for peer, result in ((geo, {"lat": 59.9}), (wx, "rain")):
        [offer] = h.msgs(peer, "offer")
        h.drain()
        h.lc.pickup(peer, offer["task"], offer["attempt"])
        h.drain()
        h.lc.complete(peer, offer["task"], offer["attempt"], result)  # the chain moves on
        h.drain()
    assert chain.ended and chain.rec.result == "rain"
    progress = [
        r.options[HELD]["states"] for r in h.records.values() if r.id == chain.id
    ]  # the last write
    assert progress == [["success", "success"]]
    h.check()


def test_a_task_of_an_unsubscribed_action_is_sealed_while_pooled() -> None:
    h = Sealing()
    task = h.pub(ACTION, retries=1, backoff=1.0)
    h.drain()  # pooled: written without deliveries
    _work(h, task)  # the subscription routes it: deliveries appended to the record
    h.check()


def test_tasks_published_without_options_share_one_dict_that_nothing_changes() -> None:
    h = Sealing(task_end_timeout=30.0)
    publisher = h.peer("web")
    first, _ = h.lc.publish(publisher.creds, ACTION, {"n": 1}, None)
    second, _ = h.lc.publish(publisher.creds, ACTION, {"n": 2}, None)
    assert isinstance(first, Task) and isinstance(second, Task)
    shared = first.rec.options
    assert second.rec.options is shared  # one dict for every plain task
    before = dict(shared)
    h.drain()
    _work(h, first)  # a worker's declared timeout and an extend: options replaced
    assert first.rec.options is not shared and first.rec.options["timeout"] > 30.0
    assert shared == before
    h.check()
    h.lc.defaults.task_end_timeout = 90.0  # changed defaults: a new dict from then on
    third, _ = h.lc.publish(publisher.creds, ACTION, None, None)
    assert isinstance(third, Task)
    assert third.rec.options["timeout"] == 90.0 and shared == before
