"""A handler that blocks its event loop counts its tries (issue 15, item 11).

An async handler that calls ``time.sleep`` stops its client from answering the hub's
keepalive pings; the hub drops the connection and offers the task again. Each such run must
count a try toward ``max_attempts`` and the task must then fail (reason ``attempts``) into
the dead letters, as a killed worker's does (DESIGN.md rule 6). It used not to: the client
queued the ``pickup`` and ran the handler in the same loop turn, so the pickup never left,
the hub saw an offer never started, and re-offered it forever (6 runs in 75 s with
``max_attempts=2``, the task still ``init``).

The workers are real processes; each blocks until the hub has dropped it and the test kills
it, so nothing depends on how long the block lasts.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from taskhub import Client, Server, TaskFailed
from tests.conftest import ServerFactory, until

WORKER = """
import asyncio, sys, time
from taskhub import Client

async def main() -> None:
    async with Client(sys.argv[1], name="worker") as client:
        async def handler(task):
            print("run", task.attempt, flush=True)
            time.sleep(3600)  # blocks the event loop: no keepalive answer, no frame out

        await client.sub("block:run", handler)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _blocked_run(server: Server, pub: Client, task_id: str) -> str:
    """Start a worker, wait until its handler runs and blocks, then until the hub has
    dropped it (no pong) and taken the delivery back; return what the worker printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, server.url, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().strip()

            async def taken_back() -> bool:
                delivery = (await pub.get(task_id))["deliveries"][0]
                return delivery["state"] not in ("offered", "started")

            await until(taken_back, timeout=20)
        return line
    finally:
        proc.kill()
        await proc.wait()


async def test_a_handler_that_blocks_its_loop_counts_its_tries(
    make_server: ServerFactory,
) -> None:
    server = await make_server(ping_interval=0.2, ping_timeout=0.2)
    pub = await Client(server.url, name="publisher").connect()
    try:
        handle = pub.pub("block:run", max_attempts=2)
        task_id = await handle.accepted()
        runs = [await _blocked_run(server, pub, task_id)]
        task = await pub.get(task_id)
        assert task["started_at"] is not None  # the hub knew the handler had started
        assert task["deliveries"][0]["tries"] == 1
        runs.append(await _blocked_run(server, pub, task_id))
        assert runs == ["run 1", "run 2"]
        with pytest.raises(TaskFailed) as failed:
            await asyncio.wait_for(handle.get_result(), 10)
        assert failed.value.reason == "attempts"
        task = await pub.get(task_id)
        assert task["state"] == "fail"
        assert task["deliveries"][0]["tries"] == 2
        dead = await pub.dead_letters("block:run")
        assert [d["id"] for d in dead] == [task_id]
    finally:
        await pub.close()
