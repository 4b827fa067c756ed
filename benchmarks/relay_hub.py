"""The "relay" row: the least a hub speaking TaskHub's protocol can do, with TaskHub's clients.

    python benchmarks/relay_hub.py --port P

It answers the handshake, ``sub`` and ``pub``, offers each task to a subscribed connection
with free credit (the rest wait in a queue, as a hub must keep them), and sends each
``return``'s result to the publisher as the ``success`` event. Nothing more: no store, no
task record, no timers, no ``start`` event, no listeners. Messages are decoded into a struct
with the payload and the result kept as raw JSON, and a connection's answers of one loop turn
go out as one frame, written at once while the socket takes data, as the hub does. Same
libraries as the hub's hot path (websockets, msgspec, uvloop). The benchmark's worker and
publisher (taskhub_bench.py) run against it unchanged, so its rate bounds what any Python hub
could reach with these clients on this machine: the rest of a TaskHub row's gap to it is the
lifecycle and the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections import deque
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit


class Msg(msgspec.Struct, omit_defaults=True):
    """The fields of the client messages the benchmark sends; the rest are ignored."""

    op: str
    ref: int | None = None
    action: str = ""
    payload: msgspec.Raw = msgspec.Raw(b"null")
    task: str = ""
    attempt: int = 0
    result: msgspec.Raw = msgspec.Raw(b"null")
    concurrency: int = 1


_decoder = msgspec.json.Decoder(list[Msg] | Msg)
_encoder = msgspec.json.Encoder()


class Conn:
    def __init__(self, ws: ServerConnection, relay: Relay) -> None:
        self.ws = ws
        self.relay = relay
        self.out: list[bytes] = []
        self.credit = 0

    def send(self, msg: dict[str, Any]) -> None:
        if not self.out:
            self.relay.dirty.append(self)
        self.out.append(_encoder.encode(msg))


class Relay:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.workers: dict[str, list[Conn]] = {}
        self.waiting: dict[str, deque[tuple[str, bytes]]] = {}  # (task id, offer), oldest first
        self.publishers: dict[str, Conn] = {}  # task id -> publisher
        self.holders: dict[str, tuple[Conn, str]] = {}  # task id -> (worker, action)
        self.dirty: list[Conn] = []
        self.flush_scheduled = False
        self.sending: set[asyncio.Future[None]] = set()  # writes under way (kept referenced)

    def handle(self, conn: Conn, m: Msg) -> None:
        op = m.op
        if op == "pub":
            task_id = f"{next(self.ids):026d}"
            self.publishers[task_id] = conn
            if m.ref is not None:
                conn.send({"op": "ok", "ref": m.ref, "task": task_id, "state": "init"})
            offer = _encoder.encode(
                {
                    "op": "offer",
                    "task": task_id,
                    "attempt": 1,
                    "action": m.action,
                    "group": "bench",
                    "publisher": "bench-publisher",
                    "created_at": time.time(),
                    "payload": m.payload,
                }
            )
            self.offer(m.action, task_id, offer)
        elif op == "return":
            pub = self.publishers.pop(m.task, None)
            holder = self.holders.pop(m.task, None)
            if pub is not None:
                pub.send(
                    {
                        "op": "event",
                        "task": m.task,
                        "type": "success",
                        "state": "success",
                        "data": m.result,
                    }
                )
            if holder is not None:
                worker, action = holder
                worker.credit += 1
                self.dispatch(action, worker)
            if m.ref is not None:
                conn.send({"op": "ok", "ref": m.ref})
        elif op == "sub":
            conn.credit = m.concurrency
            self.workers.setdefault(m.action, []).append(conn)
            self.waiting.setdefault(m.action, deque())
            if m.ref is not None:
                conn.send({"op": "ok", "ref": m.ref})
            self.dispatch(m.action, conn)
        elif m.ref is not None:  # pickup, ack and the rest: accepted, nothing to do
            conn.send({"op": "ok", "ref": m.ref})

    def offer(self, action: str, task_id: str, offer: bytes) -> None:
        for worker in self.workers.get(action, ()):
            if worker.credit > 0:
                worker.credit -= 1
                self.holders[task_id] = (worker, action)
                self._queue(worker, offer)
                return
        self.waiting.setdefault(action, deque()).append((task_id, offer))

    def dispatch(self, action: str, worker: Conn) -> None:
        waiting = self.waiting.get(action)
        while waiting and worker.credit > 0:
            task_id, offer = waiting.popleft()
            worker.credit -= 1
            self.holders[task_id] = (worker, action)
            self._queue(worker, offer)

    def _queue(self, conn: Conn, frame: bytes) -> None:
        if not conn.out:
            self.dirty.append(conn)
        conn.out.append(frame)

    def flush(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            out, conn.out = conn.out, []
            if out:
                frame = out[0] if len(out) == 1 else b"[" + b",".join(out) + b"]"
                if not self.sending and _write_now(conn.ws, frame):
                    continue
                sending = asyncio.ensure_future(_send(conn.ws, frame))
                self.sending.add(sending)
                sending.add_done_callback(self.sending.discard)

    async def serve_connection(self, ws: ServerConnection) -> None:
        conn = Conn(ws, self)
        name = "bench"
        conn.send(
            {
                "op": "welcome",
                "protocol": 1,
                "hub": "relay",
                "connection": f"c{id(conn)}",
                "service": name,
                "max_frame": 1 << 20,
            }
        )
        self.flush()
        loop = asyncio.get_running_loop()
        try:
            async for frame in ws:
                got = _decoder.decode(frame)
                for m in got if isinstance(got, list) else (got,):
                    self.handle(conn, m)
                if self.dirty and not self.flush_scheduled:
                    self.flush_scheduled = True
                    loop.call_soon(self.flush)
        except ConnectionClosed:
            pass
        finally:
            for workers in self.workers.values():
                if conn in workers:
                    workers.remove(conn)


def _write_now(ws: ServerConnection, frame: bytes) -> bool:
    """Write a text frame at once while nothing makes it wait, as TaskHub's hub and client do
    (a task per frame otherwise); False: send() it."""
    if ws.paused or ws.send_in_progress is not None or ws.protocol.state is not State.OPEN:
        return False
    ws.protocol.send_text(frame)
    ws.send_data()
    return True


async def _send(ws: ServerConnection, frame: bytes) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(frame, text=True)


async def server(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay()
    async with serve(relay.serve_connection, "127.0.0.1", port, compression=None, max_size=1 << 24):
        emit("event", event="ready")
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(server(args.port))
    else:
        uvloop.run(server(args.port))


if __name__ == "__main__":
    main()
