"""A burst of TaskHub's own client's ``pubs`` (with a ``ref``) whose items fall on two hubs.

    .venv/bin/python benchmarks/pubs_across.py --n 20000 --runs 3
    .venv/bin/python benchmarks/pubs_across.py --trees /work/wt/x-base/src,src  # A/B

Two hub processes of 2 partitions over memory://: hub A leads both; hub B leads partition 0
and reaches partition 1 at A over the hub-to-hub link (``Router.place`` with
``hub.links.remote``, as the partition leases place it). One worker (64 handlers per action)
and one publisher, both TaskHub's Python client on hub B, use two actions: ``here``
(partition 0, led by B) and ``there`` (partition 1, led by A). The publisher publishes the
burst alternating the two, in one loop turn, so each of its ``pubs`` (64 items, a ``ref``)
spans both hubs (docs/decisions.md, "A `pubs` with a ref across hubs").

Prints per run and as medians: tasks accepted per second (the first pub to the last ``ok``),
tasks/s (to the last result), the hubs' CPU microseconds per task (``/proc``), and
the frames the publisher read and sent per 1,000 tasks. ``--trees``: source trees run in
turn, interleaved (each hub, worker and publisher process gets it as ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from burst_cpu import cpu_seconds
from common import emit, free_port, payload, wait_port

PY = sys.executable
P = 2
WARMUP = 400
CALLERS = 64  # --mode callers
PER_TURN = 8  # --mode stream


def actions() -> tuple[str, str]:
    """``here`` (partition 0) and ``there`` (partition 1)."""
    from taskhub.partitions import partition_of

    found: dict[int, str] = {}
    i = 0
    while len(found) < P:
        found.setdefault(partition_of(f"span{i}:run", "", P), f"span{i}:run")
        i += 1
    return found[0], found[1]


def serve(port: int, leader: str | None, secret: str) -> None:
    from taskhub import Server
    from taskhub.hub.link import HubLinks
    from taskhub.runtime import run

    class Linked(Server):
        async def start(self) -> None:
            await super().start()
            assert self.hub is not None and isinstance(self.hub.links, HubLinks)
            self.hub.links.secret = secret
            if leader is not None:
                self.hub.router.place(1, self.hub.links.remote(1, leader))

    run(Linked(port=port, store="memory://", partitions=P).serve_forever())


async def work(url: str) -> None:
    from taskhub import Client

    client = await Client(url, name="worker").connect()

    async def echo(task: Any) -> Any:
        return task.payload

    for action in actions():
        await client.sub(action, echo, concurrency=64)
    emit("event", event="ready")
    await asyncio.Event().wait()


async def publish(url: str, n: int, timeout: float, mode: str) -> None:
    from taskhub import Client
    from taskhub.client import wire as client_wire

    frames = {"read": 0, "sent": 0}
    take, send = client_wire.Wire.take_frames, client_wire.Wire.send_text

    def counted_take(self: Any, on_frame: Any) -> None:
        def counted(data: Any) -> None:
            frames["read"] += 1
            on_frame(data)

        take(self, counted)

    def counted_send(self: Any, data: bytes) -> None:
        frames["sent"] += 1
        send(self, data)

    client_wire.Wire.take_frames = counted_take  # type: ignore[method-assign]
    client_wire.Wire.send_text = counted_send  # type: ignore[method-assign]
    client = await Client(url, name="publisher").connect()
    pair = actions()

    async def burst(count: int) -> tuple[float, float]:
        """Seconds from the first pub to the last one accepted (its ``ok``) and to the last
        result."""
        start = time.perf_counter()
        handles = [client.pub(pair[i % 2], payload(i)) for i in range(count)]
        await asyncio.wait_for(asyncio.gather(*(h.accepted() for h in handles)), timeout)
        accepted = time.perf_counter() - start
        results = await asyncio.wait_for(
            asyncio.gather(*(h.get_result() for h in handles)), timeout
        )
        if results != [payload(i) for i in range(count)]:
            raise RuntimeError("a task came back with another result")
        return accepted, time.perf_counter() - start

    async def callers(count: int) -> tuple[float, float]:
        """``CALLERS`` coroutines each publishing its share one at a time, awaiting each
        task's result (a web server's handlers, say): the client sends what they published
        in one loop turn as one ``pubs``, spanning both hubs."""
        start = time.perf_counter()

        async def caller(k: int) -> None:
            for i in range(k, count, CALLERS):
                result = await client.pub(pair[i % 2], payload(i)).get_result()
                if result != payload(i):
                    raise RuntimeError("a task came back with another result")

        await asyncio.wait_for(asyncio.gather(*(caller(k) for k in range(CALLERS))), timeout)
        seconds = time.perf_counter() - start
        return seconds, seconds

    async def stream(count: int) -> tuple[float, float]:
        """``PER_TURN`` pubs a loop turn (one small ``pubs`` spanning both hubs each), the
        next turn at once: many batches in flight on one connection."""
        start = time.perf_counter()
        handles = []
        for i in range(0, count, PER_TURN):
            handles += [client.pub(pair[j % 2], payload(j)) for j in range(i, i + PER_TURN)]
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*(h.accepted() for h in handles)), timeout)
        accepted = time.perf_counter() - start
        results = await asyncio.wait_for(
            asyncio.gather(*(h.get_result() for h in handles)), timeout
        )
        if results != [payload(i) for i in range(count)]:
            raise RuntimeError("a task came back with another result")
        return accepted, time.perf_counter() - start

    run = {"burst": burst, "callers": callers, "stream": stream}[mode]
    await run(WARMUP)
    frames.update(read=0, sent=0)
    accepted, seconds = await run(n)
    emit(
        "result",
        accepted=n / accepted,
        throughput=n / seconds,
        frames_read_per_1k=frames["read"] / n * 1000,
        frames_sent_per_1k=frames["sent"] / n * 1000,
    )
    await client.close()


def spawn(args: list[str], tree: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "TASKHUB_LOG": "warning"}
    if tree:
        env["PYTHONPATH"] = tree
    return subprocess.Popen(
        [PY, __file__, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def one_run(n: int, tree: str | None, mode: str) -> dict[str, float]:
    secret = secrets.token_urlsafe(16)
    a_port, b_port = free_port(), free_port()
    a = spawn(["hub", "--port", str(a_port), f"--secret={secret}"], tree)
    wait_port(a_port, 20, a)
    leader = f"http://127.0.0.1:{a_port}"
    b = spawn(["hub", "--port", str(b_port), f"--secret={secret}", "--leader", leader], tree)
    wait_port(b_port, 20, b)
    url = f"ws://127.0.0.1:{b_port}"
    worker = spawn(["worker", "--url", url], tree)
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            if '"ready"' in line:
                break
        hubs = (a, b)
        before = [cpu_seconds(proc.pid) for proc in hubs]
        publisher = spawn(["publish", "--url", url, "--n", str(n), "--mode", mode], tree)
        out, _ = publisher.communicate(timeout=300)
        after = [cpu_seconds(proc.pid) for proc in hubs]
    finally:
        for proc in (worker, b, a):
            proc.terminate()
            proc.wait(10)
    if publisher.returncode != 0:
        raise RuntimeError(f"the publisher failed ({publisher.returncode})")
    result = [json.loads(line) for line in out.splitlines() if '"result"' in line][-1]
    used = [(x1 - x0) / (n + WARMUP) * 1e6 for x0, x1 in zip(before, after, strict=True)]
    return {
        "accepted_per_s": result["accepted"],
        "tasks_per_s": result["throughput"],
        "hub_a_us": used[0],
        "hub_b_us": used[1],
        "hubs_us": sum(used),
        "pub_read_per_1k": result["frames_read_per_1k"],
        "pub_sent_per_1k": result["frames_sent_per_1k"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "role", nargs="?", default="bench", choices=["bench", "hub", "worker", "publish"]
    )
    parser.add_argument("--port", type=int)
    parser.add_argument("--leader")
    parser.add_argument("--secret", default="")
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--mode",
        default="burst",
        choices=["burst", "callers", "stream"],
        help="burst: every pub in one loop turn; callers: 64 coroutines, one task at a time; "
        "stream: 8 pubs a loop turn",
    )
    parser.add_argument("--trees", default="", help="source trees to compare: a,b")
    args = parser.parse_args()
    if args.role == "hub":
        serve(args.port, args.leader, args.secret)
        return
    if args.role in ("worker", "publish"):
        from taskhub.runtime import run

        run(
            work(args.url)
            if args.role == "worker"
            else publish(args.url, args.n, args.timeout, args.mode)
        )
        return
    trees: list[str | None] = list(args.trees.split(",")) if args.trees else [None]
    runs: dict[str | None, list[dict[str, float]]] = {tree: [] for tree in trees}
    for i in range(args.runs):
        for tree in trees:  # interleaved: the neighbours' load moves them alike
            row = one_run(args.n, tree, args.mode)
            runs[tree].append(row)
            print(
                f"run {i + 1} {tree or '.'}: " + "  ".join(f"{k} {v:,.1f}" for k, v in row.items())
            )
            time.sleep(0.5)
    for tree, rows in runs.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"median {tree or '.'}: " + "  ".join(f"{k} {v:,.1f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
