"""``taskhub bench`` runs a real round trip and reports figures (never asserted for speed)."""

from __future__ import annotations

import re
import subprocess
import sys


def test_bench_reports_throughput_and_latency() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "taskhub", "bench", "--n", "50", "--seq", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    match = re.search(r"([\d,]+) tasks/s over 50 tasks; one at a time p50 ([\d.]+) ms", run.stdout)
    assert match, run.stdout
    assert float(match.group(1).replace(",", "")) > 0


def test_bench_refuses_nonsense() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "taskhub", "bench", "--n", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "--n" in run.stderr
