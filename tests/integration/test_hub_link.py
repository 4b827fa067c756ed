"""The hub-to-hub link (docs/deployment.md, "The hub-to-hub link"), with two real hubs on
loopback: hub B's slot for a partition is the partition hub A leads (``Router.place`` with
``hub.links.remote``), as the partition leases will place it. Everything is asserted through
the public client API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from taskhub import Client, Server, TaskFailed, TaskHubError
from taskhub.hub.link import wire
from taskhub.hub.link.origin import HubLinks
from taskhub.hub.router import MAX_ANSWERS
from taskhub.partitions import partition_of_id
from tests.conftest import ServerFactory, until
from tests.conftest import action_in as conftest_action_in

P = 2


action_in = partial(conftest_action_in, partitions=P)


def links(server: Server) -> HubLinks:
    assert server.hub is not None and isinstance(server.hub.links, HubLinks)
    return server.hub.links


def lead_elsewhere(origin: Server, index: int, leader: Server) -> None:
    """``origin`` reaches partition ``index`` at ``leader`` (both hubs of one deployment:
    the same link secret, which hubs on one store read from it)."""
    links(origin).secret = links(leader).secret
    assert origin.hub is not None
    origin.hub.router.place(index, links(origin).remote(index, leader.http_url))


async def two_hubs(make_server: ServerFactory, *, both_ways: bool = False) -> tuple[Server, Server]:
    """Hubs A and B of one deployment of ``P`` partitions: B's clients reach partition 1 at
    A; ``both_ways``: A's reach partition 0 at B too."""
    a = await make_server(partitions=P, pickup_window=1.0, name="hub-a")
    b = await make_server(partitions=P, pickup_window=1.0, name="hub-b")
    if both_ways:
        lead_elsewhere(a, 0, b)
    lead_elsewhere(b, 1, a)
    return a, b


@pytest.fixture
async def hubs(make_server: ServerFactory) -> tuple[Server, Server]:
    return await two_hubs(make_server)


@pytest.fixture
async def crossed(make_server: ServerFactory) -> tuple[Server, Server]:
    return await two_hubs(make_server, both_ways=True)


async def client(server: Server, name: str) -> Client:
    return await Client(server.url, name=name, connect_timeout=5, max_backoff=0.2).connect()


@contextlib.asynccontextmanager
async def clients(*named: tuple[Server, str]) -> AsyncIterator[list[Client]]:
    """A client connected to each (hub, name), in order; all closed when the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        connected = []
        for server, name in named:
            connected.append(await client(server, name))
            stack.push_async_callback(connected[-1].close)
        yield connected


async def test_a_publisher_on_b_and_a_worker_on_a(hubs: tuple[Server, Server]) -> None:
    a, b = hubs
    action = action_in(1)
    async with clients((a, "worker"), (b, "publisher")) as (worker, publisher):
        progress: list[Any] = []

        async def work(task: Any) -> Any:
            await task.update({"half": task.payload})
            return {"double": task.payload * 2}

        await worker.sub(action, work)
        handle = publisher.pub(action, 21)
        handle.on("update", lambda h: progress.append(h.last_update))
        assert await handle.get_result() == {"double": 42}
        assert partition_of_id(handle.id) == 1
        assert progress == [{"half": 21}]
        got = await publisher.get(handle.id)  # read over the link, from the leader
        assert got["state"] == "success" and got["result"] == {"double": 42}
        # B's own partition 0 still works locally beside it
        local = action_in(0)
        await worker.sub(local, lambda t: "a")  # on A: B's partition 0 has no worker
        other = await client(b, "worker-b")
        try:
            await other.sub(local, lambda t: "b")
            assert await publisher.pub(local).get_result() == "b"
        finally:
            await other.close()


async def test_a_worker_on_b_gets_offers_of_a_partition_a_leads(
    hubs: tuple[Server, Server],
) -> None:
    a, b = hubs
    action = action_in(1)
    async with clients((b, "worker"), (a, "publisher"), (b, "watcher")) as (
        worker,
        publisher,
        watcher,
    ):
        await worker.sub(action, lambda t: [t.payload, "from b"], concurrency=4)
        seen: dict[str, set[str]] = {}
        async with watcher.watch(">") as events:
            handles = [publisher.pub(action, i) for i in range(20)]
            results = await asyncio.gather(*(h.get_result() for h in handles))
            assert results == [[i, "from b"] for i in range(20)]
            async with asyncio.timeout(5):
                async for ev in events:
                    seen.setdefault(ev["task"], set()).add(ev["type"])
                    if all("success" in seen.get(h.id, ()) for h in handles):
                        break
        # the tasks live on A (partition 1, led there); B's worker and watcher reached them
        assert a.hub is not None and b.hub is not None
        for h in handles:
            assert (await a.hub.parts[1].find(h.id)) is not None
            assert (await b.hub.parts[1].find(h.id)) is None
        # one link, whatever the number of connections
        assert list(links(b).links) == [wire.link_url(a.http_url)]


async def test_batches_across_hubs(hubs: tuple[Server, Server]) -> None:
    """A frame whose pubs fall in partitions of both hubs: one answer, every task done."""
    a, b = hubs
    here, there = action_in(0), action_in(1)
    async with clients((a, "wa"), (b, "wb"), (b, "publisher")) as (worker_a, worker_b, publisher):
        await worker_a.sub(there, lambda t: ("there", t.payload), concurrency=8)
        await worker_b.sub(here, lambda t: ("here", t.payload), concurrency=8)
        handles = [publisher.pub(here if i % 2 else there, i) for i in range(40)]
        results = await asyncio.gather(*(h.get_result() for h in handles))
        assert results == [["here" if i % 2 else "there", i] for i in range(40)]
        assert {partition_of_id(h.id) for h in handles} == {0, 1}


async def test_partition_zero_led_elsewhere(crossed: tuple[Server, Server]) -> None:
    """The reverse: A reaches partition 0 (hello, topics, watches' answers) at B."""
    a, b = crossed
    action0, action1 = action_in(0), action_in(1)
    async with clients((a, "wa"), (a, "pa"), (b, "wb")) as (wa, pa, wb):
        await wa.sub(action0, lambda t: "zero")  # over the link to B
        await wb.sub(action1, lambda t: "one")  # over the link to A
        assert await pa.pub(action0).get_result() == "zero"
        assert await pa.pub(action1).get_result() == "one"
        got: list[Any] = []
        await wb.subscribe("news.*", lambda data, topic: got.append((topic, data)))
        await pa.emit("news.today", {"n": 1})  # from A, over the link to partition 0's hub
        await until(lambda: got)
        assert got == [("news.today", {"n": 1})]


async def test_a_broken_link_closes_its_connections_and_nothing_is_lost(
    hubs: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = hubs
    action = action_in(1)
    worker, publisher = await client(b, "worker"), await client(a, "publisher")
    started = asyncio.Event()
    release = asyncio.Event()
    attempts: list[int] = []

    async def work(task: Any) -> Any:
        attempts.append(task.attempt)
        if len(attempts) == 1:
            started.set()
            await release.wait()  # cut off with its connection
        return "done"

    try:
        # concurrency 2: the first handler still runs in the worker (cut off from its hub)
        await worker.sub(action, work, concurrency=2)
        handle = publisher.pub(action)
        await started.wait()
        link = links(b).links[wire.link_url(a.http_url)]
        assert link.ws is not None
        with caplog.at_level(logging.WARNING, logger="taskhub.link"):
            await link.ws.close()  # the link breaks
            # the worker's connection was closed (1013); it reconnects, subscribes again
            # (a new link), and the task, given back to its group on A, runs again
            assert await asyncio.wait_for(handle.get_result(), 10) == "done"
        assert attempts[-1] == 2
        assert any("closing its 1 connection(s) with 1013" in r.message for r in caplog.records)
        assert not any(r.exc_info for r in caplog.records)
        release.set()
    finally:
        await worker.close()
        await publisher.close()


async def test_a_new_leader_closes_the_connections_that_used_the_old_one(
    hubs: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    _, b = hubs
    assert b.hub is not None
    action = action_in(1)
    async with clients((b, "worker"), (b, "publisher")) as (worker, publisher):
        await worker.sub(action, lambda t: "led by b now")
        # B leads partition 1 itself from now on: the worker is closed with 1013, reconnects,
        # and subscribes to B's own partition 1
        with caplog.at_level(logging.WARNING):
            b.hub.router.place(1, b.hub.parts[1])
            handle = publisher.pub(action)
            assert await asyncio.wait_for(handle.get_result(), 10) == "led by b now"
        assert (await b.hub.parts[1].find(handle.id)) is not None  # B's own partition 1
        lost = [r for r in caplog.records if "connection to the hub lost" in r.message]
        assert len(lost) == 1  # the worker's; the publisher never reached partition 1 at A


async def test_a_wrong_secret_is_refused_with_one_line(
    hubs: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    _, b = hubs
    links(b).secret = "not the deployment's"
    async with clients((b, "publisher")) as (publisher,):
        with caplog.at_level(logging.INFO, logger="taskhub.link"):
            publisher.pub(action_in(1))
            await until(lambda: any("refused" in r.message for r in caplog.records))
            await until(lambda: any("wrong link secret" in r.message for r in caplog.records))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("refused a hub-to-hub link from hub-b" in r.message for r in errors)
        assert not any(r.exc_info for r in caplog.records)


async def test_a_malformed_link_frame_is_one_line_in_the_log(
    hubs: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = hubs
    url = wire.link_url(a.http_url)
    headers = {wire.SECRET_HEADER: links(a).secret, wire.FROM_HEADER: "prober"}
    with caplog.at_level(logging.INFO, logger="taskhub.link"):
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(b'[["in", "x", 0, {"op": "pub"}], ["nonsense"]]')
            with pytest.raises(Exception):  # noqa: B017 - closed by the hub: any close
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == wire.CLOSE_MALFORMED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "malformed link frame" in errors[0].message
    assert not any(r.exc_info for r in caplog.records)


async def test_the_link_secret_lives_in_the_deployments_store(tmp_path: Any) -> None:
    """The first hub makes it, every later one reads it (nothing to configure); a store of
    one partition records nothing (its layout stays that of a hub before partitions)."""
    url = f"sqlite:///{tmp_path}/hub.db"
    secrets = []
    for _ in range(2):
        server = Server(store=url, port=0, partitions=P)
        await server.start()
        secrets.append(links(server).secret)
        await server.stop()
    assert secrets[0] and secrets[0] == secrets[1] and len(secrets[0]) >= 40
    single = Server(store=f"sqlite:///{tmp_path}/one.db", port=0)
    await single.start()
    try:
        assert links(single).secret == ""
        assert single.hub is not None
        assert await single.hub.root.get_meta(*wire.SECRET_META) is None
    finally:
        await single.stop()


async def test_a_chain_and_a_group_crossing_hubs_complete(crossed: tuple[Server, Server]) -> None:
    """A leads partition 1, B partition 0: a chain held on B publishes its steps on A and
    moves on when they end there, and the other way round."""
    a, b = crossed
    zero, one = action_in(0, "z"), action_in(1, "o")
    async with clients((a, "wa"), (b, "wb"), (a, "pa"), (b, "pb")) as (wa, wb, pa, pb):
        await wa.sub(
            zero,
            lambda t: (t.payload or 0) + 1 if t.previous_result is None else t.previous_result + 1,
        )
        await wb.sub(
            one,
            lambda t: (
                (t.payload or 0) * 10 if t.previous_result is None else t.previous_result * 10
            ),
        )
        # held on B (its first step's partition, 0), steps in 0 (B), 1 (A), 0 (B)
        chain = pb.chain([(zero, 1), (one, None), (zero, None)])
        assert await asyncio.wait_for(chain.get_result(), 10) == 21
        assert partition_of_id(chain.id) == 0
        # held on A (partition 1), read from B: every step's id names its own partition
        chain = pb.chain([(one, 2), (zero, None)])
        assert await asyncio.wait_for(chain.get_result(), 10) == 21
        got = await pa.get(chain.id)
        assert got["state"] == "success" and partition_of_id(chain.id) == 1
        group = pa.group([(zero, 5), (one, 6), (zero, 7)])
        assert await asyncio.wait_for(group.get_result(), 10) == [6, 60, 8]


async def test_a_step_the_other_hub_cannot_publish_fails_its_chain(
    hubs: tuple[Server, Server],
) -> None:
    a, b = hubs
    assert a.hub is not None
    # A no longer leads partition 1 (as when its lease moved): B's step is refused there
    a.hub.router.place(1, links(a).remote(1, b.http_url))
    zero, one = action_in(0, "z"), action_in(1, "o")
    async with clients((b, "wb"), (b, "pb")) as (wb, pb):
        await wb.sub(zero, lambda t: "first")
        chain = pb.chain([(zero, None), (one, None)])
        with pytest.raises(TaskFailed) as info:
            await asyncio.wait_for(chain.get_result(), 10)
        assert "step 1" in str(info.value) and "does not lead partition 1" in str(info.value)


async def test_a_leader_that_stops_sends_its_linked_clients_elsewhere(
    hubs: tuple[Server, Server],
) -> None:
    """Hub A stops: B's worker, which reached A's partition, is closed and reconnects; once
    B leads the partition itself, the work goes on there."""
    a, b = hubs
    assert b.hub is not None
    action = action_in(1)
    async with clients((b, "worker"), (b, "publisher")) as (worker, publisher):
        await worker.sub(action, lambda t: "done")
        assert await publisher.pub(action).get_result() == "done"
        link = links(b).links[wire.link_url(a.http_url)]
        await a.stop()
        await until(lambda: link.broken)
        # (meanwhile the worker reconnects, subscribes again and is closed again (1013): a
        # new link is dialled at each use, and fails while A is down)
        b.hub.router.place(1, b.hub.parts[1])  # as the leases would, once A's ran out
        handle = publisher.pub(action)
        assert await asyncio.wait_for(handle.get_result(), 10) == "done"


async def test_http_reads_on_b_reach_the_partition_a_leads(hubs: tuple[Server, Server]) -> None:
    a, b = hubs
    action = action_in(1)
    async with clients((a, "worker"), (b, "publisher")) as (worker, publisher):
        await worker.sub(action, lambda t: t.payload)
        handles = [publisher.pub(action, i) for i in range(3)]
        await asyncio.gather(*(h.get_result() for h in handles))
        async with httpx.AsyncClient(base_url=b.http_url) as http:
            one = await http.get(f"/v1/tasks/{handles[0].id}")  # Hub.find, over the link
            assert one.status_code == 200 and one.json()["result"] == 0
            page = await http.get("/v1/tasks", params={"action": action})  # Hub.list_tasks
            assert page.status_code == 200
            assert {t["id"] for t in page.json()["tasks"]} == {h.id for h in handles}


async def test_a_raw_batch_across_hubs_answers_each_item_in_order(
    hubs: tuple[Server, Server],
) -> None:
    """A client's ``pubs`` with items in both hubs' partitions and a bad one: one ``ok`` whose
    items answer each in order, the bad one with its own error."""
    _, b = hubs
    here, there = action_in(0), action_in(1)
    async with connect(b.url + "/v1/ws") as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        items = [{"action": there}, {"action": 5}, {"action": here}, {"action": there}]
        await ws.send(
            json.dumps(
                [
                    {"op": "pubs", "ref": 1, "items": items},
                ]
            )
        )
        ok = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ok["op"] == "ok" and ok["ref"] == 1
        first, bad, third, fourth = ok["items"]
        assert partition_of_id(first["task"]) == 1 and partition_of_id(fourth["task"]) == 1
        assert partition_of_id(third["task"]) == 0
        assert bad["error"]["code"] == "bad_message" and bad["error"]["details"]["index"] == 1
        assert "Expected `str`, got `int`" in bad["error"]["message"]


async def test_a_failed_group_cancels_its_step_on_the_other_hub(
    crossed: tuple[Server, Server],
) -> None:
    a, b = crossed
    zero, one = action_in(0, "z"), action_in(1, "o")
    wa, wb, pb = await client(a, "wa"), await client(b, "wb"), await client(b, "pb")
    running: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def slow(task: Any) -> Any:
        running.set_result(task.id)
        await release.wait()

    async def broken(task: Any) -> Any:
        await running  # the other step runs on A by now
        raise RuntimeError("no")

    try:
        await wa.sub(one, slow)
        await wb.sub(zero, broken)
        group = pb.group([(zero, None), (one, None)])  # held on B (partition 0)
        with pytest.raises(TaskFailed):
            await asyncio.wait_for(group.get_result(), 10)
        step = running.result()
        assert partition_of_id(step) == 1  # published on A, which leads partition 1

        async def cancelled() -> bool:
            got = await pb.get(step)
            return got["state"] == "fail" and got["error"]["reason"] == "cancelled"

        await until(cancelled)
        release.set()
    finally:
        for c in (wa, wb, pb):
            await c.close()


async def test_what_reaches_a_leader_still_restoring_the_partition_waits_for_it(
    hubs: tuple[Server, Server],
) -> None:
    """The other hubs may learn of a new lease before its hub serves the partition (it is
    restoring it): what they send it then is held, in order, and applied once it serves the
    partition, not refused as "does not lead" (a schedule's slot, which has no answer, was
    lost that way)."""
    a, b = hubs
    assert a.hub is not None
    action = action_in(1)
    restored = asyncio.Event()
    async with clients((b, "worker"), (b, "publisher")) as (worker, publisher):
        ran: list[int] = []
        await worker.sub(action, lambda t: ran.append(t.payload) or t.payload)
        await publisher.pub(action, 0).get_result()  # the publisher's link connection is open
        a.hub.leading.restoring[1] = restored  # as Leading.lead marks it until it serves it
        first, second = publisher.pub(action, 1), publisher.pub(action, 2)
        await asyncio.sleep(0.3)
        assert first.id is None and second.id is None  # held at A, neither refused
        del a.hub.leading.restoring[1]
        restored.set()
        assert [await first.get_result(), await second.get_result()] == [1, 2]
        assert ran == [0, 1, 2]


async def raw_client(server: Server) -> Any:
    ws = await connect(server.url + "/v1/ws")
    assert json.loads(await ws.recv())["op"] == "welcome"
    await ws.send(json.dumps({"op": "hello", "batch": True, "ref": 1}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"op": "ok", "ref": 1}
    return ws


async def messages_until(ws: Any, done: Any) -> list[dict[str, Any]]:
    """The messages ``ws`` reads until ``done(messages)`` holds (batched frames flattened)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not done(got):
            frame = json.loads(await ws.recv())
            got += frame if isinstance(frame, list) else [frame]
    return got


async def test_a_batch_without_ref_across_hubs_does_not_hold_the_connection(
    hubs: tuple[Server, Server],
) -> None:
    """A ``pubs`` without ``ref`` whose items fall in both hubs' partitions: no answer to wait
    for, so the connection's next messages are not held behind the other hub (here A, still
    restoring partition 1, holds what reaches it). Once A serves it, its items are published
    there, in order with the connection's later messages for it, and an item's error names
    its place in the client's batch."""
    a, b = hubs
    assert a.hub is not None
    here, there = action_in(0), action_in(1)
    restored = asyncio.Event()
    ws = await raw_client(b)
    try:
        # the connection's link to A is open, A serving partition 1
        await ws.send(json.dumps({"op": "pub", "ref": 2, "action": there}))
        (first,) = await messages_until(ws, lambda got: got)
        assert first["op"] == "ok" and partition_of_id(first["task"]) == 1
        a.hub.leading.restoring[1] = restored  # what reaches A for partition 1 waits now
        items = [{"action": there}, {"action": here}, {"action": 5}, {"action": there}]
        await ws.send(json.dumps({"op": "pubs", "items": items}))
        await ws.send(json.dumps({"op": "pub", "ref": 3, "action": here}))
        await ws.send(json.dumps({"op": "pub", "ref": 4, "action": there}))
        # B's own partition answers while A holds partition 1's items; the bad item's error
        # comes from B (partition 0 decodes it as its own) with its place in the batch
        got = await messages_until(ws, lambda got: any(m.get("ref") == 3 for m in got))
        (bad,) = [m for m in got if m["op"] == "error"]
        assert bad["code"] == "bad_message" and bad["details"]["index"] == 2
        assert not any(m.get("ref") == 4 for m in got)
        del a.hub.leading.restoring[1]
        restored.set()
        got = await messages_until(ws, lambda got: any(m.get("ref") == 4 for m in got))
        (last,) = [m for m in got if m.get("ref") == 4]
        # the batch's two items were published at A after the first pub and before the
        # later one (a partition's ids grow in the order its tasks are made)
        live = a.hub.parts[1].unwritten()  # pooled: no worker subscribes
        ids = sorted(i for i, rec in live.items() if rec.action == there)
        assert len(ids) == 4 and ids[0] == first["task"] and ids[-1] == last["task"]
    finally:
        await ws.close()


async def test_returns_without_ref_across_hubs_end_every_task(
    hubs: tuple[Server, Server],
) -> None:
    """A raw worker on B answers offers of both hubs' partitions with one ``returns`` without
    ``ref``: every task ends with its result, and an item for no delivery of the worker's is
    answered with its error and its place in the batch (from the hub that leads its task)."""
    _, b = hubs
    here, there = action_in(0), action_in(1)
    worker = await raw_client(b)
    try:
        subs = [
            {"op": "sub", "ref": 10 + i, "action": x, "concurrency": 8}
            for i, x in enumerate((here, there))
        ]
        await worker.send(json.dumps(subs))
        await messages_until(worker, lambda got: {m.get("ref") for m in got} >= {10, 11})
        async with clients((b, "publisher")) as (publisher,):
            handles = [publisher.pub(here if i % 2 else there, i) for i in range(6)]
            offers = await messages_until(worker, lambda got: len(offered(got)) >= 6)
            items = offered(offers)
            assert len(items) == 6
            returns = [
                {"task": o["task"], "attempt": o["attempt"], "result": o["payload"]} for o in items
            ]
            stranger = next(o["task"] for o in items if partition_of_id(o["task"]) == 1)
            returns.insert(1, {"task": stranger, "attempt": 7, "result": None})
            await worker.send(json.dumps({"op": "returns", "items": returns}))
            results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 10)
            assert results == list(range(6))
            errors = await messages_until(worker, lambda got: got)
            assert [(e["op"], e["details"]["index"], e["task"]) for e in errors] == [
                ("error", 1, stranger)
            ]

    finally:
        await worker.close()


def offered(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The offers among ``msgs`` (alone or items of ``offers``)."""
    return [o for m in msgs if m["op"] in ("offer", "offers") for o in m.get("items", [m])]


def live_of(server: Server, index: int, action: str) -> list[str]:
    """The ids of ``action``'s tasks partition ``index`` of ``server`` has made, in order."""
    assert server.hub is not None
    return sorted(
        i for i, rec in server.hub.parts[index].unwritten().items() if rec.action == action
    )


async def test_a_batch_with_ref_across_hubs_does_not_hold_the_connection(
    hubs: tuple[Server, Server],
) -> None:
    """A ``pubs`` with ``ref`` whose items fall in both hubs' partitions: while the other hub
    has not answered (here A, restoring partition 1, holds what reaches it), the
    connection's next messages are applied (B's partition publishes the next ``pub``); once
    A answers, the batch's ``ok`` comes first, each item answered in place, then the later
    messages' answers, in order, and A applied the batch's items before the connection's
    later message for its partition."""
    a, b = hubs
    assert a.hub is not None
    here, there = action_in(0), action_in(1)
    restored = asyncio.Event()
    ws = await raw_client(b)
    try:
        await ws.send(json.dumps({"op": "pub", "ref": 2, "action": there}))
        (first,) = await messages_until(ws, lambda got: got)
        assert first["op"] == "ok" and partition_of_id(first["task"]) == 1
        a.hub.leading.restoring[1] = restored  # what reaches A for partition 1 waits now
        items = [{"action": there}, {"action": here}, {"action": 5}, {"action": there}]
        await ws.send(json.dumps({"op": "pubs", "ref": 5, "items": items}))
        await ws.send(json.dumps({"op": "pub", "ref": 6, "action": here}))
        await ws.send(json.dumps({"op": "pub", "ref": 7, "action": there}))
        # the pub after the batch is published on B while A still holds the batch's items
        await until(lambda: len(live_of(b, 0, here)) == 2)
        assert live_of(a, 1, there) == [first["task"]]
        del a.hub.leading.restoring[1]
        restored.set()
        got = await messages_until(ws, lambda got: any(m.get("ref") == 7 for m in got))
        assert [(m["op"], m["ref"]) for m in got] == [("ok", 5), ("ok", 6), ("ok", 7)]
        one, two, bad, four = got[0]["items"]
        assert partition_of_id(one["task"]) == 1 and partition_of_id(four["task"]) == 1
        assert partition_of_id(two["task"]) == 0
        assert bad["error"]["code"] == "bad_message" and bad["error"]["details"]["index"] == 2
        # at A: the batch's items after the first pub, before the later one
        assert live_of(a, 1, there) == [first["task"], one["task"], four["task"], got[2]["task"]]
        assert live_of(b, 0, here) == [two["task"], got[1]["task"]]
    finally:
        await ws.close()


async def test_a_batch_across_hubs_answers_the_other_hubs_refusals_in_place(
    hubs: tuple[Server, Server],
) -> None:
    """Items the other hub refuses (a payload it cannot keep) are answered in the batch's
    ``ok`` at their places, each naming its index, beside the tasks both hubs published;
    batches sent back to back are answered in order."""
    _, b = hubs
    here, there = action_in(0), action_in(1)
    ws = await raw_client(b)
    try:
        # 1e400: JSON the hub reads but cannot keep (docs/protocol.md, "Payloads")
        items = (
            f'[{{"action":"{there}"}},{{"action":"{there}","payload":1e400}},'
            f'{{"action":"{here}"}},{{"action":"{here}","payload":[1e400]}}]'
        )
        frames = [f'{{"op":"pubs","ref":{ref},"items":{items}}}' for ref in (5, 6, 7)]
        for frame in frames:
            await ws.send(frame)
        got = await messages_until(ws, lambda got: len(got) == 3)
        assert [(m["op"], m["ref"]) for m in got] == [("ok", 5), ("ok", 6), ("ok", 7)]
        for ok in got:
            published, refused_there, also, refused_here = ok["items"]
            assert partition_of_id(published["task"]) == 1
            assert partition_of_id(also["task"]) == 0
            for refused, index in ((refused_there, 1), (refused_here, 3)):
                assert refused["error"]["details"]["index"] == index
                assert refused["error"]["message"].startswith(f"item {index}: ")
    finally:
        await ws.close()


async def test_a_link_that_breaks_mid_batch_leaves_no_pub_unanswered(
    hubs: tuple[Server, Server],
) -> None:
    """The link breaks while the other hub holds a batch's items: the client hears an error
    for every pub it was not told was accepted (its connection closed, 1013), none waits for
    ever, and every pub it was told was accepted is stored."""
    a, b = hubs
    assert a.hub is not None and b.hub is not None
    here, there = action_in(0), action_in(1)
    restored = asyncio.Event()
    async with clients((b, "publisher")) as (publisher,):
        await publisher.pub(there).accepted()  # the publisher's link connection is open
        a.hub.leading.restoring[1] = restored
        handles = [publisher.pub(there if i % 2 else here, i) for i in range(8)]
        await until(lambda: len(live_of(b, 0, here)) == 4)  # B's items are in
        link = links(b).links[wire.link_url(a.http_url)]
        assert link.ws is not None
        await link.ws.close()  # the link breaks before A applied its items
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(h.accepted() for h in handles), return_exceptions=True), 10
        )
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(o, TaskHubError) for o in refused), refused
        accepted = [o for o in outcomes if isinstance(o, str)]
        assert len(accepted) + len(refused) == len(handles) and refused
        for task_id in accepted:
            part = a.hub.parts[1] if partition_of_id(task_id) == 1 else b.hub.parts[0]
            assert await part.find(task_id) is not None
        # A let go of the connection with the link; what it held for it is not applied
        await until(lambda: not a.hub.connections.linked)
        del a.hub.leading.restoring[1]
        restored.set()
        await a.hub.parts[1].flush()
        assert len(live_of(a, 1, there)) == 1 + sum(partition_of_id(t) == 1 for t in accepted)


async def test_past_its_bound_of_waiting_answers_a_connection_waits(
    hubs: tuple[Server, Server],
) -> None:
    """At most ``MAX_ANSWERS`` batches' answers wait per connection: the batch past that is
    applied, and the connection's next message waits for its answer (what the hub holds for
    the connection stays bounded); then every answer comes, in order."""
    a, b = hubs
    assert a.hub is not None
    here, there = action_in(0), action_in(1)
    restored = asyncio.Event()
    ws = await raw_client(b)
    try:
        await ws.send(json.dumps({"op": "pub", "ref": 2, "action": there}))
        await messages_until(ws, lambda got: got)
        a.hub.leading.restoring[1] = restored
        n = MAX_ANSWERS + 1
        batches = [
            {"op": "pubs", "ref": 10 + k, "items": [{"action": there}, {"action": here}]}
            for k in range(n)
        ]
        await ws.send(json.dumps([*batches, {"op": "pub", "ref": 99, "action": here}]))
        # every batch's item for B is in; the pub after them waits (one frame: applied in
        # one go, up to the message that waits)
        await until(lambda: len(live_of(b, 0, here)) == n)
        assert len(live_of(b, 0, here)) == n
        del a.hub.leading.restoring[1]
        restored.set()
        got = await messages_until(ws, lambda got: any(m.get("ref") == 99 for m in got))
        assert [m["ref"] for m in got] == [10 + k for k in range(n)] + [99]
        assert len(live_of(b, 0, here)) == n + 1 and len(live_of(a, 1, there)) == n + 1
    finally:
        await ws.close()
