"""Issue 19's targets, one row each: what the target asks, this run's figure, met or not.

run.py calls ``measure_cpu`` (benchmarks/burst_cpu.py as a subprocess, ``--json``, medians of
3 runs per store) and ``target_rows`` on the round-trip rows of the same run; report.py prints
and writes the table. A target that needs what does not exist yet has a row that says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

from common import fmt, measured_line
from harness import HERE, PY, Failed, redis_server
from rich.table import Table
from scale_bench import HUBS_TARGETS, NOT_AVAILABLE, PROCESS_TARGETS
from targets import (
    CONCURRENCY,
    PEER_SINGLE_TARGETS,
    PEER_TARGETS,
    SINGLE_SUFFIX,
    TASKHUB_SINGLE_TARGETS,
    TASKHUB_TARGETS,
    fastest_peer,
)

BURST = os.path.join(HERE, "burst_cpu.py")
CPU_RUNS = 3  # the issue asks for medians of 3
HEADING = "## Issue 19's targets\n\n"

#: (store, figure of burst_cpu.py's medians, at most µs per task, what the target asks)
CPU_GOALS = [
    ("memory", "hub_us", 15.0, "memory:// hub CPU ≤ 15 µs per task"),
    ("memory", "clients_us", 15.0, "memory:// TaskHub's clients' CPU ≤ 15 µs per task together"),
    ("sqlite", "hub_us", 40.0, "sqlite:// hub CPU ≤ 40 µs per task"),
    ("redis", "hub_us", 30.0, "redis:// hub CPU ≤ 30 µs per task"),
    ("redis", "redis_us", 25.0, "redis:// redis-server CPU ≤ 25 µs per task"),
]
#: (round-trip row, at least this many times the fastest peer's tasks/s at the same worker
#: concurrency); each is also asked of the row's -c1 twin, against the peers at 1
RATIO_GOALS = [("taskhub-memory", 40.0), ("taskhub-sqlite", 15.0), ("taskhub-redis", 10.0)]
SEQ_P50_MS = 0.5  # sequential p50 on one hub (memory://), below this
PROCESSES_AT_LEAST = 1.4  # two hub processes against one, tasks/s
#: "flat": at k = 2 and 3 hubs, the hubs' CPU per task added up, and redis-server's, are at
#: most this many times k = 1's
FLAT_WITHIN = 1.25
PROCESSES_TARGET = (
    "two hub processes ≥ 1.4x one process on the same store (thin batched load generator)"
)
HUBS_TARGET = "k hubs on Redis: CPU per task of each hub and of redis-server flat as k goes 1 → 3"
HOP_TARGET = "adding hubs adds no relay hop for a client whose partition its hub leads"
#: "no hop": at k = 2 and 3 hubs, the sequential p50 of an action its hub leads is at most this
#: many times k = 1's (benchmarks/hop_probe.py, through hub 0 of each hubs-redis row)
HOP_WITHIN = 1.25


# --- measuring -------------------------------------------------------------------------------
def burst_cpu(store: str, n: int, runs: int, timeout: float) -> dict[str, Any]:
    """burst_cpu.py's JSON (every run's figures and the medians) for ``store``."""
    cmd = [PY, BURST, "--store", store, "--n", str(n), "--runs", str(runs), "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"burst_cpu.py --store {store}: no result after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise Failed(
            f"burst_cpu.py --store {store} exited with {proc.returncode}: "
            f"{proc.stderr.strip()[-500:]}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            doc: dict[str, Any] = json.loads(line)
            doc["command"] = "benchmarks/burst_cpu.py " + " ".join(cmd[2:])
            return doc
    raise Failed(f"burst_cpu.py --store {store} printed no JSON line")


def starts_own_redis() -> bool:
    """Whether this burst_cpu.py starts a throwaway redis-server for ``redis://{redis}/0``."""
    out = subprocess.run([PY, BURST, "--help"], capture_output=True, text=True, timeout=60)
    return "{redis}" in out.stdout


def measure_cpu(
    n: int,
    timeout: float,
    redis_bin: Callable[[], str],
    log: Callable[[str], str],
    on_store: Callable[[str], None],
) -> dict[str, Any]:
    """burst_cpu.py on memory://, sqlite:// and redis://: per store its figures, or why not."""
    out: dict[str, Any] = {}
    for kind in ("memory", "sqlite", "redis"):
        on_store(kind)
        with contextlib.ExitStack() as stack:
            try:
                if kind == "memory":
                    store = "memory://"
                elif kind == "sqlite":
                    store = "sqlite:///{tmp}/b.db"  # burst_cpu.py: a temp dir per run
                elif starts_own_redis():
                    store = "redis://{redis}/0"
                else:
                    url, _ = stack.enter_context(redis_server(redis_bin(), log("burst-redis")))
                    store = f"{url}?prefix=cpu{uuid.uuid4().hex[:8]}"
                out[kind] = burst_cpu(store, n, CPU_RUNS, timeout)
            except (Failed, OSError, ValueError, subprocess.SubprocessError) as exc:
                out[kind] = {"error": str(exc)}
    return out


# --- the rows --------------------------------------------------------------------------------
def row(target: str, figure: str, met: bool | None, needs: str = "") -> dict[str, str]:
    status = f"not measured: needs {needs}" if needs else ("met" if met else "not met")
    return {"target": target, "figure": figure, "status": status}


def scale_rows_of(
    scale: list[dict[str, Any]], names: list[str], target: str
) -> list[dict[str, Any]] | dict[str, str]:
    """The scale rows ``names`` if every one ran; else the target's row saying why not (the
    build's own words when it cannot run them: never a figure)."""
    by = {r["name"]: r for r in scale}
    missing = [n for n in names if n not in by]
    if missing:
        return row(target, "", None, f"the {', '.join(missing)} row(s) in this run")
    for name in names:
        r = by[name]
        if r.get("status") == "skipped" and str(r.get("note", "")).startswith(NOT_AVAILABLE):
            return {"target": target, "figure": "-", "status": str(r["note"])}
        if r.get("status") != "ok":
            return row(target, "", None, f"the {name} row to run ({r.get('note', '')})")
    return [by[n] for n in names]


def processes_row(scale: list[dict[str, Any]]) -> dict[str, str]:
    """Two hub processes against one on the same store, tasks/s of the thin generator."""
    target = PROCESSES_TARGET
    got = scale_rows_of(scale, PROCESS_TARGETS, target)
    if isinstance(got, dict):
        return got
    one, two = got
    ratio = two["throughput"] / one["throughput"]
    figure = (
        f"{ratio:.2f}x ({fmt(two['throughput'], 0)} vs {fmt(one['throughput'], 0)} tasks/s, "
        f"sqlite://, {one.get('partitions')} partitions)"
    )
    return row(target, figure, ratio >= PROCESSES_AT_LEAST)


def hubs_row(scale: list[dict[str, Any]]) -> dict[str, str]:
    """CPU per task of the hubs (added up) and of redis-server as k goes 1 → 3."""
    target = HUBS_TARGET
    got = scale_rows_of(scale, HUBS_TARGETS, target)
    if isinstance(got, dict):
        return got
    hubs = [r["hubs_cpu_us"] for r in got]
    redis = [r["redis_cpu_us"] for r in got]
    each = " / ".join(fmt(v, 1) for v in got[-1]["hub_cpu_us"])
    figure = (
        f"hubs {' → '.join(fmt(v, 1) for v in hubs)} µs per task in all (at k = {len(got)}: "
        f"{each}), redis-server {' → '.join(fmt(v, 1) for v in redis)} µs; flat = within "
        f"{FLAT_WITHIN:g}x of k = 1"
    )
    if got[0].get("partitions") == 1:  # one leader does every task: flat says nothing
        needs = "the hubs to lead partitions (run.py --scale-partitions > 1); with one, one hub"
        return row(target, figure, None, needs + " runs every task and the others relay")
    flat = all(v <= hubs[0] * FLAT_WITHIN for v in hubs) and all(
        v <= redis[0] * FLAT_WITHIN for v in redis
    )
    return row(target, figure, flat)


def hop_row(scale: list[dict[str, Any]]) -> dict[str, str]:
    """Sequential p50 through hub 0 for an action it leads ("own"), as k goes 1 → 3, beside
    an action another hub leads ("across"): no relay hop when "own" stays k = 1's."""
    got = scale_rows_of(scale, HUBS_TARGETS, HOP_TARGET)
    if isinstance(got, dict):
        return got
    probes = [r.get("hop") or {} for r in got]
    failed = [
        f"k = {k}: {p.get('error', 'no probe')}"
        for k, p in enumerate(probes, 1)
        if "own_p50_ms" not in p
    ]
    if failed:
        return row(
            HOP_TARGET, "", None, "benchmarks/hop_probe.py to run (" + "; ".join(failed) + ")"
        )
    own = [p["own_p50_ms"] for p in probes]
    across = [f"{p['across_p50_ms']:.2f}" for p in probes if "across_p50_ms" in p]
    figure = (
        f"sequential p50 through a hub, an action it leads: {' → '.join(f'{v:.2f}' for v in own)}"
        f" ms (k = 1 → {len(own)}); an action another hub leads: {' / '.join(across) or '-'} ms;"
        f" no hop = within {HOP_WITHIN:g}x of k = 1"
    )
    return row(HOP_TARGET, figure, all(v <= own[0] * HOP_WITHIN for v in own))


def cpu_row(cpu: dict[str, Any], kind: str, key: str, limit: float, target: str) -> dict[str, str]:
    """A CPU-per-task target against the medians of burst_cpu.py's runs on store ``kind``."""
    res = cpu.get(kind)
    if not res:
        return row(target, "", None, f"burst_cpu.py on {kind}:// in this run (run.py --targets)")
    if "error" in res:
        return row(target, "", None, f"burst_cpu.py to run on {kind}:// ({res['error']})")
    runs = res["runs"]
    publisher = "publisher_us"
    if key == "clients_us":  # the worker and the publisher in the burst, each run's sum
        # The publisher's CPU in the burst alone: publisher_us also counts its start-up
        # (imports, connecting: ~0.2 s, 6-10 µs per task at N = 30,000), which is no per-task
        # work. A burst_cpu.py older than publisher_burst_us has only the whole figure.
        if all(math.isfinite(r.get("publisher_burst_us", math.nan)) for r in runs):
            publisher = "publisher_burst_us"
        values = [r["worker_us"] + r[publisher] for r in runs]
    elif all(key in r for r in runs):
        values = [r[key] for r in runs]
    else:
        return row(target, "", None, f"`{key}` in burst_cpu.py's output (branch redislua)")
    median = statistics.median(values)
    figure = f"{median:.1f} µs (runs: {', '.join(f'{v:.1f}' for v in values)})"
    if key == "clients_us":
        med = res["median"]
        figure += f"; worker {med['worker_us']:.1f} + publisher {med[publisher]:.1f}"
        figure += " in the burst" if publisher == "publisher_burst_us" else " with its start-up"
    return row(target, figure, median <= limit)


def ratio_row(
    ok: dict[str, dict[str, Any]], name: str, at_least: float, concurrency: int
) -> dict[str, str]:
    """TaskHub's row ``name`` against the fastest peer that ran at the same concurrency."""
    target = (
        f"{name.split('-')[1]}:// round trip ≥ {at_least:g}x the fastest peer, "
        f"both at worker concurrency {concurrency}"
    )
    if name not in ok:
        return row(target, "", None, f"the {name} row in this run")
    peer = fastest_peer(ok, ok[name].get("concurrency", 0))
    if peer is None:
        return row(
            target, "", None, f"the peers (Celery, Dramatiq, arq, RQ) at {concurrency} in this run"
        )
    ratio = ok[name]["throughput"] / peer["throughput"]
    figure = (
        f"{ratio:.1f}x {peer['name']} ({fmt(ok[name]['throughput'], 0)} vs "
        f"{fmt(peer['throughput'], 0)} tasks/s; asks {fmt(peer['throughput'] * at_least, 0)})"
    )
    return row(target, figure, ratio >= at_least)


def common_concurrency(ok: dict[str, dict[str, Any]]) -> int:
    """The common worker concurrency of this run's plain round-trip rows."""
    for name in (*TASKHUB_TARGETS, *PEER_TARGETS):
        if name in ok and "concurrency" in ok[name]:
            return int(ok[name]["concurrency"])
    return CONCURRENCY


def concurrency_row(ok: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The worker concurrency of TaskHub's and each peer's round trip, level by level: met when
    within each level every row ran at that level and TaskHub has peers to compare with."""
    target = "TaskHub and the peers at the same worker concurrency"
    parts: list[str] = []
    same = True
    for level in (TASKHUB_TARGETS + PEER_TARGETS, TASKHUB_SINGLE_TARGETS + PEER_SINGLE_TARGETS):
        ran = [ok[name] for name in level if name in ok]
        if not ran:
            continue
        taskhub = [r for r in ran if r["name"].startswith("taskhub-")]
        peers = [r for r in ran if not r["name"].startswith("taskhub-")]
        values = {r.get("concurrency") for r in ran}
        same = same and len(values) == 1 and bool(taskhub) and bool(peers)
        described = [
            f"{r['name'].removesuffix(SINGLE_SUFFIX)} {r.get('concurrency_how', '?')}"
            for r in (taskhub[:1] + peers)
        ]
        head = "/".join(str(v) for v in sorted(values, key=lambda v: (v is None, v or 0)))
        parts.append(f"{head}: " + ", ".join(described).replace("taskhub-memory", "TaskHub"))
    if not parts:
        return row(target, "", None, "the round trips of TaskHub and the peers in this run")
    return row(target, "; ".join(parts), same)


def target_rows(
    rows: list[dict[str, Any]], cpu: dict[str, Any], scale: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """Issue 19's targets, in the issue's order, from one run's round trips, CPU figures and
    scale rows (benchmarks/scale_bench.py)."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}
    out: list[dict[str, str]] = []
    common = common_concurrency(ok)
    for name, at_least in RATIO_GOALS:  # per store: its CPU targets, then its ratios
        out += [cpu_row(cpu, *goal) for goal in CPU_GOALS if goal[0] == name.split("-")[1]]
        out.append(ratio_row(ok, name, at_least, common))
        out.append(ratio_row(ok, name + SINGLE_SUFFIX, at_least, 1))
    out += [processes_row(scale or []), hubs_row(scale or [])]
    seq = f"sequential p50 < {SEQ_P50_MS} ms on one hub (memory://)"
    if "taskhub-memory" in ok:
        p50 = ok["taskhub-memory"]["seq_p50_ms"]
        out.append(row(seq, f"{p50:.2f} ms", p50 < SEQ_P50_MS))
    else:
        out.append(row(seq, "", None, "the taskhub-memory row in this run"))
    out.append(hop_row(scale or []))
    out.append(concurrency_row(ok))
    return out


# --- output ----------------------------------------------------------------------------------
def load_note(section: dict[str, Any]) -> str:
    """The load average at the start, and a warning when it was above the CPU count."""
    load, cpus = section.get("loadavg"), section.get("machine", {}).get("nproc")
    if not load:
        return ""
    note = f"; load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    if cpus and load[0] > cpus:  # shared machine: the figures are a busy machine's
        note += f" on {cpus} CPUs: a loaded machine, slower and costlier than a quiet one"
    return note


def caption(section: dict[str, Any]) -> str:
    n = next((c.get("n") for c in section["cpu"].values() if "n" in c), None)
    return (
        f"CPU per task: medians of {CPU_RUNS} runs of benchmarks/burst_cpu.py per store "
        f"(N={fmt(n, 0)}); round trips: this run's rows, TaskHub and each peer at worker "
        f"concurrency {section.get('concurrency', '?')} and again at 1 (the -c1 rows)"
        + load_note(section)
    )


def console_table(section: dict[str, Any]) -> Table:
    t = Table(title="Issue 19's targets", caption=caption(section))
    for col in ("target", "this run", "met?"):
        t.add_column(col)
    for r in section["rows"]:
        t.add_row(r["target"], r["figure"] or "-", r["status"])
    return t


def markdown_table(section: dict[str, Any]) -> str:
    lines = ["| target | this run | met? |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['figure'] or '-'} | {r['status']} |" for r in section["rows"]]
    return "\n".join([*lines, "", caption(section) + "."])


def section(report: dict[str, Any], cpu: dict[str, Any], loadavg: list[float]) -> dict[str, Any]:
    """The ``issue19`` entry of the results and of docs/performance.json."""
    return {
        "started_at": report["started_at"],
        "command": report["command"],
        "machine": report["machine"],
        "loadavg": loadavg,
        "cpu": cpu,
        "concurrency": common_concurrency(
            {r["name"]: r for r in report["rows"] if r.get("status") == "ok"}
        ),
        "rows": target_rows(report["rows"], cpu, report.get("scale_rows")),
    }


def markdown_block(sec: dict[str, Any]) -> str:
    """The ``issue19`` block of docs/performance.md."""
    commands = [c["command"] for c in sec["cpu"].values() if "command" in c]
    return "\n".join(
        [
            measured_line(sec),
            "",
            markdown_table(sec),
            "",
            "CPU per task from: " + ", ".join(f"`{c}`" for c in commands) + "."
            if commands
            else "burst_cpu.py did not run.",
        ]
    )
