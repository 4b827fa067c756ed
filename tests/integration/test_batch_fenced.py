"""A `pubs` with a `ref` whose items span partitions, when the store refuses one partition's
writes because another hub took its lease (docs/protocol.md, "Batched messages"; docs/
deployment.md, "Partition leases"): the items of the partitions that stored theirs get their
answers, each item of the refused one an error that names its place and says it may have been
stored, never a silent `ok`. A real hub on a SQLite file and on Redis; the lease is taken in
the store itself, as a hub that found it expired would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from taskhub import Server
from taskhub.store import open_partition_leases
from tests import redisproc
from tests.conftest import action_in as conftest_action_in
from tests.conftest import until

P = 2
STOLEN = 1


action_in = partial(conftest_action_in, partitions=P)


@pytest.fixture(params=["sqlite", "redis"])
async def hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        store = f"{redisproc.shared().url}?prefix=fenced{uuid.uuid4().hex[:8]}"
    # A lease far longer than the test: the hub learns of the theft from its store's refusal,
    # not from a renewal.
    server = Server(store=store, port=0, partitions=P, lease=60.0)
    await server.start()
    assert server.membership is not None and server.membership.keeper is not None
    keeper = server.membership.keeper
    await until(lambda: keeper.led() == list(range(P)), timeout=10)
    yield server
    await server.stop()


async def _steal(server: Server, partition: int) -> None:
    assert server.membership is not None and server.membership.keeper is not None
    token = server.membership.keeper.tokens[partition]
    leases = open_partition_leases(server.store_url, P)
    await leases.open()
    try:
        assert await leases.release(partition, token)
        assert await leases.take(partition, "another-hub", 60_000) is not None
    finally:
        await leases.close()


async def _answer(ws: Any, ref: int) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            data = json.loads(await ws.recv())
            for m in data if isinstance(data, list) else [data]:
                if m.get("ref") == ref:
                    return dict(m)


async def test_a_batch_whose_partition_was_taken_answers_its_items_with_errors(
    hub: Server,
) -> None:
    kept, stolen = action_in(1 - STOLEN), action_in(STOLEN)
    async with connect(hub.url + "/v1/ws") as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        await _steal(hub, STOLEN)
        items = [{"action": a, "payload": i} for i, a in enumerate((kept, stolen, kept, stolen))]
        await ws.send(json.dumps({"op": "pubs", "ref": 1, "items": items}))
        answer = await _answer(ws, 1)
    assert answer["op"] == "ok", answer
    stored, refused = answer["items"][0::2], answer["items"][1::2]
    assert all(item.get("created") is True and item.get("task") for item in stored), answer
    for i, item in zip((1, 3), refused, strict=True):
        error = item["error"]
        assert error["code"] == "store_unavailable", error
        assert f"item {i}: partition {STOLEN} did not answer" in error["message"], error
        assert "may have been applied" in error["message"], error
        assert error["details"]["index"] == i and error["details"]["partition"] == STOLEN
