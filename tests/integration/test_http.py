"""The /v1 HTTP API over real loopback HTTP: tasks, results, events, errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskhub import Server
from tests.conftest import ClientFactory, ServerFactory, until


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


async def _sse(
    http: httpx.AsyncClient, task_id: str, last_event_id: int | None = None
) -> list[dict[str, Any]]:
    """Read a task's event stream to its end, as a browser's EventSource would."""
    events: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    async with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if fields:
                    events.append(
                        {"id": int(fields["id"]), "event": fields["event"]}
                        | json.loads(fields["data"])
                    )
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


async def test_ws_worker_serves_an_http_task(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    worker = await make_client("geo")

    @worker.sub("geo:geocode")
    async def geocode(task: Any) -> Any:
        await task.update({"step": 1})
        return {"city": (await task.get_payload())["q"]}

    await geocode
    r = await http.post("/v1/tasks", json={"action": "geo:geocode", "payload": {"q": "Oslo"}})
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["state"] == "init" and task["publisher"] == "anonymous"
    r = await http.get(f"/v1/tasks/{task['id']}/result", params={"wait": 5})
    assert r.status_code == 200
    assert r.json() == {"id": task["id"], "state": "success", "result": {"city": "Oslo"}}
    r = await http.get(f"/v1/tasks/{task['id']}")
    assert r.json()["state"] == "success" and r.json()["last_update"] == {"step": 1}


async def test_integers_beyond_64_bits_travel_unchanged_as_over_websocket(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    # The stores write JSON, which keeps any integer: HTTP takes what WebSocket takes.
    worker = await make_client("worker")

    @worker.sub("big:echo")
    async def echo(task: Any) -> Any:
        payload = await task.get_payload()
        return {"got": payload["n"], "next": payload["n"] + 1}

    await echo
    r = await http.post("/v1/tasks", json={"action": "big:echo", "payload": {"n": 2**70}})
    assert r.status_code == 201, r.text
    r = await http.get(f"/v1/tasks/{r.json()['id']}/result", params={"wait": 5})
    assert r.json()["result"] == {"got": 2**70, "next": 2**70 + 1}


async def test_sse_streams_stored_then_live_events_to_the_end(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    r = await http.post("/v1/tasks", json={"action": "slow:run"})
    task_id = r.json()["id"]
    reader = asyncio.create_task(_sse(http, task_id))
    await asyncio.sleep(0.2)  # the stream is open and waiting: what follows is live
    assert not reader.done()
    worker = await make_client("slow")

    async def run(task: Any) -> Any:
        await task.update({"half": True})
        return "ok"

    await worker.sub("slow:run", run)
    events = await asyncio.wait_for(reader, 10)
    types = [e["event"] for e in events]
    assert types[0] == "init" and types[-1] == "success"
    assert {"offer", "start", "update"} <= set(types)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})  # no repeats
    assert events[-1]["data"] == "ok" and events[-1]["task"] == task_id
    # An ended task's stream replays from the store and ends at once.
    assert [e["event"] for e in await _sse(http, task_id)] == types


async def test_a_resumed_stream_sends_what_follows_its_last_event_id_and_ends_with_the_task(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    task_id = (await http.post("/v1/tasks", json={"action": "slow:resume"})).json()["id"]
    resumed = asyncio.create_task(_sse(http, task_id, last_event_id=1))  # after `init`
    # Past every event the task will have: nothing to send, but the stream still ends when
    # the task does (it used to wait for more live events until the hub stopped).
    beyond = asyncio.create_task(_sse(http, task_id, last_event_id=1000))
    await asyncio.sleep(0.2)  # both are open and waiting: what follows is live
    assert not resumed.done() and not beyond.done()
    worker = await make_client("slow")
    await worker.sub("slow:resume", lambda t: "ok")
    events = await asyncio.wait_for(resumed, 10)
    assert events[0]["id"] > 1 and "init" not in [e["event"] for e in events]
    assert events[-1]["event"] == "success"
    assert await asyncio.wait_for(beyond, 10) == []


async def test_waiting_requests_listen_to_task_events_only_while_they_wait(
    server: Server, http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    """A long poll or an SSE stream hears its task's events through a lifecycle listener that
    is there only while some request waits: otherwise every event would pay a call."""
    assert server.hub is not None
    listeners = server.hub.lc.listeners
    baseline = list(listeners)
    task_id = (await http.post("/v1/tasks", json={"action": "slow:job"})).json()["id"]
    polls = [
        asyncio.create_task(http.get(f"/v1/tasks/{task_id}/result", params={"wait": 5}))
        for _ in range(2)
    ]
    stream = asyncio.create_task(_sse(http, task_id))
    await until(lambda: len(listeners) == len(baseline) + 1)  # one for every waiting request
    worker = await make_client("slow")
    await worker.sub("slow:job", lambda t: "done")
    for poll in polls:
        assert (await poll).json()["result"] == "done"
    assert [e["event"] for e in await stream][-1] == "success"
    await until(lambda: listeners == baseline)


async def test_a_shutdown_answers_long_polls_and_ends_event_streams(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping the hub answers the requests that would wait minutes, rather than leaving
    uvicorn to cancel them after its own timeout: the result poll gets 202 with the task so
    far, the pull consumer's fetch 204, the event stream its stored events and a clean end."""
    server = await make_server()
    assert server.hub is not None
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as http:
        task_id = (await http.post("/v1/tasks", json={"action": "idle:job"})).json()["id"]
        r = await http.post("/v1/consumers", json={"actions": ["other:job"]})
        assert r.status_code == 201, r.text
        consumer = r.json()
        poll = asyncio.create_task(http.get(f"/v1/tasks/{task_id}/result", params={"wait": 120}))
        fetch = asyncio.create_task(
            http.post(
                f"/v1/consumers/{consumer['consumer_id']}/fetch",
                params={"wait": 120},
                headers={"X-Consumer-Token": consumer["consumer_token"]},
            )
        )
        stream = asyncio.create_task(_sse(http, task_id))
        await until(lambda: len(server.hub.wakers) == 3)  # all three are waiting
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(server.stop(), 30)
        r = await poll
        assert r.status_code == 202 and r.json()["id"] == task_id
        assert r.json()["state"] == "init"
        assert (await fetch).status_code == 204
        assert [e["event"] for e in await stream] == ["init"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_result_long_poll_running_failed_cancelled(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    r = await http.post("/v1/tasks", json={"action": "idle:wait"})
    task_id = r.json()["id"]
    r = await http.get(f"/v1/tasks/{task_id}/result", params={"wait": 0.2})
    assert r.status_code == 202 and r.json()["state"] == "init"

    r = await http.delete(f"/v1/tasks/{task_id}")
    assert r.status_code == 200 and r.json()["state"] == "fail"
    assert r.json()["error"]["reason"] == "cancelled"
    r = await http.get(f"/v1/tasks/{task_id}/result")
    assert r.status_code == 409 and r.json()["code"] == "task_cancelled"

    worker = await make_client("boom")

    async def explode(task: Any) -> Any:
        raise ValueError("no good")

    await worker.sub("boom:run", explode)
    task_id = (await http.post("/v1/tasks", json={"action": "boom:run"})).json()["id"]
    r = await http.get(f"/v1/tasks/{task_id}/result", params={"wait": 5})
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "task_failed" and body["message"] == "no good"
    assert body["details"]["error"]["type"] == "ValueError"


async def test_options_and_idempotency_key(http: httpx.AsyncClient) -> None:
    body = {
        "action": "mail:send",
        "payload": [1],
        "options": {"key": "k1", "timeout": None, "priority": 3, "partition_key": "p"},
    }
    first = await http.post("/v1/tasks", json=body)
    again = await http.post("/v1/tasks", json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    opts = first.json()["options"]
    assert opts["timeout"] is None and opts["priority"] == 3 and opts["partition_key"] == "p"
    assert opts["max_attempts"] == 5  # left out: the hub default


async def test_list_pages_through_live_and_stored_tasks(http: httpx.AsyncClient) -> None:
    ids = [
        (await http.post("/v1/tasks", json={"action": "list:me", "payload": i})).json()["id"]
        for i in range(5)
    ]
    other = (await http.post("/v1/tasks", json={"action": "list:other"})).json()["id"]
    await http.delete(f"/v1/tasks/{ids[1]}")
    seen: list[str] = []
    after = None
    for _ in range(10):
        params: dict[str, Any] = {"action": "list:me", "limit": 2}
        if after:
            params["after"] = after
        page = (await http.get("/v1/tasks", params=params)).json()
        assert len(page["tasks"]) <= 2
        seen += [t["id"] for t in page["tasks"]]
        after = page["next"]
        if after is None:
            break
    assert seen == ids and other not in seen
    failed = (await http.get("/v1/tasks", params={"state": "fail"})).json()
    assert [t["id"] for t in failed["tasks"]] == [ids[1]] and failed["next"] is None


# --- errors --------------------------------------------------------------------------------
CREDS: list[dict[str, Any]] = [
    {"name": "web", "key": "webkey", "pub_permissions": ["email"], "sub_permissions": []},
    {"name": "ops", "key": "opskey", "pub_permissions": ["*"], "sub_permissions": ["*"]},
]


@pytest.fixture
async def secured(make_server: ServerFactory) -> AsyncIterator[httpx.AsyncClient]:
    server = await make_server(creds=CREDS, max_frame=10_000)
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": "Bearer web:webkey"}, timeout=10
    ) as client:
        yield client


def _err(r: httpx.Response, status: int, code: str, words: str = "") -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert words in body["message"], body
    return body


async def test_401_without_or_with_wrong_credentials(secured: httpx.AsyncClient) -> None:
    r = await secured.get("/v1/tasks", headers={"Authorization": ""})
    _err(r, 401, "auth_failed", "Authorization")
    assert r.headers["www-authenticate"] == "Bearer"
    _err(
        await secured.get("/v1/tasks", headers={"Authorization": "Bearer web:nope"}),
        401,
        "auth_failed",
        "web",
    )
    _err(
        await secured.get("/v1/tasks", headers={"Authorization": "Basic eA=="}), 401, "auth_failed"
    )
    assert (await secured.get("/v1/tasks")).status_code == 200


async def test_403_names_the_action(secured: httpx.AsyncClient) -> None:
    r = await secured.post("/v1/tasks", json={"action": "geo:geocode"})
    body = _err(r, 403, "forbidden", "geo:geocode")
    assert body["details"] == {"action": "geo:geocode"}
    ops = {"Authorization": "Bearer ops:opskey"}
    task_id = (await secured.post("/v1/tasks", json={"action": "geo:x"}, headers=ops)).json()["id"]
    _err(await secured.get(f"/v1/tasks/{task_id}"), 403, "forbidden", "geo:x")
    _err(await secured.delete(f"/v1/tasks/{task_id}"), 403, "forbidden", task_id)
    r = await secured.post("/v1/consumers", json={"actions": ["email:send"]})
    _err(r, 403, "forbidden", "email:send")


async def test_404_409_and_the_body_limit(secured: httpx.AsyncClient) -> None:
    _err(await secured.get("/v1/tasks/nope"), 404, "task_not_found", "nope")
    _err(await secured.get("/v1/tasks/nope/result"), 404, "task_not_found")
    _err(await secured.get("/v1/tasks/nope/events"), 404, "task_not_found")
    _err(await secured.delete("/v1/tasks/nope"), 404, "task_not_found")
    _err(await secured.get("/v1/nothing/here"), 404, "not_found")
    task_id = (await secured.post("/v1/tasks", json={"action": "email:send"})).json()["id"]
    assert (await secured.delete(f"/v1/tasks/{task_id}")).status_code == 200
    _err(await secured.delete(f"/v1/tasks/{task_id}"), 409, "task_ended", task_id)

    big = {"action": "email:send", "payload": "x" * 20_000}
    _err(await secured.post("/v1/tasks", json=big), 413, "frame_too_large", "10000")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b"x" * 1000

    _err(await secured.post("/v1/tasks", content=chunks()), 413, "frame_too_large", "10000")
    assert (await secured.post("/v1/tasks", json={"action": "email:send"})).status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (b"{not json", 400, "bad_message", "not valid JSON"),
        (b"", 400, "bad_message", "body"),
        (b"[1, 2]", 400, "bad_message", "body"),
        (b'{"payload": 1}', 400, "bad_message", "'action'"),
        (b'{"action": "a:b", "options": {"priority": "high"}}', 400, "bad_message", "priority"),
        (b'{"action": "a:b", "options": {"colour": 1}}', 400, "bad_message", "colour"),
        (b'{"action": "email:se nd"}', 422, "invalid_action", "' '"),
        (b'{"action": "email:send", "options": {"timeout": -1}}', 422, "invalid_option", "timeout"),
        # JSON has no NaN or Infinity: stored, they would have become null without a word.
        (b'{"action": "email:send", "payload": {"x": NaN}}', 400, "bad_message", "NaN"),
        (b'{"action": "email:send", "payload": [-Infinity]}', 400, "bad_message", "-Infinity"),
    ],
)
async def test_bad_input_is_named(
    secured: httpx.AsyncClient, body: bytes, status: int, code: str, words: str
) -> None:
    r = await secured.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
    _err(r, status, code, words)


async def test_bad_query_and_emit(http: httpx.AsyncClient, server: Server) -> None:
    _err(await http.get("/v1/tasks", params={"limit": 0}), 400, "bad_message", "limit")
    _err(await http.get("/v1/tasks", params={"state": "done"}), 400, "bad_message", "state")
    r = await http.post("/v1/events/news:sport", json={"score": 1})
    if getattr(server.hub, "emit", None) is None:  # broadcast events not merged yet
        _err(r, 501, "not_implemented", "broadcast")
        return
    assert r.status_code == 202 and r.json() == {"topic": "news:sport", "delivered": 0}
    _err(await http.post("/v1/events/news:sp ort", json=1), 422, "invalid_action", "' '")
    nan = {"content": b'{"score": NaN}', "headers": {"Content-Type": "application/json"}}
    _err(await http.post("/v1/events/news:sport", **nan), 400, "bad_message", "NaN")  # type: ignore[arg-type]


async def test_emit_takes_a_topic_with_a_slash(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    """The route takes the whole path: ``orders/eu:new`` is one topic, as the client emits it."""
    got: list[Any] = []
    listener = await make_client("listener")
    await listener.subscribe("orders/eu:new", lambda data, topic: got.append(data))
    r = await http.post("/v1/events/orders/eu:new", json={"n": 1})
    assert r.status_code == 202 and r.json() == {"topic": "orders/eu:new", "delivered": 1}
    await until(lambda: got)
    _err(await http.post("/v1/events/orders/e u:new", json=1), 422, "invalid_action", "' '")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/tasks", "GET, POST"),
        ("POST", "/v1/tasks/01ABC", "DELETE, GET"),
        ("GET", "/add", "POST"),
        ("GET", "/v1/events/orders/eu:new", "POST"),
        ("DELETE", "/v1/consumers", "POST"),
    ],
)
async def test_405_lists_the_methods_of_the_path(
    http: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await http.request(method, path)
    _err(r, 405, "method_not_allowed", "Method Not Allowed")
    assert r.headers["allow"] == allow


async def test_openapi_and_docs_are_served(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    for path in ("/v1/tasks", "/v1/tasks/{task_id}/events", "/v1/consumers/{consumer_id}/fetch"):
        assert path in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await http.get("/docs")).status_code == 200


# --- POST /add (seed 000's batch form) -------------------------------------------------------
async def test_add_starts_chains_merging_each_output_over_the_next_input(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    worker = await make_client("calc")

    @worker.sub("calc:step")
    async def step(task: Any) -> Any:
        seen = await task.get_payload()
        return {"last": seen.get("n"), "seen": seen}

    await step
    r = await http.post(
        "/add",
        json=[
            {"tasks": [{"task": "calc:step", "input": {"n": 1}}, {"task": "calc:step"}]},
            {
                "tasks": [
                    {"task": "calc:step", "input": {"n": 10, "last": 0}},
                    {"task": "calc:step", "input": {"n": 20, "last": 0, "extra": True}},
                ]
            },
        ],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accepted"] == 4 and len(body["chains"]) == 2
    first, second = body["chains"]
    r = await http.get(f"/v1/tasks/{second}/result", params={"wait": 5})
    assert r.status_code == 200, r.text
    # the second step's declared input, with the first step's output merged over it
    seen = r.json()["result"]["seen"]
    assert seen["n"] == 20 and seen["last"] == 10 and seen["extra"] is True
    r = await http.get(f"/v1/tasks/{first}/result", params={"wait": 5})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["seen"]["last"] == 1  # no declared input: the previous output

    # one chain, not in a list
    r = await http.post("/add", json={"tasks": [{"task": "calc:step", "input": {"n": 5}}]})
    assert r.status_code == 201 and r.json()["accepted"] == 1, r.text


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ([{"tasks": [{"task": "email:a"}]}, {"tasks": [{"input": 1}]}], "bad_message", "chains.1"),
        ({"tasks": [{"task": "email:a"}, {"task": "nope"}]}, "bad_message", "chain.tasks.1"),
        ({"tasks": []}, "bad_message", "chain.tasks"),
        ({"tasks": [{"task": "email:a", "colour": 1}]}, "bad_message", "colour"),
        ([{"tasks": [{"task": "email:a"}]}, {"tasks": [{"task": "geo:x"}]}], "forbidden", "geo:x"),
        ({"tasks": [{"task": "taskhub:chain"}]}, "forbidden", "chain.tasks.0"),
        ("tasks", "bad_message", "chain"),
    ],
)
async def test_add_refuses_a_malformed_workload_whole_naming_the_step(
    secured: httpx.AsyncClient, body: Any, code: str, words: str
) -> None:
    r = await secured.post("/add", json=body)
    _err(r, 403 if code == "forbidden" else 400, code, words)
    # nothing was started, not even the chains before the bad one
    listed = await secured.get("/v1/tasks", headers={"Authorization": "Bearer ops:opskey"})
    assert listed.json()["tasks"] == []


async def test_add_needs_credentials_and_keeps_the_body_limit(secured: httpx.AsyncClient) -> None:
    r = await secured.post("/add", json={"tasks": []}, headers={"Authorization": ""})
    _err(r, 401, "auth_failed", "Authorization")
    big = {"tasks": [{"task": "email:send", "input": "x" * 20_000}]}
    _err(await secured.post("/add", json=big), 413, "frame_too_large", "10000")


async def test_admin_routes_check_the_shape_their_schema_states(
    secured: httpx.AsyncClient,
) -> None:
    ops = {"Authorization": "Bearer ops:opskey"}
    r = await secured.put("/v1/schedules/s", json={"cron": "", "action": "email:a"}, headers=ops)
    _err(r, 400, "bad_message", "cron")
    body = {"cron": "* * * * *", "action": "email:a", "options": {"colour": 1}}
    _err(await secured.put("/v1/schedules/s", json=body, headers=ops), 400, "bad_message", "colour")
    body = {"cron": "* * * * *", "action": "email:a", "options": {"key": "k"}}
    _err(await secured.put("/v1/schedules/s", json=body, headers=ops), 422, "invalid_option", "key")
    body = {"cron": "* * * * *", "action": "email:a", "options": {"priority": 3, "delay": "1m"}}
    r = await secured.put("/v1/schedules/s", json=body, headers=ops)
    assert r.status_code == 200 and r.json()["options"] == {"priority": 3, "delay": 60.0}, r.text
    _err(await secured.delete("/v1/queues/0/0", headers=ops), 422, "invalid_action", "'0'")
    _err(await secured.get("/v1/queues", headers={"Authorization": ""}), 401, "auth_failed")


async def test_openapi_documents_every_answer_in_the_error_model(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert "/add" in spec["paths"]
    assert "HTTPValidationError" not in json.dumps(spec)  # malformed input gets a 400 ErrorBody
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/") or path == "/v1/dashboard/logout":
            continue
        for method, operation in operations.items():
            assert {"400", "401", "500"} <= operation["responses"].keys(), (method, path)
