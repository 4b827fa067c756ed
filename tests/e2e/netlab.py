"""A small network for partition tests: each process in its own network namespace, all on one
bridge, cut from one another with iptables DROP rules.

Made with ``ip netns``, veth pairs and ``iptables`` (root only; scripts/ensure-netlab.sh
installs the commands). The bridge lives in a namespace of its own and the test process reaches
the nodes through one veth from its own namespace, so nothing outside the lab is changed but
that one interface and its route, and :meth:`NetLab.close` removes everything again.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.redisproc import find_binary


def available() -> str | None:
    """Why a lab cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (bash scripts/ensure-netlab.sh installs it)"
    return None


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")


class NetLab:
    """Namespaces named ``<tag>-<node>``; node addresses in a random 10.x.y.0/24."""

    def __init__(self) -> None:
        reason = available()
        if reason is not None:
            raise RuntimeError(f"cannot build a network lab: {reason}")
        self.tag = f"th{os.getpid() % 10000}{random.randrange(100, 999)}"
        self.net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.switch = f"{self.tag}-sw"
        self.nodes: dict[str, str] = {}  # name -> address
        self._host_if = f"{self.tag}h"
        self._made: list[str] = []
        _run("ip", "netns", "add", self.switch)
        self._made.append(self.switch)
        self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "ip", "link", "set", "br0", "up")
        # The test process's own way in: a veth from its namespace to the bridge.
        _run("ip", "link", "add", self._host_if, "type", "veth", "peer", "name", "up0")
        _run("ip", "link", "set", "up0", "netns", self.switch)
        self._in(self.switch, "ip", "link", "set", "up0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.net}.254/24", "dev", self._host_if)
        _run("ip", "link", "set", self._host_if, "up")

    def _in(self, ns: str, *args: str) -> None:
        _run("ip", "netns", "exec", ns, *args)

    def node(self, name: str) -> str:
        """A namespace for ``name`` on the bridge; returns its address."""
        ns = f"{self.tag}-{name}"
        addr = f"{self.net}.{len(self.nodes) + 1}"
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        port = f"p{len(self.nodes)}"
        self._in(
            self.switch, "ip", "link", "add", port, "type", "veth", "peer", "eth0", "netns", ns
        )
        self._in(self.switch, "ip", "link", "set", port, "master", "br0", "up")
        self._in(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        self._in(ns, "ip", "link", "set", "eth0", "up")
        self._in(ns, "ip", "link", "set", "lo", "up")
        self.nodes[name] = addr
        return addr

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program inside node ``name``'s namespace."""
        return ["ip", "netns", "exec", f"{self.tag}-{name}"]

    def cut(self, name: str, *others: str) -> None:
        """Drop every packet between node ``name`` and each of ``others`` (both ways)."""
        for other in others:
            addr = self.nodes[other]
            self._in(f"{self.tag}-{name}", "iptables", "-I", "INPUT", "-s", addr, "-j", "DROP")
            self._in(f"{self.tag}-{name}", "iptables", "-I", "OUTPUT", "-d", addr, "-j", "DROP")

    def cut_port(self, name: str, port: int) -> None:
        """Drop every TCP packet between node ``name`` and the test process's port ``port``
        (one connection of the test's, say), both ways."""
        ns = f"{self.tag}-{name}"
        self._in(ns, "iptables", "-I", "INPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP")
        self._in(ns, "iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")

    def heal(self, name: str) -> None:
        """Remove node ``name``'s DROP rules."""
        self._in(f"{self.tag}-{name}", "iptables", "-F", "INPUT")
        self._in(f"{self.tag}-{name}", "iptables", "-F", "OUTPUT")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            _run("ip", "link", "del", self._host_if)
        for ns in reversed(self._made):
            with contextlib.suppress(RuntimeError):
                _run("ip", "netns", "del", ns)
        self._made.clear()


class NetRedis:
    """A ``redis-server`` (no persistence) inside a lab node, on its lab address."""

    def __init__(self, lab: NetLab, node: str = "redis", port: int = 6379) -> None:
        self.host = lab.node(node)
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="taskhub-netredis-"))
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (bash scripts/ensure-redis.sh)")
        args = [binary, "--bind", self.host, "--port", str(port), "--save", "", "--dir"]
        args += [str(self.dir), "--protected-mode", "no", "--daemonize", "no"]
        # The child keeps its own copy of the log's descriptor; ours is closed at once.
        with (self.dir / "redis.log").open("wb") as log:
            self.proc = subprocess.Popen([*lab.prefix(node), *args], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while True:
            try:
                with redis.Redis(self.host, port, socket_timeout=1) as r:
                    r.ping()
                break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server in the lab did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(self.host, self.port, socket_timeout=2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
