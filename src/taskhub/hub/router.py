"""The hub's router: which partition each message of a connection goes to (docs/deployment.md,
"Partitions").

- Anything about one task (a worker's steps, ``get``, ``follow``, ``payload``, ``cancel``) goes
  to the partition its id names (:func:`taskhub.partitions.partition_of_id`).
- ``pub``, ``sub`` and ``unsub`` go to the partition of their action: a task is offered to
  every group subscribed to its action, so all of an action's group queues live in the
  partition of ``(action, "")`` (docs/decisions.md, "Partitions by action").
- A chain or group goes to the partition of its first step (it is held there; its steps are
  published in their actions' partitions: :class:`~taskhub.lifecycle.chains.Chains`).
- ``watch`` and ``unwatch`` go to every partition; topics and schedules to partition 0's
  leader (over the link where another hub leads it); the rest (``hello``, the operator's
  queue messages, bad messages) to the hub's front: partition 0 when the hub leads every
  partition (its peers are the hub's own), else a lifecycle of the hub's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskhub import protocol as p
from taskhub.errors import StoreUnavailable, TaskHubError
from taskhub.hub.dispatch import Msg, batch_items
from taskhub.hub.partition import Linked, LocalPartition, Partition, unavailable
from taskhub.hub.unled import UnledPartition
from taskhub.lifecycle import Lifecycle, Message, Peer
from taskhub.lifecycle.placement import Elsewhere
from taskhub.partitions import partition_of, partition_of_id

BY_TASK = (
    p.Ack,
    p.Return,
    p.Pickup,
    p.Update,
    p.Drop,
    p.Fail,
    p.Release,
    p.Extend,
    p.Cancel,
    p.Get,
    p.Follow,
    p.GetPayload,
)
BY_ACTION = (p.Pub, p.Sub, p.Unsub)
# Hub-wide, kept by partition 0's leader: topics (broadcast to the connections of every hub)
# and schedules. Where another hub leads partition 0 they go there over the link.
AT_ZERO = (p.Subscribe, p.Unsubscribe, p.Emit, p.Schedule, p.Unschedule, p.Schedules)


def action_partition(action: str, partitions: int) -> int:
    """The partition of every group queue of ``action``."""
    return partition_of(action, "", partitions)


def task_partition(task_id: str, partitions: int) -> int:
    """The partition a task id names; partition 0 for what is not a task id (it answers
    "no such task" as any partition would)."""
    try:
        return partition_of_id(task_id) % partitions
    except ValueError:
        return 0


Hold = Callable[[Peer], Callable[[list[Message]], None]]
# Batches with ``ref`` spanning partitions whose answers may wait at once per connection
# before its next message waits too (Router._batch_answered): what is sent to it meanwhile
# is held, so this bounds that memory to as many batches' worth of output.
MAX_ANSWERS = 16
log = logging.getLogger("taskhub.hub")


class Router:
    """Routes each message of a connection to its partition (:meth:`handle`), and answers
    the chains' and schedules' questions of where a task lives (a
    :class:`~taskhub.lifecycle.placement.Placement`).

    Its slots change at runtime (:meth:`place`): a partition the hub comes to lead gets its
    :class:`LocalPartition`, one another hub leads a :class:`~taskhub.hub.partition.Linked`
    one reaching it over the hub-to-hub link, one no hub holds (or while the hub has no link)
    a :class:`Partition` that names its leader. ``front`` answers what is the hub's own
    (``hello``, topics, watches' answers, the operator's messages, bad messages). ``hold``
    holds what is sent to a connection until a batch whose items went to several hubs is
    answered (:meth:`Connections.hold`)."""

    def __init__(self, partitions: Sequence[Partition], front: LocalPartition, hold: Hold) -> None:
        self.slots: list[Partition] = list(partitions)
        self.count = len(self.slots)
        self.front = front
        self.hold = hold
        self.lifecycles: tuple[Lifecycle, ...] = ()
        # Every connection's watch patterns: a partition placed later (gained) applies them.
        self.watching: dict[Peer, set[str]] = {}
        # Answers of batches with ``ref`` that wait, by connection (_batch_answered).
        self.answering: dict[Peer, set[asyncio.Future[list[Any]]]] = {}
        self._refresh()
        by: dict[type, Callable[[Any], Partition]] = {}
        by.update(dict.fromkeys(BY_TASK, self._by_task))
        by.update(dict.fromkeys(BY_ACTION, self._by_action))
        by.update(dict.fromkeys(AT_ZERO, self._at_zero))
        by[p.Chain] = self._by_chain
        self.by = by
        self.batches: dict[type, Callable[[Any], int]] = dict.fromkeys(
            (p.Acks, p.Pickups, p.Returns), self._task_index
        )
        self.batches[p.Pubs] = self._action_index

    @property
    def partitions(self) -> Sequence[Partition]:
        """The slots, in partition order."""
        return self.slots

    def place(self, index: int, part: Partition) -> None:
        """Partition ``index`` is served by ``part`` from now on; the watches made before
        see it too. A :class:`~taskhub.hub.partition.Linked` partition it replaces closes the
        connections that reached the partition through it (1013: they reconnect and find it
        where it is led now)."""
        if not 0 <= index < self.count:
            raise ValueError(f"partition must be from 0 to {self.count - 1}, got {index}")
        old = self.slots[index]
        self.slots[index] = part
        self._refresh()
        for peer, patterns in self.watching.items():
            for pattern in patterns:
                with contextlib.suppress(TaskHubError):  # refused when it was made
                    part.watch(peer, pattern)
        if old is not part and old.linked is not None:
            old.linked.retire()
        elif old is not part and isinstance(old, UnledPartition):
            old.hand_over(part)  # what waited for the partition's leader goes on

    def forget(self, peer: Peer) -> None:
        """The connection is gone (its watches end with it in each partition)."""
        self.watching.pop(peer, None)
        for answering in self.answering.pop(peer, ()):
            answering.cancel()  # nobody to answer

    def _refresh(self) -> None:
        # Every lifecycle this process runs, in partition order (the metrics, the dashboard
        # and the chains read them at each call).
        self.lifecycles = tuple(s.local.lc for s in self.slots if s.local is not None)

    def local(self, index: int) -> LocalPartition:
        """Partition ``index`` when this process leads it; else
        :class:`~taskhub.errors.PartitionUnavailable` naming its leader."""
        slot = self.slots[index]
        if slot.local is None:
            raise unavailable(index, slot.leader)
        return slot.local

    def remotes(self) -> list[Partition]:
        """The slots another hub leads (or no hub does)."""
        return [part for part in self.slots if part.local is None]

    def _task_index(self, item: Any) -> int:
        return task_partition(item.task, self.count) if hasattr(item, "task") else 0

    def _action_index(self, item: Any) -> int:
        return action_partition(item.action, self.count) if hasattr(item, "action") else 0

    def _by_task(self, msg: Any) -> Partition:
        return self.slots[task_partition(msg.task, self.count)]

    def _by_action(self, msg: Any) -> Partition:
        return self.slots[action_partition(msg.action, self.count)]

    def _at_zero(self, msg: Any) -> Partition:
        zero = self.slots[0]
        return zero if zero.linked is not None else self.front

    def _by_chain(self, msg: p.Chain) -> Partition:
        first = msg.steps[0].action if msg.steps else ""
        return self.slots[action_partition(first, self.count)]

    # --- Placement ---------------------------------------------------------------------------
    def of_task(self, task_id: str) -> Lifecycle:
        return self.local(task_partition(task_id, self.count)).lc

    def for_action(self, action: str) -> Lifecycle:
        return self.local(action_partition(action, self.count)).lc

    def slot_of_task(self, task_id: str) -> Partition:
        """The slot of the partition ``task_id`` names (local or not)."""
        return self.slots[task_partition(task_id, self.count)]

    def elsewhere_for(self, action: str) -> Elsewhere | None:
        return _elsewhere(self.slots[action_partition(action, self.count)])

    def elsewhere_of(self, task_id: str) -> Elsewhere | None:
        return _elsewhere(self.slots[task_partition(task_id, self.count)])

    def partition_of_task(self, task_id: str) -> LocalPartition:
        return self.local(task_partition(task_id, self.count))

    def partition_for(self, action: str) -> LocalPartition:
        return self.local(action_partition(action, self.count))

    # --- messages ----------------------------------------------------------------------------
    def handle(self, peer: Peer, msg: Msg) -> Awaitable[None] | None:
        """Apply one message of ``peer`` in the partition it belongs to."""
        route = self.by.get(type(msg))
        if route is not None:
            return route(msg).handle(peer, msg)
        index = self.batches.get(type(msg))
        if index is not None:
            return self._batch(peer, msg, index)
        if isinstance(msg, p.Watch | p.Unwatch):
            self._everywhere(peer, msg)
        return self.front.handle(peer, msg)

    def _batch(self, peer: Peer, msg: Any, index: Callable[[Any], int]) -> Awaitable[None] | None:
        """A batched message: whole to its partition when its items share one (or when it is
        refused whole, over the limit); else item by item, each in its own partition, and the
        batch's ``ok`` once every partition it touched has stored what it changed."""
        where = {index(item) for item in msg.items}
        if len(where) <= 1 or len(msg.items) > p.MAX_BATCH:
            return self.slots[min(where, default=0)].handle(peer, msg)
        slots = self.slots
        away = [_elsewhere(slots[i]) for i in where]
        if any(isinstance(a, UnledPartition) for a in away):
            # It waits for the partition's leader: the connection's next messages wait
            # behind it, in order (hub/unled.py).
            return self._batch_linked(peer, msg, index)
        if msg.ref is not None:
            return self._batch_answered(peer, msg, index)
        if any(a is not None for a in away):
            self._batch_sent(peer, msg, index)
            return None
        pubs = isinstance(msg, p.Pubs)
        for i, item in enumerate(batch_items(msg)):
            part = slots[index(item)]
            if pubs:
                part.pub_item(peer, item, i, None)
            else:
                part.step_item(peer, item, i)
        return None

    def _batch_answered(
        self, peer: Peer, msg: Any, index: Callable[[Any], int]
    ) -> Awaitable[None] | None:
        """A batched message with ``ref`` whose items fall in several partitions (of this hub
        or others): each partition applies its items now, in order with the connection's
        other messages there (a linked one's are sent over the link at once), and the
        batch's ``ok`` (each item's answer in place, for ``pubs``) goes once every partition
        has stored them and answered. The connection's next messages do not wait for it;
        what is sent to the connection meanwhile is held behind the ``ok`` (its tasks' events
        must not come before it: :meth:`Connections.hold`). Past :data:`MAX_ANSWERS` such
        answers waiting, the connection's next message waits for this one."""
        by_part = _by_partition(msg, index)
        pubs = isinstance(msg, p.Pubs)
        answers: list[Any] = [None] * len(msg.items) if pubs else []
        # Held from now, not from when the answer's coroutine first runs: the partitions
        # may commit and send meanwhile, and a quick worker's start and success events of
        # these tasks must not reach the client before the answer that names them.
        release = self.hold(peer)
        waits: list[Awaitable[Any]] = []
        parts: list[tuple[Partition, list[tuple[int, Any]]]] = []
        for at, items in by_part.items():
            part = self.slots[at]
            parts.append((part, items))
            linked = part.linked
            if linked is not None:
                waits.append(linked.ask_items(peer, msg, items))
                continue
            _apply_here(part, peer, msg, items, answers)
            local = part.local
            waits.append(part.flush() if local is None else local.stored())
        answering = asyncio.gather(*waits, return_exceptions=True)
        waiting = self.answering.setdefault(peer, set())  # what forget() cancels
        waiting.add(answering)
        answering.add_done_callback(waiting.discard)
        answering.add_done_callback(
            functools.partial(self._answer_batch, msg, answers, parts, release)
        )
        return _settled(answering) if len(waiting) > MAX_ANSWERS else None

    def _answer_batch(
        self,
        msg: Any,
        answers: list[Any],
        parts: list[tuple[Partition, list[tuple[int, Any]]]],
        release: Callable[[list[Message]], None],
        answering: asyncio.Future[list[Any]],
    ) -> None:
        """Send the ``ok`` of :meth:`_batch_answered` once every partition answered: each item
        its own answer, or, where its partition could not answer (the link to its leader
        broke, its store failed), an error naming the item's place and why: it may have been
        stored there, so it is not ``partition_unavailable`` (which the clients send again)."""
        if answering.cancelled():  # the connection is gone
            release([])
            return
        results = answering.result()
        pubs = isinstance(msg, p.Pubs)
        first: list[Message] = []
        for (part, items), got in zip(parts, results, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, TaskHubError):
                    log.error("partition %d did not answer a batch: %r", part.index, got)
                why = got.message if isinstance(got, TaskHubError) else "internal error"
                for i, item in items:
                    err = StoreUnavailable(
                        f"item {i}: partition {part.index} did not answer ({why}); "
                        "it may have been applied",
                        index=i,
                        partition=part.index,
                    )
                    if pubs:
                        answers[i] = {"error": err.to_wire()}
                    else:
                        first.append(p.error_msg(err, getattr(item, "ref", None), **_task(item)))
            elif pubs and part.linked is not None:
                for (i, _), answer in zip(items, got or (), strict=False):
                    answers[i] = answer
        ok: Message = {"op": "ok", "ref": msg.ref}
        if pubs:
            ok["items"] = answers
        first.append(ok)
        release(first)

    def _batch_sent(self, peer: Peer, msg: Any, index: Callable[[Any], int]) -> None:
        """A batched message without ``ref`` whose items fall in partitions of several hubs:
        each partition applies its items, the linked ones sent over the link in one entry
        per partition, and nothing waits (no ``ok`` to send, so no answer to wait for or to
        hold the connection's frames behind: as :meth:`_batch` without ``ref``). Each item's
        own answers and errors come from its partition, in order with the connection's other
        messages there."""
        by_part = _by_partition(msg, index)
        for at, items in by_part.items():
            part = self.slots[at]
            linked = part.linked
            if linked is not None:
                linked.send_items(peer, msg, items)
                continue
            _apply_here(part, peer, msg, items, None)

    async def _batch_linked(self, peer: Peer, msg: Any, index: Callable[[Any], int]) -> None:
        """A batched message whose items fall in partitions of several hubs: each partition
        applies its items (as :meth:`_batch` does), and the batch's ``ok`` (with the items'
        answers, in order, for ``pubs``) goes once every one of them has stored them."""
        by_part = _by_partition(msg, index)
        pubs = isinstance(msg, p.Pubs)
        answers: list[Any] = [None] * len(msg.items)
        waits: list[Awaitable[Any]] = []
        remote: list[tuple[list[tuple[int, Any]], int]] = []
        for at, items in by_part.items():
            part = self.slots[at]
            linked = _elsewhere(part)
            if linked is not None:
                remote.append((items, len(waits)))
                waits.append(linked.apply_items(peer, msg, items))
                continue
            _apply_here(part, peer, msg, items, answers)
            waits.append(part.flush())
        release = self.hold(peer)  # the answer first, then its tasks' events
        try:
            results = await asyncio.gather(*waits)
        except TaskHubError as exc:  # a link broke: its connections are being closed (1013)
            release([p.error_msg(exc, msg.ref)])
            return
        except BaseException:
            release([])
            raise
        if pubs:
            for items, at in remote:
                for (i, _), answer in zip(items, results[at] or (), strict=False):
                    answers[i] = answer
        ok: Message = {"op": "ok", "ref": msg.ref}
        if pubs:
            ok["items"] = answers
        release([ok] if msg.ref is not None else [])

    def _everywhere(self, peer: Peer, msg: p.Watch | p.Unwatch) -> None:
        """A watch sees every partition: the partitions here; the front answers it (the same
        permission check, so an error is answered once, from there)."""
        if isinstance(msg, p.Watch):
            self.watching.setdefault(peer, set()).add(msg.pattern)
        else:
            self.watching.get(peer, set()).discard(msg.pattern)
        for part in self.slots:
            if part is self.front:
                continue
            try:
                if isinstance(msg, p.Watch):
                    part.watch(peer, msg.pattern)
                else:
                    part.unwatch(peer, msg.pattern)
            except TaskHubError:
                return


def _elsewhere(slot: Partition) -> Linked | UnledPartition | None:
    """The slot when its work goes elsewhere: over the link, or held for the partition's
    next leader (docs/deployment.md, "Partition leases")."""
    if isinstance(slot, UnledPartition):
        return slot if slot.waits else None
    return slot.linked


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait for ``fut`` to end, however it ends (the connection's next message waits so)."""
    await asyncio.wait([fut])


def _by_partition(msg: Any, index: Callable[[Any], int]) -> dict[int, list[tuple[int, Any]]]:
    """A batched message's items (with their places) by the partition each falls in."""
    by_part: dict[int, list[tuple[int, Any]]] = {}
    for i, item in enumerate(batch_items(msg)):
        by_part.setdefault(index(item), []).append((i, item))
    return by_part


def _apply_here(
    part: Partition, peer: Peer, msg: Any, items: list[tuple[int, Any]], answers: list[Any] | None
) -> None:
    """Apply a batch's ``items`` in ``part`` (led here, or by no hub reachable: its items are
    answered with why) and kick it. With ``answers``, each ``pubs`` item's answer goes in its
    place there (the batch has a ``ok`` to send); without, nothing is answered per item."""
    pubs = isinstance(msg, p.Pubs)
    ref = None if answers is None else msg.ref
    for i, item in items:
        if pubs:
            answer = part.pub_item(peer, item, i, ref)
            if answers is not None:
                answers[i] = answer
        else:
            part.step_item(peer, item, i)
    part.kick()


def _task(item: Any) -> dict[str, Any]:
    task = getattr(item, "task", None)
    return {"task": task} if isinstance(task, str) else {}
