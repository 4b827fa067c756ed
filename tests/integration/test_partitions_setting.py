"""The ``partitions`` setting: config key, ``TASKHUB_PARTITIONS``, ``taskhub serve
--partitions``; checked (1-1024), recorded in the store by the first hub and refused on a
mismatch (docs/deployment.md, "Partitions")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskhub import Client, Server, config
from taskhub.errors import InvalidOption, PartitionsMismatch, StoreInUse
from taskhub.hub.partitioning import PARTITIONS_META
from taskhub.server import check_shared_partitions
from taskhub.store import open_store
from tests import redisproc
from tests.integration.test_cli import cli


def test_every_surface_sets_the_partition_count(tmp_path: Path) -> None:
    assert config.load(env={}).partitions == 1
    assert config.load(env={"TASKHUB_PARTITIONS": "4"}).partitions == 4
    toml = tmp_path / "taskhub.toml"
    toml.write_text("[server]\npartitions = 8\n")
    assert config.load(toml, env={}).partitions == 8
    # a flag (an override) over the environment over the file
    assert config.load(toml, env={"TASKHUB_PARTITIONS": "4"}).partitions == 4
    assert config.load(toml, env={"TASKHUB_PARTITIONS": "4"}, partitions=2).partitions == 2


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ("0", "partitions must be from 1 to 1024, got 0"),
        ("1025", "partitions must be from 1 to 1024, got 1025"),
        ("four", "TASKHUB_PARTITIONS='four' is not a number"),
    ],
)
def test_a_bad_partition_count_is_refused_naming_it(env: str, says: str) -> None:
    with pytest.raises(InvalidOption, match=says):
        config.load(env={"TASKHUB_PARTITIONS": env})


def test_a_bad_partition_count_in_the_file_or_server() -> None:
    with pytest.raises(InvalidOption, match="partitions must be an integer from 1 to 1024"):
        Server(store="memory://", partitions=2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="partitions must be from 1 to 1024, got -3"):
        Server(store="memory://", partitions=-3)


async def test_the_cli_refuses_a_bad_count_in_one_line() -> None:
    run = await cli("serve", "--store", "memory://", "--port", "0", "--partitions", "0")
    assert "partitions must be from 1 to 1024, got 0" in run.one_error_line()


async def recorded(url: str) -> object:
    store = open_store(url)
    await store.open()
    try:
        return await store.get_meta(*PARTITIONS_META)
    finally:
        await store.close()


async def test_the_first_hub_records_the_count_and_another_count_is_refused(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    async with Server(store=url, port=0, partitions=4):
        pass
    assert await recorded(url) == 4
    async with Server(store=url, port=0, partitions=4):  # the same count starts again
        pass
    hub = Server(store=url, port=0, partitions=2)
    with pytest.raises(PartitionsMismatch, match=r"set up with 4 partition.* started with 2"):
        await hub.start()
    await hub.stop()
    # taskhub serve: one line naming both numbers, exit status 2; the flag and the environment
    for extra, env in ((["--partitions", "2"], {}), ([], {"TASKHUB_PARTITIONS": "2"})):
        run = await cli("serve", "--store", url, "--port", "0", *extra, **env)
        assert run.code == 2, (run.code, run.stderr)
        assert "Traceback" not in run.stderr
        last = run.stderr.splitlines()[-1]
        assert last.startswith("error: store ") and "with 4 partition(s)" in last, run.stderr
        assert "started with 2" in last
    assert await recorded(url) == 4


async def test_one_partition_records_nothing_and_its_work_is_not_left_behind(
    tmp_path: Path,
) -> None:
    """A store of one partition keeps the layout hubs wrote before partitions (nothing new is
    written); a hub of several partitions refuses it once it holds work of one partition,
    which that hub would not see."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    async with Server(store=url, port=0) as server, Client(server.url, name="pub") as client:
        await client.pub("img:resize", {"n": 1}).accepted()
    assert await recorded(url) is None
    run = await cli("serve", "--store", url, "--port", "0", "--partitions", "4")
    assert run.code == 2, (run.code, run.stderr)
    last = run.stderr.splitlines()[-1]
    assert "set up with 1 partition(s) and this hub was started with 4" in last
    assert await recorded(url) is None


async def test_redis_hubs_check_the_count_before_joining_the_cluster() -> None:
    """Every hub on a Redis store checks the count, whether it leads partitions by their
    leases (several) or joins the leader/follower cluster (one): docs/deployment.md."""
    url = redisproc.shared_url("partcount")
    first = Server(store=url, port=0, partitions=3)
    await first.start()
    assert first.hub is not None and first.hub.led == [0, 1, 2]
    await first.stop()
    assert await recorded(url) == 3
    other = Server(store=url, port=0, partitions=5)
    with pytest.raises(PartitionsMismatch, match=r"set up with 3 partition.* started with 5"):
        await other.start()
    await other.stop()
    one = Server(store=url, port=0)
    with pytest.raises(PartitionsMismatch, match=r"set up with 3 partition.* started with 1"):
        await one.start()
    await one.stop()


async def test_hubs_starting_together_on_a_sqlite_file_check_the_count_in_turn(
    tmp_path: Path,
) -> None:
    """`serve --processes` children check the count on one file: one that finds it open in
    another hub (StoreInUse) tries again until it is free, and says why if it never is."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    holder = open_store(url)
    await holder.open()
    waiting = asyncio.ensure_future(check_shared_partitions(url, 4))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # waits its turn
    await holder.close()
    await asyncio.wait_for(waiting, 10)
    assert await recorded(url) == 4
    holder = open_store(url)
    await holder.open()
    try:
        with pytest.raises(StoreInUse, match="in use by another hub"):
            await check_shared_partitions(url, 4, tries=2)
    finally:
        await holder.close()
