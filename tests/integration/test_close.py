"""Closing a client ends everything that waits on it with ConnectionClosed (issue 15, item 14):
results of unfinished tasks, watches, subscriptions; in the async and the blocking client.

Each wait is guarded by ``asyncio.wait_for`` only so that a regression fails instead of
hanging the suite: before the fix these waits never ended.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from taskhub import Client, ConnectionClosed, Server, sync
from tests.conftest import ClientFactory

GUARD = 10.0  # seconds: only to turn a hang into a failure


async def test_close_ends_waiting_results_watches_and_subs(
    server: Server, make_client: ClientFactory
) -> None:
    watcher = await make_client("watcher")
    client = Client(server.url, name="pub")
    await client.connect()
    handle = client.pub("nobody:works")  # no worker: it waits in the pool
    await handle.accepted()
    waiting = [
        asyncio.ensure_future(handle.get_result()),
        asyncio.ensure_future(handle.get_result(timeout=600)),
        asyncio.ensure_future(_await(handle)),
    ]
    done_called: list[Any] = []
    handle.add_done_callback(done_called.append)
    watch = client.watch("nobody:*")
    await watch.started()
    client.pub("nobody:works")  # one event queued before the close
    first = await asyncio.wait_for(watch.__anext__(), GUARD)
    assert first["type"] == "init"
    reading = asyncio.ensure_future(_read_all(watch))
    await asyncio.sleep(0)  # the reader waits for the next event
    await client.close()

    for fut in waiting:
        with pytest.raises(ConnectionClosed, match=r"closed before task .* ended"):
            await asyncio.wait_for(fut, GUARD)
    with pytest.raises(ConnectionClosed, match="closed while watching"):
        await asyncio.wait_for(reading, GUARD)
    assert done_called == [handle]
    with pytest.raises(ConnectionClosed):
        handle.outcome()
    assert await handle.get_result(default="gone") == "gone"
    # Anything started after the close ends at once too.
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.watch("nobody:*").__anext__(), GUARD)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.sub("late:sub", lambda t: None), GUARD)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.pub("nobody:works").get_result(), GUARD)
    assert watcher.connected  # only the closed client's waits ended


async def test_close_ends_an_unconfirmed_watch(server: Server) -> None:
    client = Client(server.url, name="w")
    await client.connect()
    watch = client.watch("x:*")  # the hub's answer has not been read yet
    await client.close()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(watch.started(), GUARD)


async def _await(handle: Any) -> Any:
    return await handle


async def _read_all(watch: Any) -> list[Any]:
    return [event async for event in watch]


async def test_sync_close_ends_blocked_get_result_and_watch(server: Server) -> None:
    def scenario() -> None:
        client = sync.Client(server.url, name="pub").connect()
        handle = client.pub("nobody:works")
        watch = client.watch("nobody:*")
        results: dict[str, BaseException | Any] = {}

        def wait_result() -> None:
            try:
                results["get_result"] = handle.get_result()
            except BaseException as exc:
                results["get_result"] = exc

        def read_watch() -> None:
            try:
                results["watch"] = list(watch)
            except BaseException as exc:
                results["watch"] = exc

        threads = [threading.Thread(target=f) for f in (wait_result, read_watch)]
        for t in threads:
            t.start()
        client.close()
        for t in threads:
            t.join(GUARD)
        assert not any(t.is_alive() for t in threads), "a waiter still waits after close()"
        assert isinstance(results["get_result"], ConnectionClosed)
        assert isinstance(results["watch"], ConnectionClosed)
        # After the close the handle answers at once, without the client's loop.
        with pytest.raises(ConnectionClosed):
            handle.get_result()
        assert handle.get_result(default=None) is None

    await asyncio.to_thread(scenario)
