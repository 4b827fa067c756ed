"""Helpers shared by every benchmark runner: the workload, statistics, processes, output.

Standard library only: this module is imported both by the project's venv (TaskHub, the
WebSocket limit, the orchestrator) and by the peers' venv (Celery, RQ, Dramatiq, arq).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Text of the payload; with the id and the flags the JSON is about 100 bytes.
_FILLER = "the quick brown fox jumps over the lazy dog 0123456789"


def payload(i: int) -> dict[str, Any]:
    """The ~100-byte JSON payload of task ``i``; the worker returns it unchanged."""
    return {"id": i, "text": _FILLER, "tags": ["bench", "echo"], "ok": True}


def payload_size() -> int:
    return len(json.dumps(payload(0), separators=(",", ":")).encode())


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_figures(prefix: str, seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of latencies given in seconds, reported in milliseconds."""
    return {
        f"{prefix}_p50_ms": round(percentile(seconds, 50) * 1000, 3),
        f"{prefix}_p99_ms": round(percentile(seconds, 99) * 1000, 3),
        f"{prefix}_max_ms": round(max(seconds) * 1000, 3) if seconds else float("nan"),
    }


def figures(
    *,
    n: int,
    collected: int,
    burst_seconds: float,
    load_latencies: Sequence[float],
    seq_latencies: Sequence[float],
    errors: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """The figures every runner reports, in one dict."""
    out: dict[str, Any] = {
        "n": n,
        "collected": collected,
        "errors": errors,
        "seconds": round(burst_seconds, 4),
        "throughput": round(collected / burst_seconds, 1) if burst_seconds > 0 else 0.0,
        "seq_n": len(seq_latencies),
    }
    out.update(latency_figures("seq", seq_latencies))
    out.update(latency_figures("load", load_latencies))
    out.update(extra)
    return out


def emit(kind: str, **data: Any) -> None:
    """One JSON line on stdout for the orchestrator: ``event`` (progress) or ``result``."""
    sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something listens on loopback ``port`` (or raise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def spawn(
    args: Sequence[str],
    *,
    log_path: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdout: Any = None,
) -> subprocess.Popen[Any]:
    """Start a process in its own session (process group), stderr to ``log_path``."""
    err: Any = subprocess.DEVNULL
    if log_path is not None:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        err = open(log_path, "ab")  # noqa: SIM115 - closed when the child is stopped
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.Popen(
        list(args),
        stdout=stdout if stdout is not None else err,
        stderr=err,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace``."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    # Children that outlived the leader (a worker's pool) share its group: kill them too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def stop_all(procs: Sequence[subprocess.Popen[Any]], grace: float = 3.0) -> None:
    """Stop a peer's worker processes together, within ``grace`` seconds, then SIGKILL.

    The runner that calls this is itself being stopped (SIGTERM from the orchestrator, which
    SIGKILLs it 5 s later): SIGTERM is ignored from here on, so it cannot cut the loop short
    and leave a worker running, and all are signalled at once, so the wait is one grace for
    all of them, not one each."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        stop(proc, grace=0.0)  # SIGKILL to what is left of each group, streams closed


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and of every live descendant (a hub that
    forks its processes counts them all); 0 for a process that is gone. A descendant that
    ended between two readings takes its seconds with it: read while they all run."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        # after the name: state, ppid (fields 3, 4), ..., utime, stime (fields 14, 15)
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB; None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def drive(
    send: Callable[[int], Any],
    wait: Callable[[Any, float], Any],
    *,
    n: int,
    seq: int,
    warmup: int,
    timeout: float,
    warmup_timeout: float = 60.0,
) -> dict[str, Any]:
    """The workload for a synchronous client: warm-up, sequential, then a burst of ``n``.

    ``send(i)`` publishes task ``i`` with :func:`payload` and returns a handle; ``wait(handle,
    timeout)`` blocks for its result. In the burst every task is published first, then the
    results are collected in publishing order, each latency taken when its result is read (a
    result that was ready earlier counts from then: at most the collector's own lag).
    """
    errors = 0

    def check(result: Any, i: int) -> bool:
        return isinstance(result, dict) and result.get("id") == i

    first = [send(i) for i in range(warmup)]
    for j, handle in enumerate(first):
        # The first results wait for the worker process to start.
        errors += not check(wait(handle, warmup_timeout), j)
    emit("event", event="warm")
    seq_lat: list[float] = []
    for j in range(seq):
        i = 10_000_000 + j
        start = time.perf_counter()
        ok = check(wait(send(i), timeout), i)
        seq_lat.append(time.perf_counter() - start)
        errors += not ok
    emit("event", event="sequential done")
    start = time.perf_counter()
    sent: list[tuple[int, float, Any]] = []
    for j in range(n):
        i = 20_000_000 + j
        sent.append((i, time.perf_counter(), send(i)))
    load_lat: list[float] = []
    deadline = time.monotonic() + timeout
    for i, at, handle in sent:
        result = wait(handle, max(1.0, deadline - time.monotonic()))
        if check(result, i):
            load_lat.append(time.perf_counter() - at)
        else:
            errors += 1
    seconds = time.perf_counter() - start
    return figures(
        n=n,
        collected=len(load_lat),
        burst_seconds=seconds,
        load_latencies=load_lat,
        seq_latencies=seq_lat,
        errors=errors,
        payload_bytes=payload_size(),
    )


def here() -> str:
    """This folder (benchmarks/)."""
    return os.path.dirname(os.path.abspath(__file__))


def bench_worker(
    url: str, *, runtime: bool = False, under: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """``taskhub_bench.py``'s worker (64 handlers) on ``url``, run under ``under`` (valgrind's
    command, say), once its subscription is confirmed (its ``ready`` line)."""
    script = os.path.join(here(), "taskhub_bench.py")
    cmd = [*under, sys.executable, script, "worker", "--url", url, "--concurrency", "64"]
    cmd += ["--runtime"] if runtime else []
    worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert worker.stdout is not None
    for line in worker.stdout:
        if '"ready"' in line:
            break
    return worker


def peer_worker(args: Sequence[str], log_path: str | None) -> subprocess.Popen[Any]:
    """Start a peer's worker process with benchmarks/ and benchmarks/peers importable.

    The worker gets a process group of its own; SIGTERM to this runner then exits it through
    its ``finally`` blocks, which stop that group too.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    peers = os.path.join(here(), "peers")
    path = os.pathsep.join([peers, here(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return spawn(args, log_path=log_path, env={"PYTHONPATH": path}, cwd=peers)


def bin_of(name: str) -> str:
    """A console script next to the running interpreter (the peers' venv)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def peer_args(description: str | None) -> Any:
    """The command line every peer runner takes."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--log", default=None, help="the worker's log file")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="tasks the worker side runs at once: threads, jobs or processes, as the peer has [8]",
    )
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, not {args.concurrency}")
    os.environ["BENCH_REDIS_URL"] = args.redis_url  # the worker process reads it
    os.environ["BENCH_CONCURRENCY"] = str(args.concurrency)  # and this (arq's max_jobs)
    return args


def rss_mb(pid: int) -> float | None:
    """Current resident set size (VmRSS) of a live process, in MiB; None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        return None
    return None


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


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
