"""RQ: ``--concurrency C`` worker processes on one queue.

An RQ worker runs one job at a time, so C at once takes C ``rq worker`` processes (what a
supervisor's ``numprocs`` or a systemd template gives an RQ user); C = 1 is one process. Each
uses RQ's default ``Worker`` class, which forks a work horse for every job (``--worker-class
simple`` runs jobs in the worker process itself, RQ's ``SimpleWorker``). Results are read with
``Job.latest_result(timeout=...)`` (blocks on the job's result stream).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import bin_of, drive, emit, payload, peer_args, peer_worker, stop_all


def echo(data: Any) -> Any:
    return data


def wait(job: Any, timeout: float) -> Any:
    result = job.latest_result(timeout=max(1, int(timeout)))
    if result is None or result.type != result.Type.SUCCESSFUL:
        return None
    return result.return_value


def main() -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--worker-class", choices=["default", "simple"], default="default")
    known, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = peer_args(__doc__)

    import rq_bench  # the worker imports the job function by this module's name
    from redis import Redis
    from rq import Queue

    cls = ["--worker-class", "rq.worker.SimpleWorker"] if known.worker_class == "simple" else []
    command = [
        bin_of("rq"),
        "worker",
        "-u",
        args.redis_url,
        "--logging_level",
        "WARNING",
        "-q",
        *cls,
        "bench",
    ]
    workers = [peer_worker(command, args.log) for _ in range(args.concurrency)]
    try:
        queue = Queue("bench", connection=Redis.from_url(args.redis_url))
        result = drive(
            lambda i: queue.enqueue(rq_bench.echo, payload(i), result_ttl=600),
            wait,
            n=args.n,
            seq=args.seq,
            warmup=args.warmup,
            timeout=args.timeout,
        )
        kind = (
            "SimpleWorker (no fork)"
            if known.worker_class == "simple"
            else ("default Worker (forks per job)")
        )
        procs = f"{args.concurrency} worker process{'es' if args.concurrency > 1 else ''}"
        result["concurrency"] = args.concurrency
        result["concurrency_how"] = procs
        result["settings"] = f"{procs}, {kind}, Redis"
        emit("result", **result)
    finally:
        stop_all(workers)


if __name__ == "__main__":
    main()
