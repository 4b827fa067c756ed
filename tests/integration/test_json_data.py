"""Payloads, updates, results and events are plain JSON (issue 15, item 16; docs/decisions.md,
"Payloads are plain JSON"): what JSON cannot carry is refused where it is sent, naming what
and where, instead of arriving changed (NaN as null, a datetime as a string, a set as a
list). Tuples are JSON arrays (they arrive as lists), as with ``json.dumps``."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from typing import Any

import pytest

from taskhub import Server, TaskFailed, sync
from tests.conftest import ClientFactory

REFUSED: list[tuple[Any, type[Exception], str]] = [
    (float("nan"), ValueError, r"payload is float\('nan'\): JSON has no NaN"),
    ({"a": [1, {"b": float("inf")}]}, ValueError, r"payload\['a'\]\[1\]\['b'\] is float\('inf'\)"),
    ({"at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}, TypeError, r"payload\['at'\] is a datetime"),
    ([uuid.uuid4()], TypeError, r"payload\[0\] is a uuid.UUID, which JSON cannot carry"),
    ({"price": decimal.Decimal("1.10")}, TypeError, r"payload\['price'\] is a decimal.Decimal"),
    ({"tags": {"a", "b"}}, TypeError, r"payload\['tags'\] is a set"),
    (b"raw", TypeError, "payload is a bytes"),
    ({1: "one"}, TypeError, "payload has the key 1 \\(int\\): JSON object keys are strings"),
    (object(), TypeError, "payload is a object, which JSON cannot carry"),
]


@pytest.mark.parametrize(("payload", "error", "words"), REFUSED)
async def test_pub_refuses_what_json_cannot_carry(
    make_client: ClientFactory, payload: Any, error: type[Exception], words: str
) -> None:
    pub = await make_client("pub")
    with pytest.raises(error, match=words):
        pub.pub("job:run", payload)
    assert pub._conn._pending == {}  # nothing was sent
    with pytest.raises(error, match=words.replace("payload", "data", 1)):
        await pub.emit("news:out", payload)


async def test_json_data_round_trips_and_tuples_arrive_as_lists(
    make_client: ClientFactory,
) -> None:
    worker = await make_client("worker")
    await worker.sub("echo:say", lambda t: t.get_payload())
    pub = await make_client("pub")
    data = {"f": 0.1, "big": 2**70, "neg": -0.0, "s": "é\u2028", "n": None, "b": True}
    assert await pub.pub("echo:say", data).get_result(timeout=5) == data
    assert await pub.pub("echo:say", {"pair": (1, (2, 3))}).get_result(timeout=5) == {
        "pair": [1, [2, 3]]
    }


async def test_updates_and_results_are_checked_too(make_client: ClientFactory) -> None:
    worker = await make_client("worker")
    refused: list[str] = []

    async def work(task: Any) -> Any:
        kind = await task.get_payload()
        if kind == "update":
            try:
                await task.update({"progress": float("nan")})
            except ValueError as exc:
                refused.append(str(exc))
            return "went on"
        return {"when": dt.date(2026, 1, 2)}  # a result JSON cannot carry fails the task

    await worker.sub("job:run", work)
    pub = await make_client("pub")
    assert await pub.pub("job:run", "update").get_result(timeout=5) == "went on"
    assert refused == [
        "update message: data['progress'] is float('nan'): JSON has no NaN or Infinity; "
        "it was not sent"
    ]
    with pytest.raises(TaskFailed, match=r"result\['when'\] is a datetime.date"):
        await pub.pub("job:run", "result").get_result(timeout=5)


async def test_the_sync_client_refuses_at_pub(server: Server) -> None:
    def scenario() -> None:
        with sync.Client(server.url, name="pub") as client:
            with pytest.raises(ValueError, match=r"payload\['x'\] is float\('inf'\)"):
                client.pub("job:run", {"x": float("inf")})
            with pytest.raises(TypeError, match=r"payload is a datetime.datetime"):
                client.pub("job:run", dt.datetime.now(dt.UTC))

    await asyncio.to_thread(scenario)
