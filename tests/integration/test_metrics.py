"""GET /metrics (Prometheus text, per-hub registry), /healthz and /readyz on real hubs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from taskhub import Client, Server
from taskhub.hub.app import create_app
from taskhub.hub.hub import Hub
from taskhub.store import open_store
from tests.conftest import ServerFactory, until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: Server) -> Samples:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{server.http_url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_tasks_latencies_queues_and_store(make_server: ServerFactory) -> None:
    server = await make_server()
    async with Client(server.url, name="worker") as worker, Client(server.url, name="pub") as pub:
        await worker.sub("echo:say", lambda t: t.id, concurrency=4)
        results = await asyncio.gather(*(pub.pub("echo:say", i).get_result() for i in range(5)))
        assert len(results) == 5
        failing = pub.pub("echo:fail")
        await worker.sub("echo:fail", _boom)
        assert await failing.get_result(default="failed") == "failed"

        release = asyncio.Event()

        async def hold(task: Any) -> Any:
            await release.wait()
            return "ok"

        await worker.sub("slow:job", hold, concurrency=1)
        held = [pub.pub("slow:job", i) for i in range(3)]
        pooled = pub.pub("nobody:listens")
        await asyncio.gather(*(h.accepted() for h in [*held, pooled]))
        await until(lambda: value_now(server, "slow:job"))

        m = await scrape(server)
        assert value(m, "taskhub_task_events_total", action="echo:say", type="init") == 5
        assert value(m, "taskhub_task_events_total", action="echo:say", type="start") == 5
        assert value(m, "taskhub_task_events_total", action="echo:say", type="success") == 5
        assert value(m, "taskhub_task_events_total", action="echo:fail", type="fail") == 1
        assert value(m, "taskhub_task_wait_seconds_count", action="echo:say") == 5
        assert value(m, "taskhub_task_run_seconds_count", action="echo:say") == 5
        assert value(m, "taskhub_task_duration_seconds_count", action="echo:say") == 5
        assert value(m, "taskhub_task_duration_seconds_count", action="echo:fail") == 1
        total = value(m, "taskhub_task_duration_seconds_sum", action="echo:say")
        assert 0 < total < 5
        assert value(m, "taskhub_task_duration_seconds_bucket", action="echo:say", le="+Inf") == 5
        # live state, read at scrape time: one slow:job started, two waiting, one pooled
        assert value(m, "taskhub_tasks", state="start") == 1
        assert value(m, "taskhub_tasks", state="init") == 3
        assert value(m, "taskhub_queue_depth", action="slow:job", group="worker") == 2
        assert value(m, "taskhub_queue_workers", action="slow:job", group="worker") == 1
        assert value(m, "taskhub_queue_inflight", action="slow:job", group="worker") == 1
        assert value(m, "taskhub_pooled_tasks", action="nobody:listens") == 1
        assert value(m, "taskhub_connections", service="worker") == 1
        assert value(m, "taskhub_connections", service="pub") == 1
        assert value(m, "taskhub_store_apply_seconds_count") >= 1
        assert value(m, "taskhub_store_batch_tasks_sum") >= 13  # every task was written
        assert value(m, "taskhub_ready") == 1

        release.set()
        await asyncio.gather(*(h.get_result(timeout=5) for h in held))
        m = await scrape(server)
        assert value(m, "taskhub_queue_depth", action="slow:job", group="worker") == 0
        assert value(m, "taskhub_tasks", state="start") == 0
        assert value(m, "taskhub_tasks", state="init") == 1  # the pooled one
        assert value(m, "taskhub_task_events_total", action="slow:job", type="success") == 3


def value_now(server: Server, action: str) -> bool:
    hub = server.hub
    assert hub is not None
    return any(t.rec.state == "start" for t in hub.lc.tasks.values() if t.rec.action == action)


async def _boom(task: Any) -> Any:
    raise ValueError("no")


async def test_two_hubs_in_one_process_have_their_own_numbers(make_server: ServerFactory) -> None:
    a = await make_server()
    b = await make_server()
    async with Client(a.url, name="w") as worker:
        await worker.sub("echo:say", lambda t: 1)
        assert await worker.pub("echo:say").get_result(timeout=5) == 1
    ma, mb = await scrape(a), await scrape(b)
    assert value(ma, "taskhub_task_events_total", action="echo:say", type="success") == 1
    assert value(mb, "taskhub_task_events_total", action="echo:say", type="success") == 0


async def test_healthz_and_readyz(make_server: ServerFactory) -> None:
    server = await make_server()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        r = await http.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "role": "standalone"}
        r = await http.get("/readyz")
        assert r.status_code == 200
        assert r.json()["ready"] is True
        assert server.hub is not None
        server.hub.drain()  # what a SIGTERM does first: load balancers must look away
        r = await http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["draining"] is True
        assert (await http.get("/healthz")).status_code == 200  # still alive


async def test_readyz_is_503_until_the_hub_runs() -> None:
    hub = Hub(open_store("memory://"))
    app = create_app(hub)
    transport = httpx.ASGITransport(app=app)
    # A loopback name: an open-access hub refuses other Hosts (DNS rebinding).
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        assert (await http.get("/readyz")).status_code == 503
        await hub.start()
        try:
            assert (await http.get("/readyz")).status_code == 200
        finally:
            await hub.stop()
        assert (await http.get("/readyz")).status_code == 503


_HUB_FREED = """
import asyncio, gc, weakref
from taskhub.hub.hub import Hub
from taskhub.hub.http.metrics import for_hub
from taskhub.store import open_store

async def main():
    hub = Hub(open_store("memory://"))
    assert for_hub(hub) is for_hub(hub)  # once per hub: a second listener would count twice
    await hub.start()
    await hub.stop()
    return weakref.ref(hub)

ref = asyncio.run(main())
gc.collect()
print("alive" if ref() is not None else "freed")
"""


def test_a_stopped_hub_is_not_kept_alive_by_its_metrics() -> None:
    """The metrics live on the hub: nothing module-wide holds a hub once it is dropped (a map
    keyed by hub whose value referred back to it kept every hub of a process alive). In a
    process of its own: the test runner's event loop keeps references of its own."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _HUB_FREED], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "freed"
