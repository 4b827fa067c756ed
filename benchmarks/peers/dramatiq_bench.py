"""Dramatiq (Redis broker, Results middleware with the Redis backend), one worker process.

Worker: ``dramatiq --processes 1 --threads C`` for ``--concurrency C`` (Dramatiq's default is
8 threads per process; its default prefetch: 2 per thread).
Results are read with ``Message.get_result(block=True)``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dramatiq
from common import bin_of, drive, emit, payload, peer_args, peer_worker, stop_all
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", store_results=True, max_retries=0)
def echo(data: Any) -> Any:
    return data


def main() -> None:
    args = peer_args(__doc__)
    if args.redis_url != REDIS_URL:  # the broker is made at import: import again with the URL
        os.environ["BENCH_REDIS_URL"] = args.redis_url
        os.execv(sys.executable, [sys.executable, *sys.argv])
    worker = peer_worker(
        [
            bin_of("dramatiq"),
            "dramatiq_bench",
            "--processes",
            "1",
            "--threads",
            str(args.concurrency),
            "--queues",
            "bench",
        ],
        args.log,
    )
    try:
        result = drive(
            lambda i: echo.send(payload(i)),
            lambda m, t: m.get_result(block=True, timeout=int(t * 1000)),
            n=args.n,
            seq=args.seq,
            warmup=args.warmup,
            timeout=args.timeout,
        )
        how = f"{args.concurrency} thread{'s' if args.concurrency > 1 else ''}"
        result["concurrency"] = args.concurrency
        result["concurrency_how"] = how
        result["settings"] = (
            f"1 worker process, {how}, Redis broker, Results middleware (Redis backend)"
        )
        emit("result", **result)
    finally:
        stop_all([worker])


if __name__ == "__main__":
    main()
