"""A dead letter is read by its publisher or by who may see its action, nobody else
(docs/operations.md, dead letters); through the client against a hub with credentials."""

from __future__ import annotations

from typing import Any

import pytest

from taskhub import Client, PermissionDenied, TaskFailed
from tests.conftest import ServerFactory

CREDS = [
    {"name": "ops", "key": "k1", "pub_permissions": ["*"], "sub_permissions": ["*"]},
    {"name": "worker", "key": "k2", "sub_permissions": ["*"], "pub_permissions": []},
    {"name": "narrow", "key": "k3", "pub_permissions": ["mine"], "sub_permissions": []},
]


async def dead(client: Client, action: str) -> str:
    handle = client.pub(action, {"n": 1}, retries=0)
    with pytest.raises(TaskFailed):
        await handle.get_result()
    return handle.id


async def test_a_dead_letter_is_read_by_its_publisher_or_who_sees_its_action(
    make_server: ServerFactory,
) -> None:
    server = await make_server(creds=CREDS)

    async def boom(task: Any) -> Any:
        raise RuntimeError("no")

    async with (
        Client(server.url, name="worker", key="k2") as worker,
        Client(server.url, name="ops", key="k1") as ops,
        Client(server.url, name="narrow", key="k3") as narrow,
    ):
        await worker.sub("theirs:run", boom)
        await worker.sub("mine:run", boom)
        theirs = await dead(ops, "theirs:run")
        mine = await dead(narrow, "mine:run")
        with pytest.raises(PermissionDenied, match=f"'narrow' may not read dead letter {theirs}"):
            await narrow.dead_letter(theirs)
        assert (await narrow.dead_letter(mine))["payload"] == {"n": 1}  # its own
        assert (await worker.dead_letter(theirs))["action"] == "theirs:run"  # may see it
        assert [e["id"] for e in await narrow.dead_letters()] == [mine]
