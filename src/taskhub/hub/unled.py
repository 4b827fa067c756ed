"""The router slot of a partition this hub does not lead and cannot reach: no hub holds it
right now (a hub hands it off or takes it over), the link to its leader broke (the leader may
be dead, its lease not run out yet), its leader advertised no URL, or the hub has no links
(docs/deployment.md, "Partition leases").

A hub that learns the leaders from the leases (:class:`~taskhub.hub.leading.Leading`, with a
keeper) hides that brief gap: a message that needs the partition waits, at most ``hold``
seconds (one lease), for the slot that replaces this one, the keeper reading the partition's
lease at once and then every few tens of milliseconds; it then goes where the partition is led
now, or is answered ``partition_unavailable`` (retryable) when the wait runs out. A chain's
work for the partition (a step to publish, a step's end, a cancel) waits as long as it takes
and is handed on in order. A hub without leases answers at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from taskhub import protocol as p
from taskhub.errors import PartitionUnavailable
from taskhub.hub.dispatch import Msg
from taskhub.hub.partition import Linked, LocalPartition, Partition, unavailable
from taskhub.ids import UlidFactory
from taskhub.lifecycle import Lifecycle, Peer
from taskhub.lifecycle.placement import StepPub
from taskhub.protocol import error_msg
from taskhub.records import TaskRecord

if TYPE_CHECKING:
    from taskhub.hub.leading import Leading
    from taskhub.lifecycle.chains import Chains


class Front(Protocol):
    """Where a hub queues what it says to its own connections (partition 0 when the hub leads
    every partition, else a lifecycle of its own: :class:`~taskhub.hub.hub.Hub`)."""

    lc: Lifecycle

    def kick(self) -> None: ...

    async def flush(self) -> None: ...


class UnledPartition:
    """A partition this hub does not lead and cannot reach (module docstring). What needs it
    waits for its successor (:meth:`hand_over`, called by the router when the slot is
    replaced) where the hub learns leaders from the leases (``leading``), else it is answered
    at once with :func:`~taskhub.hub.partition.unavailable`, naming the partition and its
    leader; nothing is dropped without an answer. A partition another hub leads is reached
    over the hub-to-hub link instead (:class:`~taskhub.hub.link.RemotePartition`)."""

    local: LocalPartition | None = None  # led by no hub, or by one this hub cannot reach
    linked: Linked | None = None

    def __init__(
        self,
        index: int,
        leader: str,
        front: Front,
        leading: Leading | None = None,
        *,
        down: bool = False,
    ) -> None:
        """``down``: the lease names ``leader``, but the link to it broke (it waits all the
        same: for the link to open again, or for the leases to name the next leader)."""
        self.index = index
        self.leader = leader
        self.down = down
        self.front = front  # where the answers are queued: the hub's own peers
        self.leading = leading
        self.successor: asyncio.Future[Partition] | None = None  # made by the first wait
        self.until = 0.0  # loop time the first wait gives up
        self.chain_work: list[Callable[[], None]] = []  # a chain's work, held for the successor
        self.new_id = UlidFactory(partition=index)  # ids of chain steps published here

    @property
    def waits(self) -> bool:
        """Whether a chain's work is held for the successor (a hub that learns leaders)."""
        return self.leading is not None

    @property
    def hold(self) -> float:
        """Seconds a message waits for the successor: the lease when the hub learns leaders
        from the leases and no hub holds the partition, or its leader's link broke; 0
        (answered at once) otherwise."""
        if self.leading is None or (self.leader and not self.down):
            return 0.0
        return self.leading.hold

    def error(self) -> PartitionUnavailable:
        return unavailable(self.index, self.leader, down=self.down)

    def hand_over(self, successor: Partition) -> None:
        """The router serves the partition with ``successor`` from now on: what waits goes
        there, in the order it came."""
        if self.successor is None:
            self.successor = asyncio.get_running_loop().create_future()
        if not self.successor.done():
            self.successor.set_result(successor)
        work, self.chain_work = self.chain_work, []
        for do in work:  # routed again: to the successor, or held by it
            do()
        if work and self.leading is not None:
            self.leading.hub.kick()

    async def placed(self) -> Partition | None:
        """The slot that replaces this one, once the router places it within :attr:`hold`
        seconds of the first wait; None if it does not come in time (or the hub has no
        leases: at once). A schedule's slot waits so (hub/firing.py), and tries again."""
        return await self._next() if self.hold > 0 else None

    async def _next(self) -> Partition | None:
        """The successor once there is one; None if it does not come within :attr:`hold`
        seconds of the first wait (later waits share that deadline)."""
        loop = asyncio.get_running_loop()
        if self.successor is None:
            self.successor = loop.create_future()
            self.until = loop.time() + self.hold
            self._learn()
        if self.successor.done():
            return self.successor.result()
        left = self.until - loop.time()
        if left <= 0:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self.successor), left)
        except TimeoutError:
            return None

    # --- a connection's messages -------------------------------------------------------------
    def handle(self, peer: Peer, msg: Msg) -> Awaitable[None] | None:
        if self.hold > 0:
            # The connection's later messages wait behind this one (hub/ws/feed.py): its
            # order is kept, and it sends no more while the partition has no leader.
            return self._handle_later(peer, msg)
        self._refuse(peer, msg)
        return None

    async def _handle_later(self, peer: Peer, msg: Msg) -> None:
        slot = await self._next()
        if slot is None:
            self._refuse(peer, msg)
            return
        pending = slot.handle(peer, msg)
        slot.kick()
        if pending is not None:
            await pending

    def _refuse(self, peer: Peer, msg: Msg) -> None:
        ref = getattr(msg, "ref", None)
        task = getattr(msg, "task", None)
        extra = {"task": task} if isinstance(task, str) else {}
        self.front.lc.send(peer, error_msg(self.error(), ref, **extra))
        self.front.kick()

    def pub_item(self, peer: Peer, item: Any, i: int, ref: int | None) -> dict[str, Any]:
        err = self.error()
        err.details["index"] = i
        if ref is None:
            self.front.lc.send(peer, error_msg(err))
        return {"error": err.to_wire()}

    def step_item(self, peer: Peer, item: Any, i: int) -> None:
        err = self.error()
        err.details["index"] = i
        task = getattr(item, "task", None)
        extra = {"task": task} if isinstance(task, str) else {}
        self.front.lc.send(peer, error_msg(err, getattr(item, "ref", None), **extra))

    async def apply_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> Any:
        """Items of a batched message spanning partitions (the router's ``_batch_linked``):
        applied by the successor once there is one (their answers, for ``pubs``, once it
        stored them), else each answered ``partition_unavailable``."""
        slot = await self._next() if self.hold > 0 else None
        ahead = slot if slot is None or isinstance(slot, UnledPartition) else slot.linked
        if ahead is not None:
            return await ahead.apply_items(peer, msg, items)
        part = self if slot is None else slot
        pubs = isinstance(msg, p.Pubs)
        answers = []
        for i, item in items:
            if pubs:
                answers.append(part.pub_item(peer, item, i, msg.ref))
            else:
                part.step_item(peer, item, i)
        part.kick()
        await part.flush()
        return answers if pubs else None

    def watch(self, peer: Peer, pattern: str) -> None:
        """Its successor applies the connection's watches when the router places it."""

    def unwatch(self, peer: Peer, pattern: str) -> None:
        return None

    def detach(self, peer: Peer) -> None:
        return None

    # --- reads (the HTTP API) ----------------------------------------------------------------
    async def find(self, task_id: str) -> TaskRecord | None:
        slot = await self._next() if self.hold > 0 else None
        if slot is None:
            raise self.error()
        return await slot.find(task_id)

    async def list_tasks(
        self, *, action: str | None, state: str | None, after: str | None, limit: int
    ) -> list[TaskRecord]:
        slot = await self._next() if self.hold > 0 else None
        if slot is None:
            raise self.error()
        return await slot.list_tasks(action=action, state=state, after=after, limit=limit)

    def unwritten(self) -> dict[str, TaskRecord]:
        return {}

    def kick(self) -> None:
        self.front.kick()

    async def flush(self) -> None:
        await self.front.flush()

    # --- chains (Elsewhere, while :attr:`waits`) -----------------------------------------
    def publish_step(self, step: StepPub, *, task_id: str | None = None) -> str:
        """The step gets its id (of this partition) now and is published where the partition
        is led once it is (:meth:`Chains.place_step`)."""
        task_id = task_id or self.new_id()
        chains = self._chains()
        self._hold_work(partial(chains.place_step, step, task_id))
        return task_id

    def step_ended(self, chain_id: str, index: int, rec: TaskRecord) -> None:
        """The chain, held in this partition, moves on once the partition is led."""
        self._hold_work(partial(self._chains().move_on, chain_id, index, rec))

    def cancel_step(self, task_id: str, error: dict[str, Any]) -> None:
        self._hold_work(partial(self._chains().cancel_step, task_id, error))

    def _hold_work(self, work: Callable[[], None]) -> None:
        if not self.chain_work:
            self._learn()
        self.chain_work.append(work)

    def _learn(self) -> None:
        """Ask the keeper to find the partition's leader now (once per wait): while the lease
        still names a leader whose link broke, until it names another (or none)."""
        if self.leading is not None:
            self.leading.learn(self.index, self.leader if self.down else "")

    def _chains(self) -> Chains:
        assert self.leading is not None  # the router hands chains' work only when it waits
        return self.leading.hub.chains
