"""The HTTP API's calls that run a partition's lifecycle (publish, cancel, start a chain, wait
for a task, read its events, broadcast), wherever the partition is led: in process on a
partition this hub leads, as a request over the hub-to-hub link on one another hub leads
(docs/deployment.md, "The hub-to-hub link"), the retryable ``partition_unavailable`` while no
hub leads it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskhub.hub.partition import Linked, Partition, unavailable
from taskhub.hub.router import action_partition
from taskhub.lifecycle import Credentials, Task
from taskhub.records import EventRecord, TaskRecord

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

# One task to publish: its action, payload and options (an object the lifecycle reads by
# attribute, or None).
Item = tuple[str, Any, Any]
# A published task: its record, or the id of an earlier stored task its key found (read it on
# the caller's behalf), and whether it is new.
Outcome = tuple[TaskRecord | str, bool]


def _reachable(slot: Partition) -> Partition:
    if slot.local is None and slot.linked is None:
        raise unavailable(slot.index, slot.leader)
    return slot


async def publish(
    hub: Hub, creds: Credentials, items: Sequence[Item], *, extra: dict[str, Any] | None = None
) -> list[Outcome]:
    """Publish ``items`` in order and answer once all are stored. The items of partitions
    led here are published with no await between them (one commit); those of another hub's
    partitions cross the link, one request per partition. Nothing is published when a
    partition an item needs has no leader. ``extra``: added to every task's options."""
    slots = hub.router.partitions
    places = [_reachable(slots[action_partition(action, len(slots))]) for action, _, _ in items]
    tasks: list[Any] = [None] * len(items)
    created = [False] * len(items)
    elsewhere: dict[int, list[int]] = {}
    for i, ((action, payload, options), slot) in enumerate(zip(items, places, strict=True)):
        if slot.local is None:
            elsewhere.setdefault(slot.index, []).append(i)
            continue
        tasks[i], created[i] = slot.local.lc.publish(creds, action, payload, options, extra=extra)
    hub.kick()
    calls = []
    for at in elsewhere.values():
        sent = [(items[i][0], items[i][1], _fields(items[i][2])) for i in at]
        calls.append(_linked(places[at[0]]).publish(creds, sent, extra=extra))
    answers = await asyncio.gather(*calls)  # the leaders store theirs meanwhile
    await hub.flush()
    out: list[Outcome] = []
    for i, task in enumerate(tasks):
        out.append((task.rec if isinstance(task, Task) else task, created[i]))
    for at, answer in zip(elsewhere.values(), answers, strict=True):
        for i, (rec, new, stored) in zip(at, answer, strict=True):
            out[i] = (rec.id if stored else rec, new)
    return out


async def cancel(hub: Hub, creds: Credentials, task_id: str) -> TaskRecord:
    """``creds`` cancels ``task_id`` (the lifecycle's checks), answered once stored:
    ``TaskNotFound`` when it is not live (ended, or never was)."""
    slot = _reachable(hub.router.slot_of_task(task_id))
    if slot.local is None:
        return await _linked(slot).cancel(creds, task_id)
    task = slot.local.lc.cancel(creds, task_id)
    hub.kick()
    await hub.flush()
    return task.rec


def _fields(options: Any) -> dict[str, Any] | None:
    """Options as they cross the link: the fields given (the leader reads them back by
    attribute, as the lifecycle reads stored options)."""
    return None if options is None else dict(vars(options))


async def wait(hub: Hub, task_id: str, seconds: float) -> None:
    """Wait until ``task_id`` (of a partition another hub leads) has ended there and that is
    stored, at most ``seconds``: that hub waits, and answers when it is over."""
    await _linked(_reachable(hub.router.slot_of_task(task_id))).wait(task_id, seconds)


async def task_events(
    hub: Hub, task_id: str, after: int, wait: float
) -> tuple[list[EventRecord], bool]:
    """Of a task another hub leads: its stored events after seq ``after`` (that hub waits up
    to ``wait`` seconds for one while the task is live), and whether it is still live."""
    return await _linked(_reachable(hub.router.slot_of_task(task_id))).task_events(
        task_id, after, wait
    )


async def emit(hub: Hub, creds: Credentials, topic: str, data: Any) -> int:
    """Broadcast ``data`` on ``topic`` from the hub that holds the topics (partition 0's
    leader: over the link where it is another hub); how many connections it was queued for."""
    zero = hub.router.partitions[0]
    if zero.linked is not None:
        return await zero.linked.emit(creds, topic, data)
    n = hub.emit(creds, topic, data)
    hub.kick()
    return n


async def add_chains(
    hub: Hub,
    creds: Credentials,
    chains: Sequence[list[dict[str, Any]]],
    *,
    merge_input: bool,
    trace: dict[str, str] | None,
) -> list[str]:
    """Start ``chains`` (``Hub.add_chain``'s steps), each held in its first step's partition:
    here at once, on another hub over the link; their ids, answered once all are stored."""
    slots = hub.router.partitions
    places = [
        _reachable(slots[action_partition(steps[0]["action"] if steps else "", len(slots))])
        for steps in chains
    ]
    ids: list[str] = [""] * len(chains)
    for i, (steps, slot) in enumerate(zip(chains, places, strict=True)):
        if slot.local is not None:  # no await in between: one commit
            ids[i] = hub.add_chain(creds, steps, merge_input=merge_input, trace=trace)
    elsewhere = [i for i, slot in enumerate(places) if slot.local is None]
    started = await asyncio.gather(
        *(
            _linked(places[i]).start_chain(creds, chains[i], merge_input=merge_input, trace=trace)
            for i in elsewhere
        )
    )
    await hub.flush()
    for i, chain_id in zip(elsewhere, started, strict=True):
        ids[i] = chain_id
    return ids


def _linked(slot: Partition) -> Linked:
    assert slot.linked is not None  # _reachable let it through: led elsewhere
    return slot.linked
