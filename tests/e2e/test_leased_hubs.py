"""Hub processes (`taskhub serve`) that lead partitions by their leases (docs/deployment.md,
"Partition leases"), each test over one real SQLite file and over a real Redis: they split the
partitions and say so on /healthz, a third rebalances, every hub serves every partition over
the hub-to-hub link (a publisher on one hub and a worker on the other, chains crossing hubs, a
wildcard watch), a hub killed -9 loses no accepted task and its partitions move while the other
hub's clients reconnect (1013) and finish (killed among batches spanning both hubs, every pub
is accepted and completes or is refused with an error), SIGTERM hands off at once, a hub
paused past its lease is fenced and leads again only what it is given (what it was sent
meanwhile is stored once), and a timeout fires once. On a Redis Cluster the partitions spread
over its primaries."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskhub import Client
from taskhub.errors import ConnectionClosed, PartitionUnavailable, TaskHubError
from taskhub.partitions import partition_of, partition_of_id
from taskhub.store import open_partition_leases
from tests import redisproc
from tests.conftest import action_in as conftest_action_in
from tests.conftest import until
from tests.e2e.hubproc import HubProcess, consume, wait_until

P = 4
LEASE = "1"  # seconds: TASKHUB_LEASE of every hub here, unless a test says otherwise


action_in = partial(conftest_action_in, partitions=P)


class Hubs:
    """Hub processes on one store, stopped at the end."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.made: list[HubProcess] = []

    def start(self, lease: str = LEASE, level: str = "info") -> HubProcess:
        env = {"TASKHUB_LEASE": lease, "TASKHUB_LOG": level}
        hub = HubProcess(self.store, None, "--partitions", str(P), env=env).start()
        self.made.append(hub)
        return hub

    def stop(self) -> None:
        for hub in self.made:
            hub.stop()


def led(hub: HubProcess) -> list[int]:
    partitions: list[int] = hub.health()["partitions"]
    return partitions


def settled(*hubs: HubProcess, timeout: float = 20.0) -> list[list[int]]:
    """Wait until ``hubs`` lead every partition between them, each its fair share (the
    assignment's bound: P // k or P // k + 1), none twice; their shares."""
    shares: list[list[int]] = []

    def fair() -> bool:
        shares[:] = [led(hub) for hub in hubs]
        every = sorted(p for share in shares for p in share)
        k = len(hubs)
        return every == list(range(P)) and all(P // k <= len(s) <= -(-P // k) for s in shares)

    wait_until(fair, timeout)
    return shares


def knows(hub: HubProcess, partitions: list[int]) -> None:
    """Wait until ``hub`` names a leader for each of ``partitions`` (it reaches them over the
    link from then on; a partition just handed off has no leader for a round)."""

    def named() -> bool:
        leaders = hub.health()["leaders"]
        return set(leaders) == {str(p) for p in partitions} and all(leaders.values())

    wait_until(named, 10)


def _store(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'hub.db'}"
    return redisproc.shared_url("e2eleased")


@pytest.fixture(params=["sqlite", "redis"])
def hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hubs]:
    made = Hubs(_store(request.param, tmp_path))
    yield made
    made.stop()


class Pair:
    """Two hubs that split the partitions and know each other's (``first``: those hub one
    leads, ``second``: hub two's)."""

    def __init__(self, hubs: Hubs) -> None:
        self.one, self.two = hubs.start(), hubs.start()
        self.first, self.second = settled(self.one, self.two)
        knows(self.two, self.first)
        knows(self.one, self.second)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """One pair for the tests that leave both hubs running and their leases alone (each with
    actions of its own): starting and settling two hub processes was most of each test."""
    made = Hubs(_store(request.param, tmp_path_factory.mktemp("pair")))
    try:
        yield Pair(made)
    finally:
        made.stop()


def test_two_hubs_split_the_partitions_and_a_third_rebalances(hubs: Hubs) -> None:
    one, two = hubs.start(), hubs.start()
    first, second = settled(one, two)
    assert len(first) == len(second) == 2
    # each names the other as the leader of the partitions it does not lead
    wait_until(lambda: set(two.health()["leaders"]) == {str(p) for p in first}, 10)
    body = two.health()
    assert body["role"] == "member"
    assert body["leaders"] == {str(p): one.http_url for p in first}
    three = hubs.start()
    shares = settled(one, two, three)
    assert sorted(len(s) for s in shares) == [1, 1, 2]


async def test_a_hub_killed_9_loses_no_accepted_task_and_its_partitions_move(
    hubs: Hubs,
) -> None:
    """A publisher and a worker on hub two use hub one's partitions over the link; hub one is
    killed -9 with tasks accepted and deliveries held: the link breaks, two's clients are
    closed with 1013 and reconnect, two takes the partitions over once their leases ran out,
    and every accepted task completes."""
    one, two = hubs.start(), hubs.start()
    first, second = settled(one, two)
    knows(two, first)
    knows(one, second)
    n = 40
    gate = asyncio.Event()
    ran: dict[str, int] = {}

    async def work(task: Any) -> int:
        ran[task.id] = task.payload
        await gate.wait()  # held until hub one is dead: its deliveries are in flight
        return int(task.payload) + 1

    async with (
        Client(two.url, name="worker", max_backoff=0.2) as worker,
        Client(two.url, name="publisher", max_backoff=0.2) as pub,
    ):
        for p in range(P):
            await worker.sub(action_in(p), work, concurrency=n)
        # The default max_attempts (5): a take-over closes the worker (1013) once per
        # partition whose slot changes, and those closes count no try (the hub decided them).
        handles = [pub.pub(action_in(i % P), i) for i in range(n)]
        ids = [await h.accepted() for h in handles]
        assert {partition_of_id(i) for i in ids} == set(range(P))
        # deliveries of both hubs' partitions are held by the worker
        await until(lambda: {partition_of_id(i) for i in ran} == set(range(P)), timeout=10)
        one.kill()
        gate.set()
        # once the killed hub's leases ran out (waited in a thread: the clients run meanwhile)
        await asyncio.to_thread(two.wait_leading, range(P))
        results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 30)
    assert results == [i + 1 for i in range(n)]
    assert "with 1013" in two.log.read_text()  # the link broke: its connections reconnected


async def test_a_hub_killed_9_mid_batch_leaves_no_pub_unanswered(hubs: Hubs) -> None:
    """A publisher on hub two sends batches whose items fall on both hubs (its client's
    ``pubs`` with a ``ref``, eight a loop turn, the connection not held while one waits) and
    hub one is killed -9 among them: every pub is either accepted, and then completes once
    two took the partitions over, or refused with an error the caller sees; none waits for
    ever."""
    one, two = hubs.start(), hubs.start()
    first, second = settled(one, two)
    knows(two, first)
    knows(one, second)
    async with (
        Client(two.url, name="worker", max_backoff=0.2) as worker,
        Client(two.url, name="publisher", max_backoff=0.2) as pub,
    ):
        for p in range(P):
            await worker.sub(action_in(p), lambda t: t.payload, concurrency=64)
        handles = []
        for turn in range(60):
            handles += [pub.pub(action_in(i % P), i) for i in range(8 * turn, 8 * turn + 8)]
            if turn == 19:  # the batches so far answered (in order: the last one's ok last)
                await handles[-1].accepted()
            elif turn == 20:  # killed while this turn's batch (and later ones) wait
                one.kill()
            await asyncio.sleep(0)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(h.accepted() for h in handles), return_exceptions=True), 30
        )
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(o, TaskHubError) for o in refused), refused
        accepted = [
            (i, h)
            for i, (h, o) in enumerate(zip(handles, outcomes, strict=True))
            if isinstance(o, str)
        ]
        assert [i for i, _ in accepted[:160]] == list(range(160))
        await asyncio.to_thread(two.wait_leading, range(P))
        results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for _, h in accepted)), 30)
    assert results == [i for i, _ in accepted]


async def test_a_publisher_on_one_hub_and_a_worker_on_the_other_serve_every_partition(
    pair: Pair,
) -> None:
    """Two hubs, P = 4: a worker on hub two and a publisher on hub one complete tasks of
    every partition, whichever hub leads it, with progress and results; a wildcard watch on
    hub two sees the tasks of every partition."""
    one, two = pair.one, pair.two
    actions = [action_in(p, "serve") for p in range(P)]

    async def work(task: Any) -> Any:
        await task.update({"half": task.payload})
        return {"double": task.payload * 2}

    async with (
        Client(two.url, name="worker") as worker,
        Client(one.url, name="publisher") as pub,
        Client(two.url, name="watcher") as watcher,
    ):
        for action in actions:
            await worker.sub(action, work, concurrency=8)
        seen: dict[str, set[str]] = {}
        async with watcher.watch(">") as events:
            progress: dict[int, list[Any]] = {}
            handles = []
            for i in range(4 * P):
                handle = pub.pub(actions[i % P], i)
                handle.on("update", lambda h, i=i: progress.setdefault(i, []).append(h.last_update))
                handles.append(handle)
            results = await asyncio.wait_for(asyncio.gather(*(h.get_result() for h in handles)), 20)
            async with asyncio.timeout(10):
                async for ev in events:
                    seen.setdefault(ev["task"], set()).add(ev["type"])
                    if all("success" in seen.get(h.id, ()) for h in handles):
                        break
    assert results == [{"double": 2 * i} for i in range(4 * P)]
    assert progress == {i: [{"half": i}] for i in range(4 * P)}
    assert {partition_of_id(h.id) for h in handles} == set(range(P))


async def test_a_chain_whose_steps_fall_on_both_hubs_completes(pair: Pair) -> None:
    one, two, first = pair.one, pair.two, pair.first
    a, b = action_in(first[0], "chain"), action_in(pair.second[0], "chain")  # led by one, two

    def step(task: Any) -> Any:
        base = task.payload if task.previous_result is None else task.previous_result
        return [*base, task.action]

    async with (
        Client(one.url, name="worker-one") as w1,
        Client(two.url, name="worker-two") as w2,
        Client(two.url, name="publisher") as pub,
    ):
        await w1.sub(a, step)  # each step run by a worker of the other hub than its leader's
        await w2.sub(b, step)
        chain = pub.chain([(a, []), (b, None), (a, None), (b, None)])
        result = await asyncio.wait_for(chain.get_result(), 20)
        assert result == [a, b, a, b]
        assert partition_of_id(chain.id) == first[0]  # held by hub one, published from two
        assert (await pub.get(chain.id))["state"] == "success"


async def test_sigterm_hands_the_partitions_off_at_once(hubs: Hubs) -> None:
    one, two = hubs.start(lease="6"), hubs.start(lease="6")
    first, _ = settled(one, two)
    one.stop()  # SIGTERM: a graceful hand-off, then the process exits
    # Its leases are released, not left to expire (6 s): free, or taken by the other hub.
    leases = open_partition_leases(hubs.store, P)
    await leases.open()
    try:
        holders = [await leases.holder(p) for p in first]
    finally:
        await leases.close()
    assert all(h is None or h.endswith(two.http_url) for h in holders), holders
    two.wait_leading(range(P))


async def test_a_paused_hub_is_fenced_and_leads_again_only_what_it_is_given(
    hubs: Hubs,
) -> None:
    one, two = hubs.start(), hubs.start()
    first, _ = settled(one, two)
    one.pause()  # SIGSTOP past its lease: the other takes everything over
    two.wait_leading(range(P))
    async with Client(two.url, name="publisher") as pub:
        moved = await pub.pub(action_in(first[0]), "after").accepted()
    one.resume()
    shares = settled(one, two)  # it rejoins with its share again, none led twice
    assert sorted(shares[0] + shares[1]) == list(range(P))
    log = one.log.read_text()
    assert "lost partition" in log  # it stepped down from what it had, on resuming
    leader = one if partition_of_id(moved) in shares[0] else two
    async with Client(leader.url, name="reader") as reader:
        assert (await reader.get(moved))["state"] == "init"  # kept across the move, waiting


async def test_what_a_paused_hub_is_sent_is_never_written_by_it(hubs: Hubs) -> None:
    """A publish (with a key) sent to a hub while it is paused past its lease, for a partition
    it led: on resuming the hub steps down, and what it is sent is answered with a retryable
    error or accepted by the partition's leader, never written by the fenced hub. Sent again
    until accepted, as the errors say, it is stored once and runs once."""
    one, two = hubs.start(), hubs.start()
    first, second = settled(one, two)
    knows(one, second)
    action = action_in(first[0])
    runs: list[Any] = []
    async with (
        Client(one.url, name="publisher", max_backoff=0.2) as pub,
        Client(two.url, name="worker", max_backoff=0.2) as worker,
    ):
        one.pause()  # SIGSTOP past its lease: two takes every partition over
        await asyncio.to_thread(two.wait_leading, range(P))
        handle = pub.pub(action, "paused", key="sent-while-paused")  # in the paused socket
        await asyncio.sleep(0.2)
        one.resume()
        for _ in range(50):
            try:
                await asyncio.wait_for(handle.accepted(), 30)
                break
            except (PartitionUnavailable, ConnectionClosed):  # both say: try again
                await asyncio.sleep(0.2)
                handle = pub.pub(action, "paused", key="sent-while-paused")
        shares = await asyncio.to_thread(settled, one, two)  # it rejoined with a share
        await asyncio.to_thread(knows, two, shares[0])
        await worker.sub(action, lambda t: runs.append(t.id) or "done")
        assert await asyncio.wait_for(handle.get_result(), 30) == "done"
        await asyncio.sleep(0.5)  # time for a second run, were there a second task
        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.get(f"{two.http_url}/v1/tasks", params={"action": action})
    stored = [t["id"] for t in page.json()["tasks"]]
    assert runs == stored == [handle.id]
    assert partition_of_id(handle.id) == first[0]
    assert "lost partition" in one.log.read_text()


async def test_hubs_on_a_redis_cluster_spread_the_partitions_over_its_primaries() -> None:
    """Two hubs on a real 3-primary Redis Cluster, P = 4: each partition's keys (its lease
    with them) live on the primary of its hash tag, several primaries in all; tasks of every
    partition, accepted through either hub, survive a hub killed -9 and run once."""
    cluster = redisproc.shared_cluster()
    prefix = f"e2ecl{uuid.uuid4().hex[:8]}"
    hubs = Hubs(f"{cluster.url}?prefix={prefix}")
    try:
        one, two = hubs.start(), hubs.start()
        _, second = settled(one, two)
        knows(one, second)  # one publishes into two's partitions over the link
        owners = {cluster.owner_of(f"{prefix}{{p{p}}}:") for p in range(P)}
        assert len(owners) > 1, owners
        actions = [action_in(p) for p in range(P)]
        n = 4 * P
        async with Client(one.url, name="publisher", max_backoff=0.2) as pub:
            ids = [await pub.pub(actions[i % P], i).accepted() for i in range(n)]
        assert {partition_of_id(i) for i in ids} == set(range(P))
        one.kill()
        two.wait_leading(range(P))  # once the killed hub's leases ran out
        seen = await consume(two.url, actions, n)
        assert sorted(seen) == sorted(ids)
        assert sorted(seen.values()) == list(range(n))
    finally:
        hubs.stop()


async def test_a_timeout_fires_once(pair: Pair) -> None:
    one = pair.one
    async with Client(one.url, name="publisher") as pub:
        handle = pub.pub(action_in(pair.first[0], "late"), 1, start_timeout=0.3)
        task_id = await handle.accepted()
        for _ in range(100):
            task = await pub.get(task_id)
            if task["state"] == "fail":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time for a second timer, were there one, to fire
        task = await pub.get(task_id)
    assert task["state"] == "fail"
    assert task["error"]["reason"] == "start_timeout"
    # The stored events, streamed (SSE): one end, from the one hub whose timer fired.
    ends = [e for e in await _event_types(one, task_id) if e in ("fail", "success", "end")]
    assert ends == ["fail"]


async def _event_types(hub: HubProcess, task_id: str) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{hub.http_url}/v1/tasks/{task_id}/events")
    return [
        line.removeprefix("event:").strip()
        for line in answer.text.splitlines()
        if line.startswith("event:")
    ]


async def test_the_http_api_on_one_hub_reaches_the_partitions_the_other_leads(
    pair: Pair,
) -> None:
    """An HTTP user behind a load balancer sees one system: hub two publishes (one task, and a
    batch spanning both hubs), waits for results, cancels and runs a pull consumer of the
    partitions hub one leads, over the link; a WebSocket worker on hub one does the work."""
    one, two, first, second = pair.one, pair.two, pair.first, pair.second
    there, here = action_in(first[0], "http"), action_in(second[0], "http")
    pulled = action_in(first[1], "http")
    async with (
        Client(one.url, name="worker") as worker,
        httpx.AsyncClient(base_url=two.http_url, timeout=20) as http,
    ):
        await worker.sub(there, lambda t: t.payload * 2)
        await worker.sub(here, lambda t: t.payload * 2)
        r = await http.post("/v1/tasks", json={"action": there, "payload": 21})
        assert r.status_code == 201, r.text
        assert partition_of_id(r.json()["id"]) == first[0]
        result = await http.get(f"/v1/tasks/{r.json()['id']}/result", params={"wait": 15})
        assert result.status_code == 200 and result.json()["result"] == 42
        items = [{"action": [there, here][i % 2], "payload": i} for i in range(6)]
        batch = await http.post("/v1/tasks:batch", json={"tasks": items})
        assert batch.status_code == 201, batch.text
        ids = [t["id"] for t in batch.json()["tasks"]]
        assert [partition_of_id(i) for i in ids] == [first[0], second[0]] * 3
        for i, task_id in enumerate(ids):
            got = await http.get(f"/v1/tasks/{task_id}/result", params={"wait": 15})
            assert got.json()["result"] == 2 * i
        # cancel, through two, a task waiting on one
        waiting = await http.post(
            "/v1/tasks", json={"action": there, "payload": 0, "options": {"delay": 600}}
        )
        cancelled = await http.delete(f"/v1/tasks/{waiting.json()['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "fail"
        # a pull consumer on two of a partition one leads
        c = await http.post("/v1/consumers", json={"actions": [pulled]})
        assert c.status_code == 201, c.text
        path, token = f"/v1/consumers/{c.json()['consumer_id']}", c.json()["consumer_token"]
        headers = {"X-Consumer-Token": token}
        published = await http.post("/v1/tasks", json={"action": pulled, "payload": "p"})
        lease = await http.post(f"{path}/fetch", params={"wait": 15}, headers=headers)
        assert lease.status_code == 200, lease.text
        assert lease.json()["task_id"] == published.json()["id"]
        assert lease.json()["payload"] == "p"
        done = await http.post(
            f"{path}/commit",
            json={"task_id": lease.json()["task_id"], "result": 1},
            headers=headers,
        )
        assert done.json()["state"] == "success"
        assert (await http.delete(path, headers=headers)).status_code == 200
    assert "partition_unavailable" not in two.log.read_text()


def test_the_benchmarks_hop_probe_times_an_own_and_an_across_action(pair: Pair) -> None:
    """benchmarks/hop_probe.py (issue 19's "no relay hop" row): through hub one, an action
    whose partition hub one leads and one that hub two leads, each round-tripped."""
    probe = Path(__file__).resolve().parents[2] / "benchmarks" / "hop_probe.py"
    led = ",".join(map(str, pair.first))
    cmd = [sys.executable, str(probe), "--url", pair.one.url, "--partitions", str(P)]
    cmd += ["--led", led, "--seq", "20", "--warmup", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert partition_of(result["own_action"], "", P) in pair.first
    assert partition_of(result["across_action"], "", P) in pair.second
    assert 0 < result["own_p50_ms"] <= result["own_p99_ms"]
    assert 0 < result["across_p50_ms"] <= result["across_p99_ms"]
