"""The "limit" row: a bare WebSocket echo of the same messages, same library (websockets, uvloop).

    python benchmarks/ws_echo.py server --port P
    python benchmarks/ws_echo.py client --url ws://127.0.0.1:P --n 5000

Each message is the ``pub`` message TaskHub's client sends for a task (the ~100-byte payload
inside), one message per frame; the server sends every frame straight back. One echo is the
least any hub must do per task (take it in, send something out), so its rate bounds TaskHub's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, figures, payload, payload_size
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def message(i: int) -> str:
    return json.dumps({"op": "pub", "action": "bench:echo", "payload": payload(i), "ref": i})


async def server(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def echo(ws: ServerConnection) -> None:
        async for frame in ws:
            await ws.send(frame)

    async with serve(echo, "127.0.0.1", port, compression=None, max_size=1 << 24):
        emit("event", event="ready")
        await stop.wait()


async def _burst(ws: ClientConnection, n: int, offset: int) -> tuple[float, list[float]]:
    sent: dict[int, float] = {}
    latencies: list[float] = []

    async def receive() -> None:
        for _ in range(n):
            frame = await ws.recv()
            now = time.perf_counter()
            latencies.append(now - sent.pop(json.loads(frame)["ref"]))

    start = time.perf_counter()
    receiver = asyncio.create_task(receive())
    for i in range(offset, offset + n):
        sent[i] = time.perf_counter()
        await ws.send(message(i))
    await receiver
    return time.perf_counter() - start, latencies


async def client(url: str, n: int, seq: int, warmup: int, timeout: float) -> None:
    async with connect(url, compression=None, max_size=1 << 24) as ws:
        await asyncio.wait_for(_burst(ws, warmup, 0), timeout)
        emit("event", event="warm")
        seq_lat: list[float] = []
        for i in range(seq):
            start = time.perf_counter()
            await ws.send(message(10_000_000 + i))
            await asyncio.wait_for(ws.recv(), timeout)
            seq_lat.append(time.perf_counter() - start)
        emit("event", event="sequential done")
        seconds, load_lat = await asyncio.wait_for(_burst(ws, n, 20_000_000), timeout)
        emit(
            "result",
            **figures(
                n=n,
                collected=len(load_lat),
                burst_seconds=seconds,
                load_latencies=load_lat,
                seq_latencies=seq_lat,
                payload_bytes=payload_size(),
                message_bytes=len(message(20_000_000)),
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.role == "server":
        run(server(args.port))
    else:
        run(client(args.url, args.n, args.seq, args.warmup, args.timeout))


if __name__ == "__main__":
    main()
