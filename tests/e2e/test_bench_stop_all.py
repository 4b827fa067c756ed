"""A peer's runner stops all its worker processes even while the orchestrator stops it
(benchmarks/common.py's stop_all): RQ runs one worker process per unit of concurrency, and a
SIGTERM arriving while the runner stopped them one by one used to leave the rest running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

# A worker that takes half a second to go once told to (as a worker finishing its job does).
CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))\n"
    "time.sleep(120)\n"
)
RUNNER = f"""
import signal, sys
sys.path.insert(0, {str(BENCH)!r})
from common import spawn, stop_all
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as common.peer_worker sets it
children = [spawn([sys.executable, "-c", {CHILD!r}]) for _ in range(3)]
print(" ".join(str(c.pid) for c in children), flush=True)
sys.stdin.readline()  # the test says when
print("stopping", flush=True)
stop_all(children)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(60)
def test_every_worker_is_stopped_though_the_runner_gets_sigterm_meanwhile() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", RUNNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as runner:
        assert runner.stdin is not None and runner.stdout is not None
        pids = [int(p) for p in runner.stdout.readline().split()]
        try:
            time.sleep(0.5)  # the children are up and have their handlers
            runner.stdin.write("\n")
            runner.stdin.flush()
            assert runner.stdout.readline().strip() == "stopping"
            for _ in range(3):  # the orchestrator's SIGTERM, while the first child takes its time
                time.sleep(0.2)
                if runner.poll() is None:
                    runner.send_signal(signal.SIGTERM)
            runner.wait(20)
            assert [p for p in pids if alive(p)] == []
        finally:
            for pid in pids:
                if alive(pid):
                    os.killpg(pid, signal.SIGKILL)
            runner.kill()
