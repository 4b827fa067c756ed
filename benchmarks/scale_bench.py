"""The rows of issue 19's scale targets: hub processes on one machine, and k hubs on one Redis.

Each row drives its hubs with the thin batched load generator (benchmarks/thin_load.py), whose
own CPU per task is a fraction of TaskHub's clients', so the hubs have the cores:

- ``relay-thin``: the generator against benchmarks/relay_hub.py, the bound of the rows below.
- ``processes-sqlite-1``, ``processes-sqlite-2``: ``taskhub serve --processes N`` (N = 1, 2) on
  one port over one sqlite:// store of PARTITIONS partitions; the generator's connections are
  spread over the processes by the kernel. Issue 19 asks 2 processes ≥ 1.4x 1.
- ``hubs-redis-1`` .. ``hubs-redis-3``: k hub processes (``taskhub serve``, each on a port of
  its own) on one redis-server, PARTITIONS partitions, the generator's connections spread over
  them; CPU per task of every hub and of redis-server. Issue 19 asks these to stay flat as k
  grows.

A build whose ``taskhub serve`` has no ``--processes``, or whose hub refuses partitions on a
Redis store at start (its one line names partitions), cannot run the row: it is skipped with
"not available in this build" and the hub's own words, never a figure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from common import free_port, peak_rss_mb, wait_port
from harness import (
    HERE,
    HUB_ENV,
    PY,
    Failed,
    Skipped,
    hub_args,
    read_result,
    started,
    started_relay,
    wait_roles,
)

#: partitions of every row's store (run.py --scale-partitions), the same for every row of a
#: kind so that only the process or hub count changes; with 1 the k hubs are today's cluster
#: (one leader, the others relay to it), the figures issue 19 starts from
PARTITIONS = 8
CONNECTIONS = 6  # publisher (and worker) connections: spread evenly over 1, 2 or 3 hubs
THIN = os.path.join(HERE, "thin_load.py")
HOP = os.path.join(HERE, "hop_probe.py")
NOT_AVAILABLE = "not available in this build"

RELAY_THIN_TARGETS = ["relay-thin"]
PROCESS_TARGETS = ["processes-sqlite-1", "processes-sqlite-2"]
HUBS_TARGETS = ["hubs-redis-1", "hubs-redis-2", "hubs-redis-3"]
SCALE_TARGETS = [*RELAY_THIN_TARGETS, *PROCESS_TARGETS, *HUBS_TARGETS]


@functools.cache
def serve_help() -> str:
    """``taskhub serve --help`` of the hub command the benchmark starts ("" without one)."""
    cmd = hub_args(0, "memory://")
    if os.path.basename(cmd[0]) != "taskhub":
        return ""
    proc = subprocess.run(
        [cmd[0], "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    return proc.stdout


# The rows' hubs hold their partition leases with the default 3 s lease: their renewals run
# in a thread of their own (hub/renewer.py), on time however late this saturating load makes
# the hub's event loop answer (0.5-1 s per call, measured). A lease lost all the same is said
# in the hub's log (warning "lost partition ..."): every row counts those (``leases_lost``)
# and says so in its setup.
LOST = "lost partition"


def leases_lost(*logs: str) -> int:
    """How many partition leases the hubs writing ``logs`` said they lost."""
    lost = 0
    for path in logs:
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
            lost += sum(LOST in line for line in f)
    return lost


@contextlib.contextmanager
def telling_lost(*logs: str) -> Iterator[None]:
    """A row that fails within says how many partition leases its hubs lost meanwhile."""
    try:
        yield
    except Failed as exc:
        lost = leases_lost(*logs)
        if lost:
            raise Failed(f"{exc}; the hubs said they lost {lost} partition lease(s)") from None
        raise


def said_lost(row: dict[str, Any], *logs: str) -> None:
    """Count the leases lost in ``row``, and say it in its setup when any was."""
    row["leases_lost"] = lost = leases_lost(*logs)
    if lost:
        row["setup"] += f"; {lost} partition lease(s) lost during the run (hub log)"


def serve_has(flag: str) -> bool:
    return any(word.strip("│ ,") == flag for word in serve_help().split())


def healthz(port: int | str) -> dict[str, Any]:
    """A hub's ``/healthz`` (its port on 127.0.0.1, or its base URL); {} when it answers none."""
    url = f"http://127.0.0.1:{port}" if isinstance(port, int) else port.rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except (OSError, ValueError):
        return {}


def wait_partitions(ports: list[int], partitions: int, hubs: int, timeout: float) -> bool:
    """Wait until ``hubs`` hubs lead every partition in even shares and every hub names the
    leader of every partition it does not lead (its ``/healthz`` "leaders" holds no "" and
    agrees with what the others lead): a message for a partition its hub does not lead then
    goes straight over the link, none waits for a leader. False when no answer lists
    partitions at all (nothing to wait for: the row says so).

    Several processes on one port answer in turn (the kernel picks one per connection), so
    each port is asked several times per round, and every hub is then asked at its own URL
    (the leaders' URLs name each process's own port)."""
    start = time.monotonic()
    deadline = start + timeout
    listed = False
    seen = "no answer"
    while time.monotonic() < deadline:
        answers = [healthz(port) for port in ports for _ in range(4)]
        listed = listed or any("partitions" in body for body in answers)
        urls = {url for body in answers for url in body.get("leaders", {}).values() if url}
        views = answers + [healthz(url) for url in sorted(urls)]
        settled, seen = _settled(views, urls, partitions, hubs)
        if settled:
            return True
        if not listed and time.monotonic() > start + 5:  # 5 s of answers without the key
            return False
        time.sleep(0.2)
    raise Failed(f"partitions not settled after {timeout:.0f}s: {seen}")


def _settled(
    views: list[dict[str, Any]], urls: set[str], partitions: int, hubs: int
) -> tuple[bool, str]:
    """Whether the hubs' answers say every partition is led, by ``hubs`` hubs in even shares,
    and named by every hub that does not lead it; else what is missing."""
    led = {p for body in views for p in body.get("partitions", [])}
    if led != set(range(partitions)):
        return False, f"led: {sorted(led)} of 0-{partitions - 1}"
    shares = {tuple(body.get("partitions", [])) for body in views if body}
    fair = range(partitions // hubs, -(-partitions // hubs) + 1)
    if len(shares) != hubs or any(len(share) not in fair for share in shares):
        return False, f"shares: {sorted(shares)} for {hubs} hub(s)"
    if hubs > 1 and len(urls) != hubs:
        return False, f"leaders named: {sorted(urls)}"
    unnamed = [body["leaders"] for body in views if "" in body.get("leaders", {}).values()]
    if unnamed:
        return False, f"a hub names no leader for some partitions: {unnamed[0]}"
    return True, ""


def last_line(log: str) -> str:
    with contextlib.suppress(OSError), open(log, errors="replace") as fh:
        lines = [line.strip() for line in fh if line.strip()]
        if lines:
            return lines[-1][:300]
    return "(nothing in its log)"


def thin(
    urls: list[str],
    partitions: int,
    watch: dict[str, int],
    n: int,
    timeout: float,
    log: str,
    on_event: Callable[[str], None],
) -> dict[str, Any]:
    """Run thin_load.py against ``urls``, its tasks spread evenly over ``partitions``: its
    result (CPU per task of the watched pids)."""
    cmd = [PY, THIN, "--url", ",".join(urls), "--n", str(n), "--timeout", str(timeout)]
    cmd += ["--connections", str(CONNECTIONS), "--partitions", str(partitions)]
    for name, pid in watch.items():
        cmd += ["--watch", f"{name}={pid}"]
    with started(cmd, log, stdout=subprocess.PIPE) as proc:
        return read_result(proc, timeout + 30, on_event)


def hop_probe(port: int, partitions: int, led: list[int], log: str) -> dict[str, Any]:
    """benchmarks/hop_probe.py through the hub at ``port``: sequential p50 of an action it
    leads and of one another hub leads (issue 19's "no relay hop" target); its failure is
    the row's note, not the row's end."""
    cmd = [PY, HOP, "--url", f"ws://127.0.0.1:{port}", "--partitions", str(partitions)]
    cmd += ["--led", ",".join(map(str, led))]
    try:
        with started(cmd, log, stdout=subprocess.PIPE) as proc:
            return read_result(proc, 120, lambda _event: None)
    except Failed as exc:
        return {"error": str(exc)}


class ScaleBench:
    """The scale rows, with the run's logs, redis-server and settings (a targets.Bench)."""

    def __init__(
        self,
        n: int,
        timeout: float,
        log: Callable[[str], str],
        redis_url: Callable[[contextlib.ExitStack, str], tuple[str, int]],
        events: Callable[[str], Callable[[str], None]],
        partitions: int = PARTITIONS,
    ) -> None:
        self.n, self.timeout, self.log = n, timeout, log
        self.redis_url, self.events, self.partitions = redis_url, events, partitions

    def partition_args(self) -> list[str]:
        return ["--partitions", str(self.partitions)] if self.partitions > 1 else []

    def run(self, target: str) -> dict[str, Any]:
        if target in RELAY_THIN_TARGETS:
            return self.relay_thin(target)
        if target in PROCESS_TARGETS:
            return self.processes(target, int(target.rsplit("-", 1)[1]))
        return self.hubs(target, int(target.rsplit("-", 1)[1]))

    def relay_thin(self, target: str) -> dict[str, Any]:
        with started_relay(self.log(f"{target}-server")) as (server, url):
            row = thin(
                [url],
                self.partitions,
                {"relay": server.pid},
                self.n,
                self.timeout,
                self.log(f"{target}-generator"),
                self.events(target),
            )
            row["peak_rss_mb"] = peak_rss_mb(server.pid)
        row["settings"] = (
            f"benchmarks/relay_hub.py, thin batched load generator ({CONNECTIONS} publisher and "
            f"{CONNECTIONS} worker connections)"
        )
        row["setup"] = "relay_hub.py (no store, no lifecycle)"
        return row

    def processes(self, target: str, processes: int) -> dict[str, Any]:
        if not serve_has("--processes"):
            raise Skipped(f"{NOT_AVAILABLE}: `taskhub serve` has no --processes")
        # Several processes share partitions, so both rows run at least 2 (one process then
        # leads both): the same store layout with one process and with two.
        partitions = max(self.partitions, 2)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="taskhub-bench-"))
            store = f"sqlite:///{tmp}/bench.db"
            port = free_port()
            args = [
                *hub_args(port, store),
                "--processes",
                str(processes),
                "--partitions",
                str(partitions),
            ]
            log = self.log(f"{target}-hub")
            hub = stack.enter_context(started(args, log, env=HUB_ENV))
            try:
                wait_port(port, 30, hub)
            except RuntimeError:
                raise Failed(f"the hub exited: {last_line(log)}") from None
            listed = partitions == 1 or wait_partitions([port], partitions, processes, 60)
            with telling_lost(log):
                row = thin(
                    [f"ws://127.0.0.1:{port}"],
                    partitions,
                    {"hubs": hub.pid},
                    self.n,
                    self.timeout,
                    self.log(f"{target}-generator"),
                    self.events(target),
                )
            if hub.poll() is not None:
                raise Failed(f"the hub exited with {hub.returncode} during the run")
        row.update(processes=processes, partitions=partitions)
        if not listed:
            row["note"] = "/healthz lists no partitions: measured without waiting for them"
        row["settings"] = (
            f"taskhub serve --processes {processes} --partitions {partitions} on one "
            f"sqlite:// store (lease 3 s), thin batched load generator ({CONNECTIONS} "
            f"publisher and {CONNECTIONS} worker connections on the one port)"
        )
        row["setup"] = f"serve --processes {processes}, sqlite://, {partitions} partition(s)"
        said_lost(row, log)
        return row

    def hubs(self, target: str, k: int) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            url, redis_pid = self.redis_url(stack, target)
            store = f"{url}?prefix=bench{uuid.uuid4().hex[:8]}"
            ports: list[int] = []
            pids: dict[str, int] = {}
            logs: list[str] = []
            for h in range(k):
                port = free_port()
                log = self.log(f"{target}-hub{h}")
                logs.append(log)
                args = [*hub_args(port, store), *self.partition_args()]
                hub = stack.enter_context(started(args, log, env=HUB_ENV))
                try:
                    wait_port(port, 30, hub)
                except RuntimeError:
                    said = last_line(log).removeprefix("error: ")
                    if h == 0 and "partitions" in said:  # refused at start: says why
                        raise Skipped(f"{NOT_AVAILABLE}: {said}") from None
                    raise Failed(f"hub {h} exited: {said}") from None
                if h == 0 and self.partitions == 1:  # it leads: the others find a leader
                    wait_roles([port], 20)
                ports.append(port)
                pids[f"hub{h}"] = hub.pid
            if self.partitions == 1:
                wait_roles(ports, 20)
            elif "partitions" not in healthz(ports[0]):
                raise Skipped(f"{NOT_AVAILABLE}: the hubs' /healthz lists no partitions")
            else:
                wait_partitions(ports, self.partitions, k, 60)
            with telling_lost(*logs):
                row = thin(
                    [f"ws://127.0.0.1:{p}" for p in ports],
                    self.partitions,
                    {**pids, "redis": redis_pid},
                    self.n,
                    self.timeout,
                    self.log(f"{target}-generator"),
                    self.events(target),
                )
            led = [healthz(p).get("partitions", healthz(p).get("role")) for p in ports]
            if self.partitions > 1 and isinstance(led[0], list):
                row["hop"] = hop_probe(ports[0], self.partitions, led[0], self.log(f"{target}-hop"))
        cpu = row["cpu_us"]
        row.update(
            hubs=k,
            partitions=self.partitions,
            partitions_led=led,
            hub_cpu_us=[cpu[f"hub{h}"] for h in range(k)],
            hubs_cpu_us=round(sum(cpu[f"hub{h}"] for h in range(k)), 2),
            redis_cpu_us=cpu["redis"],
        )
        mode = "one leads, the others relay to it" if self.partitions == 1 else "partitions"
        row["setup"] = f"{k} hub(s), redis://, {self.partitions} partition(s)" + (
            " (one leader)" if self.partitions == 1 else ""
        )
        said_lost(row, *logs)
        row["settings"] = (
            f"{k} hub process(es) on one redis-server, --partitions {self.partitions} ({mode}), "
            f"{'lease 3 s, ' if self.partitions > 1 else ''}thin batched "
            f"load generator ({CONNECTIONS} publisher and {CONNECTIONS} worker connections "
            "spread over the hubs)"
        )
        return row
