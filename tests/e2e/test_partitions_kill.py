"""A hub of four partitions (`taskhub serve --partitions 4`, SQLite) killed with SIGKILL loses
no accepted task of any partition, and a chain crossing partitions carries on after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskhub import Client
from taskhub.partitions import partition_of, partition_of_id
from tests.e2e.hubproc import HubProcess, draining, ended

P = 4


def one_action_per_partition() -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < P:
        found.setdefault(partition_of(f"ship{i}:run", "", P), f"ship{i}:run")
        i += 1
    return [found[p] for p in range(P)]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(f"sqlite:///{tmp_path / 'hub.db'}", None, "--partitions", str(P)).start()
    proc.wait_leading(range(P))
    yield proc
    proc.stop()


async def test_accepted_tasks_of_every_partition_survive_kill_9(hub: HubProcess) -> None:
    actions = one_action_per_partition()
    n = 50
    async with Client(hub.url, name="publisher") as pub:
        handles = [pub.pub(actions[i % P], i) for i in range(n)]
        ids = [await h.accepted() for h in handles]  # answered: the hub promised
        chain = pub.chain([(actions[0], 1000), (actions[3], None)])
        chain_id = await chain.accepted()
    assert {partition_of_id(i) for i in ids} == set(range(P))
    hub.restart(leads=range(P))  # once the killed hub's leases ran out
    async with draining(hub.url, actions, n) as seen:
        task = await ended(hub.url, chain_id)  # the worker still runs the chain's steps
    assert sorted(seen) == sorted(ids)
    assert sorted(seen.values()) == list(range(n))
    assert task["state"] == "success" and task["result"] == 1002
