"""TaskHub against Celery, RQ, Dramatiq and arq, a bare WebSocket echo and a bare relay.

    .venv/bin/python benchmarks/run.py                 # everything (make bench)
    .venv/bin/python benchmarks/run.py --smoke         # TaskHub memory+sqlite, echo, relay
    .venv/bin/python benchmarks/run.py --only taskhub,celery --n 2000
    .venv/bin/python benchmarks/run.py --only cluster --n 4000   # 1, 2, 3 hubs on one Redis
    .venv/bin/python benchmarks/run.py --only inflight --k 100000 # hub memory, tasks in flight

Every system runs in processes of its own: the hub (or redis-server), one worker process, one
publisher process. The workload is N no-op tasks with a ~100-byte JSON payload that the worker
returns as the result; the publisher collects every result. The cluster rows start k hubs on
one Redis instead (one leads, the others relay to it), see "Several hubs" in
docs/performance.md. The inflight rows (after the others) measure the hub's memory with K tasks
accepted and waiting for a worker, then drain them: benchmarks/inflight_bench.py, "Tasks in
flight" in docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import inflight_bench
from harness import (
    PEERS_VENV,
    Failed,
    Skipped,
    console,
    machine,
    peer_versions,
    project_versions,
    redis_version,
)
from report import cluster_table, ratio_lines, ratios, table, write_docs
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from targets import (
    ALL_TARGETS,
    BOUND_TARGETS,
    CLUSTER_TARGETS,
    INFLIGHT_TARGETS,
    PEER_TARGETS,
    TASKHUB_TARGETS,
    WORKER_CONCURRENCY,
    Bench,
)

HERE = os.path.dirname(os.path.abspath(__file__))

SMOKE_TARGETS = [
    "taskhub-memory",
    "taskhub-sqlite",
    *BOUND_TARGETS,
    "inflight-memory",
    "inflight-sqlite",
]
SMOKE_K = 500  # tasks in flight in --smoke
STEPS = 3  # progress steps per target: warm, sequential, burst


# --- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="tasks in the burst [5000]")
    parser.add_argument(
        "--rq-n",
        type=int,
        default=2000,
        help="at most this many for RQ, which forks per job [2000]",
    )
    parser.add_argument("--seq", type=int, default=200, help="sequential tasks [200]")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up tasks [200]")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of: taskhub, cluster, inflight, " + ", ".join(ALL_TARGETS),
    )
    parser.add_argument(
        "--k",
        type=int,
        default=100_000,
        help="tasks in flight in the inflight rows [100000; 500 with --smoke]",
    )
    parser.add_argument(
        "--inflight-chunk",
        type=int,
        default=5000,
        help="the inflight rows publish in chunks of this many [5000]",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny N, TaskHub memory+sqlite, the echo and the relay only, no peers",
    )
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="seconds a target's run may take [240]"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument(
        "--no-docs", action="store_true", help="do not update docs/performance.{md,json,png}"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.seq, args.warmup, args.timeout = min(args.n, 300), 30, 20, 20.0
        args.k = min(args.k, SMOKE_K)
        args.no_docs = True
    args.targets = select_targets(parser, args)
    return args


def select_targets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The targets to run, in order: --smoke's or all of them, narrowed by --only."""
    targets = list(SMOKE_TARGETS if args.smoke else ALL_TARGETS)
    if args.only:
        wanted: list[str] = []
        for word in args.only.split(","):
            word = word.strip()
            if word == "taskhub":
                wanted += TASKHUB_TARGETS
            elif word == "cluster":
                wanted += CLUSTER_TARGETS
            elif word == "inflight":
                wanted += INFLIGHT_TARGETS
            elif word in ALL_TARGETS:
                wanted.append(word)
            elif word:
                parser.error(
                    f"unknown target {word!r}: use taskhub, cluster, inflight, "
                    f"{', '.join(ALL_TARGETS)}"
                )
        targets = [t for t in targets if t in wanted]
    return targets


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Bench]:
    """Run every target in turn, with a progress bar; their rows and the Bench that ran them."""
    rows: list[dict[str, Any]] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<40}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("starting", total=len(args.targets) * STEPS)
        bench = Bench(args, progress, bar)
        for i, target in enumerate(args.targets):
            progress.update(bar, description=f"{target}: starting", completed=i * STEPS)
            rows.append(measure_one(bench, target))
            progress.update(bar, completed=(i + 1) * STEPS, description=f"{target}: done")
    return rows, bench


def measure_one(bench: Bench, target: str) -> dict[str, Any]:
    """One target's row: its figures, or why it was skipped or failed."""
    t0 = time.monotonic()
    try:
        row = {"name": target, "status": "ok", **bench.run(target)}
        if row.get("collected") != row.get("n") or row.get("errors"):
            row["note"] = f"{row['n'] - row['collected']} missing, {row['errors']} errors"
    except Skipped as exc:
        row = {"name": target, "status": "skipped", "note": str(exc)}
    except (Failed, OSError, TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
        row = {"name": target, "status": "failed", "note": str(exc)}
    row["wall_seconds"] = round(time.monotonic() - t0, 1)
    return row


def make_report(
    args: argparse.Namespace,
    argv: list[str] | None,
    started_at: dt.datetime,
    bench: Bench,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The report's head: when, which command, the machine, versions, settings."""
    report: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": project_versions(),
        "settings": {
            "n": args.n,
            "rq_n": args.rq_n,
            "seq": args.seq,
            "warmup": args.warmup,
            "taskhub_worker_concurrency": WORKER_CONCURRENCY,
            "payload_bytes": next((r["payload_bytes"] for r in rows if "payload_bytes" in r), None),
        },
    }
    if any(t in INFLIGHT_TARGETS for t in args.targets):
        report["settings"].update(k=args.k, inflight_chunk=args.inflight_chunk)
    if any(t in PEER_TARGETS for t in args.targets) and os.path.exists(PEERS_VENV):
        report["versions"].update(peer_versions(os.path.join(PEERS_VENV, "bin", "python")))
    if bench.redis_bin:
        report["versions"]["redis-server"] = redis_version(bench.redis_bin)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.UTC)
    all_rows, bench = measure(args)
    cluster_rows = [r for r in all_rows if r["name"] in CLUSTER_TARGETS]
    inflight_rows = [r for r in all_rows if r["name"] in INFLIGHT_TARGETS]
    rows = [r for r in all_rows if r["name"] not in CLUSTER_TARGETS + INFLIGHT_TARGETS]
    rat = ratios(rows)
    if rows:
        console.print(table(rows))
    if cluster_rows:
        console.print(cluster_table(cluster_rows))
    if inflight_rows:
        console.print(inflight_bench.table(inflight_rows))
    for line in ratio_lines(rat):
        console.print(line, highlight=False)
    report = make_report(args, argv, started_at, bench, rows)
    report.update(rows=rows, ratios=rat, cluster_rows=cluster_rows, inflight_rows=inflight_rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    console.print(f"raw figures: {os.path.relpath(args.out)}")
    if not args.no_docs:
        write_docs(report)
    failed = [r["name"] for r in all_rows if r["status"] == "failed"]
    if failed:
        console.print(
            f"[red]failed:[/red] {', '.join(failed)} (logs in {os.path.relpath(bench.logs)})"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
