"""Time ``Store.apply`` of batches of new tasks on each engine and print tasks/s medians.

Run: ``.venv/bin/python benchmarks/store_bench.py [--repeats N]``; set ``TASKHUB_BENCH_REDIS``
to a Redis URL to time the redis engine too (it writes keys under a ``bench-*`` prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BATCH_SIZES = (1, 100, 1000)
# Small batches are timed over many applies, so each repeat measures more than timer noise.
TASKS_PER_REPEAT = 2000


async def bench_engine(url: str, batch_size: int, repeats: int) -> float:
    """Median tasks/s of applying ``batch_size``-task batches, over ``repeats`` runs."""
    from taskhub.records import DeliveryRecord, EventRecord, TaskRecord, WriteBatch
    from taskhub.store import open_store

    store = open_store(url)
    await store.open()
    rates: list[float] = []
    try:
        serial = 0
        for _ in range(repeats):
            n_batches = max(1, TASKS_PER_REPEAT // batch_size)
            batches = []
            for _ in range(n_batches):
                tasks, events = [], []
                for _ in range(batch_size):
                    serial += 1
                    task_id = f"01J{serial:023d}"
                    # A realistic record: a small payload, options and one delivery.
                    tasks.append(
                        TaskRecord(
                            id=task_id,
                            action="img.resize",
                            publisher="svc-bench",
                            created_at=time.time(),
                            payload={"url": f"https://example.com/{serial}.png", "w": 640},
                            options={"timeout": 30.0},
                            deliveries=[DeliveryRecord(group="workers")],
                        )
                    )
                    events.append(EventRecord(task_id=task_id, seq=0, at=time.time(), type="init"))
                batches.append(WriteBatch(tasks=tasks, events=events))
            start = time.perf_counter()
            for batch in batches:
                await store.apply(batch)
            elapsed = time.perf_counter() - start
            rates.append(n_batches * batch_size / elapsed)
    finally:
        await store.close()
    return statistics.median(rates)


async def main(repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="taskhub-bench-") as tmp:
        engines = {
            "memory": lambda size: "memory://",
            "sqlite": lambda size: f"sqlite:///{Path(tmp) / f'bench-{size}.db'}",
        }
        redis_url = os.environ.get("TASKHUB_BENCH_REDIS")  # e.g. redis://127.0.0.1:6379/15
        if redis_url:
            sep = "&" if "?" in redis_url else "?"
            # A fresh prefix per run and size, so runs never collide with each other's ids.
            engines["redis"] = lambda size: f"{redis_url}{sep}prefix=bench-{os.getpid()}-{size}"
        print(f"apply() of new tasks (each with one event), median of {repeats} repeats")
        print(f"{'engine':<8} {'batch':>6} {'tasks/s':>12}")
        for name, url_for in engines.items():
            for size in BATCH_SIZES:
                rate = await bench_engine(url_for(size), size, repeats)
                print(f"{name:<8} {size:>6} {rate:>12,.0f}")


if __name__ == "__main__":
    # Runnable from a checkout where the package is not installed.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args().repeats))
