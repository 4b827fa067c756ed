"""Network partitions in a cluster of hubs (issue #15 item 5): Redis and each hub in a network
namespace of its own (tests/e2e/netlab.py), cut from one another with iptables DROP rules,
while real clients in the test's own namespace work through them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from taskhub import Client
from tests.e2e.hubproc import HubProcess
from tests.e2e.netlab import NetLab, NetRedis
from tests.e2e.test_cluster_failover import eventually, role

# Short lease and keepalive, so a cut is noticed in a second or two.
ENV = {"TASKHUB_LEASE": "1", "TASKHUB_PING_INTERVAL": "1", "TASKHUB_PING_TIMEOUT": "1"}
AUTH = {"name": "t", "key": "k"}  # hubs off loopback need credentials


@pytest.fixture
def lab() -> Iterator[NetLab]:
    lab = NetLab()
    yield lab
    lab.close()


@pytest.fixture
def lab_redis(lab: NetLab) -> Iterator[NetRedis]:
    proc = NetRedis(lab)
    yield proc
    proc.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(
        '[[credentials]]\nname = "t"\nkey = "k"\nsub_permissions = ["*"]\npub_permissions = ["*"]\n'
    )
    return path


def _hub(lab: NetLab, name: str, redis: NetRedis, prefix: str, config: Path) -> HubProcess:
    store = f"{redis.url}?prefix={prefix}"
    addr = lab.node(name)
    return HubProcess(
        store, 8080, "--config", str(config), env=ENV, host=addr, prefix=lab.prefix(name)
    )


async def _serves(hub: HubProcess) -> bool:
    """As tests.e2e.test_cluster_failover.serves, with the lab's credentials."""
    try:
        async with httpx.AsyncClient(timeout=5, auth=_Bearer()) as http:
            r = await http.post(f"{hub.http_url}/v1/tasks", json={"action": "probe:http"})
            if r.status_code not in (200, 201, 202):
                return False
        async with Client(hub.url, connect_timeout=3, max_backoff=0.3, **AUTH) as c:
            await asyncio.wait_for(c.pub("probe:ws").accepted(), 5)
        return True
    except Exception:
        return False


class _Bearer(httpx.Auth):
    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = "Bearer t:k"
        yield request


async def test_a_leader_cut_from_redis_steps_down_at_once_and_rejoins_after_the_heal(
    lab: NetLab, lab_redis: NetRedis, config: Path
) -> None:
    """Item 5 (a, b). The leader loses Redis under load. It must stop saying "leader" once
    its lease may have run out (so never while another hub leads), and after the heal it
    must follow the new leader and serve again: its step-down must not hang on the write
    that was waiting on Redis when the cut came."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    a = _hub(lab, "a", lab_redis, prefix, config).start()
    b = None
    try:
        await eventually(lambda: _role_is(a, "leader"), 15, "the first hub leads")
        b = _hub(lab, "b", lab_redis, prefix, config).start()
        done: list[str] = []

        async def work(task: Any) -> Any:
            await asyncio.sleep(0.01)
            done.append(task.id)
            return "ok"

        async with (
            Client([a.url, b.url], max_backoff=0.3, **AUTH) as worker,
            Client([b.url, a.url], max_backoff=0.3, **AUTH) as pub,
        ):
            await worker.sub("load:job", work, concurrency=8)
            stop = asyncio.Event()

            async def publish() -> None:  # keeps the leader's commit pipeline writing
                while not stop.is_set():
                    with _quietly():
                        accepted = (pub.pub("load:job").accepted() for _ in range(20))
                        await asyncio.wait_for(asyncio.gather(*accepted), 5)
                    await asyncio.sleep(0.01)

            publishing = asyncio.create_task(publish())
            await eventually(lambda: _true(len(done) > 50), 20, "work flows")
            lab.cut("a", "redis")
            cut_at = time.monotonic()
            try:
                await eventually(lambda: _role_is(b, "leader"), 20, "the other hub leads")
                # a's lease ran out in Redis before b could take the lock, and a counts its
                # lease from before its last renewal was sent: it no longer says leader.
                assert await role(a) != "leader"
                await asyncio.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))  # a 10 s cut
            finally:
                lab.heal("a")
            took = await eventually(lambda: _serves(a), 40, "the cut-off hub serves again")
            print(f"rejoined {took:.1f}s after the heal")
            assert await role(a) == "follower" and await role(b) == "leader"
            stop.set()
            await publishing
    finally:
        a.stop()
        if b is not None:
            b.stop()


async def test_a_follower_cut_from_the_leader_never_delivers_a_stale_offer(
    lab: NetLab, lab_redis: NetRedis, config: Path
) -> None:
    """Item 5 (c). The leader is cut from a follower (both still reach Redis) while a worker
    works through that follower. The follower must notice the dead link within its keepalive
    and close the worker's connection (1013): the worker reconnects, to the leader directly
    (its second URL), and works on during the cut. The leader gives the link up too and
    offers what it held to other workers, whose results are acknowledged; what it had sent
    into the dead link must never be delivered after the heal: no task may run again after
    its result was acknowledged."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    a = _hub(lab, "a", lab_redis, prefix, config).start()
    b = None
    # ("run", id, worker) and ("acked", id, ""), in the order they happened
    seen: list[tuple[str, str, str]] = []
    try:
        await eventually(lambda: _role_is(a, "leader"), 15, "the first hub leads")
        b = _hub(lab, "b", lab_redis, prefix, config).start()
        await eventually(lambda: _role_is(b, "follower"), 15, "the second hub follows")

        def worker(label: str) -> Any:
            async def work(task: Any) -> Any:
                seen.append(("run", task.id, label))
                await asyncio.sleep(0.2)
                return label

            return work

        async with (
            Client([b.url, a.url], max_backoff=0.3, **AUTH) as behind_b,
            Client(a.url, max_backoff=0.3, **AUTH) as at_a,
            Client(a.url, max_backoff=0.3, **AUTH) as pub,
        ):
            await behind_b.sub("cut:job", worker("b"), concurrency=4)
            await at_a.sub("cut:job", worker("a"), concurrency=4)
            handles: list[Any] = []

            def burst(n: int) -> list[Any]:
                out = [pub.pub("cut:job", i) for i in range(n)]
                for h in out:
                    h.add_done_callback(lambda h: seen.append(("acked", h.id, "")))
                handles.extend(out)
                return out

            first = burst(8)
            assert {await h.get_result(timeout=20) for h in first} == {"a", "b"}
            # A long poll relayed by b, for a task nobody works: it waits at the leader.
            http = httpx.AsyncClient(base_url=b.http_url, auth=_Bearer(), timeout=90)
            lonely = (await http.post("/v1/tasks", json={"action": "idle:job"})).json()["id"]
            poll = asyncio.create_task(http.get(f"/v1/tasks/{lonely}/result", params={"wait": 60}))
            await asyncio.sleep(0.5)  # it has reached the leader
            lab.cut("a", "b")
            cut_at = time.monotonic()
            mark = len(seen)
            try:
                # The relayed request's TCP keepalive gives the dead link up: answered
                # 503 no_leader during the cut, not held for its whole wait (or longer).
                r = await asyncio.wait_for(poll, 30)
                assert r.status_code == 503 and r.json()["code"] == "no_leader", r.text
                await http.aclose()

                # Offers to the worker behind b go into the dead link, until the keepalives
                # give it up; the worker then works on through its other URL.
                async def worker_b_works() -> bool:
                    burst(2)
                    await asyncio.sleep(0.2)
                    return any(e[0] == "run" and e[2] == "b" for e in seen[mark:])

                await eventually(worker_b_works, 30, "the worker behind b works during the cut")
                for h in handles:
                    await h.get_result(timeout=30)
                await asyncio.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))  # a 10 s cut
            finally:
                lab.heal("a")
            after = burst(16)
            for h in after:
                await h.get_result(timeout=40)
            # Whatever a kernel still retransmits after the heal arrives within seconds.
            await asyncio.sleep(6)
        ended: set[str] = set()
        late = []
        for kind, task_id, _ in seen:
            if kind == "acked":
                ended.add(task_id)
            elif task_id in ended:
                late.append(task_id)
        print(f"{len(late)} task(s) ran again after their result was acknowledged")
        assert late == [], f"{len(late)} task(s) ran after their result was acknowledged"
    finally:
        a.stop()
        if b is not None:
            b.stop()


async def test_a_hub_gives_up_a_dead_connection_so_nothing_queued_for_it_arrives_later(
    lab: NetLab, config: Path
) -> None:
    """Item 5 (c), the hub's side. A worker's connection goes dead (cut at the network) while
    the hub keeps offering it tasks; the hub's keepalive gives it up and the tasks go to
    another worker, whose results are acknowledged. What the hub had queued for the dead
    connection must never reach it after the heal. This worker has no keepalive of its own
    (a follower's relay had none), so only the hub can see to that: it resets the
    connection instead of closing it, and the kernel drops what it still held."""
    a = HubProcess("memory://", 8080, "--config", str(config), env=ENV, host=lab.node("a"))
    a.prefix = lab.prefix("a")
    a.start()
    seen: list[tuple[str, str]] = []  # ("offer", id) to the cut worker, ("acked", id)
    try:
        raw = await connect(
            f"{a.url}/v1/ws", additional_headers={"Authorization": "Bearer t:k"}, ping_interval=None
        )
        await raw.recv()  # welcome
        await raw.send('{"op":"sub","action":"held:job","concurrency":100,"ref":1}')
        await raw.recv()  # ok

        async def read() -> None:
            try:
                async for frame in raw:
                    msgs = msgspec.json.decode(frame)
                    for msg in msgs if isinstance(msgs, list) else [msgs]:
                        if msg.get("op") == "offer":
                            seen.append(("offer", msg["task"]))
            except ConnectionClosed:
                pass

        reading = asyncio.create_task(read())

        async def work(task: Any) -> Any:
            return "done"

        async with (
            Client(a.url, max_backoff=0.3, **AUTH) as worker,
            Client(a.url, max_backoff=0.3, **AUTH) as pub,
        ):
            await worker.sub("held:job", work, concurrency=4)
            lab.cut_port("a", raw.local_address[1])
            try:
                handles = [pub.pub("held:job", i) for i in range(20)]
                for h in handles:
                    h.add_done_callback(lambda h: seen.append(("acked", h.id)))
                assert {await h.get_result(timeout=30) for h in handles} == {"done"}
                await asyncio.sleep(8)  # the cut lasts on; TCP would keep retrying
            finally:
                lab.heal("a")
            await asyncio.sleep(6)  # what the hub's kernel still held would arrive now
        reading.cancel()
        await raw.close()
        acked = {task_id for kind, task_id in seen if kind == "acked"}
        late = [task_id for kind, task_id in seen if kind == "offer" and task_id in acked]
        print(f"{len(late)} offer(s) of acknowledged tasks reached the cut worker")
        assert late == []
    finally:
        a.stop()


async def _role_is(hub: HubProcess, expected: str) -> bool:
    return await role(hub) == expected


async def _true(value: bool) -> bool:
    return value


class _quietly:
    """Publishing through a cut: refused or lost answers are expected and not counted."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)  # type: ignore[arg-type]
