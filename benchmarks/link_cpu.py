"""CPU per task over the hub-to-hub link (docs/deployment.md, "The hub-to-hub link").

    .venv/bin/python benchmarks/link_cpu.py --n 20000 --runs 3

Three layouts of the same burst (``taskhub_bench.py``: one worker of concurrency 64, one
publisher), every hub a process of 2 partitions over memory://, the bench action in
partition ``k``:

- ``direct``: worker and publisher on one hub that leads ``k`` (no link);
- ``link``: worker and publisher on hub B, whose slot ``k`` is the partition hub A leads
  (every message and every frame back crosses the link);
- ``half``: the worker on A, the publisher on B (the publisher's traffic crosses).

Prints tasks/s and each hub's CPU microseconds per task (``/proc``), per run and as medians.
Hub B's slot is placed as the partition leases will place it (``Router.place`` with
``hub.links.remote``); the two hubs share a link secret given on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from burst_cpu import cpu_seconds
from common import bench_worker, free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
ACTION = "bench:echo"
P = 2


def serve(port: int, leader: str | None, secret: str) -> None:
    from taskhub import Server
    from taskhub.hub.link import HubLinks
    from taskhub.partitions import partition_of
    from taskhub.runtime import run

    class Linked(Server):
        async def start(self) -> None:
            await super().start()
            assert self.hub is not None and isinstance(self.hub.links, HubLinks)
            self.hub.links.secret = secret
            if leader is not None:
                k = partition_of(ACTION, "", P)
                self.hub.router.place(k, self.hub.links.remote(k, leader))

    run(Linked(port=port, store="memory://", partitions=P).serve_forever())


def hub(port: int, leader: str | None, secret: str) -> subprocess.Popen[bytes]:
    args = [PY, __file__, "hub", "--port", str(port), f"--secret={secret}"]  # may start with -
    if leader is not None:
        args += ["--leader", leader]
    env = {**os.environ, "TASKHUB_LOG": "warning"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    wait_port(port, 20, proc)
    return proc


def one_run(layout: str, n: int) -> dict[str, float]:
    secret = secrets.token_urlsafe(16)
    a_port, b_port = free_port(), free_port()
    a = hub(a_port, None, secret)
    b = hub(b_port, f"http://127.0.0.1:{a_port}", secret) if layout != "direct" else None
    a_url = f"ws://127.0.0.1:{a_port}"
    b_url = f"ws://127.0.0.1:{b_port}" if b is not None else a_url
    worker_url = a_url if layout in ("direct", "half") else b_url
    script = os.path.join(HERE, "taskhub_bench.py")
    worker = bench_worker(worker_url)
    try:
        hubs = [proc for proc in (a, b) if proc is not None]
        before = [cpu_seconds(proc.pid) for proc in hubs]
        out = subprocess.run(
            [PY, script, "publish", "--url", b_url, "--n", str(n), "--seq", "200"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        after = [cpu_seconds(proc.pid) for proc in hubs]
    finally:
        for proc in (worker, b, a):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    result = [json.loads(line) for line in out.splitlines() if '"result"' in line][-1]
    tasks = n + 200 + 200  # the sequential part and the publisher's warm-up burst
    used = [(x1 - x0) / tasks * 1e6 for x0, x1 in zip(before, after, strict=True)]
    row = {"tasks_per_s": result["throughput"], "seq_p50_ms": result["seq_p50_ms"]}
    row["hub_a_us"] = used[0]
    if len(used) > 1:
        row["hub_b_us"] = used[1]
    row["hubs_us"] = sum(used)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "hub"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--leader")
    parser.add_argument("--secret", default="")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layouts", default="direct,link,half")
    args = parser.parse_args()
    if args.role == "hub":
        serve(args.port, args.leader, args.secret)
        return
    layouts = args.layouts.split(",")
    runs: dict[str, list[dict[str, float]]] = {layout: [] for layout in layouts}
    for i in range(args.runs):
        for layout in layouts:  # interleaved: the neighbours' load moves them alike
            row = one_run(layout, args.n)
            runs[layout].append(row)
            print(f"run {i + 1} {layout}: " + "  ".join(f"{k} {v:,.2f}" for k, v in row.items()))
            time.sleep(0.5)
    for layout, rows in runs.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"median {layout}: " + "  ".join(f"{k} {v:,.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
