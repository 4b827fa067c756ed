"""A schedule's slot whose action another hub leads (docs/scheduling.md, "Schedules across
partitions and hubs"), with real hubs on loopback: hub B keeps the schedules (partition 0) and
reaches partition 1 over the link (``Router.place``, as the partition leases place it). The slot
is sent again until its task is stored, and its task's id, made from the schedule and the slot,
makes every copy the same task: one task, not none (the slot dropped), nor two."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from taskhub import Server
from taskhub.hub.firing import slot_task_id
from taskhub.hub.link import wire
from taskhub.lifecycle import Task
from taskhub.lifecycle.schedules import Slot
from taskhub.partitions import partition_of_id
from taskhub.records import EventRecord, TaskRecord
from tests.conftest import ServerFactory, until
from tests.integration.test_hub_link import action_in, clients, lead_elsewhere, links

P = 2
THERE = action_in(1)  # partition 1: led by another hub than the schedules' one
NAME = "minutely"
RESENT = "is not stored yet"  # the schedules' hub's line when it sends a slot again


class Keeper:
    """Hub B, whose clock is moved so that a minute's slot comes a few seconds after the
    schedule is made (a fake clock, not a minute's wait)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def clock(self) -> float:
        return time.time() + self.shift

    async def schedule_soon(self, server: Server, lead: float = 6.0) -> float:
        """Make the every-minute schedule on ``server``; its first slot, ``lead`` seconds on
        (room for a loaded machine to take the PUT before the slot)."""
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            slot = float(math.ceil(time.time() / 60 + 1) * 60)
            self.shift = slot - lead - time.time()
            r = await http.put(
                f"/v1/schedules/{NAME}",
                json={"cron": "* * * * *", "action": THERE, "payload": {"n": 1}},
            )
        assert r.status_code == 200, r.text
        assert r.json()["next_at"] == slot  # not missed while the PUT was taken
        return slot


def recorded(server: Server, slot: float) -> bool:
    """Whether ``server`` (the schedules' hub) recorded ``slot`` as fired: its task is stored."""
    assert server.hub is not None
    [view] = server.hub.scheduler.views()
    return bool(view["last_slot"] == slot)


async def tasks_of(server: Server) -> list[TaskRecord]:
    """The tasks ``server``'s own partition 1 holds (led by it now or before)."""
    assert server.hub is not None
    part = server.hub.parts[1]
    stored = await part.store.list_tasks(action=THERE, state=None, after=None, limit=100)
    by_id = {rec.id: rec for rec in stored}
    by_id.update(part.unwritten())
    return [rec for rec in by_id.values() if rec.action == THERE]


def inits(server: Server) -> list[str]:
    """The ids of the tasks ``server``'s partition 1 publishes from now on, one per publish
    (the lifecycle's ``init`` events): a copy published again under the same id shows twice."""
    assert server.hub is not None
    seen: list[str] = []

    def on_event(task: Task, ev: EventRecord) -> None:
        if ev.type == "init":
            seen.append(ev.task_id)

    server.hub.parts[1].lc.listen(on_event, True)
    return seen


def expected_id(slot: float) -> str:
    extra = {"schedule": NAME, "slot": slot}
    return slot_task_id(Slot("anonymous", THERE, {"n": 1}, {}, extra), 1)


def resent(caplog: pytest.LogCaptureFixture) -> Callable[[], bool]:
    return lambda: any(RESENT in r.getMessage() for r in caplog.records)


async def test_a_slot_sent_to_a_hub_that_no_longer_leads_its_partition_is_published_by_its_leader(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """B still names A as partition 1's leader, which handed it to C. A answers that it does
    not lead it (before: A logged the slot and dropped it); B sends the slot again until it is
    stored, and once B knows C leads the partition, C publishes it, once."""
    keeper = Keeper()
    a = await make_server(partitions=P, name="hub-a")
    b = await make_server(partitions=P, name="hub-b", clock=keeper.clock)
    c = await make_server(partitions=P, name="hub-c")
    lead_elsewhere(a, 1, c)  # A handed partition 1 to C ...
    lead_elsewhere(b, 1, a)  # ... and B, which keeps the schedules, has not learned it yet
    published = inits(c)
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def run(task: Any) -> str:
        got.put_nowait(task)
        return "ran"

    async with clients((c, "worker")) as (worker,):
        await worker.sub(THERE, run)
        with caplog.at_level(logging.WARNING, logger="taskhub.schedules"):
            slot = await keeper.schedule_soon(b)
            await until(resent(caplog), timeout=30)  # A refused it: it does not lead it
            assert not recorded(b, slot)  # not fired until its task is stored
            lead_elsewhere(b, 1, c)  # B learns the partition's leader
            task = await asyncio.wait_for(got.get(), 30)
            await until(lambda: recorded(b, slot), timeout=10)
    assert task.id == expected_id(slot) and partition_of_id(task.id) == 1
    assert task.payload == {"n": 1}
    assert [rec.id for rec in await tasks_of(c)] == [task.id]  # C, the leader: once
    assert published == [task.id]
    assert await tasks_of(a) == []  # A published nothing
    assert got.empty()


async def test_a_slot_whose_link_breaks_before_its_leader_applied_it_is_published_once(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The slot reaches A while A is still restoring partition 1 (A holds it: Leading.restoring)
    and the link breaks before A applied it: what A held goes with the link (before: the slot
    was lost). B sends it again over a new link, and A publishes it once it serves the
    partition."""
    keeper = Keeper()
    a = await make_server(partitions=P, name="hub-a")
    b = await make_server(partitions=P, name="hub-b", clock=keeper.clock)
    lead_elsewhere(b, 1, a)
    assert a.hub is not None
    restored = asyncio.Event()
    a.hub.leading.restoring[1] = restored  # as Leading.lead marks it until it serves it
    url = wire.link_url(a.http_url)
    published = inits(a)

    def fired_and_sent() -> bool:
        link = links(b).links.get(url)  # opened by the slot's fire, its first use
        return link is not None and link.ws is not None and not link.out.entries

    with caplog.at_level(logging.INFO):
        slot = await keeper.schedule_soon(b)
        await until(lambda: keeper.clock() >= slot + 1.0, timeout=30)
        await until(fired_and_sent, timeout=10)
        link = links(b).links[url]
        assert link.ws is not None
        await link.ws.close()  # the link breaks

        def link_ended_at_a() -> bool:  # and with it what A held of it
            said = [r.getMessage() for r in caplog.records]
            return any("link from hub-b" in m and m.endswith("closed") for m in said)

        await until(link_ended_at_a, timeout=10)
        del a.hub.leading.restoring[1]
        restored.set()  # A serves partition 1 from now on
        await until(lambda: recorded(b, slot), timeout=30)
    assert [rec.id for rec in await tasks_of(a)] == [expected_id(slot)]  # once, not never
    assert published == [expected_id(slot)]
    assert any(RESENT in r.getMessage() for r in caplog.records)


async def test_a_slot_whose_answer_is_lost_with_its_link_is_published_once(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The link breaks after A published the slot's task, before its answer reached B: B
    cannot know, and sends the slot again over a new link; A finds the task by its id and
    publishes nothing more (one task, not two)."""
    keeper = Keeper()
    a = await make_server(partitions=P, name="hub-a")
    b = await make_server(partitions=P, name="hub-b", clock=keeper.clock)
    lead_elsewhere(b, 1, a)
    assert a.hub is not None
    cut: list[str] = []

    def on_event(task: Task, ev: EventRecord) -> None:
        if ev.type == "init" and task.rec.options.get("schedule") == NAME and not cut:
            cut.append(ev.task_id)  # published on A: the link breaks now, before the answer
            # (A answers once the task is stored: a commit round later at least; the link's
            # task on B ends at its next step, failing what it waits for)
            links(b).links[wire.link_url(a.http_url)].task.cancel()

    published = inits(a)
    a.hub.parts[1].lc.listen(on_event, True)
    with caplog.at_level(logging.WARNING, logger="taskhub.schedules"):
        slot = await keeper.schedule_soon(b)
        await until(lambda: recorded(b, slot), timeout=30)
    assert cut == [expected_id(slot)]
    assert [rec.id for rec in await tasks_of(a)] == cut
    assert published == cut  # once, not twice (the copy sent again found it by its id)
    assert any(RESENT in r.getMessage() for r in caplog.records)  # it was sent again
