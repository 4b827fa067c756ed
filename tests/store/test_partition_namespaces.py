"""Store namespaces per partition (docs/deployment.md, "Partitions"): each partition of a
deployment sees only its own tasks; one partition keeps the layout of a hub before
partitions, byte for byte; a partition's Redis keys share one hash tag."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskhub.records import MetaRecord, WriteBatch
from taskhub.store import open_store
from taskhub.store.base import Store
from tests import redisproc
from tests.store.test_conformance import ENGINES, apply, ended, event, make_store, store_url, task


async def fill(store: Store, name: str) -> None:
    """A live task, an ended one, an event and a metadata entry, all named ``name``."""
    await store.apply(
        WriteBatch(
            tasks=[task(f"{name}-live", action=f"{name}:run"), ended(f"{name}-done", 5.0)],
            events=[event(f"{name}-live", 0)],
            meta=[MetaRecord("queue", name, {"of": name})],
        )
    )


async def seen(store: Store) -> set[str]:
    """Every name ``store`` has anything of."""
    names = {t.id.split("-")[0] for t in await store.list_tasks(limit=100)}
    names |= {t.id.split("-")[0] for t in await store.load_active()}
    names |= set(await store.list_meta("queue"))
    return names


@pytest.mark.parametrize("engine", ENGINES)
async def test_partitions_do_not_see_each_others_tasks(engine: str, tmp_path: Path) -> None:
    stores = {
        "root": await make_store(engine, tmp_path, partitions=4),
        **{f"p{p}": await make_store(engine, tmp_path, partition=p, partitions=4) for p in (0, 3)},
    }
    try:
        for name, store in stores.items():
            await fill(store, name)
        for name, store in stores.items():
            assert await seen(store) == {name}, name
            others = [n for n in stores if n != name]
            assert all([await store.get_task(f"{n}-live") is None for n in others])
            assert all([await store.get_events(f"{n}-live") == [] for n in others])
            assert await store.get_task(f"{name}-live") is not None
        # retention removes a partition's own ended tasks only
        assert await stores["p3"].remove_ended_before(10.0) == ["p3-done"]
        assert [t.id for t in await stores["p0"].list_ended_before(10.0)] == ["p0-done"]
    finally:
        for store in stores.values():
            await store.close()


@pytest.mark.parametrize("engine", ["sqlite", "redis", "redis-cluster"])
async def test_one_partition_is_the_layout_before_partitions(engine: str, tmp_path: Path) -> None:
    """Partition 0 of 1 and the deployment's records are the URL's own store: what a hub
    before partitions wrote is read by both, and what they write a hub before partitions
    reads."""
    url = store_url(engine, tmp_path)
    old = open_store(url)
    await old.open()
    await apply(old, task("before"))
    await old.close()  # a sqlite file serves one store at a time
    for store in (
        open_store(url, partition=0, partitions=1),
        open_store(url, partitions=1),
        open_store(url, partitions=8),  # the cluster-wide records of 8 partitions
    ):
        await store.open()
        assert await store.get_task("before") is not None
        assert store.url == old.url
        await apply(store, task("after"))
        await store.close()
    again = open_store(url)
    await again.open()
    assert await again.get_task("after") is not None
    await again.close()


def test_sqlite_partition_files_sit_beside_the_deployments(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    assert open_store(url, partitions=1).path == str(tmp_path / "hub.db")  # type: ignore[attr-defined]
    assert open_store(url, partition=0, partitions=1).path == str(tmp_path / "hub.db")  # type: ignore[attr-defined]
    assert open_store(url, partitions=4).path == str(tmp_path / "hub.db")  # type: ignore[attr-defined]
    p3 = open_store(url, partition=3, partitions=4)
    assert p3.path == str(tmp_path / "hub.p3.db")  # type: ignore[attr-defined]
    assert p3.url == f"sqlite:///{tmp_path / 'hub.p3.db'}"
    plain = open_store(f"sqlite:///{tmp_path / 'data'}", partition=2, partitions=4)
    assert plain.path == str(tmp_path / "data.p2")  # type: ignore[attr-defined]


def db_files(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.glob("*.db"))


async def test_sqlite_partitions_are_files_of_their_own(tmp_path: Path) -> None:
    for p in range(3):
        store = await make_store("sqlite", tmp_path, partition=p, partitions=3)
        await apply(store, task(f"t{p}"))
        await store.close()
    assert db_files(tmp_path) == [
        "store.p0.db",
        "store.p1.db",
        "store.p2.db",
    ]


def prefix_of(folder: Path) -> str:
    return "t" + hashlib.sha1(str(folder).encode()).hexdigest()[:16]  # as store_url() makes it


async def test_redis_keys_of_a_partition_share_its_hash_tag(tmp_path: Path) -> None:
    prefix = prefix_of(tmp_path)
    for p in (None, 1, 3):
        store = await make_store("redis", tmp_path, partition=p, partitions=4)
        await fill(store, f"n{p}")
        await store.close()
    raw = aioredis.Redis.from_url(redisproc.shared().url)
    try:
        keys = [k.decode() async for k in raw.scan_iter(match=f"{prefix}*", count=1000)]
        keys += [k.decode() async for k in raw.scan_iter(match=f"{{{prefix}}}*", count=1000)]
    finally:
        await raw.aclose()
    by_tag = {
        tag: [k for k in keys if k.startswith(tag)]
        for tag in (f"{prefix}{{p1}}:", f"{prefix}{{p3}}:", f"{{{prefix}}}:")
    }
    assert sum(len(v) for v in by_tag.values()) == len(keys), keys  # no key outside them
    assert all(len(v) >= 5 for v in by_tag.values()), by_tag  # tasks, indexes, events, meta
    assert any(k.endswith(":t:n3-live") for k in by_tag[f"{prefix}{{p3}}:"])
    assert any(k.endswith(":t:nNone-live") for k in by_tag[f"{{{prefix}}}:"])  # as before


async def test_redis_cluster_spreads_partitions_over_its_primaries(tmp_path: Path) -> None:
    cluster = redisproc.shared_cluster()
    prefix = prefix_of(tmp_path)
    owners = set()
    for p in range(4):
        store = await make_store("redis-cluster", tmp_path, partition=p, partitions=4)
        await fill(store, f"n{p}")  # one script per batch: all its keys in one slot
        assert await store.get_task(f"n{p}-live") is not None
        await store.close()
        owners.add(cluster.owner_of(f"{prefix}{{p{p}}}:all"))
    assert len(owners) > 1


@pytest.mark.parametrize(
    ("partition", "partitions", "says"),
    [
        (4, 4, "partition must be from 0 to 3, got 4"),
        (-1, 4, "partition must be from 0 to 3, got -1"),
        (0, 0, "partitions must be from 1 to 1024, got 0"),
    ],
)
def test_open_store_refuses_a_partition_out_of_range(
    partition: int, partitions: int, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        open_store("memory://", partition=partition, partitions=partitions)
