"""Instructions per task of TaskHub's clients in a burst, under valgrind's cachegrind:
deterministic enough to compare two versions of the client on a busy machine where CPU time
is not.

    .venv/bin/python benchmarks/client_instructions.py                # publisher and worker
    .venv/bin/python benchmarks/client_instructions.py --side worker --runtime
    PYTHONPATH=/other/checkout/src .venv/bin/python benchmarks/client_instructions.py  # A/B

Starts a ``taskhub serve`` on memory:// and the processes burst_cpu.py starts (one
``taskhub_bench.py worker`` with concurrency 64, one ``taskhub_bench.py publish``), with the
measured side under cachegrind and the other run natively, twice: a burst of ``--n`` tasks
and one of three times as many. The difference of the two totals divided by the difference
of the task counts is the side's instructions per task, its start-up cancelled out. The
process under valgrind runs ~50x slower, so the other side batches more than in a real
burst (the hub's offers and answers come in larger frames): compare versions with it, not
with burst_cpu.py's figures. ``--runtime``: the worker runs through ``taskhub.Worker``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_worker, free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
SCRIPT = os.path.join(HERE, "taskhub_bench.py")


def valgrind(out: str) -> list[str]:
    binary = shutil.which("valgrind")
    if binary is None:
        raise SystemExit("valgrind is not on PATH (apt-get install valgrind)")
    return [binary, "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]


def total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit(f"{path} has no summary line")


def one(side: str, n: int, runtime: bool, tmp: str) -> int:
    """The measured side's instructions in a run with a burst of ``n`` tasks."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    cli = os.path.join(os.path.dirname(PY), "taskhub")
    env = {**os.environ, "TASKHUB_LOG": "warning"}
    quiet = subprocess.DEVNULL
    hub = subprocess.Popen(
        [cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--store", "memory://"],
        env=env,
        stdout=quiet,
        stderr=quiet,
    )
    out = os.path.join(tmp, f"cg.{side}.{n}")
    grind = valgrind(out)
    worker = None
    try:
        wait_port(port, 20, hub)
        worker = bench_worker(url, runtime=runtime, under=grind if side == "worker" else [])
        cmd = [PY, SCRIPT, "publish", "--url", url, "--n", str(n), "--seq", "0"]
        subprocess.run(
            (grind if side == "publisher" else []) + cmd, stdout=quiet, stderr=quiet, check=True
        )
    finally:
        for proc in (worker, hub):
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    return total(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=["publisher", "worker", "both"], default="both")
    parser.add_argument("--n", type=int, default=2000, help="the smaller burst [2000]")
    parser.add_argument("--runtime", action="store_true", help="the worker through Worker")
    args = parser.parse_args()
    sides = ["publisher", "worker"] if args.side == "both" else [args.side]
    with tempfile.TemporaryDirectory(prefix="taskhub-cg-") as tmp:
        for side in sides:
            small = one(side, args.n, args.runtime, tmp)
            large = one(side, 3 * args.n, args.runtime, tmp)
            per_task = (large - small) // (2 * args.n)
            how = " (through Worker)" if side == "worker" and args.runtime else ""
            print(f"{side}{how}: {per_task:,} instructions per task", flush=True)


if __name__ == "__main__":
    main()
