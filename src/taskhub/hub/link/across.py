"""The leader's side of what the HTTP API, the schedules and the pull consumers of another hub
ask of a partition this hub leads (the entries of ``wire.AcrossToLeader``): they run the
lifecycle here as they would have run it there, and a request is answered with a
:class:`~taskhub.hub.link.wire.Reply` once what it changed is stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from taskhub.errors import StoreUnavailable, TaskHubError, TaskNotFound
from taskhub.hub.link import wire
from taskhub.hub.partition import LocalPartition
from taskhub.lifecycle import Credentials, Task
from taskhub.lifecycle.options import StoredOptions
from taskhub.lifecycle.schedules import Slot
from taskhub.records import TERMINAL_STATES, EventRecord

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub
    from taskhub.hub.link.leader import LinkServer

log = logging.getLogger("taskhub.link")

_encode = msgspec.json.Encoder().encode


def apply(server: LinkServer, entry: Any, touched: set[LocalPartition]) -> None:
    """Apply one entry of ``wire.AcrossToLeader`` from the link ``server`` serves."""
    if isinstance(entry, wire.Fire) and entry.id is None:  # from a hub of an earlier version
        _fire_unanswered(server.hub, entry, touched)
    elif isinstance(entry, wire.TakeBack):
        _take_back(server, entry)
    else:
        task = asyncio.create_task(_answer(server, entry))
        server.requests.add(task)
        task.add_done_callback(server.requests.discard)


def _led(hub: Hub, index: int) -> LocalPartition:
    slots = hub.router.partitions
    part = slots[index] if 0 <= index < len(slots) else None
    if not isinstance(part, LocalPartition):
        raise StoreUnavailable(f"this hub does not lead partition {index} (any more); retry")
    return part


Request = (
    wire.Publish
    | wire.CancelTask
    | wire.StartChain
    | wire.WaitTask
    | wire.TaskEvents
    | wire.Emit
    | wire.Fire
)


async def _answer(server: LinkServer, entry: Request) -> None:
    assert entry.id is not None  # a Fire without one is not a request (apply)
    try:
        part = _led(server.hub, 0 if isinstance(entry, wire.Emit) else entry.part)
        if isinstance(entry, wire.Emit):  # partition 0's hub holds the topics
            creds = wire.caller_creds(entry.caller)
            value = _encode(server.hub.emit(creds, entry.topic, entry.data))
        elif isinstance(entry, wire.Publish):
            value = await _publish(part, entry)
        elif isinstance(entry, wire.CancelTask):
            value = await _cancel(part, entry)
        elif isinstance(entry, wire.StartChain):
            value = await _start_chain(server.hub, entry)
        elif isinstance(entry, wire.TaskEvents):
            value = await _events(server.hub, part, entry)
        elif isinstance(entry, wire.Fire):
            value = await _fire(server.hub, part, entry)
        else:
            value = await _wait(server.hub, part, entry)
        reply = wire.Reply(entry.id, msgspec.Raw(value))
    except TaskHubError as exc:
        reply = wire.Reply(entry.id, error=exc.to_wire())
    except Exception:
        log.exception("answering a linked %s failed", type(entry).__name__.lower())
        error = {"code": wire.INTERNAL, "message": "internal error on the partition's hub (logged)"}
        reply = wire.Reply(entry.id, error=error)
    server.out.add(wire.encode_entry(reply))


async def _publish(part: LocalPartition, entry: wire.Publish) -> bytes:
    """The items published here, in one commit; per item ``[record, created, stored]``."""
    creds = wire.caller_creds(entry.caller)
    lc = part.lc
    published = [
        lc.publish(
            creds,
            item.action,
            item.payload,
            None if item.options is None else StoredOptions(item.options),
            extra=item.extra,
        )
        for item in entry.items
    ]
    part.kick()
    await part.flush()
    out: list[tuple[Any, bool, bool]] = []
    for task, created in published:
        if isinstance(task, Task):
            out.append((task.rec, created, False))
            continue
        rec = await part.find(task)  # an earlier task the key found, no longer live
        if rec is None:
            raise TaskNotFound(f"no task {task}", task=task)
        out.append((rec, created, True))
    return _encode(out)


async def _cancel(part: LocalPartition, entry: wire.CancelTask) -> bytes:
    task = part.lc.cancel(wire.caller_creds(entry.caller), entry.task)
    part.kick()
    await part.flush()
    return _encode(task.rec)


async def _start_chain(hub: Hub, entry: wire.StartChain) -> bytes:
    """The chain held here (its first step's partition), answered once stored."""
    creds = wire.caller_creds(entry.caller)
    chain_id = hub.add_chain(creds, entry.steps, merge_input=entry.merge_input, trace=entry.trace)
    await hub.flush()
    return _encode(chain_id)


async def _wait(hub: Hub, part: LocalPartition, entry: wire.WaitTask) -> bytes:
    """The task's record once it ended and that is stored, or once the wait is over."""
    lc, task_id = part.lc, entry.task
    ended = asyncio.Event()

    def on_event(task: Task, ev: EventRecord) -> None:
        if ev.task_id == task_id and ev.type in TERMINAL_STATES:
            ended.set()

    lc.listen(on_event, True)
    try:
        with hub.long_wait(ended.set):  # a shutdown answers with the task so far
            if lc.get(task_id) is None:
                ended.set()  # ended (or never was) before we listened
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), max(0.0, entry.wait))
    finally:
        lc.listen(on_event, False)
    await part.flush()  # its end is stored before it is told
    return _encode(await part.find(task_id))


async def _events(hub: Hub, part: LocalPartition, entry: wire.TaskEvents) -> bytes:
    """The task's stored events after ``entry.after``; while there are none and it is live,
    the first to be stored within the wait."""
    lc, task_id = part.lc, entry.task
    arrived = asyncio.Event()

    def on_event(task: Task, ev: EventRecord) -> None:
        if ev.task_id == task_id:
            arrived.set()

    lc.listen(on_event, True)  # first: an event stored while the store is read is not missed
    try:
        live = lc.get(task_id) is not None  # before reading: a later end sets `arrived`
        events = await _stored_after(part, task_id, entry.after)
        if not events and live and entry.wait > 0:
            with hub.long_wait(arrived.set), contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), entry.wait)
            events = await _stored_after(part, task_id, entry.after)
    finally:
        lc.listen(on_event, False)
    return _encode((events, bool(events) or lc.get(task_id) is not None))


async def _stored_after(part: LocalPartition, task_id: str, after: int) -> list[EventRecord]:
    part.lc.write_deferred(task_id)  # its offers too (Lifecycle.defer_offers)
    await part.flush()  # nothing is streamed before it is stored
    return [ev for ev in await part.store.get_events(task_id) if ev.seq > after]


async def _fire(hub: Hub, part: LocalPartition, entry: wire.Fire) -> bytes:
    """A schedule's slot, kept by another hub: its task published here once, whatever the
    copies (``entry.task``, an id made from the schedule and the slot), answered once stored."""
    slot = Slot(entry.owner, entry.action, entry.payload, entry.options, entry.extra)
    await hub.firing.publish_once(part, slot, entry.task or part.lc.new_id())
    return _encode(None)


def _fire_unanswered(hub: Hub, entry: wire.Fire, touched: set[LocalPartition]) -> None:
    """A schedule's slot from a hub of an earlier version: published here, or said in the log."""
    name = entry.extra.get("schedule")
    creds = Credentials(entry.owner, sub_permissions=(), pub_permissions=(entry.action,))
    try:
        part = _led(hub, entry.part)
        part.lc.publish(
            creds, entry.action, entry.payload, StoredOptions(entry.options), extra=entry.extra
        )
        touched.add(part)
    except TaskHubError as exc:
        log.error("schedule %r could not publish %s: %s", name, entry.action, exc.message)


def _take_back(server: LinkServer, entry: wire.TakeBack) -> None:
    """A pull consumer's delivery back to its group, after the consumer's earlier messages
    (a pickup may wait behind a payload read)."""
    remote = server.remotes.get(entry.conn)
    if remote is None:
        return  # detached: what it held went back already
    hub = server.hub

    def now() -> None:
        with contextlib.suppress(TaskHubError):  # ended or offered again meanwhile
            part = _led(hub, entry.part)
            own = part.peer(remote.peer)
            count = entry.count_try
            part.lc.take_back(own, entry.task, entry.attempt, entry.reason, count_try=count)
            part.kick()

    if remote.resuming is None:
        now()
        return
    waiting = remote.resuming

    async def later() -> None:
        with contextlib.suppress(Exception):  # its own failure is logged where it ran
            await asyncio.shield(waiting)
        now()

    task = asyncio.create_task(later())
    server.requests.add(task)
    task.add_done_callback(server.requests.discard)
