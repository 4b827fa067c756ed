"""A thin batched load generator: publishers and workers that speak TaskHub's protocol directly.

    python benchmarks/thin_load.py --url ws://127.0.0.1:P --n 30000
    python benchmarks/thin_load.py --url ws://127.0.0.1:P,ws://127.0.0.1:Q --connections 4 \\
        --watch hub0=PID --watch redis=PID

TaskHub's own clients spend about as much CPU per task as a hub does (a handle per task, a
future per result, events decoded into objects): on this 2-core machine they take the core a
second hub process would need. This generator does the least a client can: one process, raw
WebSocket connections (websockets, msgspec, uvloop), payloads and results passed through as raw
JSON, and everything batched. Each publisher connection sends ``pubs`` of ``--batch`` tasks
without a ``ref`` (no ``ok`` back: the publishing connection still follows its tasks, so
their ``success`` events come to it) and keeps at most ``--window`` tasks unfinished; each
worker connection subscribes with credit ``--credit``, says ``hello`` with ``batch``, and
answers the offers of one frame with one ``returns``. Against a server whose ``welcome`` has
no ``max_batch`` (benchmarks/relay_hub.py) it sends arrays of single messages instead.

Connections go to the URLs round robin (``--connections`` publishers and as many workers);
with ``taskhub serve --processes N`` on one port the kernel spreads them over the processes.
A hub puts all of an action's tasks in one partition (docs/deployment.md, "Partitions"), so
the tasks go round robin over ``--actions-per-partition`` actions in each of ``--partitions``
partitions, chosen with the documented ``zlib.crc32((action + "\0").encode()) % P``; every
worker subscribes to all of them, with credit ``--credit`` each.
A warm-up of ``--warmup`` tasks runs first. ``--watch NAME=PID`` (repeatable) reads the CPU
time of PID and all its descendants (``/proc``) just before and after the measured tasks and
reports it per task. Prints one ``{"kind": "result", ...}`` line: tasks/s, CPU µs per task of
this process and of every watched name.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import sys
import time
import zlib
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, payload, tree_cpu_seconds


def balanced_actions(per_partition: int, partitions: int) -> list[str]:
    """``per_partition`` action names in each of ``partitions`` partitions (the hub's
    ``partition_of(action, "", P)``, written out as docs/deployment.md gives it)."""
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in itertools.count():
        name = f"bench:echo{i}"
        names = found[zlib.crc32((name + "\x00").encode()) % partitions]
        if len(names) < per_partition:
            names.append(name)
        if all(len(n) == per_partition for n in found.values()):
            return [name for p in range(partitions) for name in found[p]]
    raise AssertionError("unreachable")


class Item(msgspec.Struct):
    """The fields of an offer (alone or an item of ``offers``) and of an event it reads."""

    task: str = ""
    attempt: int = 0
    payload: msgspec.Raw = msgspec.Raw(b"null")


class Msg(msgspec.Struct):
    op: str
    task: str = ""
    attempt: int = 0
    payload: msgspec.Raw = msgspec.Raw(b"null")
    type: str = ""
    items: list[Item] = []
    max_batch: int = 0
    code: str = ""
    message: str = ""


_decode = msgspec.json.Decoder(list[Msg] | Msg).decode
_encode = msgspec.json.Encoder().encode


# Frames this process read and sent, by side (worker "w", publisher "p"): what the generator's
# own CPU per task follows (each frame costs websockets' Python, whatever its size).
FRAMES = {"w_in": 0, "w_out": 0, "p_in": 0, "p_out": 0}


def messages(frame: str | bytes) -> list[Msg]:
    got = _decode(frame)
    return got if isinstance(got, list) else [got]


async def open_connection(url: str, hello: bool) -> tuple[ClientConnection, bool]:
    """A connection to ``url`` after its ``welcome``; and whether it takes batched messages."""
    ws = await connect(url.rstrip("/") + "/v1/ws", compression=None, max_size=1 << 24)
    (welcome,) = messages(await ws.recv())
    if welcome.op != "welcome":
        raise RuntimeError(f"{url}: expected welcome, got {welcome.op} {welcome.message}")
    if hello:
        await ws.send(_encode({"op": "hello", "client": "thin_load", "batch": True}))
    return ws, welcome.max_batch > 0


async def worker(url: str, actions: list[str], credit: int, ready: asyncio.Event) -> None:
    """A worker connection: returns each offer's payload as its result, a frame's at once."""
    ws, batched = await open_connection(url, hello=True)
    subs = [
        {
            "op": "sub",
            "ref": 1 + i,
            "action": a,
            "group": "bench",
            "concurrency": credit,
        }
        for i, a in enumerate(actions)
    ]
    await ws.send(_encode(subs))
    confirmed = 0
    async with ws:
        async for frame in ws:
            FRAMES["w_in"] += 1
            returns: list[dict[str, Any]] = []
            for m in messages(frame):
                if m.op == "offers":
                    returns += [
                        {"task": i.task, "attempt": i.attempt, "result": i.payload} for i in m.items
                    ]
                elif m.op == "offer":
                    returns.append({"task": m.task, "attempt": m.attempt, "result": m.payload})
                elif m.op == "ok":  # a sub's (the only messages with a ref)
                    confirmed += 1
                    if confirmed == len(subs):
                        ready.set()
                elif m.op == "error":
                    raise RuntimeError(f"worker on {url}: {m.code}: {m.message}")
            if returns:
                FRAMES["w_out"] += 1
                if batched:
                    await ws.send(_encode({"op": "returns", "items": returns}))
                else:
                    await ws.send(_encode([{"op": "return", **r} for r in returns]))


class Publisher:
    """One publishing connection: sends tasks in batches within its window, counts successes."""

    def __init__(self, url: str, ws: ClientConnection, batched: bool, actions: list[str]) -> None:
        self.url, self.ws, self.batched, self.actions = url, ws, batched, actions
        self.done = 0  # successes seen on this connection, over every run
        self.changed = asyncio.Event()
        self.reader = asyncio.ensure_future(self.read())

    @classmethod
    async def open(cls, url: str, actions: list[str]) -> Publisher:
        ws, batched = await open_connection(url, hello=False)
        return cls(url, ws, batched, actions)

    async def read(self) -> None:
        async for frame in self.ws:
            FRAMES["p_in"] += 1
            for m in messages(frame):
                if m.op == "event" and m.type == "success":
                    self.done += 1
                elif m.op == "error":
                    raise RuntimeError(f"publisher on {self.url}: {m.code}: {m.message}")
            self.changed.set()

    async def wait_change(self) -> None:
        """Until a frame came in; raise if the connection ended."""
        self.changed.clear()
        waiter = asyncio.ensure_future(self.changed.wait())
        await asyncio.wait([self.reader, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.reader.done():
            self.reader.result()  # raises what the reader met
            raise RuntimeError(f"publisher on {self.url}: the connection closed")

    async def run(self, first: int, n: int, batch: int, window: int) -> None:
        """Publish tasks ``first`` .. ``first + n - 1`` and wait for every success."""
        base = self.done
        sent = 0
        while sent < n:
            while sent - (self.done - base) >= window:
                await self.wait_change()
            k = min(batch, n - sent, window - (sent - (self.done - base)))
            actions, m = self.actions, len(self.actions)
            items = [
                {
                    "action": actions[(first + sent + j) % m],
                    "payload": payload(first + sent + j),
                }
                for j in range(k)
            ]
            FRAMES["p_out"] += 1
            if self.batched:
                await self.ws.send(_encode({"op": "pubs", "items": items}))
            else:
                await self.ws.send(_encode([{"op": "pub", **item} for item in items]))
            sent += k
        while self.done - base < n:
            await self.wait_change()


async def burst(publishers: list[Publisher], first: int, n: int, batch: int, window: int) -> None:
    """``n`` tasks spread evenly over the publishers."""
    k = len(publishers)
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    offsets = [first + sum(shares[:i]) for i in range(k)]
    await asyncio.gather(
        *(
            p.run(offset, share, batch, window)
            for p, offset, share in zip(publishers, offsets, shares, strict=True)
            if share
        )
    )


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return await measure(args)
    finally:
        for task in asyncio.all_tasks():
            if task is asyncio.current_task():
                continue
            task.cancel()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.strip() for u in args.url.split(",") if u.strip()]
    watched = dict(w.split("=", 1) for w in args.watch)
    actions = balanced_actions(args.actions_per_partition, args.partitions)
    readies = [asyncio.Event() for _ in range(args.connections)]
    errors: list[Exception] = []
    failed = asyncio.Event()

    async def guarded(i: int) -> None:
        # A worker's error is kept and raised once by the main task, not logged by asyncio.
        try:
            await worker(urls[i % len(urls)], actions, args.credit, readies[i])
        except Exception as exc:
            errors.append(exc)
            failed.set()

    async def all_subscribed() -> None:
        for ready in readies:
            await ready.wait()

    workers = [asyncio.ensure_future(guarded(i)) for i in range(args.connections)]
    subscribed = asyncio.ensure_future(all_subscribed())
    failing = asyncio.ensure_future(failed.wait())
    await asyncio.wait(
        [subscribed, failing], timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if errors:
        raise errors[0]
    if not subscribed.done():
        raise RuntimeError(f"the workers did not subscribe in {args.timeout:.0f}s")
    publishers = [
        await Publisher.open(urls[i % len(urls)], actions) for i in range(args.connections)
    ]

    async def unless_a_worker_fails(first: int, n: int) -> None:
        running = asyncio.ensure_future(burst(publishers, first, n, args.batch, args.window))
        await asyncio.wait(
            [running, failing],
            timeout=args.timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if errors:
            raise errors[0]
        if not running.done():
            raise TimeoutError(f"{n} tasks not done after {args.timeout:.0f}s")
        running.result()

    if args.warmup:
        await unless_a_worker_fails(0, args.warmup)
    emit("event", event="warm")
    before = {name: tree_cpu_seconds(int(pid)) for name, pid in watched.items()}
    mine = own_cpu()
    frames = dict(FRAMES)
    start = time.perf_counter()
    await unless_a_worker_fails(20_000_000, args.n)
    seconds = time.perf_counter() - start
    mine = own_cpu() - mine
    frames = {side: FRAMES[side] - frames[side] for side in FRAMES}
    after = {name: tree_cpu_seconds(int(pid)) for name, pid in watched.items()}
    for task in [*workers, *(p.reader for p in publishers)]:
        task.cancel()
    for p in publishers:
        await p.ws.close()
    cpu = {name: round((after[name] - before[name]) / args.n * 1e6, 2) for name in watched}
    return {
        "n": args.n,
        "collected": args.n,
        "errors": 0,
        "seconds": round(seconds, 4),
        "throughput": round(args.n / seconds, 1),
        "connections": args.connections,
        "urls": len(urls),
        "batch": args.batch,
        "window": args.window,
        "credit": args.credit,
        "actions": len(actions),
        "generator_cpu_us": round(mine / args.n * 1e6, 2),
        # frames per 1,000 measured tasks, by side: w/p = worker/publisher, in/out = read/sent
        "frames_per_1k": {side: round(k / args.n * 1000, 1) for side, k in frames.items()},
        "cpu_us": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="comma list of hubs (ws://host:port)")
    parser.add_argument("--n", type=int, default=30_000, help="measured tasks [30000]")
    parser.add_argument("--warmup", type=int, default=2000, help="warm-up tasks [2000]")
    parser.add_argument(
        "--connections",
        type=int,
        default=4,
        help="publisher connections, and worker ones [4]",
    )
    parser.add_argument("--batch", type=int, default=100, help="tasks per pubs message [100]")
    parser.add_argument(
        "--window",
        type=int,
        default=2000,
        help="unfinished tasks per publisher, at most [2000]",
    )
    parser.add_argument(
        "--credit", type=int, default=250, help="each worker's credit per action [250]"
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="partitions the actions spread over [8]",
    )
    parser.add_argument(
        "--actions-per-partition",
        type=int,
        default=2,
        help="actions in each partition [2]",
    )
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="report PID's CPU",
    )
    args = parser.parse_args()
    for name, value in (
        ("--n", args.n),
        ("--connections", args.connections),
        ("--credit", args.credit),
        ("--partitions", args.partitions),
        ("--actions-per-partition", args.actions_per_partition),
    ):
        if value < 1:
            parser.error(f"{name} must be at least 1, not {value}")
    if not 1 <= args.batch <= 1000:
        parser.error(f"--batch must be 1-1000 (the hub's max_batch), not {args.batch}")
    if args.window < args.batch:
        parser.error(f"--window ({args.window}) must be at least --batch ({args.batch})")
    for w in args.watch:
        name, _, pid = w.partition("=")
        if not name or not pid.isdigit():
            parser.error(f"--watch takes NAME=PID, not {w!r}")
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:
        result = asyncio.run(main_async(args))
    except (OSError, RuntimeError, TimeoutError, ConnectionClosed) as exc:
        # One line, not a traceback: the runner's log and row show it.
        sys.exit(f"thin_load.py: {type(exc).__name__}: {exc}")
    emit("result", **result)


if __name__ == "__main__":
    main()
