"""A real ``redis-server`` on loopback for tests: start, stop, kill, restart on the same data.

``make test`` installs redis-server (scripts/ensure-redis.sh) before pytest runs; when it is
still missing, :meth:`RedisProcess.start` raises, so the tests that need Redis fail loudly
rather than skip and leave the Redis engine untested.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 10.0


def free_port(below: int = 65536) -> int:
    """A loopback port nothing listens on now, lower than ``below``."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < below:
            return port
    raise RuntimeError(f"no free loopback port below {below}")


def cluster_args() -> list[str]:
    """``extra_args`` for a cluster-mode server. Its bus port defaults to port + 10000 and
    Redis refuses ports above 55535 then: an explicit free bus port avoids both problems."""
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        str(free_port()),
    ]


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a server on ``port`` answers PING (a raw socket: no client state involved)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One ``redis-server`` with AOF on (``appendfsync`` as given), no RDB snapshots.

    The port and the data folder stay the same across :meth:`stop`/:meth:`kill` and
    :meth:`start`, so a restart finds the data the previous run persisted in its AOF.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: list[str] | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="taskhub-redis-"))
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def start(self) -> RedisProcess:
        """Start the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        # Beside the interpreter too: the PyPI fallback of ensure-redis.sh installs it into
        # the venv, whose bin folder is not on PATH when make runs .venv/bin/pytest.
        beside = Path(sys.executable).parent / "redis-server"
        binary = shutil.which("redis-server") or (str(beside) if beside.is_file() else None)
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (not on PATH): the redis store tests need a "
                "real Redis. Run `bash scripts/ensure-redis.sh` (make test does) or install "
                "it with your package manager (apt-get install redis-server)."
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not start: {self._log_tail()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM): Redis flushes and fsyncs its AOF before it exits."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like; only what the AOF had fsynced survives."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop, and remove the data folder if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:] or "(empty log)"
        return "(no log)"


_shared: RedisProcess | None = None


def shared() -> RedisProcess:
    """One server for the whole test session, started on first use, stopped at exit.

    Tests keep apart by using a key prefix of their own, not a server each.
    """
    global _shared
    if _shared is None:
        _shared = RedisProcess().start()
        atexit.register(_shared.cleanup)
    return _shared
