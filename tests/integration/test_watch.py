"""Watching task events over real connections, and `taskhub watch` as a subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from taskhub import Client, PermissionDenied, Server
from tests.conftest import ClientFactory, ServerFactory, until
from tests.integration.test_cli import watching


async def next_events(watch: Any, n: int) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(5):
        async for event in watch:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_watch_streams_every_event_of_matching_actions(make_client: ClientFactory) -> None:
    watcher, worker, pub = await make_client("ops"), await make_client("w"), await make_client("p")

    async def send(task: Any) -> Any:
        await task.update("half")
        return "sent"

    await worker.sub("email:send", send)
    await worker.sub("sms:send", lambda t: "ok")
    async with watcher.watch("email:*") as events:
        handle = pub.pub("email:send", {"to": "a"})
        await pub.pub("sms:send").get_result()  # not watched
        assert await handle.get_result() == "sent"
        got = await next_events(events, 5)
    assert [e["type"] for e in got] == ["init", "offer", "start", "update", "success"]
    assert {e["task"] for e in got} == {handle.id}
    assert {e["action"] for e in got} == {"email:send"}
    assert got[3]["data"] == "half" and got[4]["data"] == "sent"
    assert got[4]["state"] == "success" and got[2]["service"] == "w"
    assert not watcher._link.watches  # unwatched on exit


async def test_a_watcher_that_also_publishes_gets_both_streams(make_client: ClientFactory) -> None:
    c, worker = await make_client("me"), await make_client("w")
    await worker.sub("job:run", lambda t: 42)
    watch = c.watch("job:run")
    await watch.started()
    assert await c.pub("job:run").get_result() == 42  # the handle is not confused by the watch
    got = await next_events(watch, 4)
    assert got[-1]["type"] == "success" and got[-1]["data"] == 42
    await watch.aclose()
    assert [e async for e in watch] == []  # a closed watch ends


async def test_watch_needs_permission(make_server: ServerFactory) -> None:
    server = await make_server(
        creds=[{"name": "ops", "key": "k", "sub_permissions": ["email"], "pub_permissions": []}]
    )
    async with Client(server.url, name="ops", key="k") as ops:
        await ops.watch("email/>").started()
        with pytest.raises(PermissionDenied, match="may not watch '>'"):
            await ops.watch(">").started()
        with pytest.raises(PermissionDenied):
            async for _ in ops.watch("sms:send"):
                pass


async def test_watch_comes_back_after_a_reconnect(make_client: ClientFactory) -> None:
    watcher, worker = await make_client("ops", max_backoff=0.1), await make_client("w")
    await worker.sub("job:run", lambda t: 1)
    watch = watcher.watch("job:*")
    await watch.started()
    assert watcher._conn._ws is not None
    await watcher._conn._ws.close()
    await until(lambda: not watcher.connected)
    await until(lambda: watcher.connected)
    await asyncio.sleep(0.1)  # the watch request goes out with the reconnect
    pub = await make_client("p")
    handle = pub.pub("job:run")
    await handle.get_result()
    got = await next_events(watch, 4)
    assert got[-1]["task"] == handle.id and got[-1]["type"] == "success"


async def test_cli_watch_prints_one_line_per_event(server: Server) -> None:
    async with (
        watching("geo:*", "--url", server.url) as out,
        Client(server.url, name="geo") as worker,
        Client(server.url, name="p") as p,
    ):
        await worker.sub("geo:geocode", lambda t: {"lat": 59.9})
        handle = p.pub("geo:geocode", "Oslo")
        await handle.get_result()
        lines = []
        async with asyncio.timeout(10):
            while len(lines) < 4:
                lines.append((await out.readline()).decode().rstrip("\n"))
    kinds = [line.split()[3] for line in lines]
    assert kinds == ["init", "offer", "start", "success"]
    for line in lines:
        fields = line.split()
        assert fields[1] == handle.id and fields[2] == "geo:geocode"
    assert lines[-1].split()[4:6] == ["success", "geo"]
    assert lines[-1].endswith('{"lat": 59.9}')


def test_cli_watch_reports_errors_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "taskhub", "watch", "x:*", "--url", "ws://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "40"},
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: could not connect")


async def test_the_hub_listens_for_watchers_only_while_there_are_any(
    server: Server, make_client: ClientFactory
) -> None:
    """Every task event would call the watchers' listener: it is in the lifecycle's list from
    the first watch to the last unwatch or disconnect, and only then."""
    hub = server.hub
    assert hub is not None
    listeners = hub.lc.listeners
    assert hub.watches.on_event not in listeners
    a, b, worker = await make_client("a"), await make_client("b"), await make_client("w")
    await worker.sub("job:run", lambda t: "done")
    async with a.watch("job:*") as events:
        assert hub.watches.on_event in listeners
        async with b.watch(">"):
            assert listeners.count(hub.watches.on_event) == 1
        assert hub.watches.on_event in listeners  # a still watches
        await a.pub("job:run").get_result()
        assert [e["type"] for e in await next_events(events, 4)] == [
            "init",
            "offer",
            "start",
            "success",
        ]
    await until(lambda: hub.watches.on_event not in listeners)
    async with b.watch(">"):
        assert hub.watches.on_event in listeners
        await b.close()  # a dropped connection ends its watches too
        await until(lambda: hub.watches.on_event not in listeners)
