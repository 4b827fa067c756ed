"""``taskhub serve --processes N``: N hub processes on one machine sharing one port.

The parent binds the port once and starts N children (``python -m taskhub`` with the same
arguments) that inherit the listening socket (its descriptor in ``TASKHUB_LISTEN_FD``): every
child accepts on it, so the kernel hands each new connection to a child that is waiting in
``accept``, and a child that restarts leaves the port open (connections wait in the backlog
meanwhile). SO_REUSEPORT was not chosen: each child would bind a socket of its own, the kernel
spreads connections by a hash whatever a child's load, connections queued on a child that dies
are reset, and ``port = 0`` would give each child another port (docs/decisions.md).

The children are ordinary leased hubs (docs/deployment.md, "Partition leases"): their keepers
spread the partitions over them through the store's lease table (SQLite) or keys (Redis). Each
also listens on a port of its own, which it advertises to the other hubs. The parent restarts a
child that dies, and forwards SIGTERM/SIGINT to every child (a graceful hand-off each), then
exits 0. The parent runs no event loop and imports no hub module: it only supervises.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from taskhub.errors import InvalidOption

if TYPE_CHECKING:
    from taskhub.server import Server

log = logging.getLogger("taskhub.processes")

LISTEN_FD_ENV = "TASKHUB_LISTEN_FD"
QUICK_EXIT = 5.0  # seconds: a child that dies sooner after its start failed to start
QUICK_EXITS = 3  # in a row: the parent gives up (a bad setting fails every child alike)
BACKLOG = 2048


class SharedPort:
    """In a child: the port's socket its parent bound (``fd``), and a port of the child's own
    beside it, which it advertises to the other hubs (the shared port cannot name one
    process)."""

    def __init__(self, fd: int) -> None:
        self.shared = socket.socket(fileno=fd)
        self.port: int = self.shared.getsockname()[1]
        self.own: socket.socket | None = None

    def sockets(self, host: str) -> list[socket.socket]:
        """What the child listens on: the shared socket, then its own (bound now)."""
        self.own = socket.create_server((host, 0), family=self.shared.family)
        return [self.shared, self.own]

    def advertised(self, base: str) -> str:
        """``base`` (``advertise_url`` or the listen URL) with the child's own port."""
        assert self.own is not None, "listen first"
        parts = urlsplit(base)
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{host}:{self.own.getsockname()[1]}"


class NotShared(InvalidOption):
    """``--processes`` > 1 where the processes cannot share the work."""


def inherited_fd() -> int | None:
    """The listening socket a ``serve --processes`` parent gave this process, if any."""
    value = os.environ.get(LISTEN_FD_ENV)
    return None if not value else int(value)


def check(server: Server) -> None:
    """NotShared, one line, unless ``server``'s settings let several processes share it."""
    from taskhub.server import shared_store

    n = server.processes
    if server.partitions == 1:
        raise NotShared(
            f"processes = {n} needs partitions > 1 (the partitions are spread over the "
            "processes); set partitions (8 to 32 fit most deployments) on a new store"
        )
    if not shared_store(server.store_url):
        raise NotShared(
            f"processes = {n} needs a store the processes share: a sqlite:///file.db or "
            f"redis:// store, not {server.store_url.split('@')[-1]}"
        )


def supervise(server: Server, argv: list[str]) -> int:
    """Run ``server.processes`` children of ``taskhub`` ``argv`` on one bound port until
    SIGTERM/SIGINT; the exit status (0 after a graceful stop)."""
    import asyncio

    from taskhub.server import check_shared_partitions

    check(server)
    # Once, here: a store set up with another count fails every child alike (status 2).
    asyncio.run(check_shared_partitions(server.store_url, server.partitions))
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.create_server((server.host, server.port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    log.info(
        "taskhub: %d hub processes sharing %s:%d (store %s, %d partitions)",
        server.processes,
        server.host,
        port,
        server.store_url.split("@")[-1],
        server.partitions,
    )
    return Supervisor(sock, argv, server.processes).run()


class Supervisor:
    """The children of one bound socket: started, restarted, and stopped on a signal."""

    def __init__(self, sock: socket.socket, argv: list[str], processes: int) -> None:
        self.sock = sock
        self.argv = argv
        self.env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno())}
        self.children: list[subprocess.Popen[bytes] | None] = [None] * processes
        self.started = [0.0] * processes
        self.quick = 0  # children in a row that died right after starting
        self.stopping: int | None = None  # the signal that stops us

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for i in range(len(self.children)):
            self._start(i)
        status = 0
        while self.stopping is None:
            for i, child in enumerate(self.children):
                if child is None or child.poll() is None or self.stopping is not None:
                    continue
                status = self._died(i, child)
                if status:
                    self._stop_all(signal.SIGTERM)
                    return status
            time.sleep(0.1)
        return self._stop_all(self.stopping)

    def _start(self, i: int) -> None:
        cmd = [sys.executable, "-m", "taskhub", *self.argv]
        fd = self.sock.fileno()
        self.children[i] = subprocess.Popen(cmd, env=self.env, pass_fds=(fd,))
        self.started[i] = time.monotonic()

    def _died(self, i: int, child: subprocess.Popen[bytes]) -> int:
        """Restart child ``i``; the status to exit with when children keep failing at start."""
        code = child.returncode
        if time.monotonic() - self.started[i] < QUICK_EXIT:
            self.quick += 1
            if self.quick >= QUICK_EXITS:
                log.error("hub process %d exited with %d at start, again: giving up", i, code)
                return code if code > 0 else 1
        else:
            self.quick = 0
        log.warning("hub process %d (pid %d) exited with %d; starting it again", i, child.pid, code)
        self._start(i)
        return 0

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = sig
        else:  # a second signal: the children skip what is left of their grace period
            for child in self.children:
                if child is not None and child.poll() is None:
                    child.send_signal(sig)

    def _stop_all(self, sig: int) -> int:
        """Forward ``sig`` to every child and wait for all (each hands its partitions off)."""
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(sig)
        codes = [child.wait() for child in self.children if child is not None]
        self.sock.close()
        failed = [c for c in codes if c not in (0, -sig)]
        return 1 if failed else 0
