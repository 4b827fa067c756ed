"""What peers that stop reading cost a hub (issue 15, item 3; docs/operations.md).

Starts ``taskhub serve`` (memory://) as a subprocess, connects ``--peers`` raw WebSocket
subscribers that never read after subscribing, emits ``--n`` broadcasts of ``--size`` bytes,
and prints the hub's RSS (VmRSS) before, right after the burst and ``--wait`` seconds later,
and whether the stuck peers are still connected (``taskhub_connections`` on /metrics).

    .venv/bin/python benchmarks/slow_reader.py --peers 1 --n 600 --size 524288
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sys
import time
from pathlib import Path

import httpx

from taskhub import Client


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def raw_subscriber(port: int, topic: str) -> asyncio.StreamWriter:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Authorization: Bearer slow:\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    data = json.dumps({"op": "subscribe", "topic": topic, "ref": 1}).encode()
    mask = os.urandom(4)
    writer.write(
        bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )
    await asyncio.sleep(0.2)  # the welcome and the ok arrive; from now on nothing is read
    return writer


async def connections(http: str) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(http + "/metrics")).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("taskhub_connections{")
        )
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=1)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", type=int, default=512 * 1024)
    ap.add_argument("--wait", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=18931)
    args = ap.parse_args()
    hub = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "taskhub"),
        "serve",
        "--store",
        "memory://",
        "--port",
        str(args.port),
        stderr=asyncio.subprocess.DEVNULL,
    )
    url, http = f"ws://127.0.0.1:{args.port}", f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(100):
            try:
                await connections(http)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        peers = [await raw_subscriber(args.port, "feed") for _ in range(args.peers)]
        pub = await Client(url, name="pub").connect()
        print(f"hub RSS before: {rss_mib(hub.pid):.0f} MiB, connections {await connections(http)}")
        blob = "x" * args.size
        started = time.monotonic()
        counted = 0
        for n in range(args.n):
            counted += await pub.emit("feed", {"n": n, "blob": blob})
        print(
            f"after {args.n} x {args.size} B in {time.monotonic() - started:.1f}s: hub RSS "
            f"{rss_mib(hub.pid):.0f} MiB, connections {await connections(http)}, "
            f"deliveries counted {counted}"
        )
        await asyncio.sleep(args.wait)
        print(
            f"{args.wait:.0f}s later: hub RSS {rss_mib(hub.pid):.0f} MiB, "
            f"connections {await connections(http)}"
        )
        await pub.close()
        for w in peers:
            w.close()
    finally:
        hub.terminate()
        await hub.wait()


if __name__ == "__main__":
    asyncio.run(main())
