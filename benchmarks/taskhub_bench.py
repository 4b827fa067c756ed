"""TaskHub's worker and publisher for the benchmark (run with the project's venv).

    python benchmarks/taskhub_bench.py worker  --url ws://127.0.0.1:P --concurrency 64
    python benchmarks/taskhub_bench.py worker  --url ws://127.0.0.1:P --runtime  # via Worker
    python benchmarks/taskhub_bench.py publish --url ws://127.0.0.1:P --n 5000
    python benchmarks/taskhub_bench.py publish --url ws://127.0.0.1:P,ws://127.0.0.1:Q --n 5000

The worker prints ``{"kind": "event", "event": "ready"}`` once its subscription is confirmed,
then works until it is terminated. The publisher warms up, runs tasks one at a time (sequential
latency), then publishes all N at once and collects every result (throughput, latency under
load), and prints one ``{"kind": "result", ...}`` line. Given several URLs (hubs of one
cluster) the publisher opens one connection to each and spreads its tasks over them round
robin, the sequential ones too (their latency is also reported per URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, figures, payload, payload_size, percentile

from taskhub import Client

ACTION = "bench:echo"


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def worker(url: str, concurrency: int, group: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def echo(task: Any) -> Any:
        return await task.get_payload()

    async with Client(url, name="bench-worker") as client:
        await client.sub(ACTION, echo, group=group, concurrency=concurrency)
        emit("event", event="ready")
        await stop.wait()


def runtime_worker(url: str, concurrency: int, group: str) -> None:
    """The same echo worker run through ``taskhub.Worker`` (its connection on a thread of its
    own, the handler on the handler loop): what ``taskhub worker`` users get."""
    import logging
    import threading

    from taskhub import Worker

    logging.basicConfig(level=logging.WARNING)
    w = Worker(url, name="bench-worker")

    @w.task(ACTION, concurrency=concurrency, group=group)
    async def echo(task: Any) -> Any:
        return task.payload

    threading.Timer(0.0, _ready_when_started, (w,)).start()
    w.run(grace=5)


def _ready_when_started(w: Any) -> None:
    while w.client is None:  # set once the subscriptions are confirmed
        time.sleep(0.01)
    emit("event", event="ready")


async def _one(client: Client, i: int, timeout: float) -> tuple[float, bool]:
    start = time.perf_counter()
    handle = client.pub(ACTION, payload(i))
    result = await asyncio.wait_for(handle.get_result(), timeout)
    ok = isinstance(result, dict) and result.get("id") == i
    return time.perf_counter() - start, ok


async def _burst(
    clients: list[Client], n: int, offset: int, timeout: float
) -> tuple[float, list[float], int]:
    """Publish n tasks at once (round robin over the clients); (seconds first publish → last
    result, latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    handles = []
    for i in range(offset, offset + n):
        client = clients[i % len(clients)]
        handles.append((time.perf_counter(), client.pub(ACTION, payload(i)), i))

    # Collected with done callbacks: a coroutine per handle (asyncio.gather) cost the
    # publisher ~10 µs per task, more than a quarter of its CPU (docs/performance.md).
    all_done = asyncio.get_running_loop().create_future()
    left = len(handles)

    def collected(sent: float, i: int, handle: Any) -> None:
        nonlocal errors, left
        try:
            result = handle.outcome()
        except Exception:
            errors += 1
        else:
            if isinstance(result, dict) and result.get("id") == i:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1
        left -= 1
        if left == 0:
            all_done.set_result(None)

    for sent, handle, i in handles:
        handle.add_done_callback(functools.partial(collected, sent, i))
    if left:
        await asyncio.wait_for(all_done, timeout)
    return time.perf_counter() - start, latencies, errors


async def publish(urls: list[str], n: int, seq: int, warmup: int, timeout: float) -> None:
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(Client(url, name="bench-publisher")) for url in urls
        ]
        await _burst(clients, warmup, 0, timeout)
        emit("event", event="warm")
        seq_lat: list[float] = []
        by_url: list[list[float]] = [[] for _ in urls]
        errors = 0
        seq_cpu0 = time.process_time()
        for i in range(seq):
            seconds, ok = await _one(clients[i % len(clients)], 10_000_000 + i, timeout)
            seq_lat.append(seconds)
            by_url[i % len(clients)].append(seconds)
            errors += not ok
        # This process's CPU per sequential task (benchmarks/seq_cpu.sh reports it).
        seq_cpu_us = (time.process_time() - seq_cpu0) / max(seq, 1) * 1e6
        emit("event", event="sequential done")
        cpu0 = time.process_time()
        seconds, load_lat, burst_errors = await _burst(clients, n, 20_000_000, timeout)
        # This process's CPU in the burst alone (its start-up, imports and connecting, left
        # out): what burst_cpu.py reports as publisher_burst_us.
        extra: dict[str, Any] = {
            "burst_cpu_us": (time.process_time() - cpu0) / max(n, 1) * 1e6,
            "seq_cpu_us": seq_cpu_us,
        }
        if len(urls) > 1:
            extra["seq_p50_ms_by_url"] = {
                url: round(percentile(lat, 50) * 1000, 3)
                for url, lat in zip(urls, by_url, strict=True)
            }
        emit(
            "result",
            **figures(
                n=n,
                collected=len(load_lat),
                burst_seconds=seconds,
                load_latencies=load_lat,
                seq_latencies=seq_lat,
                errors=errors + burst_errors,
                payload_bytes=payload_size(),
                **extra,
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["worker", "publish"])
    parser.add_argument(
        "--url", required=True, help="the hub; the publisher takes a comma list of hubs"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--group", default="bench", help="the worker's group")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument(
        "--runtime", action="store_true", help="worker: run the echo through taskhub.Worker"
    )
    args = parser.parse_args()
    if args.role == "worker" and args.runtime:
        runtime_worker(args.url, args.concurrency, args.group)
    elif args.role == "worker":
        run(worker(args.url, args.concurrency, args.group))
    else:
        urls = [u.strip() for u in args.url.split(",") if u.strip()]
        run(publish(urls, args.n, args.seq, args.warmup, args.timeout))


if __name__ == "__main__":
    main()
