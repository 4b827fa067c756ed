"""The hub's hottest frames decoded as structs by the Python client (client/typed.py): what a
handler reads is what the same offers give when decoded as dicts, and a frame that does not
fit the structs is still handled, as dicts (docs/decisions.md, "The clients' per-task Python,
fourth pass")."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from taskhub import Client
from taskhub.client import TaskContext

_OFFER: dict[str, Any] = {
    "attempt": 2,
    "action": "a:b",
    "group": "w",
    "publisher": "p",
    "created_at": 100,  # an int stays an int, as in a dict
}
_ITEMS: list[dict[str, Any]] = [
    {**_OFFER, "task": "T0", "payload": {"n": [1, 2.5, None, True]}},
    {**_OFFER, "task": "T1", "payload": None},
    {**_OFFER, "task": "T2", "payload_size": 5},  # large: fetched with a `payload` request
    {**_OFFER, "task": "T3", "payload": 3, "previous_result": {"r": 1}, "extra": "ignored"},
    {**_OFFER, "task": "T4", "payload": 4, "observe": True, "created_at": 1.5},
]


def _compact(msg: Any) -> str:
    return json.dumps(msg, separators=(",", ":"))  # as the hub writes: `{"op":"offers",...`


def _spaced(msg: Any) -> str:
    return json.dumps(msg)  # `{"op": "offers", ...`: not the struct path's prefix


async def _seen(frames: list[str]) -> dict[str, tuple[Any, ...]]:
    """What a handler reads of each delivery in ``frames``, sent by a fake hub once the client
    subscribed."""
    seen: dict[str, tuple[Any, ...]] = {}
    done = asyncio.Event()

    async def hub(ws: ServerConnection) -> None:
        await ws.send(_compact({"op": "welcome", "protocol": 1, "max_frame": 1 << 20}))
        async for frame in ws:
            msgs = json.loads(frame)
            for m in msgs if isinstance(msgs, list) else [msgs]:
                if m["op"] == "sub":
                    await ws.send(_compact({"op": "ok", "ref": m["ref"]}))
                    for f in frames:
                        await ws.send(f)
                elif m["op"] == "payload":
                    await ws.send(_compact({"op": "ok", "ref": m["ref"], "payload": "big"}))

    async def handler(task: TaskContext) -> None:
        payload = await task.get_payload()
        seen[task.id] = (
            task.attempt,
            task.action,
            task.group,
            task.publisher,
            task.created_at,
            type(task.created_at),
            task.observe,
            task.previous_result,
            payload,
        )
        if len(seen) == len(_ITEMS):
            done.set()

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="w") as client:
            await client.sub("a:b", handler, concurrency=10)
            await asyncio.wait_for(done.wait(), 5)
    return seen


async def test_offers_read_as_structs_give_a_handler_what_dicts_give() -> None:
    as_structs = await _seen([_compact({"op": "offers", "items": _ITEMS})])
    as_dicts = await _seen([_spaced({"op": "offers", "items": _ITEMS})])
    one_by_one = await _seen([_compact({"op": "offer", **item}) for item in _ITEMS])
    assert as_structs == as_dicts == one_by_one
    assert as_structs["T0"] == (
        2,
        "a:b",
        "w",
        "p",
        100,
        int,
        False,
        None,
        {"n": [1, 2.5, None, True]},
    )
    assert as_structs["T1"][-1] is None
    assert as_structs["T2"][-1] == "big"
    assert as_structs["T3"][-2:] == ({"r": 1}, 3)
    assert as_structs["T4"][4:7] == (1.5, float, True)


@pytest.mark.parametrize(
    "odd",
    [
        {"created_at": "yesterday"},  # a field of another type
        {"publisher": None},
        {"observe": 1},
    ],
)
async def test_an_offers_frame_that_does_not_fit_the_structs_is_read_as_dicts(
    odd: dict[str, Any],
) -> None:
    items = [{**item, **odd} for item in _ITEMS]
    seen = await _seen([_compact({"op": "offers", "items": items})])
    assert sorted(seen) == [item["task"] for item in _ITEMS]
    key = next(iter(odd))
    index = {"created_at": 4, "publisher": 3, "observe": 6}[key]
    value = bool(odd[key]) if key == "observe" else odd[key]
    assert all(fields[index] == value for fields in seen.values())


# --- task events -------------------------------------------------------------------------
def _event(task: str, kind: str, state: str, data: Any = None, **more: Any) -> dict[str, Any]:
    msg = {"op": "event", "task": task, "type": kind, "state": state, "at": 1.0, **more}
    if data is not None:
        msg["data"] = data
    return msg


# Per task: what the hub says after its `pub` was answered (the fake hub's tasks T0..T3).
_EVENTS: list[dict[str, Any]] = [
    _event("T0", "update", "start", {"pct": 50}, service="w"),
    _event("T0", "success", "success", {"r": [1, None]}, service="w"),
    _event("T1", "fail", "fail", {"reason": "error", "message": "boom", "type": "ValueError"}),
    _event("T2", "end", "end"),
    _event("T3", "update", "start", [1, 2]),
    _event("T0", "fail", "fail", {"message": "after the end: changes nothing"}),
]


async def _handles(frames: list[str]) -> list[tuple[Any, ...]]:
    """What four handles read once a fake hub accepted their pubs and sent ``frames``."""

    async def hub(ws: ServerConnection) -> None:
        welcome = {"op": "welcome", "protocol": 1, "max_frame": 1 << 20, "max_batch": 100}
        await ws.send(_compact(welcome))
        async for frame in ws:
            msgs = json.loads(frame)
            for m in msgs if isinstance(msgs, list) else [msgs]:
                if m["op"] == "pubs":
                    items = [{"task": f"T{i}", "state": "init", "created": True} for i in range(4)]
                    await ws.send(_compact({"op": "ok", "ref": m["ref"], "items": items}))
                    for f in frames:
                        await ws.send(f)
                    await ws.send(_compact(_event("T3", "end", "end")))

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with Client(url, name="p", connect_timeout=5) as client:
            handles = [client.pub("a:b", i) for i in range(4)]
            updates: list[Any] = []
            handles[3].on("update", lambda h: updates.append(h.last_update))
            async with asyncio.timeout(5):
                for h in handles:
                    with contextlib.suppress(Exception):
                        await h
    out = []
    for h in handles:
        try:
            outcome: Any = ("result", h.outcome())
        except Exception as exc:
            outcome = (type(exc).__name__, str(exc))
        out.append((h.id, h.state, h.result, h.error, h.last_update, outcome))
    out.append(tuple(updates))
    return out


async def test_events_read_as_structs_give_a_handle_what_dicts_give() -> None:
    as_structs = await _handles([_compact(_EVENTS)])
    one_by_one = await _handles([_compact(m) for m in _EVENTS])
    as_dicts = await _handles([_spaced(_EVENTS)])
    assert as_structs == one_by_one == as_dicts
    assert as_structs[0][1:3] == ("success", {"r": [1, None]})
    assert as_structs[1][5] == ("TaskFailed", "task T1 (a:b) failed: ValueError: boom")
    assert as_structs[2][5][0] == "NoResult"
    assert as_structs[4] == ([1, 2],)


# --- the answer to a pubs ----------------------------------------------------------------
_ANSWERS: list[dict[str, Any]] = [
    {"task": "A0", "state": "init", "created": True},
    {"task": "A1", "state": "start", "created": False},  # a key= seen before: followed
    {"task": "A2", "state": "init", "created": True, "pooled": True},
    {"error": {"code": "permission_denied", "message": "no pub for a:b"}},
    # (a fifth pub gets no item: the hub left it out)
]


async def _answered(dump: Callable[[Any], str]) -> list[tuple[Any, ...]]:
    """What five handles read once a fake hub answered their pubs with ``_ANSWERS``, written
    with ``dump``; a followed task's view ends it."""
    followed: list[str] = []

    async def hub(ws: ServerConnection) -> None:
        welcome = {"op": "welcome", "protocol": 1, "max_frame": 1 << 20, "max_batch": 100}
        await ws.send(_compact(welcome))
        async for frame in ws:
            msgs = json.loads(frame)
            for m in msgs if isinstance(msgs, list) else [msgs]:
                if m["op"] == "pubs":
                    await ws.send(dump({"op": "ok", "ref": m["ref"], "items": _ANSWERS}))
                elif m["op"] == "follow":
                    followed.append(m["task"])
                    view = {"id": m["task"], "state": "success", "result": "r"}
                    await ws.send(_compact({"op": "ok", "ref": m["ref"], "task": view}))

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}", name="p") as client:
            handles = [client.pub("a:b", i) for i in range(5)]
            async with asyncio.timeout(5):
                for h in handles:
                    with contextlib.suppress(Exception):
                        await h.accepted()
                with contextlib.suppress(Exception):
                    await handles[1]
            out: list[tuple[Any, ...]] = []
            for h in handles:
                refusal = None
                if h.done and h.state != "success":
                    try:
                        h.outcome()
                    except Exception as exc:
                        refusal = (type(exc).__name__, str(exc))
                out.append((h.id, h.state, h.pooled, h.result, h.done, refusal))
    out.append(tuple(followed))
    return out


async def test_a_pubs_answer_read_as_structs_gives_the_handles_what_dicts_give() -> None:
    as_structs = await _answered(_compact)
    as_dicts = await _answered(_spaced)
    assert as_structs == as_dicts
    assert as_structs[0][:3] == ("A0", "init", False)
    assert as_structs[1][:5] == ("A1", "success", False, "r", True)  # followed, caught up
    assert as_structs[2][:3] == ("A2", "init", True)
    assert as_structs[3][5] == ("TaskHubError", "no pub for a:b")
    assert as_structs[4][5] is not None and "left this one out" in as_structs[4][5][1]
    assert as_structs[5] == ("A1",)


async def test_an_event_whose_data_says_watched_is_read_as_structs_as_dicts() -> None:
    # The struct path used to search a frame's bytes for `"watched":` and read any frame with
    # it as dicts; now only an event's own `watched` field decides, so a task's data may hold
    # that key and still be read as structs, giving the handle what dicts give.
    events = [
        _event("T0", "update", "start", {"watched": True, "pct": 5}),
        _event("T0", "success", "success", {"watched": False}),
        _event("T1", "end", "end", None, watched=None),  # a null `watched`: not watched
        _event("T2", "end", "end"),
    ]
    as_structs = await _handles([_compact(events)])
    as_dicts = await _handles([_spaced(events)])
    assert as_structs == as_dicts
    assert as_structs[0][1:5] == ("success", {"watched": False}, None, {"watched": True, "pct": 5})
    assert [h[1] for h in as_structs[:4]] == ["success", "end", "end", "end"]


async def test_a_frame_with_a_watched_event_gives_the_watch_and_the_handle_theirs() -> None:
    # One frame: a followed task's events around a watched event of the same task. The
    # watched one fails the structs (its `watched` is true), so the frame is read as dicts:
    # the watch gets the watched event, the handle its own two, nothing crosses over.
    async def hub(ws: ServerConnection) -> None:
        welcome = {"op": "welcome", "protocol": 1, "max_frame": 1 << 20, "max_batch": 100}
        await ws.send(_compact(welcome))
        async for frame in ws:
            msgs = json.loads(frame)
            for m in msgs if isinstance(msgs, list) else [msgs]:
                if "ref" not in m:  # hello
                    continue
                if m["op"] != "pub":  # watch, unwatch
                    await ws.send(_compact({"op": "ok", "ref": m["ref"]}))
                else:
                    await ws.send(_compact({"op": "ok", "ref": m["ref"], "task": "T0"}))
                    both = [
                        _event("T0", "update", "start", {"pct": 1}),
                        _event("T0", "pickup", "start", {"x": 1}, watched=True, action="a:b"),
                        _event("T0", "success", "success", "r"),
                    ]
                    await ws.send(_compact(both))

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with Client(url, name="p", connect_timeout=5) as client, client.watch("a:*") as w:
            handle = client.pub("a:b", 1)
            async with asyncio.timeout(5):
                assert await handle == "r"
                seen = await w.__anext__()
    assert (handle.state, handle.last_update) == ("success", {"pct": 1})
    assert (seen["task"], seen["type"], seen["data"]) == ("T0", "pickup", {"x": 1})
