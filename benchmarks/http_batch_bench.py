"""Publishing over HTTP: ``POST /v1/tasks:batch`` against one ``POST /v1/tasks`` per task.

    .venv/bin/python benchmarks/http_batch_bench.py --n 10000 --batch 100 --rounds 3

Each mode gets a fresh hub in its own process (benchmarks/taskhub_hub.py, memory:// unless
--store says otherwise) and publishes --n tasks over one keep-alive HTTP connection: in
batches of --batch items, one call after another; one POST per task, one after another; and
one POST per task with --concurrency calls in flight. No worker runs, so what is measured is
publishing only. Reported per mode: wall time per task and the hub process's CPU time per task
(user + system from /proc, so Linux only), medians of --rounds; and the ratios of the batch
mode to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

HUB = Path(__file__).with_name("taskhub_hub.py")
ACTION = "bench:echo"


def _payload(i: int) -> dict[str, Any]:
    return {"id": i, "to": "someone@example.com", "subject": "hello", "n": [1, 2, 3]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Publish = Callable[[httpx.AsyncClient, int], Awaitable[None]]


def _check(r: httpx.Response, status: int = 201) -> None:
    if r.status_code != status:
        raise SystemExit(f"{r.request.url}: {r.status_code} {r.text[:200]}")


def batches(size: int) -> Publish:
    async def publish(http: httpx.AsyncClient, n: int) -> None:
        for start in range(0, n, size):
            items = [
                {"action": ACTION, "payload": _payload(i)}
                for i in range(start, min(n, start + size))
            ]
            _check(await http.post("/v1/tasks:batch", json={"tasks": items}))

    return publish


def singles(concurrency: int) -> Publish:
    async def publish(http: httpx.AsyncClient, n: int) -> None:
        todo = iter(range(n))

        async def one_by_one() -> None:
            for i in todo:  # shared: each caller takes the next task
                _check(
                    await http.post("/v1/tasks", json={"action": ACTION, "payload": _payload(i)})
                )

        await asyncio.gather(*(one_by_one() for _ in range(concurrency)))

    return publish


async def one_round(store: str, n: int, publish: Publish) -> tuple[float, float]:
    """(wall seconds, hub CPU seconds) to publish ``n`` tasks on a fresh hub."""
    port = _free_port()
    cmd = [sys.executable, str(HUB), "--port", str(port), "--store", store]
    # Its stderr (the open-access notice) is left out of the report.
    hub = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        limits = httpx.Limits(max_connections=64)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            for _ in range(200):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise SystemExit("the hub did not start")
            await publish(http, 10)  # warm up: connection, first requests
            cpu0, t0 = _cpu_seconds(hub.pid), time.perf_counter()
            await publish(http, n)
            return time.perf_counter() - t0, _cpu_seconds(hub.pid) - cpu0
    finally:
        hub.terminate()
        await asyncio.wait_for(hub.wait(), 10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    modes = {
        f"batch of {args.batch}": batches(args.batch),
        "single, sequential": singles(1),
        f"single, {args.concurrency} in flight": singles(args.concurrency),
    }
    results: dict[str, tuple[float, float]] = {}
    for name, publish in modes.items():
        rounds = [await one_round(args.store, args.n, publish) for _ in range(args.rounds)]
        wall = statistics.median(r[0] for r in rounds) / args.n * 1e6
        cpu = statistics.median(r[1] for r in rounds) / args.n * 1e6
        results[name] = (wall, cpu)
        print(f"{name:>24}: {wall:8.1f} µs wall/task  {cpu:8.1f} µs hub CPU/task", flush=True)
    base_wall, base_cpu = next(iter(results.values()))
    for name, (wall, cpu) in list(results.items())[1:]:
        print(f"batch vs {name}: {wall / base_wall:.1f}x wall, {cpu / base_cpu:.1f}x hub CPU")


if __name__ == "__main__":
    asyncio.run(main())
