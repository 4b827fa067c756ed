"""Attacks on a live hub (issue 15, items 4, 6, 7, 8): what each costs the hub and its users.

    .venv/bin/python benchmarks/attack_bench.py                 # all four
    .venv/bin/python benchmarks/attack_bench.py --only timing,flood

The hub runs as ``taskhub serve`` in a process of its own with 1,024 file descriptors (a usual
default). Attackers and the legitimate client speak from different loopback addresses
(127.0.0.2 and up, 127.0.0.1): Linux routes all of 127/8 to lo.

- slowloris: open ``--conns`` TCP connections that send half a request head and never finish
  it, from one address and then spread over 50; can a legitimate client still get
  ``/healthz`` and a WebSocket? How many fds does the hub hold then, and ``--linger``
  seconds later?
- timing: the answer time of a wrong key for a name that authenticated before, against an
  unknown name (median of ``--tries``, each from its own address so no throttle applies).
- flood: 16 clients (another process) send unknown names in a loop; the handshake latency
  of a legitimate client (authenticated before) and of a first login, against the same
  without the flood and with the same 16 clients sending a valid key (the load alone).
- origin: an open-access hub asked with ``Origin: http://evil.example``, ``Host:
  evil.example`` and a ``text/plain`` POST.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

KEY = "legit-key-123"
HUB_FDS = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (HUB_FDS, HUB_FDS))


@contextlib.contextmanager
def hub(config: str, env: dict[str, str] | None = None) -> Iterator[tuple[int, int]]:
    """A ``taskhub serve`` process: (port, pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hub.toml")
        with open(path, "w") as f:
            f.write(config)
        cmd = [os.path.join(os.path.dirname(sys.executable), "taskhub"), "serve", "--config", path]
        full_env = {**os.environ, "TASKHUB_PORT": str(port), "TASKHUB_STORE": "memory://"}
        full_env.update(env or {})
        proc = subprocess.Popen(cmd, env=full_env, stderr=subprocess.DEVNULL, preexec_fn=_limit_fds)
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            yield port, proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


def ms(times: list[float]) -> float:
    """The median, in milliseconds."""
    return round(statistics.median(times) * 1000, 1)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


CREDS = f"""
[server]
host = "127.0.0.1"

[[credentials]]
name = "svc"
key = "{KEY}"
pub_permissions = ["*"]
sub_permissions = ["*"]

""" + "".join(
    f'\n[[credentials]]\nname = "late{i}"\nkey = "{KEY}"\npub_permissions = ["*"]\n'
    for i in range(5)
)


async def ws_handshake(
    port: int,
    name: str,
    key: str,
    local: str = "127.0.0.1",
    timeout: float = 30,
    origin: str | None = None,
    close_timeout: float = 10,
) -> tuple[bool, float]:
    """(accepted, seconds) of one WebSocket handshake plus the hub's first message."""
    t0 = time.perf_counter()
    try:
        async with connect(
            f"ws://127.0.0.1:{port}/v1/ws",
            additional_headers={"Authorization": f"Bearer {name}:{key}"},
            local_addr=(local, 0),
            open_timeout=timeout,
            origin=origin,  # type: ignore[arg-type]
            close_timeout=close_timeout,
        ) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            ok = (first[0] if isinstance(first, list) else first).get("op") == "welcome"
    except (InvalidStatus, WebSocketException, OSError, TimeoutError):
        ok = False
    return ok, time.perf_counter() - t0


async def slowloris(conns: int, linger: float, spread: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, conns + 512)), hard))
    with hub(CREDS) as (port, pid):
        socks: list[socket.socket] = []
        for i in range(conns):
            s = socket.socket()
            s.bind((f"127.0.1.{2 + i % spread}", 0))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
        await asyncio.sleep(0.5)
        held = fds(pid)
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                r = await http.get(f"http://127.0.0.1:{port}/healthz")
                http_ok = r.status_code == 200
        except httpx.HTTPError:
            http_ok = False
        ws_ok, _ = await ws_handshake(port, "svc", KEY, timeout=3)
        await asyncio.sleep(linger)
        later = fds(pid)
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                r = await http.get(f"http://127.0.0.1:{port}/healthz")
                http_later = r.status_code == 200
        except httpx.HTTPError:
            http_later = False
        for s in socks:
            s.close()
    return {
        "attack connections": conns,
        "attacker addresses": spread,
        "hub fds during": held,
        f"hub fds {linger:.0f}s later": later,
        "healthz answered": http_ok,
        "websocket accepted": ws_ok,
        f"healthz answered {linger:.0f}s later": http_later,
    }


async def _http_auth(port: int, name: str, key: str, local: str) -> tuple[int, float]:
    transport = httpx.AsyncHTTPTransport(local_address=local)
    async with httpx.AsyncClient(transport=transport, timeout=30) as http:
        t0 = time.perf_counter()
        r = await http.get(
            f"http://127.0.0.1:{port}/v1/tasks",
            headers={"Authorization": f"Bearer {name}:{key}"},
        )
        return r.status_code, time.perf_counter() - t0


async def timing(tries: int) -> dict[str, Any]:
    with hub(CREDS) as (port, _):
        status, _ = await _http_auth(port, "svc", KEY, "127.0.0.1")
        assert status == 200, status
        right = [(await _http_auth(port, "svc", KEY, "127.0.0.1"))[1] for _ in range(tries)]
        known, unknown = [], []
        for i in range(tries):
            # One address per attempt: measures the verification, not a throttle.
            s1, t1 = await _http_auth(port, "svc", "wrong", f"127.0.1.{i + 1}")
            s2, t2 = await _http_auth(port, f"nobody{i}", "wrong", f"127.0.2.{i + 1}")
            assert s1 == 401 and s2 == 401, (s1, s2)
            known.append(t1)
            unknown.append(t2)
    return {
        "right key (ms)": ms(right),
        "wrong key, known name (ms)": ms(known),
        "unknown name (ms)": ms(unknown),
    }


async def flooders(port: int, valid: bool) -> None:
    """16 clients sending unknown names (or, ``valid``, the right key) from 127.0.0.2 until
    stdin closes, printing the count of attempts as they go. Run in a process of its own
    (``--flooder PORT``), so that its work does not slow the process that measures."""
    attempts = 0
    stop = asyncio.Event()

    async def one(i: int) -> None:
        nonlocal attempts
        name, key = ("svc", KEY) if valid else (f"nobody{i}", "x")
        while not stop.is_set():
            # A flooder does not wait for the closing handshake: it only wants the next try.
            await ws_handshake(port, name, key, local="127.0.0.2", timeout=5, close_timeout=0)
            attempts += 1

    async def report() -> None:
        while not stop.is_set():
            print(attempts, flush=True)
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(one(i)) for i in range(16)]
    reporter = asyncio.create_task(report())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    stop.set()
    await asyncio.gather(*tasks, reporter)
    print(attempts, flush=True)


async def _under_flood(
    port: int, rounds: int, valid: bool
) -> tuple[list[float], int, tuple[bool, float]]:
    """Handshake times of the known client while 16 others flood; their attempts/s; a first
    login (a name that never logged in, from another address) under the flood. The flood
    runs from before the first measurement to after the last."""
    cmd = [sys.executable, __file__, "--flooder", str(port), *(["--valid"] if valid else [])]
    child = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None and child.stdin is not None
    await child.stdout.readline()  # the child has started (imports take a while)
    await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    times = []
    for _ in range(rounds):
        times.append((await ws_handshake(port, "svc", KEY))[1])
        await asyncio.sleep(0.05)
    firsts = []
    for i in range(5 if not valid else 0):
        firsts.append(await ws_handshake(port, f"late{i}", KEY, local="127.0.0.3"))
    elapsed = time.perf_counter() - t0 + 1.0
    child.stdin.close()
    out, _ = await child.communicate()
    first = (all(ok for ok, _ in firsts), ms([t for _, t in firsts])) if firsts else (True, 0.0)
    return times, round(int(out.split()[-1]) / elapsed), first


async def flood(rounds: int) -> dict[str, Any]:
    with hub(CREDS) as (port, _):
        ok, _ = await ws_handshake(port, "svc", KEY)
        assert ok
        quiet = [(await ws_handshake(port, "svc", KEY))[1] for _ in range(rounds)]
        loud, rate, (first_ok, first) = await _under_flood(port, rounds, valid=False)
        # The same 16 clients with the right key: what the load alone costs, auth aside.
        busy, busy_rate, _ = await _under_flood(port, rounds, valid=True)
    return {
        "handshake, no flood (ms)": ms(quiet),
        "handshake under flood (ms)": ms(loud),
        "flood attempts/s": rate,
        "first login under flood (ms, median of 5)": first,
        "first login accepted": first_ok,
        "handshake under 16 clients with a valid key (ms)": ms(busy),
        "their handshakes/s": busy_rate,
    }


async def origin() -> dict[str, Any]:
    with hub('[server]\nhost = "127.0.0.1"\n') as (port, _):
        ws_ok, _ = await ws_handshake(port, "x", "", origin="http://evil.example")
        own_ok, _ = await ws_handshake(port, "x", "", origin=f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{port}"
            host = await http.get(f"{base}/v1/tasks", headers={"Host": "evil.example"})
            post = await http.post(
                f"{base}/v1/events/x:y",
                content=b'{"a": 1}',
                headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
            )
            plain = await http.post(
                f"{base}/v1/events/x:y", content=b'{"a": 1}', headers={"Content-Type": "text/plain"}
            )
    return {
        "websocket from evil.example accepted": ws_ok,
        "websocket from the hub's own origin accepted": own_ok,
        "GET with Host: evil.example": host.status_code,
        "cross-site text/plain POST": post.status_code,
        "text/plain POST, no Origin": plain.status_code,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="slowloris,timing,flood,origin")
    ap.add_argument("--conns", type=int, default=1100)
    ap.add_argument("--linger", type=float, default=12.0)
    ap.add_argument("--tries", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--flooder", type=int, help=argparse.SUPPRESS)  # internal: flood PORT
    ap.add_argument("--valid", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flooder:
        await flooders(args.flooder, args.valid)
        return
    only = args.only.split(",")
    results: dict[str, Any] = {}
    if "slowloris" in only:
        results["slowloris, one address"] = await slowloris(args.conns, args.linger, 1)
        results["slowloris, 50 addresses"] = await slowloris(args.conns, args.linger, 50)
    if "timing" in only:
        results["timing"] = await timing(args.tries)
    if "flood" in only:
        results["flood"] = await flood(args.rounds)
    if "origin" in only:
        results["origin"] = await origin()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
