"""Edges of the Store contract the conformance suite leaves out, over every engine: opening
twice, reopening a closed store, the retention listing's limits, a task rewritten with the same
end; and how the sqlite and redis engines name what went wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskhub.errors import StoreUnavailable
from taskhub.store import open_store
from taskhub.store.base import Store
from tests.redisproc import free_port
from tests.store.test_conformance import ENGINES, apply, ended, make_store, store_url, task


@pytest.fixture(params=ENGINES)
async def engine_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, tmp_path)
    yield s
    await s.close()


async def test_opening_an_open_store_again_keeps_its_data(engine_store: Store) -> None:
    await apply(engine_store, task("t1", payload={"a": 1}))
    await engine_store.open()
    got = await engine_store.get_task("t1")
    assert got is not None and got.payload == {"a": 1}


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_closed_store_cannot_be_opened_again(engine: str, tmp_path: Path) -> None:
    store = await make_store(engine, tmp_path)
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed and cannot be opened again"):
        await store.open()
    # The data is still there for a new store on the same URL.
    again = open_store(store_url(engine, tmp_path))
    await again.open()
    await again.close()


async def test_the_retention_listing_refuses_a_negative_limit(engine_store: Store) -> None:
    await apply(engine_store, ended("t1", 10.0))
    with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
        await engine_store.list_ended_before(50.0, limit=-1)
    assert await engine_store.list_ended_before(50.0, limit=0) == []
    assert [r.id for r in await engine_store.list_ended_before(50.0)] == ["t1"]


async def test_a_task_written_twice_with_the_same_end_is_listed_once(engine_store: Store) -> None:
    # A replayed batch (the hub retries a commit it could not confirm) writes the record again.
    await apply(engine_store, ended("t1", 10.0), ended("t2", 20.0))
    await apply(engine_store, ended("t1", 10.0, result="again"))
    listed = await engine_store.list_ended_before(50.0)
    assert [r.id for r in listed] == ["t1", "t2"]
    assert listed[0].result == "again"


async def test_a_task_that_ended_later_after_a_rewrite_is_listed_by_its_new_end(
    engine_store: Store,
) -> None:
    await apply(engine_store, ended("t1", 10.0))
    await apply(engine_store, ended("t1", 60.0))
    assert await engine_store.list_ended_before(50.0) == []
    assert [r.id for r in await engine_store.list_ended_before(70.0)] == ["t1"]


async def test_sqlite_names_a_path_it_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = open_store(f"sqlite:///{blocker / 'hub.db'}")
    with pytest.raises(StoreUnavailable, match="cannot open sqlite store") as err:
        await store.open()
    assert str(blocker / "hub.db") in str(err.value)
    await store.close()


def test_redis_masks_the_password_of_an_ipv6_host() -> None:
    store = open_store("redis://:s3cret@[::1]:6390/0?prefix=app")
    assert "s3cret" not in store.url
    assert store.url.startswith("redis://:***@[::1]:6390/0")


async def test_redis_names_a_bad_url_option_when_opening() -> None:
    store = open_store("redis://127.0.0.1:1/0?socket_timeout=abc&prefix=x")
    with pytest.raises(ValueError, match=r"bad redis store URL .*'socket_timeout'"):
        await store.open()
    await store.close()


async def test_redis_names_a_server_it_cannot_reach() -> None:
    port = free_port()  # nothing listens there
    store = open_store(f"redis://127.0.0.1:{port}/0?prefix=x")
    with pytest.raises(
        StoreUnavailable, match=f"cannot reach redis store redis://127.0.0.1:{port}"
    ):
        await store.open()
    await store.close()
