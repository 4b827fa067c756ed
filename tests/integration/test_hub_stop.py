"""A hub's stop is bounded even when its store misbehaves under cancellation (issue #15 item 5:
a leader cut from Redis never rejoined, its step-down waiting forever on the flusher)."""

from __future__ import annotations

import asyncio

import pytest

from taskhub import Client
from taskhub.errors import StoreUnavailable
from taskhub.records import WriteBatch
from taskhub.store.memory import MemoryStore
from tests.conftest import ServerFactory


class CutStore(MemoryStore):
    """The memory engine, until ``cut``: then a write waits on a network that never answers,
    and, like redis-py during a partition, a cancellation that lands meanwhile is swallowed
    and comes out as a connection error."""

    url = "cut://"

    def __init__(self) -> None:
        super().__init__()
        self.cut = False
        self.waiting = asyncio.Event()

    async def apply(self, batch: WriteBatch) -> None:
        if not self.cut:
            await super().apply(batch)
            return
        self.waiting.set()
        task = asyncio.current_task()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert task is not None
            task.uncancel()
        raise StoreUnavailable("cut://: connection lost", url=self.url)


async def test_a_hub_stops_although_its_store_swallowed_the_cancellation(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = CutStore()
    server = await make_server(store=store)
    hub = server.leading
    assert hub is not None
    async with Client(server.url, name="p") as pub:
        assert await pub.pub("cut:job").accepted()
        store.cut = True
        pub.pub("cut:job")  # its write waits on the cut store; it is never acknowledged
        await asyncio.wait_for(store.waiting.wait(), 5)
        # Before: the flusher lived on after its cancellation was swallowed, and stop()
        # waited for it forever. 30 s is a deadlock detector, not a timing expectation.
        await asyncio.wait_for(hub.stop(flush_timeout=0.2), 30)
        assert not hub.ready
    # The commit pipeline ended: stop() did not have to leave it behind.
    assert "left behind" not in caplog.text
