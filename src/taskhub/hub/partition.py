"""One partition of the hub's work (docs/deployment.md, "Partitions"): a lifecycle over the
partition's slice of the store, with its own commit pipeline and timers.

The hub reaches a partition through :class:`Partition`. :class:`LocalPartition` is one this
process leads; a partition led by another hub (reached over a hub-to-hub link) will implement
the same methods, so the hub's router (:mod:`taskhub.hub.router`) calls either the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from taskhub.errors import PartitionUnavailable, StoreFenced
from taskhub.hub.dispatch import Dispatcher, Msg
from taskhub.hub.pipeline import Pipeline
from taskhub.hub.retention import Retention
from taskhub.hub.topics import Watches
from taskhub.ids import UlidFactory
from taskhub.lifecycle import QUEUE_META, Clock, Credentials, Defaults, Lifecycle, Message, Peer
from taskhub.lifecycle.placement import Elsewhere
from taskhub.records import EventRecord, TaskRecord
from taskhub.store import Store

if TYPE_CHECKING:
    from taskhub.hub.admin import Admin
    from taskhub.hub.hub import Hub
    from taskhub.hub.topics import Topics
    from taskhub.lifecycle.chains import Chains
    from taskhub.lifecycle.schedules import Scheduler, Slot

log = logging.getLogger("taskhub.hub")


class Partition(Protocol):
    """What the hub asks of a partition, wherever it is led: the router, the HTTP API and the
    operator's listings call a partition only through these members."""

    index: int
    # The partition when this process leads it, else None (requests that run the pure core
    # in process, as the HTTP API's, need it: :func:`unavailable` names the leader then).
    local: LocalPartition | None
    # The partition when another hub leads it and this hub reaches it over the link, else None.
    linked: Linked | None
    leader: str  # the leader's advertised URL ("" when no hub holds the partition)

    def handle(self, peer: Peer, msg: Msg) -> Awaitable[None] | None:
        """Apply a message of the hub's connection ``peer``; its answer comes back to
        ``peer`` once what it changed is stored. An awaitable when it needs the store."""

    def pub_item(self, peer: Peer, item: Any, i: int, ref: int | None) -> dict[str, Any]:
        """Item ``i`` of a ``pubs`` whose items span partitions: its answer or its error."""

    def step_item(self, peer: Peer, item: Any, i: int) -> None:
        """Item ``i`` of an ``acks``, ``pickups`` or ``returns`` spanning partitions."""

    def watch(self, peer: Peer, pattern: str) -> None:
        """Stream the task events of this partition that match ``pattern`` to ``peer``."""

    def unwatch(self, peer: Peer, pattern: str) -> None: ...

    def detach(self, peer: Peer) -> None:
        """The connection is gone: what it held here goes back to its groups."""

    async def find(self, task_id: str) -> TaskRecord | None:
        """The freshest record of a task of this partition (live, being written, stored)."""

    async def list_tasks(
        self, *, action: str | None, state: str | None, after: str | None, limit: int
    ) -> list[TaskRecord]:
        """A page of this partition's stored tasks by id (:meth:`Store.list_tasks`)."""

    def unwritten(self) -> dict[str, TaskRecord]:
        """Records newer than the store's copy, by id (the listings merge them)."""

    def kick(self) -> None:
        """Something changed: write it, then send what it caused."""

    async def flush(self) -> None: ...


def unavailable(index: int, leader: str, *, down: bool = False) -> PartitionUnavailable:
    """The error of a request that needs partition ``index``, led by ``leader`` (its URL, ""
    when nobody holds it), which this hub cannot reach; ``down``: the link to it broke."""
    if leader and down:
        why = (
            f"partition {index}'s leader at {leader} does not answer (a hub takes the "
            "partition over once its lease runs out)"
        )
    elif leader:
        why = f"partition {index} is led by {leader}; this hub cannot reach it yet"
    else:
        why = f"partition {index} has no leader right now (a hub is taking it over)"
    return PartitionUnavailable(
        f"{why}: try again, or connect to its leader",
        partition=index,
        leader=leader,
        retry_after=1,
    )


class Linked(Partition, Elsewhere, Protocol):
    """A partition another hub leads, reached over the hub-to-hub link
    (:class:`taskhub.hub.link.RemotePartition`)."""

    async def apply_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> Any:
        """Apply ``items`` (their index in the batched message ``msg``, the item) there;
        their answers (``pubs``) once they are stored."""

    def ask_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> Awaitable[Any]:
        """Send ``items`` of the batched message ``msg``, which has a ``ref``, there now, to
        be applied in order with ``peer``'s other messages to it; their answers (``pubs``)
        once they are stored there."""

    def send_items(self, peer: Peer, msg: Any, items: list[tuple[int, Any]]) -> None:
        """Apply ``items`` of the batched message ``msg``, which has no ``ref``, there, in
        order with ``peer``'s other messages to it; nothing is answered (each item's own
        answers and errors go to ``peer`` from there)."""

    def retire(self) -> None:
        """The partition is led elsewhere now: close the connections that reached it here."""

    async def list_tasks(
        self, *, action: str | None, state: str | None, after: str | None, limit: int
    ) -> list[TaskRecord]:
        """A page of the partition's stored tasks by id, read by its leader."""

    # The HTTP API and the pull consumers (hub/writes.py, hub/consumers.py).
    async def publish(
        self,
        creds: Credentials,
        items: Sequence[tuple[str, Any, dict[str, Any] | None]],
        *,
        extra: dict[str, Any] | None = None,
    ) -> list[tuple[TaskRecord, bool, bool]]:
        """Publish ``items`` (action, payload, options; ``extra`` added to their options)
        there for ``creds``, answered once stored: per item its record, whether it is new,
        whether it is an earlier stored task its key found."""

    async def cancel(self, creds: Credentials, task_id: str) -> TaskRecord:
        """``creds`` cancels ``task_id`` there (``TaskNotFound``: not live there)."""

    async def start_chain(
        self,
        creds: Credentials,
        steps: list[dict[str, Any]],
        *,
        merge_input: bool,
        trace: dict[str, str] | None,
    ) -> str:
        """Start a chain held there (``Hub.add_chain``'s steps); its id once stored."""

    async def task_events(
        self, task_id: str, after: int, wait: float
    ) -> tuple[list[EventRecord], bool]:
        """The task's stored events after seq ``after`` there (waiting up to ``wait`` seconds
        for one while it is live), and whether it is still live."""

    async def emit(self, creds: Credentials, topic: str, data: Any) -> int:
        """Broadcast from there (partition 0's hub holds the topics)."""

    async def wait(self, task_id: str, seconds: float) -> TaskRecord | None:
        """The task's record once it ended there (stored), or after ``seconds``."""

    def take_back(
        self, peer: Peer, task_id: str, attempt: int, reason: str, *, count_try: bool
    ) -> None:
        """``peer`` (a pull consumer) gives its delivery back to its group there."""

    async def fire(self, slot: Slot, task_id: str) -> None:
        """Publish a schedule's slot there as ``task_id`` (once, however many copies come),
        answered once stored (hub/firing.py)."""


class Links(Protocol):
    """The hub's links to other hubs (:class:`taskhub.hub.link.HubLinks`): the transport
    installs them (``Hub.links``); the hub only tells them what concerns them."""

    def remote(self, index: int, leader_url: str) -> Linked:
        """Partition ``index``, led by the hub at ``leader_url``, as a router slot."""

    def reaches(self, leader_url: str) -> bool:
        """False while the link to the hub at ``leader_url`` is known to be broken (it broke
        and has not opened again): its partitions wait for a leader instead
        (:class:`~taskhub.hub.unled.UnledPartition`)."""

    def hello(self, peer: Peer) -> None:
        """``peer`` said ``hello`` again: the leaders it reached learn it."""

    def detach(self, peer: Peer) -> None: ...

    async def ask(
        self,
        leader_url: str,
        op: str,
        creds: Credentials,
        parts: list[int],
        args: dict[str, Any] | None = None,
    ) -> Any:
        """The operator's ``op`` (:attr:`Admin.ops <taskhub.hub.admin.Admin.ops>`) run by the
        hub at ``leader_url`` over the partitions ``parts`` it leads: its result, or its
        error raised."""

    async def load_secret(self) -> None: ...

    async def close(self) -> None: ...


class LocalPartition:
    """A partition this process leads: its :class:`Lifecycle` (ids made by
    ``UlidFactory(partition=index)``), its store, its :class:`Pipeline` and its watches.

    A connection's output is queued in one lifecycle's journal and leaves with that
    lifecycle's commit, so each partition has a :class:`Peer` of its own for every connection
    that reaches it (made at its first message here) and hands its output to the hub's
    connection of the same id. When the hub leads every partition, partition 0 uses the
    hub's peers themselves (``own_peers=False``): with one partition the hub works exactly as
    before partitions. Partition 0 also keeps the schedules (:attr:`scheduler`).
    """

    leader = ""

    def __init__(
        self,
        index: int,
        store: Store,
        hub: Hub,
        *,
        defaults: Defaults | None,
        clock: Clock,
        retention: float | None = None,
        archive: str | None = None,
        own_peers: bool | None = None,
    ) -> None:
        """``own_peers``: a peer of its own for each connection (default: all but partition
        0, whose peers are the hub's)."""
        self.index = index
        self.store = store
        self.hub = hub
        self.local: LocalPartition | None = self
        self.linked: Linked | None = None
        self.lc = Lifecycle(clock=clock, defaults=defaults, new_id=UlidFactory(partition=index))
        # An offer is written with its task's next change (its start, usually): a record write
        # less per task (docs/decisions.md, "An offer is written with the task's next change").
        self.lc.defer_offers = True
        self.own_peers = index != 0 if own_peers is None else own_peers
        self.scheduler: Scheduler | None = None  # partition 0's, once the hub made it
        self.peers: dict[str, Peer] = {}  # this partition's peer by connection id
        self.fronts: dict[str, Peer] = {}  # the hub's peer by connection id
        deliver = self._deliver if self.own_peers else hub.connections.deliver
        self.pipeline = Pipeline(self.lc, store, deliver, clock)
        self.watches = Watches(self.lc)
        self.dispatcher = Dispatcher(self)
        self.retention = (
            None
            if retention is None
            else Retention(store, retention=retention, archive=archive, clock=clock)
        )
        self._sweeper: asyncio.Task[None] | None = None

    # --- what the dispatcher shares with the hub ---------------------------------------------
    @property
    def draining(self) -> bool:
        return self.hub.draining

    @property
    def chains(self) -> Chains:
        return self.hub.chains

    @property
    def topics(self) -> Topics:
        return self.hub.topics

    @property
    def admin(self) -> Admin:
        return self.hub.admin

    def kick(self) -> None:
        self.pipeline.kick()

    def answer(self, peer: Peer, ref: int | None, **fields: Any) -> None:
        """Queue ``ok`` for the request ``ref``: it leaves with this partition's commit."""
        if ref is not None:
            self.lc.send(peer, {"op": "ok", "ref": ref, **fields})

    # --- connections -------------------------------------------------------------------------
    def peer(self, front: Peer) -> Peer:
        """This partition's peer for the hub's connection ``front``."""
        if not self.own_peers:
            return front
        own = self.peers.get(front.id)
        if own is None:
            own = self.peers[front.id] = Peer(front.id, front.creds)
            own.hello, own.remote, own.starts = front.hello, front.remote, front.starts
            self.fronts[front.id] = front
            self.lc.connect(own)
        return own

    def hello_again(self, front: Peer) -> None:
        """The hub's connection ``front`` said ``hello`` again: its peer here says it too."""
        own = self.peers.get(front.id)
        if own is not None and own is not front:
            own.hello, own.batch, own.starts = front.hello, front.batch, front.starts

    def _deliver(self, output: Iterable[tuple[Peer, list[Message]]]) -> None:
        fronts = self.fronts
        self.hub.connections.deliver(
            [(fronts[peer.id], msgs) for peer, msgs in output if peer.id in fronts]
        )

    def handle(self, peer: Peer, msg: Msg) -> Awaitable[None] | None:
        return self.dispatcher.handle(self.peer(peer), msg)

    def pub_item(self, peer: Peer, item: Any, i: int, ref: int | None) -> dict[str, Any]:
        return self.dispatcher.pub_item(self.peer(peer), item, i, ref)

    def step_item(self, peer: Peer, item: Any, i: int) -> None:
        self.dispatcher.step_item(self.peer(peer), item, i)

    def watch(self, peer: Peer, pattern: str) -> None:
        self.watches.watch(self.peer(peer), pattern)

    def unwatch(self, peer: Peer, pattern: str) -> None:
        if not self.own_peers or peer.id in self.peers:
            self.watches.unwatch(self.peer(peer), pattern)

    def detach(self, peer: Peer) -> None:
        if not self.own_peers:
            self.watches.forget(peer)
            self.lc.disconnect(peer)
            return
        own = self.peers.pop(peer.id, None)
        self.fronts.pop(peer.id, None)
        if own is not None:
            own.closed_by_hub = peer.closed_by_hub
            self.watches.forget(own)
            self.lc.disconnect(own)

    def held(self) -> int:
        """Deliveries this partition's own peers hold (partition 0's are the hub's)."""
        return sum(len(peer.holding) for peer in self.peers.values())

    def engaged(self) -> list[str]:
        """The connections (by id) with work in this partition: subscriptions, deliveries,
        followed or observed tasks. When the partition moves to another hub they must
        reconnect (and subscribe again) to be served by it."""
        return [
            peer.id
            for peer in self.peers.values()
            if peer.subs or peer.holding or peer.following or peer.observing
        ]

    def drain(self) -> None:
        """Stop offering (Hub.drain): every peer unsubscribed, unstarted offers back."""
        peers = self.peers.values() if self.own_peers else list(self.hub.connections)
        for peer in list(peers):
            for action in list(peer.subs):
                self.lc.unsubscribe(peer, action)
            for task_id, d in list(peer.holding.items()):
                if d.rec.state == "offered":
                    self.lc.take_back(peer, task_id, d.rec.attempt, "draining", count_try=False)

    def hand_back(self) -> None:
        """The partition moves to another hub while its workers live (a graceful hand-off):
        every started delivery goes back to its group without a try (``requeue``, reason
        ``handed_off``), written with the partition's last batch, so its next leader restores
        it as pending and counts nothing. The holder is not revoked: its handler goes on, and
        its ``return``, sent after its connection reconnects, still ends the task there (the
        first return wins). After a ``kill -9`` nothing says so, and the next leader counts a
        try (the worker may have died of the task)."""
        peers = self.peers.values() if self.own_peers else list(self.hub.connections)
        for peer in list(peers):
            for task_id, d in list(peer.holding.items()):
                if d.rec.state == "started":
                    self.lc.take_back(
                        peer, task_id, d.rec.attempt, "handed_off", count_try=False, revoke=False
                    )

    # --- reading -----------------------------------------------------------------------------
    async def find(self, task_id: str) -> TaskRecord | None:
        task = self.lc.get(task_id)
        if task is not None:
            return task.rec
        rec = self.lc.pending(task_id) or self.pipeline.writing(task_id)
        if rec is not None:
            return rec
        return await self.store.get_task(task_id)

    async def list_tasks(
        self, *, action: str | None, state: str | None, after: str | None, limit: int
    ) -> list[TaskRecord]:
        return await self.store.list_tasks(action=action, state=state, after=after, limit=limit)

    def unwritten(self) -> dict[str, TaskRecord]:
        out = self.pipeline.all_writing()
        out.update(self.lc.pending_tasks())
        out.update((t.id, t.rec) for t in self.lc.tasks.values())
        return out

    # --- life --------------------------------------------------------------------------------
    async def restore(self) -> int:
        """Take back what the last run left in the (open) store: durable groups first (the
        restored tasks waiting for a group are routed to them), then the unfinished tasks."""
        self.lc.restore_queues((await self.store.list_meta(QUEUE_META)).values())
        return self.lc.restore(await self.store.load_active())

    def start(self) -> None:
        self.pipeline.start()
        if self.retention is not None:
            name = f"taskhub-retention-p{self.index}"
            self._sweeper = asyncio.create_task(self.retention.run(), name=name)

    async def flush(self) -> None:
        await self.pipeline.flush()

    async def stored(self) -> None:
        """Wait until what the partition was given so far is stored, as :meth:`flush`; but
        :class:`StoreFenced` if its store refused this hub's writes (another hub leads it
        now): what it was given may not be stored, so it must not be answered as stored."""
        await self.pipeline.flush()
        if self.pipeline.fenced:
            raise StoreFenced(f"partition {self.index}'s store refused this hub's writes")

    async def stop(self, flush_timeout: float, *, write: bool = True) -> None:
        """Write what is pending (unless fenced, or ``write`` is False: the partition was
        lost, its store refuses writes anyway), end the pipeline, close the store."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if write and not self.pipeline.fenced:
            self.lc.write_deferred()  # the offers' events too: kept with the tasks
            try:
                await asyncio.wait_for(self.flush(), flush_timeout)
            except TimeoutError:
                log.error("the store did not take the last writes within %.0fs", flush_timeout)
        await self.pipeline.stop(flush_timeout)
        await close_store(self.store, flush_timeout)


async def close_store(store: Store, timeout: float) -> None:
    """Close ``store``, leaving it behind (said in the log) if it does not close in time."""
    closing = asyncio.ensure_future(store.close())
    done, _ = await asyncio.wait({closing}, timeout=timeout)
    if not done:
        log.error("the store did not close within %.0fs; left behind", timeout)
        closing.add_done_callback(lambda t: t.cancelled() or t.exception())
    else:
        closing.result()
