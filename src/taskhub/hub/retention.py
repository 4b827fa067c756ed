"""Retention: ended tasks are kept for a while, then (optionally archived and) removed.

A sweep removes, in batches, the tasks that ended more than ``retention`` seconds ago, oldest
first; the hub runs one every ``interval``. With an archive, each batch is appended to a
JSON-lines file (one task and its events per line) and flushed to disk before it is removed:
a crash in between may archive a task twice, never lose it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from taskhub.lifecycle import Clock
from taskhub.records import WriteBatch
from taskhub.store import Store

log = logging.getLogger("taskhub.retention")

DEFAULT_RETENTION = 7 * 86400.0


def sweep_interval(retention: float) -> float:
    """A tenth of the retention, between 1 s and 60 s: ended tasks outlive their retention by
    at most that much, and a sweep with nothing to do costs one indexed query."""
    return min(60.0, max(1.0, retention / 10))


class Retention:
    def __init__(
        self,
        store: Store,
        *,
        retention: float = DEFAULT_RETENTION,
        archive: str | Path | None = None,
        batch: int = 1000,
        clock: Clock = time.time,
    ) -> None:
        if retention < 0:
            raise ValueError(f"retention must be >= 0 seconds, got {retention}")
        self.store = store
        self.retention = retention
        self.archive = Path(archive) if archive is not None else None
        self.batch = batch
        self.clock = clock
        self.removed = 0  # since start, for metrics and the benchmark
        self._encoder = msgspec.json.Encoder()

    async def sweep(self, now: float | None = None) -> int:
        """Remove every task ended before ``now - retention``; returns how many."""
        cutoff = (self.clock() if now is None else now) - self.retention
        total = 0
        while True:
            if self.archive is None:
                n = len(await self.store.remove_ended_before(cutoff, self.batch))
            else:
                n = await self._archive_batch(cutoff)
            total += n
            if n < self.batch:
                break
            await asyncio.sleep(0)  # let the hub's own writes in between batches
        self.removed += total
        return total

    async def _archive_batch(self, cutoff: float) -> int:
        records = await self.store.list_ended_before(cutoff, self.batch)
        if not records:
            return 0
        lines: list[bytes] = []
        for rec in records:
            events = await self.store.get_events(rec.id)
            doc: dict[str, Any] = {"task": rec, "events": events}
            lines.append(self._encoder.encode(doc) + b"\n")
        assert self.archive is not None
        await asyncio.to_thread(_append, self.archive, b"".join(lines))
        await self.store.apply(WriteBatch(deleted=[rec.id for rec in records]))
        return len(records)

    async def run(self, interval: float | None = None) -> None:
        """Sweep forever, every ``interval`` seconds (default :func:`sweep_interval`)."""
        interval = sweep_interval(self.retention) if interval is None else interval
        while True:
            await asyncio.sleep(interval)
            try:
                n = await self.sweep()
                if n:
                    log.debug("retention removed %d ended task(s)", n)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is down: try again next time, loudly
                log.exception("retention sweep failed")


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
