"""What the Redis engine's batch script costs redis-server per task, without a hub around it.

    .venv/bin/python benchmarks/redis_script_bench.py --n 20000 --runs 3
    .venv/bin/python benchmarks/redis_script_bench.py --valgrind   # instructions per task
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/redis_script_bench.py

Writes tasks through ``RedisStore.apply`` as a burst's lifecycle writes them: batches of
``--batch`` tasks, each task published (its record and an ``init`` event), started (record,
``offer`` and ``start`` events) and finished (record, ``success`` event) in three batches, with
records shaped like the benchmark's (a ~600-byte record, ~150-byte events). Each run starts a
throwaway loopback redis-server (no persistence) and prints redis-server's CPU µs per task
(``INFO cpu``, user + sys), the commands it ran per task (``INFO commandstats``, which
counts what scripts call; EVALSHA not counted) and this process's CPU µs per task in
``apply`` (encoding, packing, redis-py, the socket).

``--valgrind`` runs redis-server under ``valgrind --tool=cachegrind`` instead and prints its
instructions per task: the run of ``--n`` tasks minus a run of a third of them, divided by
the difference. Deterministic to ~1 %, which CPU time on a shared machine is not.

``--return-after TEXT`` runs the batch script with ``if true then return 1 end`` after its
first line containing TEXT (common.lua, then apply.lua): what the part before it costs. For
example ``--valgrind --return-after 'if err then return err end'`` is the cost of receiving
the batch (the arguments, the fence check), nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis
from common import free_port, wait_port

from taskhub.records import DeliveryRecord, EventRecord, TaskRecord, WriteBatch
from taskhub.store.redis import RedisStore, scripts

PAYLOAD = {
    "id": 20003139,
    "text": "the quick brown fox jumps over the lazy dog 0123456789",
    "tags": ["bench", "echo"],
    "ok": True,
}
OPTIONS = {"timeout": 60.0, "start_timeout": None, "retries": 0, "max_attempts": 5}


def record(i: int, state: str, seq: int) -> TaskRecord:
    done = state == "success"
    return TaskRecord(
        id=f"01M97G1T25929SB94D{i:08d}",
        action="bench:echo",
        publisher="bench-publisher",
        created_at=1796621789.25 + i / 1000,
        payload=PAYLOAD,
        options=OPTIONS,
        state=state,
        started_at=None if state == "init" else 1796621792.07 + i / 1000,
        ended_at=1796621792.08 + i / 1000 if done else None,
        result=PAYLOAD if done else None,
        deliveries=[DeliveryRecord(group="bench", state="done" if done else "pending", attempt=1)],
        seq=seq,
    )


def event(i: int, seq: int, kind: str) -> EventRecord:
    data = PAYLOAD if kind == "success" else {"attempt": 1} if kind == "offer" else None
    return EventRecord(
        task_id=f"01M97G1T25929SB94D{i:08d}",
        seq=seq,
        at=1796621789.48 + i / 1000 + seq,
        type=kind,
        group=None if kind == "init" else "bench",
        service="bench-worker",
        data=data,
    )


def batches(n: int, size: int) -> list[WriteBatch]:
    out = []
    for base in range(0, n, size):
        ids = range(base, min(base + size, n))
        out.append(
            WriteBatch(
                tasks=[record(i, "init", 1) for i in ids],
                events=[event(i, 1, "init") for i in ids],
            )
        )
        out.append(
            WriteBatch(
                tasks=[record(i, "start", 3) for i in ids],
                events=[e for i in ids for e in (event(i, 2, "offer"), event(i, 3, "start"))],
            )
        )
        out.append(
            WriteBatch(
                tasks=[record(i, "success", 4) for i in ids],
                events=[event(i, 4, "success") for i in ids],
            )
        )
    return out


def counters(client: redis.Redis) -> tuple[float, int]:
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    calls = sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_info")
    )
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


async def write(url: str, n: int, size: int) -> dict[str, float]:
    work = batches(n, size)
    store = RedisStore.from_url(f"{url}?prefix=b{uuid.uuid4().hex[:8]}")
    await store.open()
    client = redis.Redis.from_url(url)
    try:
        cpu0, calls0 = counters(client)
        own0 = time.process_time()
        for batch in work:
            await store.apply(batch)
        own1 = time.process_time()
        cpu1, calls1 = counters(client)
    finally:
        client.close()
        await store.close()
    return {
        "redis_us": (cpu1 - cpu0) / n * 1e6,
        "redis_cmds": (calls1 - calls0) / n,
        "client_us": (own1 - own0) / n * 1e6,
    }


def server(prefix: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (scripts/ensure-redis.sh installs it)")
    port = free_port()
    args = [*prefix, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*args, "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_port(port, 60, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def instructions(n: int, size: int) -> int:
    """redis-server's instructions (cachegrind) from its start to its end, serving n tasks."""
    with tempfile.TemporaryDirectory(prefix="taskhub-cg-") as tmp:
        out = os.path.join(tmp, "cg.out")
        tool = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]
        proc, url = server(tool)
        asyncio.run(write(url, n, size))
        redis.Redis.from_url(url).shutdown(nosave=True)
        _, err = proc.communicate(timeout=120)
    found = re.search(r"I\s+refs:\s+([\d,]+)", err.decode())
    if found is None:
        raise SystemExit("valgrind printed no instruction count:\n" + err.decode()[-2000:])
    return int(found[1].replace(",", ""))


def return_after(text: str) -> None:
    """The batch script, as the engine registers it from now on, returns after its first line
    containing ``text``."""
    full = scripts.source

    def source(name: str) -> str:
        lines = full(name).split("\n")
        if name != "apply":
            return "\n".join(lines)
        at = next((i for i, line in enumerate(lines) if text in line), None)
        if at is None:
            raise SystemExit(f"no line of the batch script contains {text!r}")
        return "\n".join([*lines[: at + 1], "if true then return 1 end", *lines[at + 1 :]])

    scripts.source = source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=14, help="tasks per batch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--valgrind", action="store_true", help="instructions per task")
    parser.add_argument(
        "--return-after", metavar="TEXT", help="the script returns after its line with TEXT"
    )
    args = parser.parse_args()
    if args.return_after:
        return_after(args.return_after)
    if args.valgrind:
        small = args.n // 3
        per_task = (instructions(args.n, args.batch) - instructions(small, args.batch)) / (
            args.n - small
        )
        print(f"redis-server instructions per task: {per_task:,.0f} (n={args.n} minus n={small})")
        return
    runs = []
    for i in range(args.runs):
        proc, url = server([])
        try:
            row = asyncio.run(write(url, args.n, args.batch))
        finally:
            proc.terminate()
            proc.wait(10)
        runs.append(row)
        print(f"run {i + 1}: " + "  ".join(f"{k} {v:,.2f}" for k, v in row.items()), flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median (n={args.n}): " + "  ".join(f"{k} {v:,.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
