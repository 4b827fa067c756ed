"""Instructions per sequential task (one task at a time, publish → result) of the hub, the
worker or the publisher, under valgrind's cachegrind: what benchmarks/seq_cpu.sh times, but
deterministic enough to compare two versions on a busy machine.

    .venv/bin/python benchmarks/seq_instructions.py                      # all three
    .venv/bin/python benchmarks/seq_instructions.py --side hub
    PYTHONPATH=/other/checkout/src .venv/bin/python benchmarks/seq_instructions.py  # A/B

Starts a ``taskhub serve`` on memory://, one ``taskhub_bench.py worker`` and one
``taskhub_bench.py publish --seq N``, with the measured side under cachegrind and the others
run natively, twice: ``--n`` sequential tasks and three times as many. The difference of the
two totals divided by the difference of the task counts is the side's instructions per task,
its start-up cancelled out. Only user space is counted: the system calls' own cost (a loopback
``write`` is most of the hub's time) is not; ``--strace`` counts those calls per task instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
SCRIPT = os.path.join(HERE, "taskhub_bench.py")
SIDES = ("hub", "worker", "publisher")


def tool(kind: str, out: str) -> list[str]:
    if kind == "strace":
        binary = shutil.which("strace")
        if binary is None:
            raise SystemExit("strace is not on PATH (apt-get install strace)")
        return [binary, "-f", "-c", "-o", out]
    binary = shutil.which("valgrind")
    if binary is None:
        raise SystemExit("valgrind is not on PATH (apt-get install valgrind)")
    return [binary, "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]


def instructions(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit(f"{path} has no summary line")


def calls(path: str) -> dict[str, int]:
    """strace -c's table: calls by system call."""
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                out[parts[-1]] = int(parts[3])
    return out


def one(side: str, n: int, kind: str, tmp: str) -> str:
    """Run ``n`` sequential tasks with ``side`` under ``kind``; the tool's output file."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    out = os.path.join(tmp, f"{kind}.{side}.{n}")
    under = tool(kind, out)
    env = {**os.environ, "TASKHUB_LOG": "warning"}
    quiet = subprocess.DEVNULL
    serve = [PY, "-m", "taskhub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    hub = subprocess.Popen(
        (under if side == "hub" else []) + [*serve, "--store", "memory://"],
        env=env,
        stdout=quiet,
        stderr=quiet,
    )
    worker = None
    try:
        wait_port(port, 180, hub)
        cmd = [PY, SCRIPT, "worker", "--url", url, "--concurrency", "8"]
        worker = subprocess.Popen(
            (under if side == "worker" else []) + cmd,
            stdout=subprocess.PIPE,
            stderr=quiet,
            text=True,
        )
        assert worker.stdout is not None
        for line in worker.stdout:
            if '"ready"' in line:
                break
        cmd = [PY, SCRIPT, "publish", "--url", url, "--n", "1", "--seq", str(n), "--warmup", "20"]
        subprocess.run(
            (under if side == "publisher" else []) + cmd, stdout=quiet, stderr=quiet, check=True
        )
    finally:
        for name, proc in (("worker", worker), ("hub", hub)):
            if proc is not None:
                stop(proc, traced=kind == "strace" and name == side)
    return out


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes], *, traced: bool) -> None:
    """SIGTERM to the process, or under strace to the process strace runs (strace then
    writes its table and exits with it)."""
    if traced:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            for child in f.read().split():
                os.kill(int(child), signal.SIGTERM)
    else:
        proc.terminate()
    proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=[*SIDES, "all"], default="all")
    parser.add_argument("--n", type=int, default=300, help="the smaller run's tasks [300]")
    parser.add_argument(
        "--strace", action="store_true", help="system calls per task (strace -c), not instructions"
    )
    args = parser.parse_args()
    sides = SIDES if args.side == "all" else (args.side,)
    kind = "strace" if args.strace else "cachegrind"
    with tempfile.TemporaryDirectory(prefix="taskhub-seq-") as tmp:
        for side in sides:
            small = one(side, args.n, kind, tmp)
            large = one(side, 3 * args.n, kind, tmp)
            tasks = 2 * args.n
            if kind == "strace":
                a, b = calls(small), calls(large)
                per = {k: (b.get(k, 0) - a.get(k, 0)) / tasks for k in b}
                shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()) if v >= 0.05)
                print(f"{side}: system calls per sequential task: {shown}", flush=True)
            else:
                per_task = (instructions(large) - instructions(small)) // tasks
                print(f"{side}: {per_task:,} instructions per sequential task", flush=True)


if __name__ == "__main__":
    main()
