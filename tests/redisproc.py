"""A real ``redis-server`` on loopback for tests: start, stop, kill, restart on the same data.

Also a real multi-node Redis Cluster (:class:`RedisCluster`) and a TLS-only server
(:func:`make_tls_files` + ``RedisProcess(tls=...)``).

``make test`` installs redis-server (scripts/ensure-redis.sh) before pytest runs; when it is
still missing, :meth:`RedisProcess.start` raises, so the tests that need Redis fail loudly
rather than skip and leave the Redis engine untested.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

START_TIMEOUT = 10.0
CLUSTER_SLOTS = 16384


def free_port(below: int = 65536) -> int:
    """A loopback port nothing listens on now, lower than ``below``."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < below:
            return port
    raise RuntimeError(f"no free loopback port below {below}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (for a cluster's nodes and their bus ports)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def cluster_args(bus_port: int | None = None) -> list[str]:
    """``extra_args`` for a cluster-mode server. Its bus port defaults to port + 10000 and
    Redis refuses ports above 55535 then: an explicit free bus port avoids both problems."""
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        str(bus_port or free_port()),
    ]


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or beside the interpreter: the PyPI fallback of ensure-redis.sh
    installs redis-server into the venv, whose bin folder is not on PATH when make runs
    .venv/bin/pytest."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Generate a CA and a server certificate for 127.0.0.1 with the ``openssl`` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is not installed: cannot make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "server.ext"]
    for args in (
        [
            "req",
            "-x509",
            *ec,
            *ca_ext,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=TaskHub test CA",
        ],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", *sign, "-out", "server.pem", "-days", "2"],
    ):
        done = subprocess.run(
            [openssl, *args], cwd=folder, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")
    return files


def ping(port: int, timeout: float = 0.5, tls: TlsFiles | None = None) -> bool:
    """True when a server on ``port`` answers PING (a raw socket: no client state involved)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            if tls is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64).startswith(b"+PONG")
            # The TLS socket takes over the descriptor: closing `raw` would not close it.
            context = ssl.create_default_context(cafile=str(tls.ca))
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One ``redis-server`` with AOF on (``appendfsync`` as given), no RDB snapshots.

    The port and the data folder stay the same across :meth:`stop`/:meth:`kill` and
    :meth:`start`, so a restart finds the data the previous run persisted in its AOF.
    With ``tls`` it serves TLS only, on ``port`` (no plain-text port; clients need no
    certificate of their own).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: list[str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="taskhub-redis-"))
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args or [])
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def stderr_path(self) -> Path:
        return self.dir / "stderr.log"

    def start(self) -> RedisProcess:
        """Start the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (not on PATH): the redis store tests need a "
                "real Redis. Run `bash scripts/ensure-redis.sh` (make test does) or install "
                "it with your package manager (apt-get install redis-server)."
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = ["--port", "0", "--tls-port", str(self.port)]
            listen += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            listen += ["--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        args = [
            binary,
            *listen,
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
        # Errors in the arguments (an option this build lacks) go to stderr, not the log.
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.port, tls=self.tls):
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
        tail = ""
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                tail += path.read_text(errors="replace")[-2000:]
        return tail.strip() or "(empty log)"


class RedisCluster:
    """A real Redis Cluster on loopback: ``masters`` cluster-mode ``redis-server`` processes,
    no replicas, the 16384 slots split evenly between them by ``redis-cli --cluster create``
    (or by hand, with CLUSTER ADDSLOTS and MEET, where redis-cli is not installed)."""

    def __init__(self, masters: int = 3, data_dir: Path | str | None = None) -> None:
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="taskhub-redis-cluster-"))
        ports = free_ports(2 * masters)
        self.nodes = [
            RedisProcess(
                self.dir / f"node{i}", port=ports[2 * i], extra_args=cluster_args(ports[2 * i + 1])
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """The store URL with the first node as the seed (the client discovers the rest)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        """Start every node, form the cluster and wait until every node sees it whole."""
        try:
            for node in self.nodes:
                node.start()
            cli = find_binary("redis-cli")
            if cli is not None:
                self._create_with_redis_cli(cli)
            else:
                self._create_by_hand()
            self._wait_until_ok()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _create_with_redis_cli(self, cli: str) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        done = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def _create_by_hand(self) -> None:
        count = len(self.nodes)
        first = self.client(0)
        for i, node in enumerate(self.nodes):
            low, high = i * CLUSTER_SLOTS // count, (i + 1) * CLUSTER_SLOTS // count
            client = self.client(i)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            client.execute_command("CLUSTER", "ADDSLOTS", *range(low, high))
            if i:
                bus_port = node.extra_args[node.extra_args.index("--cluster-port") + 1]
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            states = [self.client(i).execute_command("CLUSTER", "INFO") for i in range(len(self))]
            if all(
                b"cluster_state:ok" in info
                and f"cluster_known_nodes:{len(self)}\r".encode() in info
                and f"cluster_slots_assigned:{CLUSTER_SLOTS}\r".encode() in info
                for info in states
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the redis cluster did not come up: {states}")
            time.sleep(0.05)

    def __len__(self) -> int:
        return len(self.nodes)

    def client(self, index: int) -> redis.Redis:
        """A plain (single-node, not cluster-aware) client of node ``index``."""
        return redis.Redis(port=self.nodes[index].port, socket_timeout=5.0)

    def owner_of(self, key: str) -> int:
        """The index of the node that owns ``key``'s slot."""
        slot = self.client(0).execute_command("CLUSTER", "KEYSLOT", key)
        for low, high, primary, *_ in self.client(0).execute_command("CLUSTER", "SLOTS"):
            if low <= slot <= high:
                port = int(primary[1])
                return next(i for i, node in enumerate(self.nodes) if node.port == port)
        raise RuntimeError(f"slot {slot} of {key!r} is not covered")

    def cleanup(self) -> None:
        """Stop every node, and remove the data folder if this object made it."""
        for node in self.nodes:
            node.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


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


def shared_url(name: str) -> str:
    """The shared server's URL with a key prefix no other test uses: ``name`` and a random
    part (an ``id()`` is reused once its object is freed, so two tests could share keys)."""
    return f"{shared().url}?prefix={name}{uuid.uuid4().hex[:12]}"


_shared_cluster: RedisCluster | None = None


def shared_cluster() -> RedisCluster:
    """One 3-primary Redis Cluster for the whole test session, like :func:`shared`."""
    global _shared_cluster
    if _shared_cluster is None:
        _shared_cluster = RedisCluster().start()
        atexit.register(_shared_cluster.cleanup)
    return _shared_cluster
