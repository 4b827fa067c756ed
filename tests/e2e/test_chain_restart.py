"""A chain stored in SQLite survives a hub killed with SIGKILL between two steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import Client
from tests.conftest import until
from tests.e2e.hubproc import HubProcess


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(f"sqlite:///{tmp_path / 'hub.db'}").start()
    yield proc
    proc.stop()


async def wait_view(client: Client, task_id: str, check: Any) -> dict[str, Any]:
    async def ready() -> Any:
        view = await client.get(task_id)
        return view if check(view) else None

    result: dict[str, Any] = await until(ready, timeout=15, step=0.05)
    return result


async def test_a_chain_resumes_after_kill_9_between_steps(hub: HubProcess) -> None:
    async with Client(hub.url, name="web") as pub, Client(hub.url, name="geo") as geo:
        await geo.sub("geo:geocode", lambda t: {"lat": 59.9})
        chain_id = await pub.chain([("geo:geocode", "Oslo"), ("weather:forecast", None)]).accepted()
        # Step 0 is done and step 1 is waiting (pooled: no forecast worker yet).
        await wait_view(pub, chain_id, lambda v: v["options"]["chain"]["tasks"][1] is not None)
        hub.kill()
    hub.start()
    seen: list[Any] = []
    async with Client(hub.url, name="wx") as wx, Client(hub.url, name="web") as later:

        async def forecast(task: Any) -> Any:
            seen.append((await task.get_payload(), task.previous_result))
            return "rain"

        await wx.sub("weather:forecast", forecast)
        view = await wait_view(later, chain_id, lambda v: v["state"] == "success")
    assert view["result"] == "rain"
    assert seen == [({"lat": 59.9}, {"lat": 59.9})]
