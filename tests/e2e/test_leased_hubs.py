"""Hub processes (`taskhub serve`) that lead partitions by their leases (docs/deployment.md,
"Partition leases") over one real SQLite file (and a real Redis): they split the partitions and
say so on /healthz, a third rebalances, a hub killed -9 loses no accepted task and its
partitions move, SIGTERM hands off at once, a hub paused past its lease is fenced and leads
again only what it is given, and a timeout fires once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskhub import Client
from taskhub.errors import PartitionUnavailable
from taskhub.partitions import partition_of, partition_of_id
from taskhub.store import open_partition_leases
from tests import redisproc
from tests.e2e.hubproc import HubProcess, consume, wait_until

P = 4
LEASE = "1"  # seconds: TASKHUB_LEASE of every hub here, unless a test says otherwise


def action_in(partition: int) -> str:
    i = 0
    while partition_of(f"job{i}:run", "", P) != partition:
        i += 1
    return f"job{i}:run"


class Hubs:
    """Hub processes on one store, stopped at the end."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.made: list[HubProcess] = []

    def start(self, lease: str = LEASE) -> HubProcess:
        env = {"TASKHUB_LEASE": lease, "TASKHUB_LOG": "info"}
        hub = HubProcess(self.store, None, "--partitions", str(P), env=env).start()
        self.made.append(hub)
        return hub

    def stop(self) -> None:
        for hub in self.made:
            hub.stop()


def led(hub: HubProcess) -> list[int]:
    partitions: list[int] = hub.health()["partitions"]
    return partitions


def settled(*hubs: HubProcess, timeout: float = 20.0) -> list[list[int]]:
    """Wait until ``hubs`` lead every partition between them, each its fair share (the
    assignment's bound: P // k or P // k + 1), none twice; their shares."""
    shares: list[list[int]] = []

    def fair() -> bool:
        shares[:] = [led(hub) for hub in hubs]
        every = sorted(p for share in shares for p in share)
        k = len(hubs)
        return every == list(range(P)) and all(P // k <= len(s) <= -(-P // k) for s in shares)

    wait_until(fair, timeout)
    return shares


@pytest.fixture(params=["sqlite", "redis"])
def hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hubs]:
    if request.param == "sqlite":
        made = Hubs(f"sqlite:///{tmp_path / 'hub.db'}")
    else:
        made = Hubs(f"{redisproc.shared().url}?prefix=e2eleased{id(tmp_path)}")
    yield made
    made.stop()


@pytest.fixture
def sqlite_hubs(tmp_path: Path) -> Iterator[Hubs]:
    made = Hubs(f"sqlite:///{tmp_path / 'hub.db'}")
    yield made
    made.stop()


def test_two_hubs_split_the_partitions_and_a_third_rebalances(hubs: Hubs) -> None:
    one, two = hubs.start(), hubs.start()
    first, second = settled(one, two)
    assert len(first) == len(second) == 2
    # each names the other as the leader of the partitions it does not lead
    wait_until(lambda: set(two.health()["leaders"]) == {str(p) for p in first}, 10)
    body = two.health()
    assert body["role"] == "member"
    assert body["leaders"] == {str(p): one.http_url for p in first}
    three = hubs.start()
    shares = settled(one, two, three)
    assert sorted(len(s) for s in shares) == [1, 1, 2]


async def test_a_hub_killed_9_loses_no_accepted_task_and_its_partitions_move(
    sqlite_hubs: Hubs,
) -> None:
    one, two = sqlite_hubs.start(), sqlite_hubs.start()
    first, second = settled(one, two)
    n = 40
    ids: list[str] = []
    # Each hub is given the tasks of the partitions it leads (no hub-to-hub link yet).
    for hub, share in ((one, first), (two, second)):
        async with Client(hub.url, name="publisher") as pub:
            handles = [pub.pub(action_in(share[i % 2]), len(ids) + i) for i in range(n // 2)]
            ids += [await h.accepted() for h in handles]
    assert {partition_of_id(i) for i in ids} == set(range(P))
    one.kill()
    two.wait_leading(range(P))  # once the killed hub's leases ran out
    seen = await consume(two.url, [action_in(p) for p in range(P)], n)
    assert sorted(seen) == sorted(ids)
    assert sorted(seen.values()) == list(range(n))


async def test_sigterm_hands_the_partitions_off_at_once(sqlite_hubs: Hubs) -> None:
    one, two = sqlite_hubs.start(lease="6"), sqlite_hubs.start(lease="6")
    first, _ = settled(one, two)
    one.stop()  # SIGTERM: a graceful hand-off, then the process exits
    # Its leases are released, not left to expire (6 s): free, or taken by the other hub.
    leases = open_partition_leases(sqlite_hubs.store, P)
    await leases.open()
    try:
        holders = [await leases.holder(p) for p in first]
    finally:
        await leases.close()
    assert all(h is None or h.endswith(two.http_url) for h in holders), holders
    two.wait_leading(range(P))


async def test_a_partition_led_elsewhere_gets_a_clear_error_naming_its_leader(
    sqlite_hubs: Hubs,
) -> None:
    one, two = sqlite_hubs.start(), sqlite_hubs.start()
    first, _ = settled(one, two)
    wait_until(lambda: set(two.health()["leaders"]) == {str(p) for p in first}, 10)
    async with Client(two.url, name="publisher") as pub:
        with pytest.raises(PartitionUnavailable) as caught:
            await pub.pub(action_in(first[0]), 1).accepted()
    assert caught.value.message.startswith(
        f"partition {first[0]} is led by {one.http_url}; this hub cannot reach it yet"
    )


async def test_a_paused_hub_is_fenced_and_leads_again_only_what_it_is_given(
    sqlite_hubs: Hubs,
) -> None:
    one, two = sqlite_hubs.start(), sqlite_hubs.start()
    first, _ = settled(one, two)
    one.pause()  # SIGSTOP past its lease: the other takes everything over
    two.wait_leading(range(P))
    async with Client(two.url, name="publisher") as pub:
        moved = await pub.pub(action_in(first[0]), "after").accepted()
    one.resume()
    shares = settled(one, two)  # it rejoins with its share again, none led twice
    assert sorted(shares[0] + shares[1]) == list(range(P))
    log = one.log.read_text()
    assert "lost partition" in log  # it stepped down from what it had, on resuming
    leader = one if partition_of_id(moved) in shares[0] else two
    async with Client(leader.url, name="reader") as reader:
        assert (await reader.get(moved))["state"] == "init"  # kept across the move, waiting


async def test_a_timeout_fires_once(sqlite_hubs: Hubs) -> None:
    one, two = sqlite_hubs.start(), sqlite_hubs.start()
    first, _ = settled(one, two)
    async with Client(one.url, name="publisher") as pub:
        handle = pub.pub(action_in(first[0]), 1, start_timeout=0.3)
        task_id = await handle.accepted()
        for _ in range(100):
            task = await pub.get(task_id)
            if task["state"] == "fail":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time for a second timer, were there one, to fire
        task = await pub.get(task_id)
    assert task["state"] == "fail"
    assert task["error"]["reason"] == "start_timeout"
    # The stored events, streamed (SSE): one end, from the one hub whose timer fired.
    ends = [e for e in await _event_types(one, task_id) if e in ("fail", "success", "end")]
    assert ends == ["fail"]


async def _event_types(hub: HubProcess, task_id: str) -> list[str]:
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{hub.http_url}/v1/tasks/{task_id}/events")
    return [
        line.removeprefix("event:").strip()
        for line in answer.text.splitlines()
        if line.startswith("event:")
    ]
