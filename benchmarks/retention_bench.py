"""Retention keeps the store bounded: push many tasks through, watch the store's size.

Drives the pure lifecycle and a store directly (no sockets), with a simulated clock so a short
retention means the same thing at any speed: every task is published, offered, started and
completed, its writes applied in batches as the hub's flusher does, and the hub's retention
sweep (``taskhub.hub.retention.Retention``) runs every simulated second. It prints, as it
goes, the tasks pushed, the tasks in the store, the store's size on disk (SQLite: file + WAL)
and the process RSS. With retention the store and RSS level off; ``--retention 0`` turns the
sweep off to show the growth it prevents.

    .venv/bin/python benchmarks/retention_bench.py                 # 1,000,000 tasks, sqlite
    .venv/bin/python benchmarks/retention_bench.py --n 100000 --store memory
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from taskhub.hub.retention import Retention
from taskhub.ids import new_id
from taskhub.lifecycle import Credentials, Lifecycle, Peer
from taskhub.store import Store, open_store
from taskhub.store.memory import MemoryStore

TICK = 0.001  # simulated seconds per task: 1,000 tasks per simulated second


class SimClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_size(store: Store, path: Path | None) -> tuple[int, float]:
    """(tasks stored, MiB on disk)."""
    if isinstance(store, MemoryStore):
        return len(store._tasks), 0.0
    assert path is not None
    mib = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    return -1, mib


async def count_sqlite(store: Store) -> int:
    import sqlite3

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])

    return await store._run(count)  # type: ignore[attr-defined]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="tasks to push [1000000]")
    ap.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    ap.add_argument(
        "--retention", type=float, default=10.0, help="simulated seconds; 0: no sweep [10]"
    )
    ap.add_argument("--batch", type=int, default=500, help="tasks per store batch [500]")
    ap.add_argument("--payload", type=int, default=200, help="payload bytes [200]")
    ap.add_argument("--reports", type=int, default=20, help="lines of output [20]")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="taskhub-retention-"))
    path = tmp / "bench.db" if args.store == "sqlite" else None
    store = open_store(f"sqlite:///{path}" if path else "memory://")
    await store.open()
    clock = SimClock()
    lc = Lifecycle(clock=clock, new_id=new_id)
    creds = Credentials("bench")
    worker = Peer("w", creds)
    lc.connect(worker)
    lc.subscribe(worker, "bench:run", concurrency=args.batch)
    retention = Retention(store, retention=args.retention, clock=clock) if args.retention else None
    payload = {"data": "x" * args.payload}
    every = max(1, args.n // args.reports)
    next_sweep = clock.now + 1.0
    started = time.perf_counter()
    print(
        f"store={args.store} retention={args.retention or 'off'}s (simulated) n={args.n:,}"
        + (f" file={path}" if path else "")
    )
    print(f"{'pushed':>10} {'stored':>9} {'disk MiB':>9} {'RSS MiB':>8} {'tasks/s':>9}")
    for i in range(1, args.n + 1):
        task, _ = lc.publish(creds, "bench:run", payload)
        assert not isinstance(task, str)
        lc.pickup(worker, task.id, 1)
        lc.complete(worker, task.id, 1, i)
        clock.now += TICK
        if i % args.batch == 0 or i == args.n:
            lc.advance()  # the hub's timer: lapsed pickup/end timers leave the heap
            lc.take_output()  # the messages a hub would send
            await store.apply(lc.take_writes())
        if retention is not None and clock.now >= next_sweep:
            await retention.sweep()
            next_sweep = clock.now + 1.0
        if i % every == 0 or i == args.n:
            stored, mib = store_size(store, path)
            if stored < 0:
                stored = await count_sqlite(store)
            rate = i / (time.perf_counter() - started)
            print(f"{i:>10,} {stored:>9,} {mib:>9.1f} {rss_mib():>8.1f} {rate:>9,.0f}", flush=True)
    await store.close()
    if retention is not None:
        print(f"removed by retention: {retention.removed:,}")


if __name__ == "__main__":
    asyncio.run(main())
