"""PartitionKeepers in real processes (tests/e2e/keeperproc.py) over a real redis-server and a
real SQLite file: partitions spread and rebalance when a process joins or stops, a process
killed with SIGKILL loses its partitions once their leases expire, and a process paused past
its lease (SIGSTOP) is fenced when it resumes and rejoins, leading only what is handed back."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests import redisproc
from tests.conftest import until

P = 12
ROOT = Path(__file__).resolve().parents[2]


class KeeperProcess:
    """One keeper process; ``held`` follows its gained/release/lost lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: set[int] = set()
        self.events: list[dict[str, Any]] = []
        self.rounds = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, url: str, lease: float) -> KeeperProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.e2e.keeperproc",
            url,
            str(P),
            str(lease),
            self.name,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            if "round" in event:
                self.rounds = event["round"]
                continue
            self.events.append(event)
            if "gained" in event:
                self.held.add(event["gained"])
            for gone in ("release", "lost"):
                if gone in event:
                    self.held.discard(event[gone])

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def next_round(self) -> None:
        seen = self.rounds
        await until(lambda: self.rounds > seen, timeout=30.0)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return f"{redisproc.shared().url}?prefix=kp{uuid.uuid4().hex[:12]}"
    return f"sqlite:///{tmp_path}/hub.db"


@pytest.fixture
async def keepers(store_url: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[KeeperProcess] = []

    async def start(name: str, lease: float) -> KeeperProcess:
        proc = await KeeperProcess(name).start(store_url, lease)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        await proc.close()


def split(procs: list[KeeperProcess], sizes: list[int]) -> bool:
    """Every partition held by exactly one of ``procs``, in shares of ``sizes``."""
    held = [p for proc in procs for p in proc.held]
    return sorted(held) == list(range(P)) and sorted(len(x.held) for x in procs) == sizes


async def test_processes_split_rebalance_on_a_join_and_hand_off_on_sigterm(
    keepers: Callable[..., Any],
) -> None:
    # A long lease: whatever moves here moves by hand-off, never by expiry.
    procs = [await keepers(name, 60.0) for name in ("a", "b", "c")]
    await until(lambda: split(procs, [4, 4, 4]), timeout=60.0)
    procs.append(await keepers("d", 60.0))
    await until(lambda: split(procs, [3, 3, 3, 3]), timeout=60.0)
    assert not any("lost" in e for proc in procs for e in proc.events)
    gone = procs.pop(0)
    gone.signal(signal.SIGTERM)
    assert gone.proc is not None and await gone.proc.wait() == 0
    assert gone.held == set()  # handed everything off on the way out
    await until(lambda: split(procs, [4, 4, 4]), timeout=60.0)
    assert not any("lost" in e for proc in procs for e in proc.events)


async def test_a_killed_process_loses_its_partitions_after_the_lease(
    keepers: Callable[..., Any],
) -> None:
    procs = [await keepers(name, 1.5) for name in ("a", "b", "c")]
    await until(lambda: split(procs, [4, 4, 4]), timeout=60.0)
    dead = procs.pop(0)
    dead.signal(signal.SIGKILL)
    await until(lambda: split(procs, [6, 6]), timeout=60.0)


async def test_a_paused_process_is_fenced_and_rejoins_as_a_follower(
    keepers: Callable[..., Any],
) -> None:
    procs = [await keepers(name, 1.5) for name in ("a", "b", "c")]
    await until(lambda: split(procs, [4, 4, 4]), timeout=60.0)
    paused, others = procs[0], procs[1:]
    before = set(paused.held)
    stale = {e["gained"]: e["token"] for e in paused.events if "gained" in e}
    await paused.next_round()
    paused.signal(signal.SIGSTOP)  # between two rounds: never inside a write
    try:
        # Past its lease: the others take its partitions over.
        await until(lambda: split(others, [6, 6]), timeout=60.0)
    finally:
        paused.signal(signal.SIGCONT)
    paused.send("write")  # a write through every store it opened, old tenures' included
    await until(lambda: len([e for e in paused.events if "wrote" in e]) >= len(stale), 60.0)
    for event in [e for e in paused.events if "wrote" in e]:
        if stale.get(event["wrote"]) == event["token"]:
            assert event["result"] == "fenced", event  # its old tenure writes nothing
    # It stepped down from every partition it had, and leads again only what the others
    # handed back to it, each with a new token (a new epoch).
    await until(lambda: before <= {e["lost"] for e in paused.events if "lost" in e}, 60.0)
    await until(lambda: split(procs, [4, 4, 4]), timeout=60.0)
    regained = [e for e in paused.events if "gained" in e][len(stale) :]
    assert regained and all(e["token"] != stale.get(e["gained"]) for e in regained)
    assert all(
        any(e.get("release") == p for proc in others for e in proc.events)
        for p in {e["gained"] for e in regained}
    )
