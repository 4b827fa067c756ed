"""The targets of run.py: what each one starts and measures, and its row of figures."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from common import free_port, peak_rss_mb, wait_port
from harness import (
    HERE,
    HUB_ENV,
    PY,
    Failed,
    Skipped,
    ensure_peers_venv,
    ensure_redis_server,
    fresh_log,
    hub_args,
    hub_roles,
    read_result,
    redis_server,
    started,
    started_relay,
    wait_ready,
    wait_roles,
)
from rich.progress import (
    Progress,
)
from scale_bench import SCALE_TARGETS, ScaleBench

#: The round trips run at two worker concurrencies, TaskHub and every peer alike: the common
#: level (run.py --concurrency, CONCURRENCY by default) under the plain names, and 1 (one task
#: at a time) under the names with SINGLE_SUFFIX. How each peer gets C: its script's docstring.
CONCURRENCY = 8
SINGLE_SUFFIX = "-c1"
TASKHUB_TARGETS = ["taskhub-memory", "taskhub-sqlite", "taskhub-redis"]
PEER_TARGETS = ["celery", "dramatiq", "arq", "rq"]
TASKHUB_SINGLE_TARGETS = [t + SINGLE_SUFFIX for t in TASKHUB_TARGETS]
PEER_SINGLE_TARGETS = [t + SINGLE_SUFFIX for t in PEER_TARGETS]
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
    *TASKHUB_SINGLE_TARGETS,
    *PEER_SINGLE_TARGETS,
    *BOUND_TARGETS,
    *CLUSTER_TARGETS,
    *SCALE_TARGETS,
    *INFLIGHT_TARGETS,
]
SMOKE_TARGETS = [
    "taskhub-memory",
    "taskhub-sqlite",
    *BOUND_TARGETS,
    "inflight-memory",
    "inflight-sqlite",
]
SCRIPT = os.path.join(HERE, "taskhub_bench.py")  # TaskHub's benchmark worker and publisher


def base_name(target: str) -> str:
    """``target`` without the suffix of the concurrency-1 rows."""
    return target.removesuffix(SINGLE_SUFFIX)


def fastest_peer(ok: dict[str, dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    """The peer row of the most tasks/s among ``ok`` (rows by name) that ran at
    ``concurrency`` (the row's own ``concurrency``, which the peer's script reports)."""
    peers = [
        ok[name]
        for name in (*PEER_TARGETS, *PEER_SINGLE_TARGETS)
        if name in ok and ok[name].get("concurrency") == concurrency
    ]
    return max(peers, key=lambda r: r["throughput"]) if peers else None


class Bench:
    def __init__(self, args: argparse.Namespace, progress: Progress, bar: Any) -> None:
        self.args = args
        self.progress = progress
        self.bar = bar
        self.logs = os.path.join(HERE, "results", "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.redis_bin: str | None = None
        self.peers_py: str | None = None

    def concurrency(self, target: str) -> int:
        """The worker concurrency ``target`` runs at: 1 for the -c1 rows, else the common one."""
        return 1 if target.endswith(SINGLE_SUFFIX) else int(self.args.concurrency)

    def log(self, name: str) -> str:
        return fresh_log(self.logs, name)

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
        """Run TaskHub's benchmark worker, then its publisher, against ``url``: its result,
        with the worker's concurrency (its subscription's credit)."""
        script = os.path.join(HERE, "taskhub_bench.py")
        concurrency = self.concurrency(target)
        with started(
            [
                PY,
                script,
                "worker",
                "--url",
                url,
                "--concurrency",
                str(concurrency),
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
                row = read_result(pub, self.args.timeout + 30, self.events(target))
        row["concurrency"] = concurrency
        row["concurrency_how"] = f"credit {concurrency}"
        return row

    def taskhub(self, target: str) -> dict[str, Any]:
        kind = base_name(target).split("-", 1)[1]
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
                f"(concurrency={row['concurrency']}"
                f"{', run through taskhub.Worker' if runtime else ''}), 1 publisher process"
            )
            return row

    def relay(self, target: str) -> dict[str, Any]:
        """TaskHub's worker and publisher against benchmarks/relay_hub.py."""
        with started_relay(self.log(f"{target}-server")) as (server, url):
            row = self.clients(target, url)
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
        # One worker process per hub, all in one group; or one in all, on the last hub (a
        # follower as soon as there are two), so its traffic is relayed.
        worker_hubs = [k - 1] if words[-1] == "1worker" else list(range(k))
        with contextlib.ExitStack() as stack:
            store = self.redis_store(stack, target)
            hubs, ports = self.cluster_hubs(stack, target, store, k)
            roles = wait_roles(ports, 20)
            leader = roles.index("leader")
            urls = [f"ws://127.0.0.1:{p}" for p in ports]
            for h in worker_hubs:
                self.cluster_worker(stack, target, h, urls[h])
            pub = stack.enter_context(
                started(
                    [
                        PY,
                        SCRIPT,
                        "publish",
                        "--url",
                        ",".join(urls),
                        *self.common_args(self.args.n),
                    ],
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
            row.update(
                hubs=k,
                worker_processes=len(worker_hubs),
                worker_hubs=worker_hubs,
                publisher_connections=k,
                leader=leader,
                leader_port=ports[leader],
                hub_rss_mb=[peak_rss_mb(hub.pid) for hub in hubs],
                rss_of="leader hub",
            )
            row["peak_rss_mb"] = row["hub_rss_mb"][leader]
            if "seq_p50_ms_by_url" in row:
                by_url = row.pop("seq_p50_ms_by_url")
                row["seq_p50_ms_by_hub"] = [by_url.get(u) for u in urls]
            row["settings"] = (
                f"{k} hub process(es) on one redis-server (hub {leader} led), "
                f"{len(worker_hubs)} worker process(es) on hub(s) {worker_hubs} "
                f"(concurrency={self.args.concurrency} each, group 'bench'), 1 publisher process "
                f"with one connection per hub, tasks round robin over them"
            )
            return row

    def cluster_hubs(
        self, stack: contextlib.ExitStack, target: str, store: str, k: int
    ) -> tuple[list[subprocess.Popen[Any]], list[int]]:
        """Start k hubs on ``store``, the first one leading; the processes and their ports."""
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
        return hubs, ports

    def cluster_worker(self, stack: contextlib.ExitStack, target: str, h: int, url: str) -> None:
        """Start a worker process (group ``bench``) on hub ``h`` and wait until it is ready."""
        args = [PY, SCRIPT, "worker", "--url", url, "--concurrency", str(self.args.concurrency)]
        worker = stack.enter_context(
            started(
                [*args, "--group", "bench"],
                self.log(f"{target}-worker{h}"),
                stdout=subprocess.PIPE,
            )
        )
        wait_ready(worker, 20)

    def redis(self) -> str:
        if self.redis_bin is None:
            self.redis_bin = ensure_redis_server()
        return self.redis_bin

    def peer(self, target: str) -> dict[str, Any]:
        if self.peers_py is None:
            self.peers_py = ensure_peers_venv()
        name = base_name(target)
        n = min(self.args.n, self.args.rq_n) if name == "rq" else self.args.n
        with redis_server(self.redis(), self.log(f"{target}-redis")) as (url, redis):
            script = os.path.join(HERE, "peers", f"{name}_bench.py")
            with started(
                [
                    self.peers_py,
                    script,
                    "--redis-url",
                    url,
                    *self.common_args(n),
                    "--log",
                    self.log(f"{target}-worker"),
                    "--concurrency",
                    str(self.concurrency(target)),
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

    def scale(self, target: str) -> dict[str, Any]:
        """A row of benchmarks/scale_bench.py: hub processes, k hubs, the thin generator."""

        def redis_url(stack: contextlib.ExitStack, name: str) -> tuple[str, int]:
            url, proc = stack.enter_context(redis_server(self.redis(), self.log(f"{name}-redis")))
            return url, proc.pid

        bench = ScaleBench(
            self.args.thin_n,
            self.args.timeout,
            self.log,
            redis_url,
            self.events,
            self.args.scale_partitions,
        )
        return bench.run(target)

    def run(self, target: str) -> dict[str, Any]:
        if target in SCALE_TARGETS:
            return self.scale(target)
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
