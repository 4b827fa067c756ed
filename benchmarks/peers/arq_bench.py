"""arq, one worker process.

Worker: ``arq WorkerSettings`` with ``max_jobs=C`` for ``--concurrency C`` (jobs run at once
on the worker's event loop) and ``poll_delay=0.01`` s (arq's defaults, 10 jobs and 0.5 s
between polls, cap it at about 20 tasks/s); the publisher polls for each result every 0.01 s
(``Job.result(poll_delay=0.01)``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import ResultNotFound
from common import bin_of, emit, figures, payload, payload_size, peer_args, peer_worker, stop_all

MAX_JOBS = int(os.environ.get("BENCH_CONCURRENCY", "8"))  # peer_args sets it for the worker
POLL = 0.01
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def echo(ctx: dict[str, Any], data: Any) -> Any:
    return data


class WorkerSettings:
    functions = [echo]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = MAX_JOBS
    poll_delay = POLL
    handle_signals = True


async def workload(url: str, n: int, seq: int, warmup: int, timeout: float) -> dict[str, Any]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    errors = 0

    async def send(i: int) -> Any:
        return await pool.enqueue_job("echo", payload(i))

    async def wait(job: Any, limit: float) -> bool:
        # Job.result() reads the result, then the queue, outside a transaction: a job that
        # finishes in between raises ResultNotFound although its result is there. Read again.
        deadline = time.monotonic() + limit
        while True:
            try:
                result = await job.result(timeout=limit, poll_delay=POLL)
            except ResultNotFound:
                if time.monotonic() > deadline:
                    raise
                continue
            return isinstance(result, dict)

    try:
        first = [await send(i) for i in range(warmup)]
        for job in first:
            errors += not await wait(job, 60.0)
        emit("event", event="warm")
        seq_lat: list[float] = []
        for j in range(seq):
            start = time.perf_counter()
            errors += not await wait(await send(10_000_000 + j), timeout)
            seq_lat.append(time.perf_counter() - start)
        emit("event", event="sequential done")
        start = time.perf_counter()
        sent = []
        for j in range(n):
            at = time.perf_counter()
            sent.append((at, await send(20_000_000 + j)))
        load_lat: list[float] = []
        for at, job in sent:
            if await wait(job, timeout):
                load_lat.append(time.perf_counter() - at)
            else:
                errors += 1
        seconds = time.perf_counter() - start
    finally:
        await pool.aclose()
    return figures(
        n=n,
        collected=len(load_lat),
        burst_seconds=seconds,
        load_latencies=load_lat,
        seq_latencies=seq_lat,
        errors=errors,
        payload_bytes=payload_size(),
    )


def main() -> None:
    args = peer_args(__doc__)
    worker = peer_worker([bin_of("arq"), "arq_bench.WorkerSettings"], args.log)
    # The worker reads the URL from the environment when it imports this module.
    try:
        result = asyncio.run(workload(args.redis_url, args.n, args.seq, args.warmup, args.timeout))
        result["concurrency"] = args.concurrency
        result["concurrency_how"] = f"max_jobs={args.concurrency}"
        result["settings"] = (
            f"1 worker process, max_jobs={args.concurrency}, poll_delay={POLL}s, "
            f"result poll {POLL}s, Redis"
        )
        emit("result", **result)
    finally:
        stop_all([worker])


if __name__ == "__main__":
    main()
