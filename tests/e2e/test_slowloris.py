"""Slowloris from many addresses against a real ``taskhub serve`` process with few file
descriptors (issue 15, item 4): the connections that wait longest for a request head are
closed, so the attack cannot take every descriptor and clients still get answers."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.hubproc import free_port

FDS = 96  # the hub keeps at most half waiting for a head: 48


def _few_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS, FDS))


@pytest.fixture
def hub() -> Iterator[tuple[int, int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "taskhub", "serve", "--port", str(port), "--store", "memory://"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_few_fds
    )
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_many_addresses_of_half_sent_heads_do_not_lock_clients_out(
    hub: tuple[int, int],
) -> None:
    port, pid = hub
    attackers: list[socket.socket] = []
    try:
        for i in range(120):  # 3 per address: far under max_connections_per_address
            s = socket.create_connection(
                ("127.0.0.1", port), source_address=(f"127.0.1.{2 + i % 40}", 0)
            )
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            attackers.append(s)
        time.sleep(0.5)
        assert len(os.listdir(f"/proc/{pid}/fd")) < FDS  # descriptors are left
        with httpx.Client(timeout=10) as http:
            assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        for s in attackers:
            s.close()
