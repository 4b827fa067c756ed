"""Several PartitionKeepers in one process over a real redis-server or a real SQLite file,
driven round by round (tick) with a fake clock: they split the partitions evenly, hand
partitions over when a hub joins or stops, take over a dead hub's partitions once its leases
expire, and step down from a partition whose lease they could not renew in time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from taskhub.errors import StoreFenced
from taskhub.hub.assign import assign
from taskhub.hub.keeper import PartitionKeeper
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import Member, PartitionLeases, open_partition_leases
from taskhub.store.sqlite_leases import SqlitePartitionLeases
from tests import redisproc
from tests.conftest import until

P = 12


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Hub:
    """What a hub does with its keeper's callbacks: a log of them, and the fenced stores."""

    def __init__(self, name: str, leases: PartitionLeases, clock: FakeClock) -> None:
        self.name = name
        self.log: list[tuple[str, int]] = []
        self.leases = leases
        self.keeper = PartitionKeeper(
            leases,
            instance=name,
            url=f"http://{name}",
            lease=30.0,  # the stores' own TTL; the fake clock decides the keeper's view
            clock=clock,
            on_gained=self.gained,
            on_release=self.release,
            on_lost=self.lost,
        )
        self.at_release: dict[int, str | None] = {}

    async def gained(self, p: int, token: str) -> None:
        self.log.append(("gained", p))

    async def release(self, p: int) -> None:
        # Called before the lease goes: the hub still holds it while it flushes.
        self.at_release[p] = await self.leases.holder(p)
        self.log.append(("release", p))

    async def lost(self, p: int) -> None:
        self.log.append(("lost", p))

    def held(self) -> set[int]:
        return set(self.keeper.led())


Make = Callable[[str], Awaitable[Hub]]


@pytest.fixture(params=["redis", "sqlite"])
async def make_hub(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Make, FakeClock]]:
    clock = FakeClock()
    if request.param == "redis":
        url = f"{redisproc.shared().url}?prefix=k{uuid.uuid4().hex[:12]}"
    else:
        url = f"sqlite:///{tmp_path}/hub.db"
    opened: list[PartitionLeases] = []

    async def make(name: str) -> Hub:
        leases: PartitionLeases
        if url.startswith("sqlite"):
            leases = SqlitePartitionLeases(url, P, clock=clock)  # expiry by the fake clock
        else:
            leases = open_partition_leases(url, P)
        await leases.open()
        opened.append(leases)
        return Hub(name, leases, clock)

    yield make, clock
    for leases in opened:
        await leases.close()


async def rounds(hubs: list[Hub], n: int = 2) -> None:
    for _ in range(n):
        for hub in hubs:
            await hub.keeper.tick()


def shares(hubs: list[Hub]) -> dict[str, set[int]]:
    return {hub.name: hub.held() for hub in hubs}


def expected(hubs: list[Hub]) -> dict[str, set[int]]:
    owners = assign(P, [hub.name for hub in hubs])
    return {hub.name: {p for p, m in owners.items() if m == hub.name} for hub in hubs}


async def test_three_keepers_split_the_partitions_evenly(
    make_hub: tuple[Make, FakeClock],
) -> None:
    make, _ = make_hub
    hubs = [await make(name) for name in ("a", "b", "c")]
    await rounds(hubs)
    assert shares(hubs) == expected(hubs)
    assert sorted(len(s) for s in shares(hubs).values()) == [4, 4, 4]
    for hub in hubs:
        for p in hub.held():
            holder = await hub.leases.holder(p)
            assert holder is not None and holder.endswith(f" {hub.name} http://{hub.name}")


async def test_a_joining_keeper_takes_its_share_and_the_others_hand_off(
    make_hub: tuple[Make, FakeClock],
) -> None:
    make, _ = make_hub
    hubs = [await make(name) for name in ("a", "b", "c")]
    await rounds(hubs)
    before = shares(hubs)
    for hub in hubs:
        hub.log.clear()  # the hubs that started first handed partitions to the later ones
    hubs.append(await make("d"))
    await rounds(hubs)
    assert shares(hubs) == expected(hubs)
    assert sorted(len(s) for s in shares(hubs).values()) == [3, 3, 3, 3]
    for hub in hubs[:3]:
        handed = before[hub.name] - hub.held()
        assert {p for what, p in hub.log if what == "release"} == handed
        assert not [p for what, p in hub.log if what == "lost"]  # a hand-off, not a loss
        # on_release ran while the hub still held the lease (it could flush under its fence)
        for p in handed:
            assert (hub.at_release[p] or "").endswith(f" {hub.name} http://{hub.name}")


async def test_a_stopped_keeper_s_partitions_move_at_once(
    make_hub: tuple[Make, FakeClock],
) -> None:
    make, _ = make_hub
    hubs = [await make(name) for name in ("a", "b", "c")]
    await rounds(hubs)
    gone = hubs[0].held()
    hubs[0].log.clear()
    await hubs[0].keeper.stop()
    assert {p for what, p in hubs[0].log if what == "release"} == gone
    # The clock does not move: nothing expired, the leases were released.
    await rounds(hubs[1:], 1)
    assert shares(hubs[1:]) == expected(hubs[1:])
    assert set().union(*shares(hubs[1:]).values()) == set(range(P))


async def test_a_keeper_that_could_not_renew_in_time_steps_down(
    make_hub: tuple[Make, FakeClock],
) -> None:
    make, clock = make_hub
    hubs = [await make(name) for name in ("a", "b")]
    await rounds(hubs)
    mine = hubs[0].held()
    token = hubs[0].keeper.tokens[min(mine)]
    store = hubs[0].leases.fenced_store(min(mine), token)
    await store.open()
    try:
        task = TaskRecord(id="t1", action="a", publisher="p", created_at=1.0, state="init")
        await store.apply(WriteBatch(tasks=[task]))
        clock.now += 31.0  # a's keeper stalled past its lease
        assert hubs[0].held() == set()  # leads() answers by the clock at once
        await hubs[0].keeper.tick()
        assert {p for what, p in hubs[0].log if what == "lost"} == mine
        # Nobody took them meanwhile: it let them go and took them again with new tokens
        # (on SQLite, whose expiry reads the same fake clock, b's too: b looks dead).
        assert mine <= hubs[0].held()
        assert hubs[0].keeper.tokens[min(mine)] != token
        with pytest.raises(StoreFenced):  # the old tenure's store writes no more
            await store.apply(WriteBatch(tasks=[task]))
    finally:
        await store.close()


async def test_a_dead_keeper_s_partitions_are_taken_after_its_lease(tmp_path: Path) -> None:
    # SQLite's expiry reads the injected clock: a dead hub without waiting for real time.
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/hub.db"
    hubs = []
    for name in ("a", "b", "c"):
        leases = SqlitePartitionLeases(url, P, clock=clock)
        await leases.open()
        hubs.append(Hub(name, leases, clock))
    try:
        await rounds(hubs)
        dead = hubs.pop(0)  # stops ticking: no stop(), no release
        await rounds(hubs, 1)
        assert set().union(*shares(hubs).values()) == set(range(P)) - dead.held()
        clock.now += 29.0
        await rounds(hubs, 1)
        assert len(set().union(*shares(hubs).values())) == 8  # not before the lease is out
        clock.now += 2.0
        await rounds(hubs, 2)
        assert shares(hubs) == expected(hubs)
        assert set().union(*shares(hubs).values()) == set(range(P))
    finally:
        for hub in [*hubs, dead]:
            await hub.leases.close()


async def test_started_keepers_keep_their_share_on_their_own(tmp_path: Path) -> None:
    # start(): rounds every interval on the real clock, until stop() hands everything off.
    url = f"sqlite:///{tmp_path}/hub.db"
    leases = [open_partition_leases(url, P) for _ in range(2)]
    keepers = [
        PartitionKeeper(lz, instance=name, url=f"http://{name}", lease=5.0, interval=0.05)
        for lz, name in zip(leases, ("a", "b"), strict=True)
    ]
    for lz, keeper in zip(leases, keepers, strict=True):
        await lz.open()
        keeper.start()
    try:
        await until(lambda: sorted(len(k.led()) for k in keepers) == [6, 6], timeout=30.0)
        await keepers[0].stop()
        assert keepers[0].led() == []
        await until(lambda: len(keepers[1].led()) == P, timeout=30.0)
    finally:
        for lz, keeper in zip(leases, keepers, strict=True):
            await keeper.stop()
            await lz.close()


@pytest.mark.parametrize("apart", [False, True], ids=["in-rounds", "renewal-thread"])
async def test_a_gain_slower_than_the_lease_keeps_every_lease(tmp_path: Path, apart: bool) -> None:
    # A hub restoring a big partition may take longer than a lease: the keeper (or its
    # renewal thread) heartbeats and renews meanwhile, so neither that partition nor the
    # others lapse.
    url = f"sqlite:///{tmp_path}/hub.db"
    leases = open_partition_leases(url, 2)
    await leases.open()
    gained: list[int] = []

    async def slow(p: int, token: str) -> None:
        await asyncio.sleep(1.5)  # three leases
        gained.append(p)

    keeper = PartitionKeeper(
        leases,
        instance="a",
        url="http://a",
        lease=0.5,
        on_gained=slow,
        open_renewal_leases=(lambda: open_partition_leases(url, 2)) if apart else None,
    )
    try:
        await keeper.tick()
        assert gained == [0, 1]
        assert keeper.led() == [0, 1]
        assert (keeper.renewer is not None) == apart
        for p in (0, 1):
            assert await leases.holder(p) == keeper.tokens[p]
        assert await leases.members() == [Member("a", "http://a")]
        await keeper.tick()  # the next round renews: nothing lapsed
        assert keeper.led() == [0, 1]
    finally:
        await keeper.stop()
        await leases.close()


def test_a_lease_and_interval_that_cannot_work_are_refused() -> None:
    leases = open_partition_leases("sqlite:///unused.db", P)
    with pytest.raises(ValueError, match="lease must be > 0 seconds, got 0"):
        PartitionKeeper(leases, instance="a", url="http://a", lease=0)
    with pytest.raises(ValueError, match=r"interval must be > 0 and < the lease \(3.0s\)"):
        PartitionKeeper(leases, instance="a", url="http://a", lease=3.0, interval=3.0)
