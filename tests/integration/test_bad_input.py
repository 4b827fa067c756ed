"""Bad input gets an error that names what was wrong; the hub keeps serving everyone."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from taskhub import Client, InvalidAction, Server, TaskFailed
from taskhub.errors import FrameTooLarge
from tests.conftest import ClientFactory, ServerFactory


async def _raw(server: Server, name: str = "raw") -> ClientConnection:
    ws = await connect(
        server.url + "/v1/ws", additional_headers={"Authorization": f"Bearer {name}:"}
    )
    welcome = json.loads(await ws.recv())
    assert welcome["op"] == "welcome" and welcome["protocol"] == 1
    return ws


async def _answer(ws: ClientConnection, frame: str) -> list[dict[str, Any]]:
    await ws.send(frame)
    data = json.loads(await ws.recv())
    return data if isinstance(data, list) else [data]


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{not json", "bad_message", "not valid JSON"),
        ('{"op": "explode", "ref": 1}', "unknown_op", "'explode'"),
        ('{"ref": 2}', "bad_message", "missing field 'op'"),
        ('{"op": "pub", "ref": 3}', "bad_message", "action"),
        ('{"op": "pub", "action": "email:se nd", "ref": 4}', "invalid_action", "' '"),
        (
            '{"op": "pub", "action": "a:b", "options": {"colour": 1}, "ref": 5}',
            "bad_message",
            "colour",
        ),
        ('{"op": "ack", "task": "x", "attempt": "one", "ref": 6}', "bad_message", "attempt"),
        ('{"op": "return", "task": "nope", "attempt": 1, "ref": 7}', None, None),
        ('{"op": "update", "task": "nope", "attempt": 1, "ref": 8}', "not_holding", "nope"),
        ('{"op": "get", "task": "nope", "ref": 9}', "task_not_found", "nope"),
        ("[1, 2]", "bad_message", "JSON object"),
        # JSON the hub keeps undecoded must still decode, or no store could read it back
        ('{"op": "pub", "action": "a:b", "payload": [1e400], "ref": 10}', "bad_message", "payload"),
        (
            '{"op": "return", "task": "x", "attempt": 1, "result": 1e999, "ref": 11}',
            "bad_message",
            "result",
        ),
    ],
)
async def test_bad_message_is_named(
    server: Server, make_client: ClientFactory, frame: str, code: str | None, words: str | None
) -> None:
    ws = await _raw(server)
    # A bystander's work must go on regardless.
    worker = await make_client("bystander")
    await worker.sub("ok:run", lambda t: "fine")
    reply = (await _answer(ws, frame))[0]
    if code is None:
        assert reply["op"] == "ok"  # a late return for an ended/unknown task is ignored
    else:
        assert reply["op"] == "error", reply
        assert reply["code"] == code
        assert words in reply["message"]
        if '"ref"' in frame:
            assert reply["ref"] == json.loads(frame)["ref"]
    # the same connection still works
    [ok] = await _answer(ws, '{"op": "pub", "action": "ok:run", "ref": 100}')
    assert ok["op"] == "ok" and ok["ref"] == 100 and ok["task"]
    assert await worker.pub("ok:run").get_result(timeout=5) == "fine"
    await ws.close()


async def test_one_bad_message_in_a_batch_spares_the_others(server: Server) -> None:
    ws = await _raw(server)
    frame = json.dumps(
        [
            {"op": "pub", "action": "x:y", "ref": 1},
            {"op": "pub", "action": "x:y", "ref": 2, "options": {"priority": "high"}},
            {"op": "pub", "action": "x:y", "ref": 3},
        ]
    )
    replies = await _answer(ws, frame)
    by_ref = {r["ref"]: r for r in replies}
    assert by_ref[1]["op"] == "ok" and by_ref[3]["op"] == "ok"
    assert by_ref[2]["op"] == "error" and "priority" in by_ref[2]["message"]
    await ws.close()


async def test_a_result_that_cannot_be_sent_or_kept_fails_the_task_at_once(
    server: Server, make_client: ClientFactory
) -> None:
    """A result the worker cannot send (not JSON, over the frame limit) or the hub cannot keep
    (JSON msgspec cannot read, from another client) fails its delivery at once, saying why,
    instead of leaving the task started until its end timeout (60 s by default)."""

    class Opaque:
        pass

    worker = await make_client("worker")
    publisher = await make_client("publisher")

    async def handler(task: Any) -> Any:
        kind = await task.get_payload()
        if kind == "opaque":
            return Opaque()
        if kind == "huge":
            return "x" * (2 << 20)  # over the 1 MiB frame limit
        if kind == "cyclic":
            looped: dict[str, Any] = {}
            looped["self"] = looped
            await task.success(looped)  # raises: nothing was sent, so the delivery fails
        return "fine"

    await worker.sub("res:make", handler, concurrency=1)  # one stuck task would block the rest
    for kind, words in [
        ("opaque", "TypeError: its result could not be sent: return message: result is a .*Opaque"),
        ("huge", "FrameTooLarge: its result could not be sent: return message of"),
        ("cyclic", "RecursionError"),
    ]:
        with pytest.raises(TaskFailed, match=words):
            await publisher.pub("res:make", kind).get_result(timeout=5)
    assert await publisher.pub("res:make", "ok").get_result(timeout=5) == "fine"

    # A raw worker returns a number no JSON reader keeps (1e400), without a ref.
    ws = await _raw(server, "rawworker")
    [ok] = await _answer(ws, '{"op": "sub", "action": "raw:job", "ref": 1}')
    assert ok["op"] == "ok"
    handle = publisher.pub("raw:job")
    offer = json.loads(await ws.recv())
    offer = offer[0] if isinstance(offer, list) else offer
    assert offer["op"] == "offer"
    ret = {"op": "return", "task": offer["task"], "attempt": offer["attempt"]}
    [error] = await _answer(ws, json.dumps(ret)[:-1] + ', "result": 1e400}')
    assert error["op"] == "error" and error["code"] == "bad_message"
    assert "result" in error["message"]
    with pytest.raises(TaskFailed, match="result cannot be read as JSON"):
        await handle.get_result(timeout=5)
    await ws.close()


async def test_oversized_frame_is_refused_and_nothing_is_lost(make_server: ServerFactory) -> None:
    server = await make_server(max_frame=10_000)
    ws = await _raw(server)
    big = json.dumps({"op": "pub", "action": "a:b", "payload": "x" * 20_000, "ref": 1})
    [reply] = await _answer(ws, big)
    assert reply["code"] == "frame_too_large" and "10000" in reply["message"]
    [ok] = await _answer(ws, '{"op": "pub", "action": "a:b", "ref": 2}')
    assert ok["op"] == "ok"
    await ws.close()
    # The Python client refuses such a message itself, naming the limit, and carries on.
    async with Client(server.url, name="c") as client:
        with pytest.raises(FrameTooLarge, match="10000"):
            await client.pub("a:b", "x" * 20_000).accepted()
        assert await client.pub("a:b", "small").accepted()


async def test_client_validates_action_names(make_client: ClientFactory) -> None:
    client = await make_client("c")
    with pytest.raises(InvalidAction, match="'!'"):
        client.pub("email:send!", None)
    with pytest.raises(InvalidAction):
        client.sub("no-verb", lambda t: None)


async def test_a_hub_bug_answers_internal_and_the_connection_goes_on(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not bad input but a bug while applying a message: logged with its traceback, answered
    `internal` without details, and the rest of the frame and the connection carry on."""
    hub = server.hub
    assert hub is not None
    real = hub.topics.subscribe

    def buggy(peer: Any, pattern: str) -> None:
        if pattern == "boom.now":
            raise KeyError("a bug")
        real(peer, pattern)

    monkeypatch.setattr(hub.topics, "subscribe", buggy)
    ws = await _raw(server)
    with caplog.at_level(logging.ERROR, logger="taskhub"):
        replies = await _answer(
            ws,
            json.dumps(
                [
                    {"op": "subscribe", "topic": "boom.now", "ref": 1},
                    {"op": "subscribe", "topic": "fine.now", "ref": 2},
                ]
            ),
        )
    assert replies[0] == {
        "op": "error",
        "code": "internal",
        "message": "internal error; the hub logged it",
        "ref": 1,
    }
    assert replies[1] == {"op": "ok", "ref": 2}
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    [ok] = await _answer(ws, '{"op": "pub", "action": "a:b", "ref": 3}')
    assert ok["op"] == "ok"
    await ws.close()
