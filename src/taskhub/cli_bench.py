"""``taskhub bench``: a quick round-trip measurement of this machine's hub.

It runs a hub, one worker and one publisher in this process (so figures are lower than with
separate processes); ``make bench`` runs the full comparison with Celery, RQ, Dramatiq and arq
(benchmarks/run.py, docs/performance.md).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from taskhub.cli_common import out

ACTION = "bench:echo"


def bench(
    n: Annotated[int, typer.Option(help="Tasks in the burst")] = 5000,
    store: Annotated[str, typer.Option(help="memory://, sqlite (a temporary file) or a URL")] = (
        "memory://"
    ),
    concurrency: Annotated[int, typer.Option(help="The worker's credit")] = 64,
    seq: Annotated[int, typer.Option(help="Tasks one at a time, for latency")] = 200,
) -> None:
    """Measure throughput and latency of publish -> work -> result on this machine."""
    from taskhub.runtime import run

    if n < 1 or seq < 1 or concurrency < 1:
        raise typer.BadParameter("--n, --seq and --concurrency must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}" if store == "sqlite" else store
        figures = run(_bench(url, n, concurrency, seq))
    out.print(
        f"store {figures['store']}: {figures['throughput']:,.0f} tasks/s over {n} tasks; "
        f"one at a time p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms",
        highlight=False,
    )


async def _bench(url: str, n: int, concurrency: int, seq: int) -> dict[str, Any]:
    from taskhub import Client, Server

    payload = {"text": "x" * 80, "n": 1}
    async with (
        Server(port=0, store=url, retention=None) as server,
        Client(server.url, name="bench-worker") as worker,
        Client(server.url, name="bench-publisher") as pub,
    ):

        async def echo(task: Any) -> Any:
            return await task.get_payload()

        await worker.sub(ACTION, echo, concurrency=concurrency)
        latencies = []
        for _ in range(seq):
            start = time.perf_counter()
            await pub.pub(ACTION, payload).get_result()
            latencies.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        handles = [pub.pub(ACTION, payload) for _ in range(n)]
        for handle in handles:
            await handle.get_result()
        seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "store": url,
        "throughput": n / seconds,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }
