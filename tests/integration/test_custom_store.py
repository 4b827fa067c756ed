"""A store object instead of a URL: how another engine (DESIGN: "further engines fit the same
interface") plugs into a hub."""

from __future__ import annotations

from taskhub import Client
from taskhub.records import WriteBatch
from taskhub.store.memory import MemoryStore
from tests.conftest import ServerFactory


class CountingStore(MemoryStore):
    """A stand-in for a third-party engine: the memory engine, counting what it is given."""

    url = "counting://"

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.closed = False

    async def apply(self, batch: WriteBatch) -> None:
        self.batches += 1
        await super().apply(batch)

    async def close(self) -> None:
        self.closed = True
        await super().close()


async def test_a_hub_runs_on_a_store_object(make_server: ServerFactory) -> None:
    store = CountingStore()
    server = await make_server(store=store)
    assert server.store_url == "counting://"
    async with Client(server.url, name="w") as worker, Client(server.url, name="p") as pub:
        await worker.sub("custom:run", lambda t: "ran")
        handle = pub.pub("custom:run", {"x": 1})
        assert await handle.get_result(timeout=5) == "ran"
    # The hub wrote through the object it was given, and reads come back from it.
    assert store.batches > 0
    rec = await store.get_task(handle.id or "")
    assert rec is not None and rec.state == "success"
    await server.stop()
    assert store.closed
