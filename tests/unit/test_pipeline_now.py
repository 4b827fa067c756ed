"""The commit pipeline on a store that writes without I/O (memory://): an input's changes are
written and sent in the input's own turn, where nothing else is being committed; a store
that wraps ``apply`` still sees every batch (hub/pipeline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from taskhub.hub.pipeline import Pipeline
from taskhub.lifecycle import Message, Peer
from taskhub.records import WriteBatch
from taskhub.store.memory import MemoryStore
from tests.unit.test_lifecycle import Hub

Sent = list[tuple[Peer, list[Message]]]


class Wrapping(MemoryStore):
    """A third-party engine built on the memory one, counting what ``apply`` is given."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = 0

    async def apply(self, batch: WriteBatch) -> None:
        self.applied += len(batch.tasks)
        await super().apply(batch)


async def started(store: MemoryStore) -> tuple[Hub, Pipeline, Sent]:
    await store.open()
    h = Hub()
    sent: Sent = []

    def deliver(output: Iterable[tuple[Peer, list[Message]]]) -> None:
        sent.extend(output)

    pipeline = Pipeline(h.lc, store, deliver, h.clock)
    pipeline.start()
    await asyncio.sleep(0)  # the flusher's first round (start() kicks)
    return h, pipeline, sent


async def test_a_memory_store_round_is_written_and_sent_in_the_inputs_turn() -> None:
    store = MemoryStore()
    h, pipeline, sent = await started(store)
    worker = h.worker("mailer")
    task = h.pub(payload={"to": "a@b.c"})
    rounds = pipeline.rounds
    pipeline.kick()
    # No await in between: the task is stored and its offer handed over already.
    assert pipeline.rounds == rounds + 1
    stored = await store.get_task(task.id)
    assert stored is not None and stored.payload == {"to": "a@b.c"}
    assert [m["op"] for p, msgs in sent if p == worker for m in msgs] == ["offer"]
    await pipeline.flush()  # answered at once: nothing left to write
    assert pipeline.rounds == rounds + 2
    await pipeline.stop(1)


async def test_a_kick_during_a_round_is_left_to_the_flusher_in_order() -> None:
    """A round under way (here: its deliver publishes again and kicks) is not re-entered:
    what the kick adds waits for the flusher's next round, after the current one."""
    await (store := MemoryStore()).open()
    h = Hub()
    sent: Sent = []
    kicked_inside: list[int] = []

    def deliver(output: Iterable[tuple[Peer, list[Message]]]) -> None:
        output = list(output)
        sent.extend(output)
        if output and not kicked_inside:
            h.pub(payload=2)
            pipeline.kick()
            kicked_inside.append(len(sent))  # the kick came back without sending

    pipeline = Pipeline(h.lc, store, deliver, h.clock)
    pipeline.start()
    await asyncio.sleep(0)
    h.worker("mailer", concurrency=2)
    h.pub(payload=1)
    pipeline.kick_if_changed()
    assert kicked_inside == [len(sent)]
    offers = [m["payload"] for _, msgs in sent for m in msgs if m["op"] == "offer"]
    assert offers == [1]
    await pipeline.flush()
    offers = [m["payload"] for _, msgs in sent for m in msgs if m["op"] == "offer"]
    assert offers == [1, 2]
    await pipeline.stop(1)


async def test_an_engine_that_wraps_apply_sees_every_batch() -> None:
    store = Wrapping()
    h, pipeline, _ = await started(store)
    h.worker("mailer")
    task = h.pub(payload=1)
    pipeline.kick()
    await pipeline.flush()
    assert store.applied >= 1 and await store.get_task(task.id) is not None
    await pipeline.stop(1)
