"""Batched messages (docs/protocol.md, "Batched messages"): several tasks per ``pubs``, offers
per worker in one ``offers``, a worker's steps in one ``acks``/``pickups``/``returns``; each
item with its own answer, and clients that never said ``batch`` served as before."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

import taskhub.sync
from taskhub import Client, InvalidAction, PermissionDenied, Server
from taskhub.client import TaskContext
from taskhub.protocol import MAX_BATCH
from tests.conftest import ClientFactory, ServerFactory, until


async def _raw(server: Server, name: str, *, batch: bool = False) -> ClientConnection:
    ws = await connect(
        server.url + "/v1/ws", additional_headers={"Authorization": f"Bearer {name}:"}
    )
    welcome = json.loads(await ws.recv())
    assert welcome["op"] == "welcome" and welcome["max_batch"] == MAX_BATCH
    if batch:
        await ws.send(json.dumps({"op": "hello", "batch": True, "ref": 0}))
        assert _msgs(await ws.recv()) == [{"op": "ok", "ref": 0}]
    return ws


def _msgs(frame: str | bytes) -> list[dict[str, Any]]:
    data = json.loads(frame)
    return data if isinstance(data, list) else [data]


async def _until(ws: ClientConnection, pred: Any, n: int = 1) -> list[dict[str, Any]]:
    """Messages from ``ws`` until ``n`` of them satisfy ``pred``; those, in order."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(got) < n:
            got += [m for m in _msgs(await ws.recv()) if pred(m)]
    return got


async def _echo(make_client: ClientFactory, action: str = "batch:echo", **kw: Any) -> Client:
    worker = await make_client("worker")

    async def echo(task: TaskContext) -> Any:
        return await task.get_payload()

    await worker.sub(action, echo, concurrency=kw.pop("concurrency", 64), **kw)
    return worker


# --- through the Python client's public API ------------------------------------------------
async def test_pub_many_of_1000_tasks_all_complete(make_client: ClientFactory) -> None:
    await _echo(make_client)
    publisher = await make_client("publisher")
    handles = publisher.pub_many([("batch:echo", {"i": i}) for i in range(1000)])
    results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 30)
    assert results == [{"i": i} for i in range(1000)]
    assert len({h.id for h in handles}) == 1000


async def test_pub_many_takes_options_per_item(make_client: ClientFactory) -> None:
    worker = await make_client("worker")
    seen: list[tuple[int, Any]] = []

    async def record(task: TaskContext) -> None:
        seen.append((task.attempt, task.payload))
        raise RuntimeError("again") if task.attempt == 1 and task.payload == "retried" else None

    await worker.sub("batch:opts", record, concurrency=1)
    publisher = await make_client("publisher")
    first, second = publisher.pub_many(
        [("batch:opts", "retried", {"retries": 1, "backoff": 0.0}), ("batch:opts", "once")]
    )
    await asyncio.wait_for(asyncio.gather(first.get_result(None), second.get_result(None)), 10)
    assert sorted(seen) == [(1, "once"), (1, "retried"), (2, "retried")]
    view = await publisher.get(await first.accepted())
    assert view["options"]["retries"] == 1


async def test_a_refused_item_fails_only_its_own_handle(make_server: ServerFactory) -> None:
    server = await make_server(
        [
            {"name": "worker", "key": "k", "sub_permissions": ["batch"]},
            {"name": "publisher", "key": "k", "pub_permissions": ["batch"]},
        ]
    )
    async with (
        Client(server.url, name="worker", key="k") as worker,
        Client(server.url, name="publisher", key="k") as publisher,
    ):
        await worker.sub("batch:echo", lambda task: task.payload, concurrency=8)
        handles = publisher.pub_many(
            [("batch:echo", 0), ("secret:read", 1), ("batch:echo", 2), ("taskhub:chain", 3)]
        )
        assert await handles[0].get_result() == 0
        assert await handles[2].get_result() == 2
        with pytest.raises(PermissionDenied, match=r"item 1: .*'secret:read'") as info:
            await handles[1].get_result()
        assert info.value.details["index"] == 1
        with pytest.raises(PermissionDenied, match="item 3"):
            await handles[3].accepted()


async def test_pub_many_checks_every_item_before_sending_any(make_client: ClientFactory) -> None:
    worker = await make_client("worker")
    seen: list[Any] = []
    await worker.sub("batch:none", lambda task: seen.append(task.payload))
    publisher = await make_client("publisher")
    items: list[Any] = [("batch:none", 0), ("batch:none", 1), ("batch none", 2)]
    with pytest.raises(InvalidAction, match=r"pub_many item 2 \('batch none'\).*nothing was sent"):
        publisher.pub_many(items)
    with pytest.raises(TypeError, match=r"pub_many item 1.*'colour'"):
        publisher.pub_many([("batch:none", 0), ("batch:none", 1, {"colour": "red"})])
    with pytest.raises(ValueError, match=r"pub_many item 0.*NaN"):
        publisher.pub_many([("batch:none", float("nan"))])
    await publisher.pub("batch:none", "barrier").get_result(None)  # after what went before
    assert seen == ["barrier"]  # nothing of the refused lists was published


async def test_the_blocking_pub_many_returns_every_handle_answered(server: Server) -> None:
    def scenario() -> None:  # in a thread: the hub runs on the test's loop
        with taskhub.sync.Client(server.url, name="publisher") as client:
            handles = client.pub_many([("batch:wait", i) for i in range(5)] + [("taskhub:x", 5)])
            assert [bool(h.id) for h in handles] == [True] * 5 + [False]
            with pytest.raises(PermissionDenied, match="item 5"):
                handles[5].get_result()
            assert len({h.id for h in handles[:5]}) == 5

    await asyncio.to_thread(scenario)


# --- on the wire -----------------------------------------------------------------------------
async def test_each_item_of_pubs_gets_its_own_answer(server: Server) -> None:
    worker, publisher = await _raw(server, "worker"), await _raw(server, "publisher")
    await worker.send(json.dumps({"op": "sub", "action": "batch:run", "concurrency": 10}))
    items = [
        {"action": "batch:run", "payload": 0},
        {"action": "batch run", "payload": 1},  # no verb
        {"action": "batch:run", "payload": 2, "options": {"colour": "red"}},  # unknown option
        {"op": "pub", "action": "batch:run", "payload": {"n": 3}, "options": {"priority": 1}},
        {"action": "taskhub:chain"},  # reserved
    ]
    await publisher.send(json.dumps({"op": "pubs", "items": items, "ref": 7}))
    (ok,) = await _until(publisher, lambda m: m.get("ref") == 7)
    assert ok["op"] == "ok" and len(ok["items"]) == 5
    answers = ok["items"]
    assert answers[0]["state"] == "init" and answers[0]["created"] is True
    assert answers[3]["state"] == "init" and answers[3]["task"] != answers[0]["task"]
    errors = {i: answers[i]["error"] for i in (1, 2, 4)}
    assert errors[1]["code"] == "invalid_action" and errors[1]["message"].startswith("item 1: ")
    assert errors[2]["code"] == "bad_message" and "item 2" in errors[2]["message"]
    assert "colour" in errors[2]["message"]
    assert errors[4]["code"] == "forbidden" and errors[4]["message"].startswith("item 4: ")
    assert all(e["details"]["index"] == i for i, e in errors.items())
    offers = await _until(worker, lambda m: m["op"] == "offer", 2)  # an old client: one by one
    assert [o["payload"] for o in offers] == [0, {"n": 3}]  # the refused ones are not offered
    await worker.close()
    await publisher.close()


async def test_a_pubs_of_one_action_is_answered_item_by_item_in_order(server: Server) -> None:
    """Items of one action without options are published together (Lifecycle.publish_many):
    still one answer per item, in order, a pooled hint on each while no group subscribes,
    and an item whose payload cannot be kept refused alone."""
    publisher = await _raw(server, "publisher")
    items = [{"action": "batch:alone", "payload": {"n": i}} for i in range(3)]
    await publisher.send(json.dumps({"op": "pubs", "items": items, "ref": 1}))
    (ok,) = await _until(publisher, lambda m: m.get("ref") == 1)
    assert [a["pooled"] for a in ok["items"]] == [True] * 3
    assert len({a["task"] for a in ok["items"]}) == 3
    bad = '{"op":"pubs","ref":2,"items":[{"action":"batch:alone","payload":1},'
    bad += '{"action":"batch:alone","payload":1e400},{"action":"batch:alone","payload":3}]}'
    await publisher.send(bad)
    (ok,) = await _until(publisher, lambda m: m.get("ref") == 2)
    first, refused, last = ok["items"]
    assert first["created"] is True and last["created"] is True
    assert refused["error"]["details"]["index"] == 1 and "item 1" in refused["error"]["message"]
    worker = await _raw(server, "worker")
    await worker.send(json.dumps({"op": "sub", "action": "batch:alone", "concurrency": 10}))
    offers = await _until(worker, lambda m: m["op"] == "offer", 5)
    assert [o["payload"] for o in offers] == [{"n": 0}, {"n": 1}, {"n": 2}, 1, 3]
    await worker.close()
    await publisher.close()


async def test_pubs_without_a_ref_say_each_refusal_on_its_own(server: Server) -> None:
    publisher = await _raw(server, "publisher")
    items = [{"action": "batch:run"}, {"action": "bad"}, {"action": "taskhub:x"}]
    await publisher.send(json.dumps({"op": "pubs", "items": items}))
    errors = await _until(publisher, lambda m: m["op"] == "error", 2)
    assert [e["details"]["index"] for e in errors] == [1, 2]
    assert [e["code"] for e in errors] == ["invalid_action", "forbidden"]
    await publisher.close()


async def test_a_batch_over_the_limit_is_refused_whole_naming_the_limit(server: Server) -> None:
    publisher = await _raw(server, "publisher")
    items = [{"action": "batch:run", "payload": i} for i in range(MAX_BATCH + 1)]
    await publisher.send(json.dumps({"op": "pubs", "items": items, "ref": 3}))
    (err,) = await _until(publisher, lambda m: m.get("ref") == 3)
    assert err["op"] == "error" and err["code"] == "bad_message"
    assert f"{MAX_BATCH + 1} items is over the limit of {MAX_BATCH}" in err["message"]
    assert err["details"]["limit"] == MAX_BATCH
    await publisher.send(json.dumps({"op": "queues", "ref": 4}))
    (queues,) = await _until(publisher, lambda m: m.get("ref") == 4)
    assert queues["queues"] == []  # none of them was published
    await publisher.close()


async def test_a_worker_that_said_batch_gets_offers_and_returns_them_in_batches(
    server: Server,
) -> None:
    worker, publisher = await _raw(server, "worker", batch=True), await _raw(server, "publisher")
    await worker.send(json.dumps({"op": "sub", "action": "batch:run", "concurrency": 10, "ref": 1}))
    await _until(worker, lambda m: m.get("ref") == 1)
    pubs = [{"action": "batch:run", "payload": i} for i in range(5)]
    await publisher.send(json.dumps({"op": "pubs", "items": pubs, "ref": 2}))
    (ok,) = await _until(publisher, lambda m: m.get("ref") == 2)
    ids = [a["task"] for a in ok["items"]]
    (batch,) = await _until(worker, lambda m: m["op"] == "offers")
    offers = batch["items"]
    assert [o["task"] for o in offers] == ids and all("op" not in o for o in offers)
    assert [o["payload"] for o in offers] == list(range(5))
    steps = [{"task": o["task"], "attempt": o["attempt"]} for o in offers]
    await worker.send(json.dumps({"op": "pickups", "items": steps}))
    returns: list[dict[str, Any]] = [{**s, "result": s["task"]} for s in steps]
    returns[2] = {"task": ids[2], "attempt": 7, "ref": 9}  # an attempt never offered
    returns.append({"task": ids[0], "attempt": "one", "ref": 10})  # not an int: bad item
    await worker.send(json.dumps({"op": "returns", "items": returns}))
    errors = await _until(worker, lambda m: m["op"] == "error", 2)
    assert [(e["ref"], e["details"]["index"]) for e in errors] == [(9, 2), (10, 5)]
    assert errors[0]["code"] == "not_holding" and errors[0]["message"].startswith("item 2: ")
    assert errors[1]["code"] == "bad_message" and "item 5" in errors[1]["message"]
    events = await _until(publisher, lambda m: m.get("type") == "success", 4)
    assert sorted(e["task"] for e in events) == sorted(ids[:2] + ids[3:])
    await worker.send(json.dumps({"op": "returns", "items": [{**steps[2], "result": 2}]}))
    (last,) = await _until(publisher, lambda m: m.get("type") == "success")
    assert last["task"] == ids[2] and last["data"] == 2
    await worker.close()
    await publisher.close()


async def test_an_old_client_without_batch_is_served_message_by_message(server: Server) -> None:
    """A client that never sends hello (or batched messages) works as before: single offers,
    single answers, even when a batching client publishes."""
    worker = await _raw(server, "worker")
    await worker.send(json.dumps({"op": "sub", "action": "batch:old", "concurrency": 5, "ref": 1}))
    await _until(worker, lambda m: m.get("ref") == 1)
    async with Client(server.url, name="publisher") as publisher:
        handles = [publisher.pub("batch:old", i) for i in range(3)]  # one pubs message
        offers = await _until(worker, lambda m: m["op"] in ("offer", "offers"), 3)
        assert [o["op"] for o in offers] == ["offer"] * 3
        for o in offers:
            await worker.send(
                json.dumps(
                    {"op": "return", "task": o["task"], "attempt": 1, "result": o["payload"]}
                )
            )
        assert await asyncio.gather(*(h.get_result() for h in handles)) == [0, 1, 2]
    await worker.close()


async def test_a_publisher_that_said_starts_hears_its_tasks_started_by_id(server: Server) -> None:
    """``hello`` with ``starts``: the tasks' ``start`` events come as ``starts`` messages
    naming them (docs/protocol.md, "starts"); a client that did not say it (the Node client)
    gets the events as before. The Python client says it, and its handle still tells."""
    plain, quick = await _raw(server, "plain"), await _raw(server, "quick")
    await quick.send(json.dumps({"op": "hello", "starts": True, "ref": 0}))
    await _until(quick, lambda m: m.get("ref") == 0)
    worker = await Client(server.url, name="worker").connect()
    release = asyncio.Event()

    async def slow(task: TaskContext) -> Any:
        await release.wait()
        return task.payload

    await worker.sub("batch:start", slow, concurrency=10)
    async with Client(server.url, name="python") as python:
        handle = python.pub("batch:start", "p")
        for ws in (plain, quick):
            await ws.send(json.dumps({"op": "pub", "action": "batch:start", "ref": 1}))
        (a,) = await _until(plain, lambda m: m.get("ref") == 1)
        (b,) = await _until(quick, lambda m: m.get("ref") == 1)
        (event,) = await _until(plain, lambda m: m["op"] == "event")
        assert event["type"] == "start" and event["task"] == a["task"]
        (starts,) = await _until(quick, lambda m: m["op"] in ("event", "starts"))
        assert starts == {"op": "starts", "tasks": [b["task"]]}
        started: list[str] = []
        handle.on("start", lambda h: started.append(h.state))
        await until(lambda: handle.state == "start")
        assert started == []  # a start listener added late is not called (as before)
        release.set()
        assert await handle == "p"
        for ws, task in ((plain, a["task"]), (quick, b["task"])):
            (end,) = await _until(ws, lambda m: m["op"] in ("event", "starts"))
            assert end["type"] == "success" and end["task"] == task
    await worker.close()
    await plain.close()
    await quick.close()


# --- the client against a hub of its own: what it sends, what it does with what it gets -----
async def _fake_hub(welcome: dict[str, Any], script: Any) -> Any:
    async def hub(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"op": "welcome", "protocol": 1, "max_frame": 1 << 20, **welcome}))
        await script(ws)

    return serve(hub, "127.0.0.1", 0)


@pytest.mark.parametrize("batching", [True, False])
async def test_the_client_sends_a_loop_turns_pubs_as_one_batch(batching: bool) -> None:
    """One ``pubs`` to a hub whose welcome has ``max_batch``; single ``pub``s to an older hub."""
    received: list[dict[str, Any]] = []

    async def script(ws: ServerConnection) -> None:
        async for frame in ws:
            for m in _msgs(frame):
                if m["op"] == "pubs":
                    received.append(m)
                    items = [
                        {"task": f"T{i}", "state": "init", "created": True}
                        for i in range(len(m["items"]))
                    ]
                    await ws.send(json.dumps({"op": "ok", "ref": m["ref"], "items": items}))
                elif m["op"] == "pub":
                    received.append(m)
                    await ws.send(
                        json.dumps({"op": "ok", "ref": m["ref"], "task": f"T{m['payload']}"})
                    )

    welcome = {"max_batch": 1000} if batching else {}
    async with await _fake_hub(welcome, script) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="p") as client:
            handles = [client.pub("a:b", i) for i in range(10)]
            ids = await asyncio.wait_for(asyncio.gather(*(h.accepted() for h in handles)), 5)
    assert ids == [f"T{i}" for i in range(10)]
    if batching:
        assert [m["op"] for m in received] == ["pubs"]
        assert [item["payload"] for item in received[0]["items"]] == list(range(10))
        assert all("op" not in item and "ref" not in item for item in received[0]["items"])
    else:
        assert [m["op"] for m in received] == ["pub"] * 10
        assert len({m["ref"] for m in received}) == 10


async def test_a_worker_runs_each_batched_offer_once_and_returns_in_a_batch() -> None:
    ran: list[str] = []
    returned: list[dict[str, Any]] = []
    ops: list[str] = []
    done = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        async for frame in ws:
            for m in _msgs(frame):
                if m["op"] == "hello":
                    assert m["batch"] is True  # the client says it reads batched messages
                elif m["op"] == "sub":
                    await ws.send(json.dumps({"op": "ok", "ref": m["ref"]}))
                    offer = {
                        "attempt": 1,
                        "action": "a:b",
                        "group": "w",
                        "publisher": "p",
                        "created_at": 1.0,
                    }
                    items = [{**offer, "task": f"T{i}", "payload": i} for i in range(6)]
                    await ws.send(
                        json.dumps(
                            [{"op": "offers", "items": items[:4]}, {"op": "offer", **items[4]}]
                        )
                    )
                    await ws.send(json.dumps({"op": "offers", "items": items[5:]}))
                elif m["op"] == "returns":
                    ops.append("returns")
                    returned.extend(m["items"])
                elif m["op"] == "return":
                    returned.append(m)
                if len(returned) >= 6:
                    done.set()

    async with await _fake_hub({"max_batch": 1000}, script) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="w") as client:

            async def handler(task: TaskContext) -> Any:
                ran.append(task.id)
                return task.payload * 10

            await client.sub("a:b", handler, concurrency=10)
            await asyncio.wait_for(done.wait(), 5)
    assert sorted(ran) == [f"T{i}" for i in range(6)]  # each once
    # The first frame's five offers start five handlers in one loop turn: their results
    # leave together, as one batched message.
    assert "returns" in ops
    assert sorted((r["task"], r["result"]) for r in returned) == [
        (f"T{i}", i * 10) for i in range(6)
    ]


async def test_the_items_of_a_long_frame_count_toward_its_chunks(server: Server) -> None:
    """The hub commits and sends between chunks of a long frame (tests/integration/
    test_frames.py) counting each item of a batched message as a message: a frame of three
    pubs of 40 items reaches the worker as several frames of offers, not one."""
    assert server.hub is not None
    server.hub.quick_apply = 1.0  # every write counts as quick, as memory:// writes are
    worker, publisher = await _raw(server, "worker"), await _raw(server, "publisher")
    sub = {"op": "sub", "action": "batch:chunks", "concurrency": 1000, "ref": 1}
    await worker.send(json.dumps(sub))
    await _until(worker, lambda m: m.get("ref") == 1)
    batches = [
        {
            "op": "pubs",
            "items": [{"action": "batch:chunks", "payload": b * 40 + i} for i in range(40)],
        }
        for b in range(3)
    ]
    await publisher.send(json.dumps(batches))
    frames: list[list[dict[str, Any]]] = []
    async with asyncio.timeout(5):
        while sum(len(f) for f in frames) < 120:
            frames.append([m for m in _msgs(await worker.recv()) if m["op"] == "offer"])
    assert [m["payload"] for f in frames for m in f] == list(range(120))  # each once, in order
    assert len(frames) > 1
    await worker.close()
    await publisher.close()
