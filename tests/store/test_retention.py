"""Retention (hub/retention.py) over a real sqlite store: sweeps in batches until nothing ended
before the cutoff is left, archives only what it removes, refuses a negative retention, and
keeps sweeping, loudly, while the store fails."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from taskhub.hub.retention import Retention
from taskhub.store import open_store
from taskhub.store.base import Store
from tests.store.test_conformance import apply, ended, task


async def sqlite_store(tmp_path: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    await store.open()
    return store


def test_a_negative_retention_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention must be >= 0 seconds, got -1"):
        Retention(open_store("memory://"), retention=-1)


async def test_a_sweep_goes_on_batch_after_batch_until_the_cutoff(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    try:
        await apply(store, *[ended(f"t{i}", 10.0 + i) for i in range(5)], ended("late", 500.0))
        await apply(store, task("live"))
        retention = Retention(store, retention=100.0, batch=2, clock=lambda: 200.0)
        assert await retention.sweep() == 5  # three batches: 2, 2, 1
        assert retention.removed == 5
        assert {r.id for r in await store.list_tasks()} == {"late", "live"}
    finally:
        await store.close()


async def test_an_archive_gets_only_what_is_removed(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    archive = tmp_path / "archive.jsonl"
    try:
        retention = Retention(store, retention=100.0, archive=archive, clock=lambda: 200.0)
        assert await retention.sweep() == 0  # nothing ended: no file either
        assert not archive.exists()
        await apply(store, ended("old", 50.0), ended("new", 150.0))
        assert await retention.sweep() == 1
        [line] = archive.read_text().splitlines()
        assert json.loads(line)["task"]["id"] == "old"
    finally:
        await store.close()


class Failures(logging.Handler):
    """Sets ``twice`` at the second "retention sweep failed" record."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.twice = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retention sweep failed" in record.getMessage():
            self.records.append(record)
            if len(self.records) >= 2:
                self.twice.set()


async def test_the_sweeper_logs_a_failing_store_and_keeps_going(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    await store.close()  # every call now raises StoreUnavailable
    retention = Retention(store, retention=1.0)
    failures = Failures()
    logger = logging.getLogger("taskhub")
    logger.addHandler(failures)
    try:
        sweeper = asyncio.create_task(retention.run(interval=0.001))
        async with asyncio.timeout(30):
            await failures.twice.wait()  # a second failure: it went on after the first
        assert not sweeper.done()
        sweeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweeper
    finally:
        logger.removeHandler(failures)
    first = failures.records[0]
    assert first.exc_info is not None and "closed" in str(first.exc_info[1])
