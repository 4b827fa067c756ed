"""The hub's router: which partition each message of a connection goes to (docs/deployment.md,
"Partitions").

- Anything about one task (a worker's steps, ``get``, ``follow``, ``payload``, ``cancel``) goes
  to the partition its id names (:func:`taskhub.partitions.partition_of_id`).
- ``pub``, ``sub`` and ``unsub`` go to the partition of their action: a task is offered to
  every group subscribed to its action, so all of an action's group queues live in the
  partition of ``(action, "")`` (docs/decisions.md, "Partitions by action").
- A chain or group goes to the partition of its first step (it is held there; its steps are
  published in their actions' partitions: :class:`~taskhub.lifecycle.chains.Chains`).
- ``watch`` and ``unwatch`` go to every partition; the rest (``hello``, topics, the operator's
  messages, bad messages) to partition 0, whose peers are the hub's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from taskhub import protocol as p
from taskhub.errors import TaskHubError
from taskhub.hub.dispatch import Msg, batch_items
from taskhub.hub.partition import Linked, LocalPartition, Partition
from taskhub.lifecycle import Lifecycle, Message, Peer
from taskhub.lifecycle.placement import Elsewhere
from taskhub.partitions import partition_of, partition_of_id
from taskhub.records import TaskRecord

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


Deliver = Callable[[Iterable[tuple[Peer, list[Message]]]], None]
Hold = Callable[[Peer], Callable[[list[Message]], None]]


class Router:
    """Routes each message of a connection to its partition (:meth:`handle`), and answers
    the chains' and schedules' questions of where a task lives (a
    :class:`~taskhub.lifecycle.placement.Placement`).

    ``partitions`` holds a slot per partition: the hub's :class:`LocalPartition` where it
    leads it, a :class:`~taskhub.hub.partition.Linked` one where another hub does
    (:meth:`place`). ``deliver`` sends a connection messages directly, ``hold`` holds what
    is sent to it until a batch whose items went to several hubs is answered
    (:meth:`Connections.hold`)."""

    def __init__(self, partitions: Sequence[LocalPartition], deliver: Deliver, hold: Hold) -> None:
        self.local = tuple(partitions)  # the hub's own, by index (HTTP reads, placement)
        self.partitions: list[Partition] = list(partitions)
        self.count = len(partitions)
        self.deliver = deliver
        self.hold = hold
        self.lifecycles = tuple(part.lc for part in partitions)
        by: dict[type, Callable[[Any], Partition]] = {}
        by.update(dict.fromkeys(BY_TASK, self._by_task))
        by.update(dict.fromkeys(BY_ACTION, self._by_action))
        by[p.Chain] = self._by_chain
        self.by = by
        self.batches: dict[type, Callable[[Any], int]] = dict.fromkeys(
            (p.Acks, p.Pickups, p.Returns), self._task_index
        )
        self.batches[p.Pubs] = self._action_index

    def place(self, index: int, part: Partition) -> None:
        """Put ``part`` in partition ``index``'s slot: from now on its messages go there. A
        :class:`~taskhub.hub.partition.Linked` partition it replaces closes the connections
        that reached the partition through it (1013: they reconnect and find it where it is
        led now)."""
        old = self.partitions[index]
        self.partitions[index] = part
        if old is not part and isinstance(old, Linked):
            old.retire()

    def slots(self) -> list[LocalPartition | Linked]:
        """Every slot, in partition order, as what it is."""
        return [
            part if isinstance(part, LocalPartition) else _as_linked(part)
            for part in self.partitions
        ]

    def remotes(self) -> list[Partition]:
        """The slots another hub leads."""
        return [part for part in self.partitions if not isinstance(part, LocalPartition)]

    async def find(self, task_id: str) -> TaskRecord | None:
        """The freshest record of ``task_id``, from where its partition is led."""
        return await self.partitions[task_partition(task_id, self.count)].find(task_id)

    def _task_index(self, item: Any) -> int:
        return task_partition(item.task, self.count) if hasattr(item, "task") else 0

    def _action_index(self, item: Any) -> int:
        return action_partition(item.action, self.count) if hasattr(item, "action") else 0

    def _by_task(self, msg: Any) -> Partition:
        return self.partitions[task_partition(msg.task, self.count)]

    def _by_action(self, msg: Any) -> Partition:
        return self.partitions[action_partition(msg.action, self.count)]

    def _by_chain(self, msg: p.Chain) -> Partition:
        first = msg.steps[0].action if msg.steps else ""
        return self.partitions[action_partition(first, self.count)]

    # --- Placement ---------------------------------------------------------------------------
    def of_task(self, task_id: str) -> Lifecycle:
        return self.lifecycles[task_partition(task_id, self.count)]

    def for_action(self, action: str) -> Lifecycle:
        return self.lifecycles[action_partition(action, self.count)]

    def elsewhere_for(self, action: str) -> Elsewhere | None:
        return _linked(self.partitions[action_partition(action, self.count)])

    def elsewhere_of(self, task_id: str) -> Elsewhere | None:
        return _linked(self.partitions[task_partition(task_id, self.count)])

    def partition_of_task(self, task_id: str) -> LocalPartition:
        return self.local[task_partition(task_id, self.count)]

    def partition_for(self, action: str) -> LocalPartition:
        return self.local[action_partition(action, self.count)]

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
        return self.partitions[0].handle(peer, msg)

    def _batch(self, peer: Peer, msg: Any, index: Callable[[Any], int]) -> Awaitable[None] | None:
        """A batched message: whole to its partition when its items share one (or when it is
        refused whole, over the limit); else item by item, each in its own partition, and the
        batch's ``ok`` once every partition it touched has stored what it changed."""
        where = {index(item) for item in msg.items}
        if len(where) <= 1 or len(msg.items) > p.MAX_BATCH:
            return self.partitions[min(where, default=0)].handle(peer, msg)
        slots = self.partitions
        if not all(isinstance(slots[i], LocalPartition) for i in where):
            return self._batch_linked(peer, msg, index)
        parts = [self.local[i] for i in sorted(where)]
        answers = []
        for i, item in enumerate(batch_items(msg)):
            part = self.local[index(item)]
            own = part.peer(peer)
            if isinstance(msg, p.Pubs):
                answers.append(part.dispatcher.pub_item(own, item, i, msg.ref))
            else:
                part.dispatcher.step_item(own, item, i)
        if msg.ref is None:
            return None
        fields = {"items": answers} if isinstance(msg, p.Pubs) else {}
        return self._answer_stored(parts, peer, msg.ref, fields)

    async def _batch_linked(self, peer: Peer, msg: Any, index: Callable[[Any], int]) -> None:
        """A batched message whose items fall in partitions of several hubs: each partition
        applies its items (as :meth:`_batch` does), and the batch's ``ok`` (with the items'
        answers, in order, for ``pubs``) goes once every one of them has stored them."""
        by_part: dict[int, list[tuple[int, Any]]] = {}
        for i, item in enumerate(batch_items(msg)):
            by_part.setdefault(index(item), []).append((i, item))
        pubs = isinstance(msg, p.Pubs)
        answers: list[Any] = [None] * len(msg.items)
        waits: list[Awaitable[Any]] = []
        remote: list[tuple[list[tuple[int, Any]], int]] = []
        for at, items in by_part.items():
            part = self.partitions[at]
            if isinstance(part, LocalPartition):
                own = part.peer(peer)
                for i, item in items:
                    if pubs:
                        answers[i] = part.dispatcher.pub_item(own, item, i, msg.ref)
                    else:
                        part.dispatcher.step_item(own, item, i)
                part.kick()
                waits.append(part.flush())
            elif isinstance(part, Linked):
                remote.append((items, len(waits)))
                waits.append(part.apply_items(peer, msg, items))
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

    async def _answer_stored(
        self, parts: list[LocalPartition], peer: Peer, ref: int, fields: dict[str, Any]
    ) -> None:
        """Answer ``ref`` once every partition in ``parts`` has written what it was given."""
        for part in parts:
            part.kick()
        await asyncio.gather(*(part.flush() for part in parts))
        first = self.partitions[0]
        if isinstance(first, LocalPartition):
            first.answer(peer, ref, **fields)
            first.kick()
        else:
            self.deliver([(peer, [{"op": "ok", "ref": ref, **fields}])])

    def _everywhere(self, peer: Peer, msg: p.Watch | p.Unwatch) -> None:
        """A watch sees every partition: partitions 1.. here; partition 0 answers it (the
        same permission check, so an error is answered once, from there)."""
        for part in self.partitions[1:]:
            try:
                if isinstance(msg, p.Watch):
                    part.watch(peer, msg.pattern)
                else:
                    part.unwatch(peer, msg.pattern)
            except TaskHubError:
                return


def _as_linked(slot: Partition) -> Linked:
    if not isinstance(slot, Linked):
        raise TypeError(f"partition {slot.index}'s slot is neither local nor linked: {slot!r}")
    return slot


def _linked(slot: Partition) -> Linked | None:
    # A local slot first: a runtime protocol check looks at every member (a step of every
    # chain asks).
    return None if isinstance(slot, LocalPartition) or not isinstance(slot, Linked) else slot
