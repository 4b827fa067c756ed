"""TaskHub against Celery, RQ, Dramatiq and arq, a bare WebSocket echo and a bare relay.

    .venv/bin/python benchmarks/run.py                 # everything (make bench)
    .venv/bin/python benchmarks/run.py --smoke         # TaskHub memory+sqlite, echo, relay
    .venv/bin/python benchmarks/run.py --only taskhub,celery --n 2000
    .venv/bin/python benchmarks/run.py --only cluster --n 4000   # 1, 2, 3 hubs on one Redis
    .venv/bin/python benchmarks/run.py --only inflight --k 100000 # hub memory, tasks in flight
    .venv/bin/python benchmarks/run.py --targets       # only what issue 19's targets table needs
    .venv/bin/python benchmarks/run.py --only peers,taskhub --concurrency 16

Every system runs in processes of its own: the hub (or redis-server), the worker side, one
publisher process. The workload is N no-op tasks with a ~100-byte JSON payload that the worker
returns as the result; the publisher collects every result. Every round trip runs at two worker
concurrencies, the same for TaskHub and each peer: the common level C (--concurrency, 8) under
the plain row names, and 1 under the names ending in -c1. TaskHub's worker gets C as its
subscription's credit; Celery a threads pool of C (solo at 1), Dramatiq C threads, arq
max_jobs=C, RQ C worker processes (an RQ worker runs one job at a time); see
benchmarks/peers/*.py and "Peers at equal concurrency" in docs/decisions.md. The cluster rows
start k hubs on one Redis instead (one leads, the others relay to it), see "Several hubs" in
docs/performance.md. The inflight rows (after the others) measure the hub's memory with K tasks
accepted and waiting for a worker, then drain them: benchmarks/inflight_bench.py, "Tasks in
flight" in docs/performance.md. A full run (and --targets) ends with the table of issue 19's
targets: benchmarks/burst_cpu.py's CPU per task (medians of 3 runs on memory://, sqlite:// and
redis://) and this run's round trips against the fastest peer, "Issue 19's targets" in
docs/performance.md; --targets runs only the TaskHub rows, the peers, the scale rows
(benchmarks/scale_bench.py: hub processes and k hubs under the thin batched load generator)
and burst_cpu.py, and rewrites only those sections of the docs.
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
import issue19
import scale_bench
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
from report import cluster_table, ratio_lines, ratios, scale_table, table, write_docs
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from scale_bench import SCALE_TARGETS
from targets import (
    ALL_TARGETS,
    BOUND_TARGETS,
    CLUSTER_TARGETS,
    CONCURRENCY,
    INFLIGHT_TARGETS,
    PEER_SINGLE_TARGETS,
    PEER_TARGETS,
    SINGLE_SUFFIX,
    TASKHUB_SINGLE_TARGETS,
    TASKHUB_TARGETS,
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
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"the common worker concurrency of TaskHub and the peers; the -c1 rows run at 1 "
        f"[{CONCURRENCY}]",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma list of: taskhub, peers, c1 (every -c1 row), cluster, scale, inflight, "
        + ", ".join(ALL_TARGETS),
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
        "--targets",
        dest="targets_only",
        action="store_true",
        help="only what issue 19's targets table needs: TaskHub's round trips, the peers', "
        "the scale rows, burst_cpu.py",
    )
    parser.add_argument(
        "--cpu-n",
        type=int,
        default=30_000,
        help="tasks in each burst_cpu.py run of the targets table [30000]",
    )
    parser.add_argument(
        "--thin-n",
        type=int,
        default=30_000,
        help="tasks of the thin batched load generator in the scale rows [30000]",
    )
    parser.add_argument(
        "--scale-partitions",
        type=int,
        default=scale_bench.PARTITIONS,
        help="partitions of the scale rows' stores; 1 runs the k hubs as today's cluster "
        f"(one leader) [{scale_bench.PARTITIONS}]",
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
    if not 1 <= args.scale_partitions <= 1024:
        parser.error(f"--scale-partitions must be 1-1024, not {args.scale_partitions}")
    if args.concurrency < 2:
        parser.error(
            f"--concurrency must be at least 2 (the -c1 rows run at 1), not {args.concurrency}"
        )
    if args.targets_only and (args.only or args.smoke):
        parser.error("--targets runs its own set: not with --only or --smoke")
    # The targets table comes with a full run (make bench) and with --targets.
    args.issue19 = args.targets_only or not (args.only or args.smoke)
    if args.smoke:
        args.n, args.seq, args.warmup, args.timeout = min(args.n, 300), 30, 20, 20.0
        args.k = min(args.k, SMOKE_K)
        args.no_docs = True
    args.targets = select_targets(parser, args)
    return args


def select_targets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The targets to run, in order: --targets', --smoke's or all of them, narrowed by --only."""
    if args.targets_only:
        return [
            *TASKHUB_TARGETS,
            *PEER_TARGETS,
            *TASKHUB_SINGLE_TARGETS,
            *PEER_SINGLE_TARGETS,
            *SCALE_TARGETS,
        ]
    targets = list(SMOKE_TARGETS if args.smoke else ALL_TARGETS)
    if args.only:
        wanted: list[str] = []
        for word in args.only.split(","):
            word = word.strip()
            if word == "taskhub":
                wanted += TASKHUB_TARGETS
            elif word == "peers":
                wanted += PEER_TARGETS
            elif word == "c1":
                wanted += [t for t in ALL_TARGETS if t.endswith(SINGLE_SUFFIX)]
            elif word == "cluster":
                wanted += CLUSTER_TARGETS
            elif word == "inflight":
                wanted += INFLIGHT_TARGETS
            elif word == "scale":
                wanted += SCALE_TARGETS
            elif word in ALL_TARGETS:
                wanted.append(word)
            elif word:
                parser.error(
                    f"unknown target {word!r}: use taskhub, peers, c1, cluster, scale, inflight, "
                    f"{', '.join(ALL_TARGETS)}"
                )
        targets = [t for t in targets if t in wanted]
    return targets


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Bench, dict[str, Any]]:
    """Run every target in turn, then burst_cpu.py if the targets table is wanted, with a
    progress bar; their rows, the Bench that ran them, and burst_cpu.py's figures."""
    rows: list[dict[str, Any]] = []
    cpu: dict[str, Any] = {}
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<40}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        steps = len(args.targets) * STEPS
        bar = progress.add_task("starting", total=steps + (3 if args.issue19 else 0))
        bench = Bench(args, progress, bar)
        for i, target in enumerate(args.targets):
            progress.update(bar, description=f"{target}: starting", completed=i * STEPS)
            rows.append(measure_one(bench, target))
            progress.update(bar, completed=(i + 1) * STEPS, description=f"{target}: done")
        if args.issue19:

            def on_store(kind: str) -> None:
                desc = f"burst_cpu.py {kind}:// ({issue19.CPU_RUNS} runs)"
                progress.update(bar, advance=0 if kind == "memory" else 1, description=desc)

            timeout = args.timeout * issue19.CPU_RUNS
            cpu = issue19.measure_cpu(args.cpu_n, timeout, bench.redis, bench.log, on_store)
            progress.update(bar, completed=steps + 3, description="burst_cpu.py: done")
    return rows, bench, cpu


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
            "worker_concurrency": [args.concurrency, 1],
            "payload_bytes": next((r["payload_bytes"] for r in rows if "payload_bytes" in r), None),
        },
    }
    if any(t in INFLIGHT_TARGETS for t in args.targets):
        report["settings"].update(k=args.k, inflight_chunk=args.inflight_chunk)
    if any(t in SCALE_TARGETS for t in args.targets):
        report["settings"].update(
            thin_n=args.thin_n,
            scale_partitions=args.scale_partitions,
            thin_connections=scale_bench.CONNECTIONS,
        )
    peers = PEER_TARGETS + PEER_SINGLE_TARGETS
    if any(t in peers for t in args.targets) and os.path.exists(PEERS_VENV):
        report["versions"].update(peer_versions(os.path.join(PEERS_VENV, "bin", "python")))
    if bench.redis_bin:
        report["versions"]["redis-server"] = redis_version(bench.redis_bin)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.UTC)
    loadavg = [round(x, 2) for x in os.getloadavg()]  # the machine may be shared: say how busy
    all_rows, bench, cpu = measure(args)
    cluster_rows = [r for r in all_rows if r["name"] in CLUSTER_TARGETS]
    inflight_rows = [r for r in all_rows if r["name"] in INFLIGHT_TARGETS]
    scale_rows = [r for r in all_rows if r["name"] in SCALE_TARGETS]
    rows = [
        r for r in all_rows if r["name"] not in CLUSTER_TARGETS + INFLIGHT_TARGETS + SCALE_TARGETS
    ]
    rat = ratios(rows)
    if rows:
        console.print(table(rows))
    if cluster_rows:
        console.print(cluster_table(cluster_rows))
    if scale_rows:
        console.print(scale_table(scale_rows))
    if inflight_rows:
        console.print(inflight_bench.table(inflight_rows))
    for line in ratio_lines(rat):
        console.print(line, highlight=False)
    report = make_report(args, argv, started_at, bench, rows)
    report["loadavg"] = loadavg
    report.update(
        rows=rows,
        ratios=rat,
        cluster_rows=cluster_rows,
        inflight_rows=inflight_rows,
        scale_rows=scale_rows,
    )
    if args.issue19:
        report["issue19"] = issue19.section(report, cpu, loadavg)
        console.print(issue19.console_table(report["issue19"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    console.print(f"raw figures: {os.path.relpath(args.out)}")
    if not args.no_docs:
        # --targets measured part of the main table only: it rewrites its own section alone.
        write_docs({**report, "rows": []} if args.targets_only else report)
    failed = [r["name"] for r in all_rows if r["status"] == "failed"]
    failed += [f"burst_cpu.py {kind}://" for kind, c in cpu.items() if "error" in c]
    if failed:
        console.print(
            f"[red]failed:[/red] {', '.join(failed)} (logs in {os.path.relpath(bench.logs)})"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
