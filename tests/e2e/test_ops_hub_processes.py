"""The operator's tools over hub processes (`taskhub serve`) that split the partitions by
their leases, on a real SQLite file and a real Redis (docs/deployment.md, "The hub-to-hub
link"): `taskhub dlq` and `taskhub queues` asked of one hub list, show, re-queue and purge
what the other hub's partitions keep; each hub's `/metrics` exports the partitions it leads,
so the sum over both is the deployment; the dashboard's stats add both hubs up."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from taskhub import Client, TaskFailed
from taskhub.partitions import partition_of_id
from tests.e2e.hubproc import HubProcess
from tests.e2e.test_leased_hubs import Hubs, P, action_in, hubs, knows, settled
from tests.integration.test_cli import cli

__all__ = ["hubs"]  # the leased hub processes' fixture (sqlite file, Redis)


async def dead_letter(hub: HubProcess, action: str, payload: Any) -> str:
    async with Client(hub.url, name="flaky", connect_timeout=5) as c:
        await c.sub(action, lambda t: 1 / 0)
        handle = c.pub(action, payload)
        with pytest.raises(TaskFailed):
            await handle.get_result(timeout=15)
        return await handle.accepted()


def gauge(text: str, name: str, **labels: str) -> float:
    """One sample of the exposition ``text`` (0 when it is not there)."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(f"{name}{{{inner}}}" if labels else name) + r" ([0-9.e+]+)\n"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(120)
async def test_the_cli_and_metrics_cover_both_hubs(hubs: Hubs) -> None:
    one, two = hubs.start(), hubs.start()
    first, second = settled(one, two)
    knows(two, first)
    knows(one, second)
    far, near = action_in(first[0]), action_in(second[0])  # led by one, by two
    dead = sorted([await dead_letter(two, far, "far"), await dead_letter(two, near, "near")])

    listed = await cli("dlq", "ls", "--json", "--url", two.url)
    assert listed.code == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == dead
    on_one = next(d for d in dead if partition_of_id(d) == first[0])
    shown = await cli("dlq", "show", on_one, "--url", two.url)
    assert shown.code == 0 and json.loads(shown.stdout)["payload"] == "far"
    requeued = await cli("dlq", "requeue", on_one, "--url", two.url)
    assert requeued.code == 0, requeued.stderr
    assert partition_of_id(requeued.stdout.strip()) == first[0]
    gone = await cli("dlq", "show", on_one, "--url", two.url)
    assert f"no dead letter {on_one}" in gone.one_error_line()

    # A durable group in each hub's partitions, nobody working: tasks wait there.
    async with Client(one.url, name="mailer", connect_timeout=5) as worker:
        await worker.sub(far, lambda t: None, group="g", durable=True)
        await worker.sub(near, lambda t: None, group="g", durable=True)
    async with Client(two.url, name="publisher", connect_timeout=5) as publisher:
        for action, n in ((far, 3), (near, 2)):
            for i in range(n):
                await publisher.pub(action, i).accepted()
    queues = await cli("queues", "ls", "--json", "--url", two.url)
    assert queues.code == 0, queues.stderr
    waiting = {(q["action"], q["group"]): q["waiting"] for q in json.loads(queues.stdout)}
    assert waiting[far, "g"] == 3 and waiting[near, "g"] == 2

    async with httpx.AsyncClient() as http:
        texts = [(await http.get(f"{h.http_url}/metrics")).text for h in (one, two)]
        stats = (await http.get(f"{two.http_url}/v1/dashboard/stats")).json()
    # each queue is exported by the hub that leads its partition, once
    assert [gauge(t, "taskhub_queue_depth", action=far, group="g") for t in texts] == [3, 0]
    assert [gauge(t, "taskhub_queue_depth", action=near, group="g") for t in texts] == [0, 2]
    assert sum(gauge(t, "taskhub_partitions_led") for t in texts) == P
    assert sum(gauge(t, "taskhub_tasks", state="init") for t in texts) == 5
    assert stats["counts"]["waiting"] == 5 and stats["missing"] == []
    assert sorted(p for h in stats["hubs"] for p in h["partitions"]) == list(range(P))

    purged = await cli("queues", "purge", far, "g", "--url", two.url)
    assert purged.code == 0 and purged.stderr == "purged 3 deliveries\n", purged.stderr
    after = await cli("queues", "ls", "--json", "--url", one.url)
    left = {(q["action"], q["group"]): q["waiting"] for q in json.loads(after.stdout)}
    assert left[far, "g"] == 0 and left[near, "g"] == 2
