"""``POST /v1/tasks:batch`` over real loopback HTTP: order, one store write, all or nothing,
permissions per action, the count bound, keys and debounce within a batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskhub import Server
from taskhub.records import WriteBatch
from taskhub.store.memory import MemoryStore
from tests.conftest import ClientFactory, ServerFactory

BATCH = "/v1/tasks:batch"
CREDS: list[dict[str, Any]] = [
    {"name": "web", "key": "webkey", "pub_permissions": ["email"], "sub_permissions": []},
]


class RecordingStore(MemoryStore):
    """The memory engine, keeping the task ids of each batch it is given to write."""

    url = "recording://"

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[set[str]] = []

    async def apply(self, batch: WriteBatch) -> None:
        self.writes.append({rec.id for rec in batch.tasks})
        await super().apply(batch)


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


async def _stored_ids(http: httpx.AsyncClient) -> list[str]:
    page = (await http.get("/v1/tasks", params={"limit": 1000})).json()
    return [t["id"] for t in page["tasks"]]


def _err(r: httpx.Response, status: int, code: str, words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code and words in body["message"], body
    return body


async def test_a_batch_is_published_in_order_in_one_store_write(
    make_server: ServerFactory,
) -> None:
    store = RecordingStore()
    server = await make_server(store=store)
    items = [{"action": "mail:send", "payload": {"n": n}} for n in range(50)]
    items[7]["options"] = {"priority": 5, "key": "k7"}
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        r = await http.post(BATCH, json={"tasks": items})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["created"] == [True] * 50
        tasks = body["tasks"]
        # Each answer is the task as POST /v1/tasks answers it, in the order given.
        for task in tasks:
            one = (await http.get(f"/v1/tasks/{task['id']}")).json()
            assert one == task and one["action"] == "mail:send" and one["state"] == "init"
        assert tasks[7]["options"]["priority"] == 5 and tasks[7]["options"]["key"] == "k7"
        ids = [t["id"] for t in tasks]
        assert len(set(ids)) == 50 and await _stored_ids(http) == ids
    # Stored by one write of the commit pipeline: the first write holding any of them has all.
    writes = [w for w in store.writes if w & set(ids)]
    assert writes[0] >= set(ids)


async def test_workers_get_a_batch_in_order(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    got: list[int] = []
    worker = await make_client("w")

    async def work(task: Any) -> Any:
        n: int = (await task.get_payload())["n"]
        got.append(n)
        return n * 2

    await worker.sub("calc:double", work)
    r = await http.post(
        BATCH, json={"tasks": [{"action": "calc:double", "payload": {"n": n}} for n in range(5)]}
    )
    assert r.status_code == 201, r.text
    for n, task in enumerate(r.json()["tasks"]):
        res = await http.get(f"/v1/tasks/{task['id']}/result", params={"wait": 10})
        assert res.json()["result"] == n * 2
    assert got == [0, 1, 2, 3, 4]  # one worker, concurrency 1: publish order


@pytest.mark.parametrize(
    ("bad", "status", "code", "words"),
    [
        ({"action": "mail:send", "options": {"delay": -1}}, 422, "invalid_option", "delay"),
        ({"action": "mail send"}, 422, "invalid_action", "mail send"),
        ({"action": "mail:send", "options": {"delay": "soon"}}, 422, "invalid_option", "delay"),
    ],
)
async def test_a_bad_item_refuses_the_whole_batch_naming_it(
    http: httpx.AsyncClient, bad: dict[str, Any], status: int, code: str, words: str
) -> None:
    items = [{"action": "mail:send"}, {"action": "mail:send"}, bad, {"action": "mail:send"}]
    body = _err(await http.post(BATCH, json={"tasks": items}), status, code, words)
    assert body["message"].startswith("tasks.2") and body["details"]["index"] == 2
    assert await _stored_ids(http) == []  # nothing published, not even the items before it


async def test_a_malformed_item_is_a_400_naming_its_index_and_field(
    http: httpx.AsyncClient,
) -> None:
    items = [{"action": "mail:send"}, {"action": "mail:send", "options": {"priority": "high"}}]
    body = _err(await http.post(BATCH, json={"tasks": items}), 400, "bad_message", "priority")
    assert body["details"]["fields"] == ["tasks.1.options.priority"]
    r = await http.post(BATCH, json={"tasks": [{"action": "mail:send", "colour": "red"}]})
    assert _err(r, 400, "bad_message", "colour")["details"]["fields"] == ["tasks.0.colour"]
    assert await _stored_ids(http) == []


async def test_permission_is_checked_per_action(make_server: ServerFactory) -> None:
    server = await make_server(creds=CREDS)
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": "Bearer web:webkey"}, timeout=10
    ) as http:
        items = [{"action": "email:send"}, {"action": "geo:geocode"}, {"action": "email:send"}]
        body = _err(await http.post(BATCH, json={"tasks": items}), 403, "forbidden", "geo")
        assert body["message"] == "tasks.1: 'web' may not publish 'geo:geocode'"
        assert body["details"] == {"action": "geo:geocode", "index": 1}
        assert await _stored_ids(http) == []
        r = await http.post(BATCH, json={"tasks": [items[0], items[2]]})
        assert r.status_code == 201 and r.json()["created"] == [True, True]
        # The caller's credentials come before the body: no key, no word about the items.
        r = await http.post(BATCH, json={"tasks": items}, headers={"Authorization": ""})
        assert r.status_code == 401


async def test_the_count_is_bounded(http: httpx.AsyncClient) -> None:
    item = {"action": "mail:send"}
    r = await http.post(BATCH, json={"tasks": [item] * 1001})
    assert _err(r, 400, "bad_message", "1000")["details"]["fields"] == ["tasks"]
    assert await _stored_ids(http) == []
    r = await http.post(BATCH, json={"tasks": [item] * 1000})
    assert r.status_code == 201 and len(r.json()["tasks"]) == 1000


async def test_an_empty_batch_publishes_nothing(http: httpx.AsyncClient) -> None:
    r = await http.post(BATCH, json={"tasks": []})
    assert r.status_code == 200 and r.json() == {"tasks": [], "created": []}
    assert _err(await http.post(BATCH, json={}), 400, "bad_message", "tasks")


async def test_a_key_repeated_within_and_across_batches_finds_one_task(
    http: httpx.AsyncClient,
) -> None:
    items = [
        {"action": "mail:send", "payload": 1, "options": {"key": "a"}},
        {"action": "mail:send", "payload": 2},
        {"action": "mail:send", "payload": 3, "options": {"key": "a"}},
    ]
    r = await http.post(BATCH, json={"tasks": items})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["created"] == [True, True, False]
    ids = [t["id"] for t in first["tasks"]]
    assert ids[0] == ids[2] != ids[1]
    # The whole batch again, keyed items only: nothing new, so 200 as for a single repeat.
    r = await http.post(BATCH, json={"tasks": [items[0], items[2]]})
    assert r.status_code == 200 and r.json()["created"] == [False, False]
    assert [t["id"] for t in r.json()["tasks"]] == [ids[0], ids[0]]
    single = await http.post("/v1/tasks", json=items[0])
    assert single.status_code == 200 and single.json()["id"] == ids[0]
    assert len(await _stored_ids(http)) == 2


async def test_debounce_within_a_batch(http: httpx.AsyncClient) -> None:
    opts = {"key": "user-1", "once_every": 60}
    items = [{"action": "mail:digest", "options": opts}, {"action": "mail:digest", "options": opts}]
    r = await http.post(BATCH, json={"tasks": items})
    assert r.status_code == 201 and r.json()["created"] == [True, False]
    assert r.json()["tasks"][0]["id"] == r.json()["tasks"][1]["id"]


async def test_the_body_limit_applies(make_server: ServerFactory) -> None:
    server = await make_server(max_frame=10_000)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        r = await http.post(BATCH, json={"tasks": [{"action": "mail:send"}] * 1000})
        _err(r, 413, "frame_too_large", "max_frame")
        assert await _stored_ids(http) == []


async def test_the_openapi_documents_the_batch_route(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    route = spec["paths"][BATCH]["post"]
    assert set(route["responses"]) >= {"200", "201", "400", "403", "422"}
    schema = spec["components"]["schemas"]["TaskBatch"]["properties"]["tasks"]
    assert schema["maxItems"] == 1000
