"""CPU per task of each process in a real burst: hub, worker and publisher, from /proc.

    .venv/bin/python benchmarks/burst_cpu.py --store memory:// --n 30000 --runs 3
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/burst_cpu.py  # A/B

Starts the processes ``run.py`` starts for a TaskHub row (``taskhub serve``, one
``taskhub_bench.py worker`` with concurrency 64, one ``taskhub_bench.py publish``), reads the
hub's and the worker's CPU time (user + system, ``/proc/PID/stat``) before and after the
publisher's run, and the publisher's own from ``resource``. Prints, per run and as medians:
tasks/s, sequential p50, CPU microseconds per task of each process (``publisher_burst_us``:
the publisher's in the burst alone, which it measures itself), and the worker's
context switches per task (all its threads, ``/proc/PID/task/*/status``: each is a thread
going to sleep or being preempted, so a hand-off between threads shows here even when the
machine is too busy for the latency to). The publisher's figure includes its start
(imports, connecting): ~0.2 s of CPU here, 6-7 µs per task at N=30,000. ``--runtime``: the
worker runs the echo through ``taskhub.Worker`` (the taskhub-memory-runtime row of run.py).

With a Redis store (``--store 'redis://{redis}/0'`` starts a throwaway loopback redis-server
per run, without persistence, as run.py does; any other ``redis://`` URL is used as it is), it
also reads redis-server's CPU time (``INFO cpu``: used_cpu_user + used_cpu_sys) and its
command counts (``INFO commandstats``, which counts the commands a script calls too) before
and after, and prints redis-server's CPU µs per task, the commands it ran per task
(``redis_cmds``) and the script calls per task (``redis_evalsha``, one per store batch).
``--commands`` prints the per-command counts per task of the last run.

``--threads`` splits the hub's CPU per task (``/proc/PID/task/*/stat``): its event loop's and
its other threads' (the sqlite store's writer), user and system apart. The system time is the
kernel's, which ``hub_instructions.sh`` does not count: with sqlite:// the writer's file writes
and reads (docs/performance.md, "sqlite: fifteenth pass").

On a shared 2-core machine throughput moves with the neighbours; CPU per task moves much
less, which is why hub changes are compared with it (interleave the A and B runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis
from common import bench_worker, free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """User and system CPU seconds of each thread of a running process, by thread id."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        times[int(tid)] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
    return times


def split_hub(
    pid: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> dict[str, float]:
    """The hub's CPU seconds between two thread_times: its event loop's (the main thread) and
    its other threads' (the sqlite store's writer, the lease renewer), user and system apart:
    the system time is the kernel's (the store's file writes, say), which instructions miss."""
    split = dict.fromkeys(("loop_user", "loop_sys", "threads_user", "threads_sys"), 0.0)
    for tid, (user, sys_) in after.items():
        user0, sys0 = before.get(tid, (0.0, 0.0))
        where = "loop" if tid == pid else "threads"
        split[f"{where}_user"] += user - user0
        split[f"{where}_sys"] += sys_ - sys0
    return split


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


@contextlib.contextmanager
def redis_server_for(store: str) -> Iterator[str]:
    """``store`` with ``{redis}`` replaced by a throwaway loopback redis-server's address."""
    if "{redis}" not in store:
        yield store
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (scripts/ensure-redis.sh installs it)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 15, proc)
        yield store.replace("{redis}", f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)


def redis_counters(client: redis.Redis | None) -> tuple[float, dict[str, int]]:
    """redis-server's CPU seconds (user + sys) and its calls per command so far."""
    if client is None:
        return 0.0, {}
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


def hub_command(port: int, store: str) -> list[str]:
    cli = os.path.join(os.path.dirname(PY), "taskhub")
    return [cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store]


# The commands burst_cpu itself sends to read the counters: not the store's work.
OWN_COMMANDS = ("info", "ping", "hello", "client|setinfo")
LAST_COMMANDS: dict[str, float] = {}


def one_run(
    store: str, n: int, seq: int, runtime: bool = False, threads: bool = False
) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="taskhub-cpu-") as tmp,
        redis_server_for(store) as store,
    ):
        store = store.replace("{tmp}", tmp)
        is_redis = store.startswith(("redis://", "rediss://"))
        rclient = redis.Redis.from_url(store.split("?")[0]) if is_redis else None
        port = free_port()
        url = f"ws://127.0.0.1:{port}"
        script = os.path.join(HERE, "taskhub_bench.py")
        env = {**os.environ, "TASKHUB_LOG": "warning"}
        quiet = subprocess.DEVNULL
        hub = subprocess.Popen(hub_command(port, store), env=env, stdout=quiet, stderr=quiet)
        worker = None
        try:
            wait_port(port, 20, hub)
            worker = bench_worker(url, runtime=runtime)
            redis0, calls0 = redis_counters(rclient)
            hub0, worker0 = cpu_seconds(hub.pid), cpu_seconds(worker.pid)
            hub_threads0 = thread_times(hub.pid) if threads else {}
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
            hub_threads1 = thread_times(hub.pid) if threads else {}
            switches1 = context_switches(worker.pid)
            redis1, calls1 = redis_counters(rclient)
        finally:
            if rclient is not None:
                rclient.close()
            for proc in (worker, hub):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    result = [json.loads(line) for line in out.splitlines() if '"result"' in line][-1]
    tasks = n + seq + 200  # the publisher's warm-up burst is 200 tasks
    publisher = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    row = {
        "tasks_per_s": result["throughput"],
        "seq_p50_ms": result["seq_p50_ms"],
        "hub_us": (hub1 - hub0) / tasks * 1e6,
        "worker_us": (worker1 - worker0) / tasks * 1e6,
        "publisher_us": publisher / tasks * 1e6,
        # Its CPU in the burst only, measured by the publisher itself (no start-up).
        "publisher_burst_us": result.get("burst_cpu_us", float("nan")),
        "worker_switches": (switches1 - switches0) / tasks,
    }
    if threads:
        for key, seconds in split_hub(hub.pid, hub_threads0, hub_threads1).items():
            row[f"hub_{key}_us"] = seconds / tasks * 1e6
    if is_redis:
        commands = {
            name: (count - calls0.get(name, 0)) / tasks
            for name, count in calls1.items()
            if name not in OWN_COMMANDS and count > calls0.get(name, 0)
        }
        LAST_COMMANDS.clear()
        LAST_COMMANDS.update(commands)
        row["redis_us"] = (redis1 - redis0) / tasks * 1e6
        row["redis_cmds"] = sum(v for k, v in commands.items() if k not in ("evalsha", "eval"))
        row["redis_evalsha"] = commands.get("evalsha", 0.0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--store",
        default="memory://",
        help="sqlite:///{tmp}/b.db: a temp dir; redis://{redis}/0: a throwaway redis-server",
    )
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="last line: runs and medians as JSON")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--runtime", action="store_true", help="the worker runs through taskhub.Worker"
    )
    parser.add_argument(
        "--commands", action="store_true", help="per-command counts per task (last run)"
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="the hub's CPU split: event loop and other threads, user and system",
    )
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        row = one_run(args.store, args.n, args.seq, args.runtime, args.threads)
        runs.append(row)
        print(f"run {i + 1}: " + "  ".join(f"{k} {v:,.2f}" for k, v in row.items()), flush=True)
        time.sleep(0.5)
    if args.commands and LAST_COMMANDS:
        ranked = sorted(LAST_COMMANDS.items(), key=lambda kv: -kv[1])
        print("redis commands per task: " + "  ".join(f"{k} {v:.2f}" for k, v in ranked))
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
