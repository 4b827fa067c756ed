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

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub
    from taskhub.hub.link.leader import LinkServer

log = logging.getLogger("taskhub.link")

_encode = msgspec.json.Encoder().encode


def apply(server: LinkServer, entry: Any, touched: set[LocalPartition]) -> None:
    """Apply one entry of ``wire.AcrossToLeader`` from the link ``server`` serves."""
    if isinstance(entry, wire.Fire):
        _fire(server.hub, entry, touched)
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


async def _answer(server: LinkServer, entry: wire.Publish | wire.CancelTask) -> None:
    try:
        part = _led(server.hub, entry.part)
        if isinstance(entry, wire.Publish):
            value = await _publish(part, entry)
        else:
            value = await _cancel(part, entry)
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


def _fire(hub: Hub, entry: wire.Fire, touched: set[LocalPartition]) -> None:
    """A schedule's slot, kept by another hub: published here, or said in the log."""
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
