"""Several real hub processes over one real Redis or Redis Cluster (docs/deployment.md)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed as WsClosed

from taskhub import Client, TaskTimeout, TooManyConnections
from tests import redisproc
from tests.e2e.hubproc import HubProcess
from tests.redisproc import RedisCluster, RedisProcess

LEASE = {"TASKHUB_LEASE": "1"}


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    yield proc
    proc.cleanup()


def _store(redis: RedisProcess) -> str:
    return f"{redis.url}?prefix=c{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def hubs() -> Iterator[list[HubProcess]]:
    """Three hubs on a Redis of their own, shared by the tests that leave them (and their
    leader) alone, each with actions of its own: starting them was most of each test."""
    redis = RedisProcess().start()
    store = _store(redis)
    procs: list[HubProcess] = []
    try:
        procs += [HubProcess(store, env=LEASE).start() for _ in range(3)]
        yield procs
    finally:
        for p in procs:
            p.stop()
        redis.cleanup()


async def _role(hub: HubProcess) -> str:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{hub.port}/healthz")
        return str(r.json()["role"])  # "leader" or "follower" (a hub alone says "standalone")


async def test_tasks_events_and_credit_cross_hubs(hubs: list[HubProcess]) -> None:
    a, b, c = hubs
    roles = [await _role(h) for h in hubs]
    assert roles.count("leader") == 1 and roles.count("follower") == 2
    served: dict[str, int] = {"b": 0, "c": 0}

    def worker(label: str) -> Any:
        async def handler(task: Any) -> Any:
            served[label] += 1
            await task.update(f"{label} working")
            await asyncio.sleep(0.01)
            return label

        return handler

    heard: list[Any] = []
    async with (
        Client(b.url, name="w") as wb,
        Client(c.url, name="w") as wc,
        Client(a.url, name="p") as pub,
    ):
        await wb.sub("img:resize", worker("b"), concurrency=2)
        await wc.sub("img:resize", worker("c"), concurrency=2)
        await wc.subscribe("news:*", lambda data, topic: heard.append((topic, data)))
        updates: list[Any] = []
        handles = [
            pub.pub("img:resize", i).on("update", lambda h: updates.append(h.last_update))
            for i in range(20)
        ]
        results = [await h.get_result(timeout=20) for h in handles]
        assert sorted(set(results)) == ["b", "c"]  # round robin across hubs
        assert served["b"] + served["c"] == 20 and served["b"] and served["c"]
        assert len(updates) == 20
        await asyncio.sleep(0.2)
        assert await pub.emit("news:today", {"n": 1}) == 1
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == [("news:today", {"n": 1})]


async def test_a_relayed_request_is_never_relayed_again(hubs: list[HubProcess]) -> None:
    """A hub relays only what a client sent it: a request another hub relayed (it took this
    one for the leader, say during a change of leader) is answered here, 503 no_leader / 1013,
    so two hubs that each take the other for the leader cannot relay in a loop."""
    roles = await _roles(hubs)
    leader = hubs[roles.index("leader")]
    follower = hubs[roles.index("follower")]
    relayed = {"X-TaskHub-Relayed": "another-hub"}
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{follower.port}/v1/tasks", headers=relayed)
        assert r.status_code == 503 and r.json()["code"] == "no_leader", r.text
        r = await http.get(f"http://127.0.0.1:{leader.port}/v1/tasks", headers=relayed)
        assert r.status_code == 200
    async with connect(f"{follower.url}/v1/ws", additional_headers=relayed) as ws:
        with pytest.raises(WsClosed):
            await ws.recv()
        assert ws.close_code == 1013


async def test_a_timeout_fires_once(hubs: list[HubProcess]) -> None:
    a, b, _ = hubs
    async with Client(a.url, name="p") as pub, Client(b.url, name="watcher") as watcher:
        async with watcher.watch("lonely:*") as events:
            await asyncio.sleep(0.2)
            handle = pub.pub("lonely:task", start_timeout=0.5)
            with pytest.raises(TaskTimeout):
                await handle.get_result(timeout=10)
            seen: list[str] = []

            async def collect() -> None:
                async for ev in events:
                    seen.append(ev["type"])

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(collect(), 1.0)
        assert seen.count("fail") == 1
        task = await pub.get(handle.id or "")
        assert task["state"] == "fail" and task["error"]["reason"] == "start_timeout"


async def test_max_connections_counts_every_hub(redis: RedisProcess, tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[[credentials]]\nname = "solo"\nkey = "k"\nsub_permissions = ["*"]\n'
        'pub_permissions = ["*"]\nmax_connections = 1\n'
    )
    store = _store(redis)
    a = HubProcess(store, None, "--config", str(config), env=LEASE).start()
    b = HubProcess(store, None, "--config", str(config), env=LEASE).start()
    try:
        async with Client(a.url, name="solo", key="k"):
            with pytest.raises(TooManyConnections):
                await Client(b.url, name="solo", key="k", connect_timeout=3).connect()
    finally:
        a.stop()
        b.stop()


async def test_a_follower_that_stops_ends_what_it_relays_cleanly(redis: RedisProcess) -> None:
    """SIGTERM to a follower: an event stream it relays ends as a response (the client
    reconnects elsewhere with Last-Event-ID), a long poll it relays gets 503 shutting_down,
    and its log has no error (uvicorn's "returned without completing response" was one)."""
    store = _store(redis)
    a = HubProcess(store, env=LEASE).start()
    b = HubProcess(store, env=LEASE).start()
    try:
        assert [await _role(a), await _role(b)] == ["leader", "follower"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{b.port}", timeout=30) as http:
            task_id = (await http.post("/v1/tasks", json={"action": "idle:job"})).json()["id"]
            got: list[str] = []
            streaming = asyncio.Event()

            async def stream() -> None:
                async with http.stream("GET", f"/v1/tasks/{task_id}/events") as resp:
                    assert resp.status_code == 200
                    async for line in resp.aiter_lines():
                        if line.startswith("event: "):
                            got.append(line.removeprefix("event: "))
                            streaming.set()

            streamer = asyncio.create_task(stream())
            poll = asyncio.create_task(http.get(f"/v1/tasks/{task_id}/result", params={"wait": 60}))
            await asyncio.wait_for(streaming.wait(), 10)
            await asyncio.sleep(0.3)  # the poll has reached the leader by now
            await asyncio.to_thread(b.stop)
            await asyncio.wait_for(streamer, 10)  # ended, not broken off: no exception
            assert got == ["init"]
            r = await asyncio.wait_for(poll, 10)
            assert r.status_code == 503 and r.json()["code"] == "shutting_down", r.text
        log = b.log.read_text()
        assert "level=error" not in log, log[-2000:]
    finally:
        a.stop()
        b.stop()


async def test_killing_the_leader_loses_no_accepted_task(redis: RedisProcess) -> None:
    store = _store(redis)
    first = HubProcess(store, env=LEASE).start()
    second = HubProcess(store, env=LEASE).start()
    assert await _role(first) == "leader"
    urls = [first.url, second.url]
    n = 60
    done: dict[str, Any] = {}
    try:
        async with Client(urls, name="w", max_backoff=0.3) as worker:

            async def work(task: Any) -> Any:
                await asyncio.sleep(0.05)
                done[task.id] = await task.get_payload()
                return "ok"

            await worker.sub("job:run", work, concurrency=4)
            async with Client(second.url, name="p") as pub:
                ids = [await pub.pub("job:run", i).accepted() for i in range(n)]
            await asyncio.sleep(0.2)  # some are running, some wait
            first.kill()
            for _ in range(300):
                if len(done) >= n:
                    break
                await asyncio.sleep(0.05)
        assert set(ids) <= set(done)  # every accepted task was worked (at least once)
        assert await _role(second) == "leader"
        async with Client(second.url, name="p") as pub:
            states = {(await pub.get(i))["state"] for i in ids}
        assert states == {"success"}
    finally:
        first.stop()
        second.stop()


async def test_hubs_carry_on_after_redis_restarts(redis: RedisProcess) -> None:
    store = _store(redis)
    a = HubProcess(store, env=LEASE).start()
    b = HubProcess(store, env=LEASE).start()
    try:
        async with Client(b.url, name="p", max_backoff=0.3) as pub:
            before = await pub.pub("late:job", "kept").accepted()
        redis.stop()
        await asyncio.sleep(2.5)  # longer than the lease: the leader steps down
        redis.start()
        async with Client([a.url, b.url], name="w", max_backoff=0.3) as worker:
            got: list[Any] = []

            async def work(task: Any) -> Any:
                got.append(await task.get_payload())
                return "done"

            await worker.sub("late:job", work)
            async with Client([b.url, a.url], name="p", max_backoff=0.3) as pub:
                after = pub.pub("late:job", "new")
                assert await after.get_result(timeout=20) == "done"
                for _ in range(100):
                    if (await pub.get(before))["state"] == "success":
                        break
                    await asyncio.sleep(0.05)
                assert (await pub.get(before))["state"] == "success"
        assert sorted(got) == ["kept", "new"]
    finally:
        a.stop()
        b.stop()


# --- on a Redis Cluster (redis+cluster://) ---------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """The session's shared 3-primary Redis Cluster (as in tests/store/conftest.py)."""
    cluster = redisproc.shared_cluster()
    yield cluster
    cluster.cleanup()


async def _roles(hubs: list[HubProcess], timeout: float = 10.0) -> list[str]:
    """The hubs' roles once exactly one leads (a hub answers /healthz before it has tried
    the lock); the last roles seen when that does not happen in time."""
    roles: list[str] = []
    for _ in range(int(timeout / 0.05)):
        roles = [await _role(h) for h in hubs]
        if roles.count("leader") == 1 and roles.count("follower") == len(hubs) - 1:
            break
        await asyncio.sleep(0.05)
    return roles


async def test_hubs_on_a_redis_cluster_elect_one_leader(redis_cluster: RedisCluster) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    store = f"{redis_cluster.url}?prefix={prefix}"
    a = HubProcess(store, env=LEASE).start()
    b = HubProcess(store, env=LEASE).start()
    try:
        roles = await _roles([a, b])
        assert sorted(roles) == ["follower", "leader"], roles
        leader, follower = (a, b) if roles[0] == "leader" else (b, a)
        # The leader lock lives in the prefix's slot, on the primary that owns it, and names
        # the leader's URL: that is how the follower finds it.
        node = redis_cluster.client(redis_cluster.owner_of("{" + prefix + "}"))
        try:
            owner = node.get("{" + prefix + "}:lock:leader")
        finally:
            node.close()
        assert isinstance(owner, bytes)
        assert owner.decode().endswith(f" http://127.0.0.1:{leader.port}")

        async def work(task: Any) -> Any:
            return {"doubled": 2 * await task.get_payload()}

        for pub_hub, worker_hub in ((follower, leader), (leader, follower)):
            async with (
                Client(worker_hub.url, name="w") as worker,
                Client(pub_hub.url, name="p") as pub,
            ):
                await worker.sub("cluster:job", work)
                handle = pub.pub("cluster:job", 21)
                assert await handle.get_result(timeout=20) == {"doubled": 42}
                task = await pub.get(handle.id or "")
                assert task["state"] == "success"
    finally:
        a.stop()
        b.stop()


async def test_a_new_leader_on_a_redis_cluster_restores_unfinished_tasks(
    redis_cluster: RedisCluster,
) -> None:
    store = f"{redis_cluster.url}?prefix=c{uuid.uuid4().hex[:8]}"
    first = HubProcess(store, env=LEASE).start()
    second = HubProcess(store, env=LEASE).start()
    try:
        assert await _roles([first, second]) == ["leader", "follower"]
        async with Client(second.url, name="p") as pub:
            ids = [await pub.pub("later:job", i).accepted() for i in range(5)]
        first.kill()  # no worker yet: every task waits, in Redis only
        for _ in range(100):
            if await _role(second) == "leader":
                break
            await asyncio.sleep(0.05)
        assert await _role(second) == "leader"
        got: list[Any] = []

        async def work(task: Any) -> Any:
            got.append(await task.get_payload())
            return "done"

        async with Client(second.url, name="w", max_backoff=0.3) as worker:
            await worker.sub("later:job", work)
            async with Client(second.url, name="p") as pub:
                for _ in range(200):
                    states = {(await pub.get(i))["state"] for i in ids}
                    if states == {"success"}:
                        break
                    await asyncio.sleep(0.05)
                assert states == {"success"}
        assert sorted(got) == list(range(5))
    finally:
        first.kill()
        second.stop()
