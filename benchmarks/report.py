"""run.py's output: the tables on the console, the ratios, and docs/performance.{md,json,png}."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from typing import Any

import inflight_bench
import issue19
from common import fmt, measured_line, replace_block
from harness import HERE, PEERS_VENV, ROOT, console
from rich.table import Table
from targets import TASKHUB_SINGLE_TARGETS, TASKHUB_TARGETS, fastest_peer

DOCS = os.path.join(ROOT, "docs")
SCALE_HEADING = "## Hub processes and hubs (thin load generator)\n\n"


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each TaskHub row against the fastest peer and Celery at its own worker concurrency, and
    against the bounds (the echo; the relay, whose worker runs at the common concurrency)."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}
    out: dict[str, Any] = {}
    for name in (*TASKHUB_TARGETS, *TASKHUB_SINGLE_TARGETS):
        if name not in ok:
            continue
        tput, c = ok[name]["throughput"], ok[name].get("concurrency")
        fastest = fastest_peer(ok, c) if c else None
        celery = next(
            (r for n, r in ok.items() if n.startswith("celery") and r.get("concurrency") == c),
            None,
        )
        entry: dict[str, Any] = {"concurrency": c}
        if fastest:
            entry["fastest_peer"] = fastest["name"]
            entry["vs_fastest_peer"] = round(tput / fastest["throughput"], 2)
        if celery:
            entry["vs_celery"] = round(tput / celery["throughput"], 2)
        if "limit" in ok:
            entry["of_limit"] = round(tput / ok["limit"]["throughput"], 3)
        if "relay" in ok and ok["relay"].get("concurrency") == c:
            entry["of_relay"] = round(tput / ok["relay"]["throughput"], 3)
        out[name] = entry
    return out


def concurrency_cell(r: dict[str, Any]) -> str:
    """A row's worker concurrency and how that system got it (threads, processes, credit)."""
    if "concurrency" not in r:
        return "-"
    how = r.get("concurrency_how")
    return f"{r['concurrency']} ({how})" if how else str(r["concurrency"])


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Round trip: publish → worker → result, at the stated worker concurrency")
    for col in (
        "system",
        "concurrency",
        "N",
        "tasks/s",
        "seq p50 ms",
        "seq p99 ms",
        "load p50 ms",
        "load p99 ms",
        "peak RSS MiB",
        "RSS of",
        "note",
    ):
        left = ("system", "concurrency", "RSS of", "note")
        t.add_column(col, justify="left" if col in left else "right")
    for r in rows:
        if r.get("status") != "ok":
            t.add_row(r["name"], *["-"] * 9, f"{r['status']}: {r.get('note', '')}")
            continue
        t.add_row(
            r["name"],
            concurrency_cell(r),
            str(r["n"]),
            fmt(r["throughput"], 0),
            fmt(r["seq_p50_ms"], 2),
            fmt(r["seq_p99_ms"], 2),
            fmt(r["load_p50_ms"], 0),
            fmt(r["load_p99_ms"], 0),
            fmt(r.get("peak_rss_mb")),
            r.get("rss_of", ""),
            r.get("note", ""),
        )
    return t


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| system | worker concurrency | N | tasks/s | seq p50 ms | seq p99 ms | load p50 ms "
        "| load p99 ms | peak RSS MiB (of) |\n|---|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | | {r['status']}: {r.get('note', '')} | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {concurrency_cell(r)} | {r['n']} | {fmt(r['throughput'], 0)} "
            f"| {fmt(r['seq_p50_ms'], 2)} "
            f"| {fmt(r['seq_p99_ms'], 2)} | {fmt(r['load_p50_ms'], 0)} "
            f"| {fmt(r['load_p99_ms'], 0)} | {fmt(r.get('peak_rss_mb'))} ({r.get('rss_of')}) |"
        )
    return "\n".join(lines)


CLUSTER_COLUMNS = (
    "run",
    "hubs",
    "worker procs",
    "N",
    "tasks/s",
    "seq p50 ms",
    "seq p99 ms",
    "load p50 ms",
    "load p99 ms",
    "seq p50 ms per hub",
    "leader",
    "leader RSS MiB",
)


def cluster_cells(r: dict[str, Any]) -> list[str]:
    per_hub = " / ".join(fmt(v, 2) for v in r.get("seq_p50_ms_by_hub") or [r["seq_p50_ms"]])
    return [
        r["name"],
        str(r["hubs"]),
        f"{r['worker_processes']} (on hub {', '.join(map(str, r['worker_hubs']))})",
        str(r["n"]),
        fmt(r["throughput"], 0),
        fmt(r["seq_p50_ms"], 2),
        fmt(r["seq_p99_ms"], 2),
        fmt(r["load_p50_ms"], 0),
        fmt(r["load_p99_ms"], 0),
        per_hub,
        f"hub {r['leader']}",
        fmt(r.get("peak_rss_mb")),
    ]


def cluster_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Several hubs on one Redis (one publisher process, a connection per hub)")
    for col in (*CLUSTER_COLUMNS, "note"):
        t.add_column(
            col,
            justify="left" if col in ("run", "worker procs", "note") else "right",
            no_wrap=col == "run",
        )
    for r in rows:
        if r.get("status") != "ok":
            t.add_row(
                r["name"],
                *["-"] * (len(CLUSTER_COLUMNS) - 1),
                f"{r['status']}: {r.get('note', '')}",
            )
            continue
        t.add_row(*cluster_cells(r), r.get("note", ""))
    return t


def cluster_markdown(rows: list[dict[str, Any]]) -> str:
    cols = [*CLUSTER_COLUMNS, "note"]
    right = {"hubs", "N", "tasks/s", "seq p50 ms", "seq p99 ms", "load p50 ms", "load p99 ms"}
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if c in right else "---" for c in cols) + "|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            cells = [r["name"], *[""] * (len(cols) - 2), f"{r['status']}: {r.get('note', '')}"]
        else:
            cells = [*cluster_cells(r), r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SCALE_COLUMNS = (
    "run",
    "tasks/s",
    "hub CPU µs/task (each)",
    "redis-server µs/task",
    "generator µs/task",
    "setup",
)


def scale_cells(r: dict[str, Any]) -> list[str]:
    """A scale row's cells; a row that did not run says why in its tasks/s cell."""
    if r.get("status") != "ok":
        return [r["name"], f"{r['status']}: {r.get('note', '')}", "", "", "", ""]
    cpu = r.get("cpu_us", {})
    if "hub_cpu_us" in r:  # k hubs: their sum, and each
        each = " / ".join(fmt(v, 1) for v in r["hub_cpu_us"])
        hubs = f"{fmt(r['hubs_cpu_us'], 1)} ({each})"
    else:
        hubs = fmt(cpu.get("hubs", cpu.get("relay")), 1)
    return [
        r["name"],
        fmt(r["throughput"], 0),
        hubs,
        fmt(r.get("redis_cpu_us"), 1),
        fmt(r.get("generator_cpu_us"), 1),
        r.get("setup", ""),
    ]


def scale_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Hub processes and hubs, thin batched load generator (benchmarks/thin_load.py)")
    for col in SCALE_COLUMNS:
        t.add_column(col, justify="left" if col in ("run", "setup") else "right")
    for r in rows:
        t.add_row(*scale_cells(r))
    return t


def scale_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(SCALE_COLUMNS) + " |",
        "|---|" + "---:|" * (len(SCALE_COLUMNS) - 2) + "---|",
    ]
    lines += ["| " + " | ".join(scale_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def ratio_lines(rat: dict[str, Any]) -> list[str]:
    out = []
    for name in (*TASKHUB_TARGETS, *TASKHUB_SINGLE_TARGETS):
        entry = rat.get(name)
        if not entry:
            continue
        parts = []
        at = f"at concurrency {entry['concurrency']}"
        if "vs_fastest_peer" in entry:
            parts.append(
                f"{entry['vs_fastest_peer']}x the fastest peer {at} ({entry['fastest_peer']})"
            )
        if "vs_celery" in entry:
            parts.append(f"{entry['vs_celery']}x Celery {at}")
        if "of_limit" in entry:
            parts.append(f"{entry['of_limit'] * 100:.0f}% of the bare WebSocket echo")
        if "of_relay" in entry:
            parts.append(f"{entry['of_relay'] * 100:.0f}% of the bare relay")
        out.append(f"{name}: " + ", ".join(parts))
    return out


def chart(json_path: str, png_path: str) -> str | None:
    """Draw the PNG with matplotlib from the peers' venv; the reason it could not, or None."""
    py = os.path.join(PEERS_VENV, "bin", "python")
    if not os.path.exists(py):
        return "no peers venv (matplotlib lives there)"
    proc = subprocess.run(
        [py, os.path.join(HERE, "chart.py"), json_path, png_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return None if proc.returncode == 0 else proc.stderr.strip()[-500:]


def write_docs(report: dict[str, Any]) -> None:
    """Rewrite the parts of docs/performance.{md,json,png} this run measured: the main table
    (and chart) if it ran any of the single-hub targets, the "Several hubs" table if it ran
    the cluster, "Issue 19's targets" if it made that table; the other parts, and their figures
    in the JSON, stay as they were."""
    os.makedirs(DOCS, exist_ok=True)
    json_path = os.path.join(DOCS, "performance.json")
    cluster_rows = report.pop("cluster_rows", [])
    inflight_rows = report.pop("inflight_rows", [])
    scale_rows = report.pop("scale_rows", [])
    doc, inflight = json_doc(report, json_path, cluster_rows, inflight_rows, scale_rows)
    with open(json_path, "w") as fh:
        json.dump(doc, fh, indent=2)
    if report["rows"]:
        problem = chart(json_path, os.path.join(DOCS, "performance.png"))
        if problem:
            console.print(f"[yellow]no chart:[/yellow] {problem}")
    path = os.path.join(DOCS, "performance.md")
    text = ""
    if os.path.exists(path):
        with open(path) as fh:
            text = fh.read()
    with open(path, "w") as fh:
        fh.write(markdown_doc(text, report, cluster_rows, inflight, scale_rows))
    console.print(f"updated {os.path.relpath(path)}, performance.json, performance.png")


def json_doc(
    report: dict[str, Any],
    json_path: str,
    cluster_rows: list[dict[str, Any]],
    inflight_rows: list[dict[str, Any]],
    scale_rows: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """docs/performance.json with this run's parts replaced; and its inflight section, if any."""
    old: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError), open(json_path) as fh:
        old = json.load(fh)
    doc = (
        dict(report)
        if report["rows"]
        else {k: v for k, v in old.items() if k not in ("cluster", "scale")}
    )
    for name, rows, extra in (("scale", scale_rows, ()), ("cluster", cluster_rows, ("versions",))):
        if rows:
            keys = ("started_at", "command", "machine", *extra, "settings")
            doc[name] = {**{key: report[key] for key in keys}, "rows": rows}
        elif name in old:  # a run without these rows keeps the last one's
            doc[name] = old[name]
    inflight: dict[str, Any] | None = None
    if inflight_rows:
        settings = report["settings"]
        inflight = inflight_bench.section(
            report, inflight_rows, settings["k"], settings["inflight_chunk"]
        )
        doc["inflight"] = inflight
    elif "inflight" in old:
        doc["inflight"] = old["inflight"]
    if "issue19" in report:
        doc["issue19"] = report["issue19"]
    elif "issue19" in old:  # a run without the targets table keeps the last one's
        doc["issue19"] = old["issue19"]
    return doc, inflight


def busy_note(report: dict[str, Any]) -> str:
    """ " The load average at the start was ...", with a warning on a loaded machine; "" when
    the report does not say."""
    note = issue19.load_note(report).removeprefix("; ")
    return f" {note[:1].upper()}{note[1:]}." if note else ""


def markdown_doc(
    text: str,
    report: dict[str, Any],
    cluster_rows: list[dict[str, Any]],
    inflight: dict[str, Any] | None,
    scale_rows: list[dict[str, Any]] | None = None,
) -> str:
    """docs/performance.md's ``text`` with this run's blocks replaced."""
    versions = "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "."
    if report["rows"]:
        block = "\n".join(
            [
                measured_line(report) + busy_note(report),
                "",
                markdown_table(report["rows"]),
                "",
                *[f"- {line}" for line in ratio_lines(report["ratios"])],
                "",
                versions,
            ]
        )
        text = replace_block(text, "bench", block)
    if cluster_rows:
        block = "\n".join([measured_line(report), "", cluster_markdown(cluster_rows), "", versions])
        text = replace_block(text, "cluster", block, "## Several hubs\n\n")
    if scale_rows:
        settings = report["settings"]
        how = (
            f"Thin batched load generator (`benchmarks/thin_load.py`): N = "
            f"{fmt(settings.get('thin_n'), 0)} tasks after a warm-up, "
            f"{settings.get('thin_connections')} publisher and as many worker connections in one "
            "process, `pubs` of 100 tasks without `ref` and at most 2,000 unfinished per "
            "publisher, the tasks round robin over 2 actions in each partition, each worker "
            "subscribed to all of them with credit 250 each and answering a frame's offers "
            "with one `returns`. CPU per task: user + system time from `/proc` of each hub "
            "process (with its descendants) and of redis-server over the measured tasks; stores of "
            f"{settings.get('scale_partitions')} partition(s). A row this build cannot run says "
            "so, with the hub's own words."
        )
        block = "\n".join(
            [measured_line(report) + busy_note(report), "", scale_markdown(scale_rows), "", how]
        )
        text = replace_block(text, "scale", block, SCALE_HEADING)
    if inflight is not None:
        text = replace_block(
            text, "inflight", inflight_bench.markdown_block(inflight), inflight_bench.HEADING
        )
    if "issue19" in report:
        block = issue19.markdown_block(report["issue19"])
        text = replace_block(text, "issue19", block, issue19.HEADING)
    return text
