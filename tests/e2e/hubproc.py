"""Run a real hub as a subprocess (``python -m taskhub serve``) for kill and restart tests,
and what those tests share: waiting for a hub to lead its partitions, draining the tasks a
killed hub accepted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from taskhub import Client
from tests.conftest import until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    def __init__(
        self,
        store: str,
        port: int | None = None,
        *extra: str,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
    ) -> None:
        """``host``: the address it listens on (and advertises); ``prefix``: a command the
        hub runs under (``ip netns exec NS`` for the partition tests, tests/e2e/netlab.py)."""
        self.env = {**os.environ, **(env or {})}
        self.store = store
        self.host = host
        self.port = port or free_port()
        self.extra = extra
        self.prefix = list(prefix or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"taskhub-{host}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> HubProcess:
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "taskhub",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--store",
            self.store,
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"hub exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()  # not left running behind the failed test
        raise TimeoutError(f"hub did not start: {self.log.read_text()}")

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the process stalls as in a long GC pause or a frozen VM."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def fds(self) -> int:
        """How many file descriptors the hub process has open now."""
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused hub could not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the role and, with several partitions, those the hub leads."""
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as answer:
            body: dict[str, Any] = json.loads(answer.read())
            return body

    def restart(self, leads: Iterable[int] | None = None) -> HubProcess:
        """kill -9, then start again; with ``leads``, wait until it leads those partitions
        (a killed hub's leases run out first: at most one lease)."""
        self.kill()
        self.start()
        if leads is not None:
            self.wait_leading(leads)
        return self

    def wait_leading(self, partitions: Iterable[int], timeout: float = 15.0) -> None:
        """Wait until ``/healthz`` lists exactly ``partitions``."""
        want = sorted(partitions)
        wait_until(lambda: self.health().get("partitions") == want, timeout, self.log)


def wait_until(check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout}s" + (f": {log.read_text()}" if log else ""))


@asynccontextmanager
async def draining(
    url: str, actions: Iterable[str], n: int, timeout: float = 20.0
) -> AsyncIterator[dict[str, Any]]:
    """Subscribe to ``actions`` at ``url`` and run tasks until ``n`` of them (payload < n)
    have run; yields their payloads by task id, still subscribed inside the ``with`` (for a
    chain's later steps: payload None, they return the previous result plus one)."""
    seen: dict[str, Any] = {}
    done = asyncio.Event()
    async with Client(url, name="drainer") as worker:

        async def run(task: Any) -> Any:
            payload = await task.get_payload()
            if payload is not None and payload < n:
                seen[task.id] = payload
                if len(seen) == n:
                    done.set()
            return (payload if payload is not None else task.previous_result) + 1

        for action in actions:
            await worker.sub(action, run, concurrency=8)
        await asyncio.wait_for(done.wait(), timeout)
        yield seen


async def consume(
    url: str, actions: Iterable[str], n: int, timeout: float = 20.0
) -> dict[str, Any]:
    """`draining`, unsubscribed once the ``n`` tasks have run."""
    async with draining(url, actions, n, timeout) as seen:
        return seen


async def ended(url: str, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Task ``task_id``, read at ``url`` once it has ended (success or fail)."""
    async with Client(url, name="poller") as client:

        async def read() -> dict[str, Any] | None:
            task = await client.get(task_id)
            return task if task["state"] in ("success", "fail") else None

        task: dict[str, Any] = await until(read, timeout, 0.05)
        return task
