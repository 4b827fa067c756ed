"""Graceful shutdown of `taskhub serve` (SQLite) on SIGTERM: finish what can finish in the grace
period, hand back the rest, exit 0; after a restart nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from taskhub import Client
from tests.e2e.hubproc import HubProcess

GRACE = 2.0


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening


async def test_sigterm_finishes_running_work_hands_back_the_rest_and_exits_0(
    tmp_path: Path,
) -> None:
    hub = HubProcess(f"sqlite:///{tmp_path / 'hub.db'}", env={"TASKHUB_SHUTDOWN_GRACE": str(GRACE)})
    hub.start()
    try:
        started: dict[str, asyncio.Event] = {n: asyncio.Event() for n in ("quick", "stuck")}
        release_quick = asyncio.Event()

        async def work(task: Any) -> Any:
            name = await task.get_payload()
            started[name].set()
            if name == "quick":
                await release_quick.wait()
                return "quick done"
            await asyncio.sleep(3600)  # "stuck": still running when the grace runs out

        async with (
            Client(hub.url, name="pub", max_backoff=0.2) as pub,
            Client(hub.url, name="worker", max_backoff=0.2) as worker,
        ):
            await worker.sub("job:run", work, concurrency=2)
            quick = pub.pub("job:run", "quick")
            stuck = pub.pub("job:run", "stuck")
            await asyncio.wait_for(started["quick"].wait(), 10)
            await asyncio.wait_for(started["stuck"].wait(), 10)
            waiting = pub.pub("job:run", "waiting")  # no credit left: waits in the group's queue
            ids = {name: await h.accepted() for name, h in [("stuck", stuck), ("waiting", waiting)]}
            assert hub.proc is not None
            hub.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert readyz(hub.port) in (0, 503)  # draining: not ready, or not listening at all
            release_quick.set()  # the running task returns within the grace period...
            assert await quick.get_result(timeout=GRACE) == "quick done"  # ...and it counts
            code = await asyncio.to_thread(hub.proc.wait, GRACE + 10)
            assert code == 0
            hub.proc = None

        # Restart: the stuck task went back to its group, the waiting one never left it.
        hub.start()
        done: dict[str, Any] = {}
        all_done = asyncio.Event()

        async def finish(task: Any) -> Any:
            done[task.id] = await task.get_payload()
            if len(done) == 2:
                all_done.set()
            return "finished"

        async with Client(hub.url, name="worker") as worker2:
            await worker2.sub("job:run", finish, concurrency=2)
            await asyncio.wait_for(all_done.wait(), 15)
        assert done == {ids["stuck"]: "stuck", ids["waiting"]: "waiting"}
        async with Client(hub.url, name="pub") as pub:
            stuck_task = await pub.get(ids["stuck"])
            for _ in range(100):
                if stuck_task["state"] == "success":
                    break
                await asyncio.sleep(0.05)
                stuck_task = await pub.get(ids["stuck"])
        assert stuck_task["state"] == "success"
        assert stuck_task["deliveries"][0]["tries"] == 1  # the handed-back attempt counted
    finally:
        hub.stop()
    log = hub.log.read_text()
    assert "shutdown grace over: handing 1 running delivery(ies) back" in log


async def test_sigterm_on_an_idle_hub_exits_0_at_once(tmp_path: Path) -> None:
    hub = HubProcess(f"sqlite:///{tmp_path / 'hub.db'}").start()
    assert hub.proc is not None
    loop = asyncio.get_running_loop()
    began = loop.time()
    hub.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(hub.proc.wait, 10) == 0
    assert loop.time() - began < 3
    hub.proc = None
