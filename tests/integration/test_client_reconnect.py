"""What a client sends and reads again around a reconnect. A worker's subscription refused
``partition_unavailable`` (client/retry.py, and past the resends ``_sub_again``): at most one
``sub`` of it is in flight at a time. A reconnect sends it again itself; neither a send
planned before the connection was lost (a resend's delay, or the planned send after the
resends) may add a second one beside it. A publisher's handle that ended keeps its end when
a ``follow`` sent at the reconnect is answered late. The hub is scripted (a real WebSocket
server on loopback): a real hub cannot be made to refuse or answer late on cue."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from taskhub import Client
from tests.conftest import until

Script = Callable[[ServerConnection, int, dict[str, Any]], Awaitable[None]]
HELD = 1.0  # seconds the scripted hub holds the reconnect's own sub unanswered


@contextlib.asynccontextmanager
async def _scripted_hub(script: Script) -> AsyncIterator[str]:
    """A WebSocket server that greets like a hub and hands every message it reads, with the
    number of the connection (from 1), to ``script`` (each in a task of its own, so that a
    message held unanswered does not hold the next)."""
    count = 0
    tasks: set[asyncio.Task[None]] = set()

    async def handler(ws: ServerConnection) -> None:
        nonlocal count
        count += 1
        number = count
        await ws.send(json.dumps({"op": "welcome", "protocol": 1, "max_frame": 1 << 20}))
        async for frame in ws:
            data = json.loads(frame)
            for msg in data if isinstance(data, list) else [data]:
                task = asyncio.ensure_future(script(ws, number, msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    for task in tasks:
        task.cancel()


def _refusal(ref: int, retry_after: float) -> str:
    return json.dumps(
        {
            "op": "error",
            "ref": ref,
            "code": "partition_unavailable",
            "message": "partition 1 has no leader right now",
            "details": {"partition": 1, "leader": "", "retry_after": retry_after},
        }
    )


class Subs:
    """The ``sub`` messages each connection got, and the most in flight at once on each."""

    def __init__(self) -> None:
        self.got: dict[int, int] = {}
        self.open: dict[int, int] = {}
        self.most: dict[int, int] = {}
        self.answered = asyncio.Event()  # the reconnect's own sub, answered ok

    def came(self, number: int) -> None:
        self.got[number] = self.got.get(number, 0) + 1
        self.open[number] = self.open.get(number, 0) + 1
        self.most[number] = max(self.most.get(number, 0), self.open[number])

    def done(self, number: int) -> None:
        self.open[number] -= 1


async def _hold_then_ok(ws: ServerConnection, subs: Subs, number: int, ref: int) -> None:
    await asyncio.sleep(HELD)  # long enough for a planned send to come, were there one
    subs.done(number)
    await ws.send(json.dumps({"op": "ok", "ref": ref}))
    subs.answered.set()


async def test_a_resend_planned_before_a_reconnect_does_not_double_its_own_sub() -> None:
    """The first ``sub`` is refused; the connection is lost during the resend's delay. The
    reconnect sends the subscription again; the resend planned on the lost connection must
    not follow it (it did: two subs in flight on the new connection)."""
    subs = Subs()

    async def script(ws: ServerConnection, number: int, msg: dict[str, Any]) -> None:
        if msg["op"] != "sub":
            return
        subs.came(number)
        if number == 1:
            subs.done(number)
            await ws.send(_refusal(msg["ref"], 0.4))  # the client waits 0.4-0.6 s
            await asyncio.sleep(0.05)
            await ws.close(1013)
        else:
            await _hold_then_ok(ws, subs, number, msg["ref"])

    async with _scripted_hub(script) as url, Client(url, name="w", max_backoff=0.05) as w:
        sub = w.sub("job:run", lambda t: None)
        await asyncio.wait_for(subs.answered.wait(), 10)
        await asyncio.wait_for(sub, 1)  # confirmed by the reconnect's own send
        await asyncio.sleep(0.7)  # past the old resend's time
    assert subs.got == {1: 1, 2: 1}, subs.got
    assert subs.most[2] == 1


async def test_a_send_planned_past_the_resends_does_not_double_a_reconnects_sub() -> None:
    """A confirmed subscription, sent again at a reconnect, is refused past the client's
    resends: it is sent again after ``retry_after`` (resub-pending's ``_sub_again``). The
    connection is lost before that: the next reconnect sends it itself, and the planned send
    must not add a second one while that one is in flight."""
    subs = Subs()

    async def script(ws: ServerConnection, number: int, msg: dict[str, Any]) -> None:
        if msg["op"] != "sub":
            return
        subs.came(number)
        if number == 1:  # confirmed; then the hub sends the connection away
            subs.done(number)
            await ws.send(json.dumps({"op": "ok", "ref": msg["ref"]}))
            await asyncio.sleep(0.05)
            await ws.close(1013)
        elif number == 2:  # refused each time; the last refusal plans a send in 0.4 s
            subs.done(number)
            last = subs.got[2] == 6  # the reconnect's send and its 5 resends
            await ws.send(_refusal(msg["ref"], 0.4 if last else 0.01))
            if last:
                await asyncio.sleep(0.05)
                await ws.close(1013)
        else:
            await _hold_then_ok(ws, subs, number, msg["ref"])

    async with _scripted_hub(script) as url, Client(url, name="w", max_backoff=0.05) as w:
        await asyncio.wait_for(w.sub("job:run", lambda t: None), 5)
        await asyncio.wait_for(subs.answered.wait(), 20)
        await asyncio.sleep(0.5)  # past the planned send's time
    assert subs.got == {1: 1, 2: 6, 3: 1}, subs.got
    assert subs.most[3] == 1


async def _followed_after_reconnect(then: list[str], *, answer_last: bool = False) -> Any:
    """A publisher's task, accepted and started on a connection that is then lost; on the
    next one the hub answers the ``follow`` with the view it had (state ``init``, as the
    hub read it) and, in the same frame, the events ``then`` that came after (or, with
    ``answer_last``, before: the answer read before them but sent last). The handle."""
    task = "01M98H3AAY01D30Z9DQQBMZ9XJ"

    def event(kind: str) -> dict[str, Any]:
        data = {"data": 5} if kind == "success" else {}
        return {"op": "event", "task": task, "type": kind, "state": kind, "at": 1.0, **data}

    async def script(ws: ServerConnection, number: int, msg: dict[str, Any]) -> None:
        if msg["op"] == "pub":  # accepted, then the connection is lost
            ok = {"op": "ok", "ref": msg["ref"], "task": task, "state": "init", "created": True}
            await ws.send(json.dumps(ok))
            await ws.close(1013)
        elif msg["op"] == "follow":
            view = {"id": task, "action": "job:run", "state": "init", "result": None}
            answer = {"op": "ok", "ref": msg["ref"], "task": view}
            events = [event(kind) for kind in then]
            frame = [*events, answer] if answer_last else [answer, *events]
            await ws.send(json.dumps(frame))

    async with _scripted_hub(script) as url, Client(url, name="p", max_backoff=0.05) as pub:
        handle = pub.pub("job:run", 4)
        await handle.accepted()
        await until(lambda: handle.state == then[-1])
        await asyncio.sleep(0.1)  # a loop turn or more: what a late callback would undo
        return handle


async def test_a_follows_answer_comes_before_the_events_after_it() -> None:
    """The follow's answer (state ``init``) and the task's ``start`` in one frame: the handle
    is left ``start``. The answer used to be given through a future whose callback ran a loop
    turn after the frame's events, putting ``init`` back over ``start``."""
    handle = await _followed_after_reconnect(["start"])
    assert handle.state == "start"


async def test_a_follows_answer_after_the_start_does_not_take_the_task_back() -> None:
    """The task's ``start``, then the follow's answer (state ``init``, read before it): the
    handle stays ``start``, as a task's states only move forward (docs/lifecycle.md)."""
    handle = await _followed_after_reconnect(["start"], answer_last=True)
    assert handle.state == "start"


async def test_a_late_snapshot_does_not_undo_a_tasks_end() -> None:
    """Issue 19's "TaskFailed ... failed: error" in the kill -9 test: the publisher's handle
    got the follow's answer (state ``init``, as the hub read it) with its task's ``start`` and
    ``success`` after it; the answer, applied last, put ``init`` over ``success`` and
    ``get_result`` raised TaskFailed "failed: error" for a task that succeeded."""
    handle = await _followed_after_reconnect(["start", "success"])
    assert handle.state == "success"
    assert await handle.get_result() == 5
