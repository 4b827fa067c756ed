"""A PartitionKeeper in a process of its own, for the kill, pause and hand-off tests:

    python -m tests.e2e.keeperproc STORE_URL PARTITIONS LEASE NAME

Prints one JSON line per event on stdout (``gained``, ``release``, ``lost``, ``round`` after
each round, ``wrote``, ``stopped``). On gaining a partition it opens the partition's fenced
store and keeps it, also after losing the partition (as a stalled hub would still hold it).
Commands on stdin: ``write`` writes a task through every store it ever opened and reports
each result; ``stop`` (or SIGTERM) stops the keeper, handing every partition off, and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.hub.keeper import PartitionKeeper
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import Store, open_partition_leases

INTERVAL = 0.1


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


class Proc:
    def __init__(self, url: str, partitions: int, lease: float, name: str) -> None:
        self.leases = open_partition_leases(url, partitions)
        self.keeper = PartitionKeeper(
            self.leases,
            instance=name,
            url=f"http://{name}",
            lease=lease,
            interval=INTERVAL,
            on_gained=self.gained,
            on_release=self.release,
            on_lost=self.lost,
        )
        self.stores: list[tuple[int, str, Store]] = []  # every store ever opened
        self.writes = 0

    async def gained(self, p: int, token: str) -> None:
        store = self.leases.fenced_store(p, token)
        await store.open()
        self.stores.append((p, token, store))
        say(gained=p, token=token)

    async def release(self, p: int) -> None:
        say(release=p)

    async def lost(self, p: int) -> None:
        say(lost=p)

    async def write(self) -> None:
        for p, token, store in self.stores:
            self.writes += 1
            task = TaskRecord(id=f"w{self.writes}", action="a", publisher="p", created_at=1.0)
            try:
                await store.apply(WriteBatch(tasks=[task]))
                say(wrote=p, token=token, result="ok")
            except StoreFenced:
                say(wrote=p, token=token, result="fenced")

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()
        loop.add_signal_handler(signal.SIGTERM, commands.put_nowait, "stop")

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line.strip())
            loop.call_soon_threadsafe(commands.put_nowait, "stop")

        threading.Thread(target=read, daemon=True).start()
        await self.leases.open()
        rounds = asyncio.create_task(self.rounds())
        while (command := await commands.get()) != "stop":
            if command == "write":
                await self.write()
        rounds.cancel()
        await self.keeper.stop()
        say(stopped=True)

    async def rounds(self) -> None:
        # The keeper's own loop (start()) with a line after each round, so a test can pause
        # this process between rounds, never inside a write to the store.
        n = 0
        while True:
            try:
                await self.keeper.tick()
            except StoreUnavailable as exc:  # the leases lapse by the clock meanwhile
                say(error=str(exc))
            n += 1
            say(round=n)
            await asyncio.sleep(INTERVAL)


if __name__ == "__main__":
    url, partitions, lease, name = sys.argv[1:5]
    asyncio.run(Proc(url, int(partitions), float(lease), name).main())
