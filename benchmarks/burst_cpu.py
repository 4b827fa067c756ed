"""CPU per task of each process in a real burst: hub, worker and publisher, from /proc.

    .venv/bin/python benchmarks/burst_cpu.py --store memory:// --n 30000 --runs 3
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/burst_cpu.py  # A/B

Starts the processes ``run.py`` starts for a TaskHub row (``taskhub serve``, one
``taskhub_bench.py worker`` with concurrency 64, one ``taskhub_bench.py publish``), reads the
hub's and the worker's CPU time (user + system, ``/proc/PID/stat``) before and after the
publisher's run, and the publisher's own from ``resource``. Prints, per run and as medians:
tasks/s, sequential p50, CPU microseconds per task of each process, and the worker's
context switches per task (all its threads, ``/proc/PID/task/*/status``: each is a thread
going to sleep or being preempted, so a hand-off between threads shows here even when the
machine is too busy for the latency to). The publisher's figure includes its start
(imports, connecting): a few µs per task at N=30,000. ``--runtime``: the worker runs the
echo through ``taskhub.Worker`` (the taskhub-memory-runtime row of run.py).

On a shared 2-core machine throughput moves with the neighbours; CPU per task moves much
less, which is why hub changes are compared with it (interleave the A and B runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of a running process."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                        total += int(line.split()[-1])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total


def hub_command(port: int, store: str) -> list[str]:
    cli = os.path.join(os.path.dirname(PY), "taskhub")
    return [cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store]


def one_run(store: str, n: int, seq: int, runtime: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="taskhub-cpu-") as tmp:
        store = store.replace("{tmp}", tmp)
        port = free_port()
        url = f"ws://127.0.0.1:{port}"
        script = os.path.join(HERE, "taskhub_bench.py")
        env = {**os.environ, "TASKHUB_LOG": "warning"}
        quiet = subprocess.DEVNULL
        hub = subprocess.Popen(hub_command(port, store), env=env, stdout=quiet, stderr=quiet)
        worker = None
        try:
            wait_port(port, 20, hub)
            worker = subprocess.Popen(
                [PY, script, "worker", "--url", url, "--concurrency", "64"]
                + (["--runtime"] if runtime else []),
                stdout=subprocess.PIPE,
                stderr=quiet,
                text=True,
            )
            assert worker.stdout is not None
            for line in worker.stdout:
                if '"ready"' in line:
                    break
            hub0, worker0 = cpu_seconds(hub.pid), cpu_seconds(worker.pid)
            switches0 = context_switches(worker.pid)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run(
                [PY, script, "publish", "--url", url, "--n", str(n), "--seq", str(seq)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            hub1, worker1 = cpu_seconds(hub.pid), cpu_seconds(worker.pid)
            switches1 = context_switches(worker.pid)
        finally:
            for proc in (worker, hub):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    result = [json.loads(line) for line in out.splitlines() if '"result"' in line][-1]
    tasks = n + seq + 200  # the publisher's warm-up burst is 200 tasks
    publisher = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "tasks_per_s": result["throughput"],
        "seq_p50_ms": result["seq_p50_ms"],
        "hub_us": (hub1 - hub0) / tasks * 1e6,
        "worker_us": (worker1 - worker0) / tasks * 1e6,
        "publisher_us": publisher / tasks * 1e6,
        "worker_switches": (switches1 - switches0) / tasks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="memory://", help="sqlite:///{tmp}/b.db: a temp dir")
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="last line: runs and medians as JSON")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--runtime", action="store_true", help="the worker runs through taskhub.Worker"
    )
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        row = one_run(args.store, args.n, args.seq, args.runtime)
        runs.append(row)
        print(f"run {i + 1}: " + "  ".join(f"{k} {v:,.2f}" for k, v in row.items()), flush=True)
        time.sleep(0.5)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median ({args.store}, n={args.n}): "
        + "  ".join(f"{k} {v:,.2f}" for k, v in medians.items())
    )
    if args.json:  # for benchmarks/run.py (issue 19's targets table)
        doc = {"store": args.store, "n": args.n, "runs": runs, "median": medians}
        print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
