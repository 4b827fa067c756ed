"""Peak hub memory per 100,000 tasks in flight (issue #7), for each TaskHub store.

    .venv/bin/python benchmarks/inflight_bench.py --k 100000        # memory, sqlite, redis
    .venv/bin/python benchmarks/inflight_bench.py --k 500 --stores memory,sqlite --no-docs
    .venv/bin/python benchmarks/run.py --only inflight --k 100000   # the same, from run.py

For each store a hub process is started as ``run.py`` starts it (``taskhub serve``; a fresh
sqlite file in a temp dir; a loopback ``redis-server`` of its own), and a publisher process
(``inflight_bench.py publish``) connects to it. Then:

1. the hub's RSS (``VmRSS``) is read: *idle*;
2. the publisher publishes K tasks (~100-byte payloads, ``common.payload``) with **no worker
   subscribed**, in chunks (5,000 by default), awaiting each chunk's acceptances (every task
   stored) before the next; all K are then in flight: accepted, stored, waiting for a worker;
3. the hub's RSS is read again: *K in flight*; (in flight - idle) * 100,000 / K is the figure
   the issue asks for, "MiB per 100k in flight";
4. a worker process (``taskhub_bench.py worker``, concurrency 64) subscribes and the tasks are
   drained: from its subscription being confirmed to the publisher holding every result
   (drain tasks/s). Then the hub's RSS is read once more, and its peak (``VmHWM``), which it
   reaches as the drain starts, not while publishing (also reported as (peak - idle) per
   100k). Python rarely gives freed memory back to the OS, and ended tasks stay in the store
   for the retention period (7 days by default; in the hub's RSS for memory://), so the RSS
   after the drain is reported, never asserted.

Every process runs on its own (hub, publisher, worker, redis-server); the processes of a store
are stopped before the next store starts. Results: a table here, ``--out`` (JSON), and unless
``--no-docs`` the ``inflight`` key of docs/performance.json and the ``inflight`` block of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
from common import (
    emit,
    fmt,
    free_port,
    measured_line,
    payload,
    payload_size,
    peak_rss_mb,
    replace_block,
    rss_mb,
    stop,
    wait_port,
)
from harness import HUB_ENV, Failed, console, hub_args, redis_server, started, wait_ready

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCS = os.path.join(ROOT, "docs")
PY = sys.executable
STORES = ["memory", "sqlite", "redis"]
DEFAULT_K = 100_000
DEFAULT_CHUNK = 5_000
WORKER_CONCURRENCY = 64  # as run.py's throughput rows
PER = 100_000  # the figure is MiB per this many tasks in flight
HEADING = "## Tasks in flight\n\n"
LOGS = os.path.join(HERE, "results", "logs")


# --- the publisher process -------------------------------------------------------------------
async def publisher(url: str, k: int, chunk: int, timeout: float) -> None:
    """Connect, wait for a line on stdin, publish k tasks in chunks, then collect every result.

    Prints ``connected``, then ``in flight`` (with ``accepted``, ``refused``,
    ``publish_seconds``) once every task is accepted, then a ``result`` line with ``drained``
    (right results), ``errors`` and ``drained_at`` (``time.monotonic()``, comparable with
    the orchestrator's on the same machine) once every result is in or ``timeout`` passed.
    """
    from taskhub import Client

    loop = asyncio.get_running_loop()
    async with Client(url, name="inflight-publisher") as client:
        emit("event", event="connected")
        if not (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            return  # the orchestrator went away
        start = time.perf_counter()
        handles, refused = await publish_all(client, k, chunk, timeout)
        publish_seconds = time.perf_counter() - start
        emit(
            "event",
            event="in flight",
            accepted=len(handles),
            refused=refused,
            publish_seconds=round(publish_seconds, 3),
        )
        counts = {"drained": 0, "errors": 0}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(handles, counts), timeout)
        emit(
            "result",
            accepted=len(handles),
            refused=refused,
            drained=counts["drained"],
            errors=counts["errors"] + refused,
            publish_seconds=round(publish_seconds, 3),
            drained_at=time.monotonic(),
        )


async def publish_all(
    client: Any, k: int, chunk: int, timeout: float
) -> tuple[list[tuple[int, Any]], int]:
    """Publish k tasks, a chunk at a time, each chunk accepted before the next; the accepted
    (number, handle) pairs and how many were refused."""
    from taskhub_bench import ACTION  # the worker's action

    handles: list[tuple[int, Any]] = []
    refused = 0
    for lo in range(0, k, chunk):
        batch = [(i, client.pub(ACTION, payload(i))) for i in range(lo, min(k, lo + chunk))]
        answers = await asyncio.wait_for(
            asyncio.gather(*(h.accepted() for _, h in batch), return_exceptions=True),
            timeout,
        )
        for (i, h), answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException):
                refused += 1
            else:
                handles.append((i, h))
    return handles, refused


async def collect(handles: list[tuple[int, Any]], counts: dict[str, int]) -> None:
    """Await every result in publishing order (done when the last is in), counting right ones
    as ``drained`` and the others as ``errors`` (kept if a timeout cuts this short)."""
    from taskhub.errors import TaskHubError

    for i, h in handles:
        try:
            result = await h.get_result()
        except TaskHubError:
            counts["errors"] += 1
            continue
        if isinstance(result, dict) and result.get("id") == i:
            counts["drained"] += 1
        else:
            counts["errors"] += 1


def run_publisher(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="the publisher process of inflight_bench.py")
    parser.add_argument("--url", required=True)
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    from taskhub_bench import run  # uvloop, as the throughput benchmark

    run(publisher(args.url, args.k, max(1, args.chunk), args.timeout))


# --- the measurement -------------------------------------------------------------------------
class Lines:
    """The JSON lines of a process's stdout, read by one thread."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(raw)
                if isinstance(msg, dict):
                    self.queue.put(msg)
        self.queue.put(None)

    def wait(self, what: str, timeout: float) -> dict[str, Any]:
        """The next line that is event ``what`` (or the ``result`` line for ``result``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the publisher did not report {what!r} in {timeout:.0f}s")
            try:
                msg = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                self.proc.wait(5)
                raise RuntimeError(
                    f"the publisher exited with {self.proc.returncode} before {what!r}"
                )
            if msg.get("kind") == what or msg.get("event") == what:
                return msg


@contextlib.contextmanager
def publisher_process(args: list[str], log_path: str) -> Iterator[subprocess.Popen[Any]]:
    """Like ``harness.started``, with a pipe to stdin (the publisher waits for a line there)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as err:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        stop(proc)


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 2)


def _disk_mb(path: str) -> float:
    """Size of an sqlite database with its -wal and -shm files, in MiB."""
    folder, name = os.path.split(path)
    total = sum(
        os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith(name)
    )
    return round(total / 2**20, 1)


def _redis_used_mb(url: str) -> float | None:
    """``used_memory`` of INFO memory (what Redis's data takes), in MiB."""
    try:
        import redis

        client = redis.Redis.from_url(url)
        try:
            return round(int(client.info("memory")["used_memory"]) / 2**20, 2)
        finally:
            client.close()
    except Exception:
        return None


@dataclasses.dataclass
class Run:
    """One store's processes while it is measured, and the row of figures being filled in."""

    kind: str
    k: int
    settle: float
    row: dict[str, Any]
    hub: subprocess.Popen[Any]
    db: str
    redis_url: str = ""
    redis_proc: subprocess.Popen[Any] | None = None

    def outside(self) -> tuple[float | None, float | None]:
        """(redis-server RSS, Redis used_memory) in MiB; (None, None) without Redis."""
        if self.redis_proc is None:
            return None, None
        return rss_mb(self.redis_proc.pid), _redis_used_mb(self.redis_url)


def measure(
    kind: str,
    *,
    k: int = DEFAULT_K,
    chunk: int = DEFAULT_CHUNK,
    timeout: float = 240.0,
    settle: float = 1.0,
    log: Callable[[str], str],
    redis_bin: Callable[[], str],
    on_event: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure one store (``memory``, ``sqlite`` or ``redis``); the row of figures.

    ``log(name)`` gives the path of a log file, ``redis_bin()`` the redis-server binary.
    ``settle`` seconds pass before each RSS reading (the hub finishes what it was doing).
    """
    name = f"inflight-{kind}"
    row: dict[str, Any] = {"store": kind, "k": k, "n": k, "chunk": chunk}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="taskhub-inflight-"))
        db = os.path.join(tmp, "inflight.db")
        redis_url, redis_proc = "", None
        if kind == "memory":
            store = "memory://"
        elif kind == "sqlite":
            store = f"sqlite:///{db}"
        elif kind == "redis":
            redis_url, redis_proc = stack.enter_context(
                redis_server(redis_bin(), log(f"{name}-redis"))
            )
            store = f"{redis_url}?prefix=inflight{uuid.uuid4().hex[:8]}"
        else:
            raise ValueError(f"unknown store {kind!r}: use {', '.join(STORES)}")
        port = free_port()
        hub = stack.enter_context(started(hub_args(port, store), log(f"{name}-hub"), env=HUB_ENV))
        wait_port(port, 20, hub)
        run = Run(kind, k, settle, row, hub, db, redis_url, redis_proc)
        url = f"ws://127.0.0.1:{port}"
        args = ["--url", url, "--k", str(k), "--chunk", str(chunk), "--timeout", str(timeout)]
        pub = stack.enter_context(
            publisher_process(
                [PY, os.path.abspath(__file__), "publish", *args], log(f"{name}-publisher")
            )
        )
        lines = Lines(pub)
        lines.wait("connected", 30)
        idle, inflight = fill(run, pub, lines, timeout, on_event)
        worker_args = ["worker", "--url", url, "--concurrency", str(WORKER_CONCURRENCY)]
        worker = stack.enter_context(
            started(
                [PY, os.path.join(HERE, "taskhub_bench.py"), *worker_args],
                log(f"{name}-worker"),
                stdout=subprocess.PIPE,
            )
        )
        wait_ready(worker, 30)
        drain(run, lines, timeout, on_event, idle, inflight)
        describe(row, kind, k, chunk)
    return row


def fill(
    run: Run,
    pub: subprocess.Popen[Any],
    lines: Lines,
    timeout: float,
    on_event: Callable[[str], None],
) -> tuple[float | None, float | None]:
    """Read the idle hub, have the publisher publish K tasks with no worker, read the hub with
    K in flight; the hub's (RSS idle, RSS in flight)."""
    row, hub = run.row, run.hub
    time.sleep(run.settle)
    idle = rss_mb(hub.pid)
    row["peak_rss_idle_mb"] = peak_rss_mb(hub.pid)
    redis_idle, used_idle = run.outside()
    assert pub.stdin is not None
    pub.stdin.write(b"go\n")
    pub.stdin.flush()
    msg = lines.wait("in flight", timeout)
    row["accepted"] = msg["accepted"]
    row["refused"] = msg["refused"]
    row["publish_seconds"] = msg["publish_seconds"]
    row["publish_rate"] = round(run.k / msg["publish_seconds"], 1) if msg["publish_seconds"] else 0
    on_event("in flight")
    time.sleep(run.settle)
    inflight = rss_mb(hub.pid)
    row["peak_rss_inflight_mb"] = peak_rss_mb(hub.pid)
    redis_inflight, used_inflight = run.outside()
    if hub.poll() is not None:
        raise RuntimeError(f"the hub exited with {hub.returncode} while tasks were in flight")
    row["rss_idle_mb"] = _mb(idle)
    row["rss_inflight_mb"] = _mb(inflight)
    row["inflight_mb"] = _delta(idle, inflight)
    if row["inflight_mb"] is not None and row["accepted"]:
        row["mb_per_100k"] = round(row["inflight_mb"] * PER / row["accepted"], 1)
        row["bytes_per_task"] = round(row["inflight_mb"] * 2**20 / row["accepted"])
    if run.kind == "sqlite":
        row["sqlite_disk_inflight_mb"] = _disk_mb(run.db)
    if run.redis_proc is not None:
        row["redis_rss_inflight_mb"] = _delta(redis_idle, redis_inflight)
        row["redis_used_inflight_mb"] = _delta(used_idle, used_inflight)
    return idle, inflight


def drain(
    run: Run,
    lines: Lines,
    timeout: float,
    on_event: Callable[[str], None],
    idle: float | None,
    inflight: float | None,
) -> None:
    """With a worker ready now: wait until the publisher holds every result, read the hub."""
    row, hub = run.row, run.hub
    ready_at = time.monotonic()
    result = lines.wait("result", timeout + 30)
    on_event("drained")
    row["collected"] = result["drained"]
    row["errors"] = result["errors"]
    row["drain_seconds"] = round(result["drained_at"] - ready_at, 3)
    row["drain_rate"] = (
        round(result["drained"] / row["drain_seconds"], 1) if row["drain_seconds"] > 0 else 0
    )
    time.sleep(run.settle)
    after = rss_mb(hub.pid)
    row["rss_drained_mb"] = _mb(after)
    row["drain_released_mb"] = _delta(after, inflight)  # > 0: the RSS went down
    row["peak_rss_mb"] = peak_rss_mb(hub.pid)
    peak_over_idle = _delta(idle, row["peak_rss_mb"])
    if peak_over_idle is not None and row["accepted"]:
        # The peak comes with the drain's start, not while publishing (docs/performance.md)
        row["peak_mb_per_100k"] = round(peak_over_idle * PER / row["accepted"], 1)
    row["rss_of"] = "hub process"
    if run.kind == "sqlite":
        row["sqlite_disk_drained_mb"] = _disk_mb(run.db)
    if hub.poll() is not None:
        raise RuntimeError(f"the hub exited with {hub.returncode} during the drain")


def describe(row: dict[str, Any], kind: str, k: int, chunk: int) -> None:
    """The row's settings, and a note if a task was refused, lost or failed."""
    row["payload_bytes"] = payload_size()
    row["settings"] = (
        f"hub process ({kind} store), 1 publisher process (chunks of {chunk}, no worker "
        f"until all {k} were accepted), then 1 worker process "
        f"(concurrency={WORKER_CONCURRENCY})"
    )
    if row["accepted"] != k or row["collected"] != k or row["errors"]:
        row["note"] = (
            f"{row['accepted']} of {k} accepted, {row['collected']} drained, {row['errors']} errors"
        )


# --- output ----------------------------------------------------------------------------------
COLUMNS = (
    "store",
    "in flight",
    "hub RSS idle",
    "hub RSS loaded",
    "MiB per 100k",
    "bytes/task",
    "hub peak RSS",
    "peak per 100k",
    "publish/s",
    "drain/s",
    "hub RSS drained",
    "outside the hub",
)


def outside_cell(r: dict[str, Any]) -> str:
    """Where else the tasks in flight are kept: the sqlite file, the redis-server."""
    if r.get("store") == "sqlite" and "sqlite_disk_inflight_mb" in r:
        return f"sqlite file {fmt(r['sqlite_disk_inflight_mb'])} MiB"
    if r.get("store") == "redis" and "redis_rss_inflight_mb" in r:
        return (
            f"redis-server +{fmt(r['redis_rss_inflight_mb'])} MiB RSS, "
            f"+{fmt(r.get('redis_used_inflight_mb'))} used"
        )
    return "-"


def cells(r: dict[str, Any]) -> list[str]:
    return [
        r.get("store", r["name"]),
        f"{r.get('accepted', 0):,}",
        fmt(r.get("rss_idle_mb")),
        fmt(r.get("rss_inflight_mb")),
        fmt(r.get("mb_per_100k")),
        fmt(r.get("bytes_per_task"), 0),
        fmt(r.get("peak_rss_mb")),
        fmt(r.get("peak_mb_per_100k")),
        fmt(r.get("publish_rate"), 0),
        fmt(r.get("drain_rate"), 0),
        fmt(r.get("rss_drained_mb")),
        outside_cell(r),
    ]


def table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(
        title="Tasks in flight: the hub's memory (MiB) with K tasks accepted and no worker, "
        "then their drain (tasks/s)"
    )
    for col in (*COLUMNS, "note"):
        t.add_column(
            col, justify="left" if col in ("store", "outside the hub", "note") else "right"
        )
    for r in rows:
        if r.get("status", "ok") != "ok":
            t.add_row(r["name"], *["-"] * (len(COLUMNS) - 1), f"{r['status']}: {r.get('note')}")
            continue
        t.add_row(*cells(r), r.get("note", ""))
    return t


def markdown_table(rows: list[dict[str, Any]]) -> str:
    left = {"store", "outside the hub", "note"}
    cols = [*COLUMNS, "note"]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c in left else "---:" for c in cols) + "|",
    ]
    for r in rows:
        if r.get("status", "ok") != "ok":
            out = [r["name"], *[""] * (len(cols) - 2), f"{r['status']}: {r.get('note', '')}"]
        else:
            out = [*cells(r), r.get("note", "")]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def section(
    report: dict[str, Any], rows: list[dict[str, Any]], k: int, chunk: int
) -> dict[str, Any]:
    """The ``inflight`` entry of docs/performance.json."""
    return {
        "started_at": report["started_at"],
        "command": report["command"],
        "machine": report["machine"],
        "versions": report["versions"],
        "settings": {
            "k": k,
            "chunk": chunk,
            "per": PER,
            "worker_concurrency": WORKER_CONCURRENCY,
            "payload_bytes": payload_size(),
        },
        "rows": rows,
    }


def markdown_block(sec: dict[str, Any]) -> str:
    """The ``inflight`` block of docs/performance.md."""
    versions = "Versions: " + ", ".join(f"{k} {v}" for k, v in sec["versions"].items()) + "."
    return "\n".join([measured_line(sec), "", markdown_table(sec["rows"]), "", versions])


def write_docs(sec: dict[str, Any]) -> None:
    """Put ``sec`` under ``inflight`` in docs/performance.json (the rest stays as it was) and
    its table in the ``inflight`` block of docs/performance.md."""
    json_path = os.path.join(DOCS, "performance.json")
    doc: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError), open(json_path) as fh:
        doc = json.load(fh)
    doc["inflight"] = sec
    with open(json_path, "w") as fh:
        json.dump(doc, fh, indent=2)
    path = os.path.join(DOCS, "performance.md")
    text = ""
    if os.path.exists(path):
        with open(path) as fh:
            text = fh.read()
    with open(path, "w") as fh:
        fh.write(replace_block(text, "inflight", markdown_block(sec), HEADING))


# --- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"tasks in flight [{DEFAULT_K}]")
    parser.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK, help=f"tasks per chunk [{DEFAULT_CHUNK}]"
    )
    parser.add_argument("--stores", default=",".join(STORES), help="comma list [all three]")
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="seconds publishing or draining may take"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds before each RSS reading [1]"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "inflight.json"))
    parser.add_argument(
        "--no-docs", action="store_true", help="do not update docs/performance.{md,json}"
    )
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for s in args.stores:
        if s not in STORES:
            parser.error(f"unknown store {s!r}: use {', '.join(STORES)}")
    if args.k < 1 or args.chunk < 1:
        parser.error("--k and --chunk must be >= 1")
    return args


def measure_row(
    kind: str, args: argparse.Namespace, redis_bin: Callable[[], str]
) -> dict[str, Any]:
    """One store's row, with its status: ``ok``, or ``failed`` and why."""
    name = f"inflight-{kind}"
    console.print(f"{name}: {args.k:,} tasks ...")
    t0 = time.monotonic()
    try:
        row = {
            "name": name,
            "status": "ok",
            **measure(
                kind,
                k=args.k,
                chunk=args.chunk,
                timeout=args.timeout,
                settle=args.settle,
                log=functools.partial(harness.fresh_log, LOGS),
                redis_bin=redis_bin,
                on_event=lambda event: console.print(f"{name}: {event}"),
            ),
        }
    except (Failed, OSError, TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
        row = {"name": name, "status": "failed", "note": str(exc)}
    row["wall_seconds"] = round(time.monotonic() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["publish"]:
        run_publisher(argv[1:])
        return 0
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.UTC)
    redis_bin: list[str] = []

    def binary() -> str:
        if not redis_bin:
            redis_bin.append(harness.ensure_redis_server())
        return redis_bin[0]

    rows = [measure_row(kind, args, binary) for kind in args.stores]
    console.print(table(rows))
    report: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/inflight_bench.py", *argv]),
        "machine": harness.machine(),
        "versions": harness.project_versions(),
    }
    if redis_bin:
        report["versions"]["redis-server"] = harness.redis_version(redis_bin[0])
    sec = section(report, rows, args.k, args.chunk)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(sec, fh, indent=2)
    console.print(f"raw figures: {os.path.relpath(args.out)}")
    if not args.no_docs:
        write_docs(sec)
        console.print("updated docs/performance.md (inflight block), performance.json")
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    if failed:
        console.print(f"[red]failed:[/red] {', '.join(failed)} (logs in {LOGS})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
