"""Celery (Redis broker and result backend), one worker process.

Worker, by ``--concurrency C``: C = 1 runs ``celery worker --pool=solo`` (tasks one after
another in the worker process itself); C > 1 runs ``--pool=threads --concurrency=C`` (C threads
in the one process: Celery's built-in pool for I/O-bound tasks, no extra package; prefork would
add C child processes on this 2-core machine). Prefetch multiplier 64, no
gossip/mingle/heartbeat, JSON serializer. Results are read with ``AsyncResult.get()`` (the
Redis backend's pub/sub).
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from celery import Celery
from common import bin_of, drive, emit, payload, peer_args, peer_worker, stop_all

PREFETCH = 64
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue="bench",
    worker_prefetch_multiplier=PREFETCH,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task(name="bench.echo")
def echo(data: Any) -> Any:
    return data


def pool(concurrency: int) -> tuple[list[str], str]:
    """The worker's pool flags for ``concurrency``, and how the row says it."""
    if concurrency == 1:
        return ["--pool=solo", "--concurrency=1"], "--pool=solo"
    return [
        "--pool=threads",
        f"--concurrency={concurrency}",
    ], f"--pool=threads, {concurrency} threads"


def main() -> None:
    args = peer_args(__doc__)
    flags, how = pool(args.concurrency)
    app.conf.broker_url = args.redis_url
    app.conf.result_backend = args.redis_url
    worker = peer_worker(
        [
            bin_of("celery"),
            "-A",
            "celery_bench",
            "worker",
            *flags,
            f"--prefetch-multiplier={PREFETCH}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            "bench",
            "--loglevel=WARNING",
        ],
        args.log,
    )
    try:
        result = drive(
            lambda i: echo.apply_async((payload(i),)),
            lambda h, t: h.get(timeout=t),
            n=args.n,
            seq=args.seq,
            warmup=args.warmup,
            timeout=args.timeout,
        )
        result["concurrency"] = args.concurrency
        result["concurrency_how"] = how
        result["settings"] = (
            f"1 worker process, {how}, prefetch multiplier {PREFETCH}, "
            "Redis broker + Redis result backend, json"
        )
        emit("result", **result)
    finally:
        stop_all([worker])


if __name__ == "__main__":
    main()
