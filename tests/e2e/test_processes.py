"""`taskhub serve --processes N` (docs/deployment.md, "Several processes on one machine"): N hub
processes share one port and split the partitions; a child killed -9 is started again by the
parent and no accepted task is lost (SQLite and Redis), a publisher and a worker on the shared
port complete tasks of every partition (whichever child leads it) and a wildcard watch sees
them all (SQLite and Redis), SIGTERM stops them all gracefully (exit 0), and a store or a
partition count they cannot share is refused in one line (exit 2)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskhub import Client
from taskhub.partitions import partition_of, partition_of_id
from tests import redisproc
from tests.e2e.hubproc import HubProcess, draining, ended, wait_until

P = 4


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
        body: dict[str, Any] = json.loads(answer.read())
        return body


def children(hub: HubProcess) -> list[int]:
    assert hub.proc is not None
    out = subprocess.run(["pgrep", "-P", str(hub.proc.pid)], capture_output=True, text=True)
    return sorted(int(pid) for pid in out.stdout.split())


def shares(hub: HubProcess) -> dict[str, list[int]]:
    """Each child's partitions by its own URL, read through the shared port: the child that
    answers names the other's URL as a leader, whose own port then answers for it."""
    first = health(hub.http_url)
    others = {url for url in first["leaders"].values() if url}
    out = {"shared": first["partitions"]}
    for url in others:
        out[url] = health(url)["partitions"]
    return out


def split(hub: HubProcess, timeout: float = 30.0) -> dict[str, list[int]]:
    """Wait until two children lead two partitions each; their shares."""
    seen: dict[str, list[int]] = {}

    def even() -> bool:
        seen.clear()
        seen.update(shares(hub))
        every = sorted(p for share in seen.values() for p in share)
        return (
            len(seen) == 2 and every == list(range(P)) and all(len(s) == 2 for s in seen.values())
        )

    wait_until(even, timeout, hub.log)
    return seen


def serve(store: str) -> Iterator[HubProcess]:
    env = {"TASKHUB_LEASE": "1", "TASKHUB_LOG": "info"}
    proc = HubProcess(store, None, "--partitions", str(P), "--processes", "2", env=env)
    yield proc.start(timeout=60)
    proc.stop()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    yield from serve(f"sqlite:///{tmp_path / 'hub.db'}")


def serve_on(kind: str, folder: Path) -> Iterator[HubProcess]:
    if kind == "sqlite":
        yield from serve(f"sqlite:///{folder / 'hub.db'}")
    else:
        yield from serve(redisproc.shared_url("procs"))


@pytest.fixture(params=["sqlite", "redis"])
def any_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubProcess]:
    """`serve --processes 2` on a SQLite file, and on a Redis."""
    yield from serve_on(request.param, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def shared_hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    """As ``any_hub``, one per store for the tests that leave its processes alone: starting
    them was most of each test."""
    yield from serve_on(request.param, tmp_path_factory.mktemp("procs"))


def linked(hub: HubProcess) -> None:
    """Wait until each child names the leader of every partition it does not lead (it
    reaches them over the link from then on)."""

    def every_leader_named() -> bool:
        # each child's own URL, read from the other's leaders; each names every leader
        x = {u for u in health(hub.http_url)["leaders"].values() if u}
        y = {u for url in x for u in health(url)["leaders"].values() if u}
        children = x | y
        return len(children) == 2 and all(
            len(health(url)["leaders"]) == 2 and all(health(url)["leaders"].values())
            for url in children
        )

    wait_until(every_leader_named, 10, hub.log)


def one_action_per_partition(prefix: str = "job") -> list[str]:
    return [
        next(
            f"{prefix}{i}:run" for i in range(1000) if partition_of(f"{prefix}{i}:run", "", P) == p
        )
        for p in range(P)
    ]


@pytest.mark.parametrize("shared_hub", ["sqlite"], indirect=True)
async def test_two_processes_share_the_port_and_split_the_partitions(
    shared_hub: HubProcess,
) -> None:
    hub = shared_hub
    seen = split(hub)
    assert len(children(hub)) == 2
    # Each child also serves on a port of its own, which it advertises to the other.
    for url, led in seen.items():
        if url == "shared":
            continue
        action = next(
            f"job{i}:run" for i in range(1000) if partition_of(f"job{i}:run", "", P) in led
        )
        async with Client(url.replace("http://", "ws://"), name="w") as c:
            await c.sub(action, lambda t: t.payload + 1)
            assert await c.pub(action, 41).get_result(timeout=10) == 42


async def test_a_publisher_and_a_worker_on_the_shared_port_complete_every_partition(
    shared_hub: HubProcess,
) -> None:
    """Whichever child each connection lands on, it reaches the partitions the other child
    leads over the hub-to-hub link: tasks of every partition complete, and a wildcard watch
    sees them all."""
    hub = shared_hub
    split(hub)
    linked(hub)
    actions = one_action_per_partition("serve")
    async with (
        Client(hub.url, name="worker") as worker,
        Client(hub.url, name="publisher") as pub,
        Client(hub.url, name="watcher") as watcher,
    ):
        for action in actions:
            await worker.sub(action, lambda t: t.payload + 1, concurrency=8)
        seen: dict[str, set[str]] = {}
        async with watcher.watch(">") as events:
            handles = [pub.pub(actions[i % P], i) for i in range(4 * P)]
            results = [await h.get_result(timeout=20) for h in handles]
            async with asyncio.timeout(10):
                async for ev in events:
                    seen.setdefault(ev["task"], set()).add(ev["type"])
                    if all("success" in seen.get(h.id, ()) for h in handles):
                        break
    assert results == [i + 1 for i in range(4 * P)]
    assert {partition_of_id(h.id) for h in handles} == set(range(P))


async def test_a_child_killed_9_loses_no_accepted_task(any_hub: HubProcess) -> None:
    """Tasks of every partition and a chain crossing partitions, accepted through the shared
    port; a child is killed -9: the parent starts it again, the partitions are split again, and
    every accepted task runs once and the chain completes."""
    hub = any_hub
    split(hub)
    linked(hub)
    actions = one_action_per_partition()
    n = 40
    async with Client(hub.url, name="publisher") as pub:
        handles = [pub.pub(actions[i % P], i) for i in range(n)]
        ids = [await h.accepted() for h in handles]  # answered: the hubs promised
        chain_id = await pub.chain([(actions[0], 1000), (actions[3], None)]).accepted()
    assert {partition_of_id(i) for i in ids} == set(range(P))
    before = children(hub)
    os.kill(before[0], signal.SIGKILL)
    wait_until(lambda: len(children(hub)) == 2 and children(hub) != before, 20, hub.log)
    assert "exited with -9; starting it again" in hub.log.read_text()
    split(hub)  # the new child takes its share back once the dead one's leases ran out
    linked(hub)
    async with draining(hub.url, actions, n) as seen:
        chain = await ended(hub.url, chain_id)  # the worker still runs the chain's steps
    assert sorted(seen) == sorted(ids)
    assert sorted(seen.values()) == list(range(n))
    assert chain["state"] == "success" and chain["result"] == 1002


def test_sigterm_stops_every_process_gracefully(hub: HubProcess) -> None:
    split(hub)
    kids = children(hub)
    assert hub.proc is not None
    hub.proc.terminate()
    assert hub.proc.wait(30) == 0
    hub.proc = None
    for pid in kids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert hub.log.read_text().count("hub stopped; the store is flushed and closed") >= 2


@pytest.mark.parametrize(
    ("store", "partitions", "says"),
    [
        ("memory://", "4", "processes = 2 needs a store the processes share"),
        ("sqlite:///{dir}/one.db", "1", "processes = 2 needs partitions > 1"),
    ],
)
def test_processes_that_cannot_share_are_refused_in_one_line(
    tmp_path: Path, store: str, partitions: str, says: str
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskhub",
            "serve",
            "--port",
            "0",
            "--store",
            store.format(dir=tmp_path),
            "--partitions",
            partitions,
            "--processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr
