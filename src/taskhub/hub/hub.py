"""The running hub: one lifecycle and one store, wired to the parts that serve them.

Every input (a WebSocket message, an HTTP call, a timer) runs the lifecycle synchronously and
then :meth:`Hub.kick` wakes the commit pipeline (:mod:`taskhub.hub.pipeline`), which writes the
lifecycle's batch to the store and only then hands the queued messages to their connections
(:mod:`taskhub.hub.connections`). WebSocket messages are applied by the dispatcher
(:mod:`taskhub.hub.dispatch`); broadcast topics and task watches are :mod:`taskhub.hub.topics`;
long polls to wake at a shutdown :mod:`taskhub.hub.wakers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from taskhub import protocol as p
from taskhub.errors import InvalidOption, TaskHubError
from taskhub.hub.admin import Admin
from taskhub.hub.auth import Registry
from taskhub.hub.connections import Closer, Connections, Sender
from taskhub.hub.firing import Firing
from taskhub.hub.leading import Leading
from taskhub.hub.partition import Links, LocalPartition, Partition, close_store
from taskhub.hub.partitioning import check_partition_count
from taskhub.hub.retention import DEFAULT_RETENTION
from taskhub.hub.router import Router
from taskhub.hub.topics import Topics
from taskhub.hub.unled import UnledPartition
from taskhub.hub.views import task_view
from taskhub.hub.wakers import Wakers
from taskhub.lifecycle import Clock, Credentials, Defaults, Lifecycle, Peer
from taskhub.lifecycle.chains import Chains, Mode
from taskhub.lifecycle.schedules import SCHEDULE_META, Schedule, Scheduler
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import Store

if TYPE_CHECKING:
    from taskhub.hub.http.metrics import Metrics

__all__ = ["Closer", "Hub", "Limits", "Remote", "Sender", "task_view"]

log = logging.getLogger("taskhub.hub")

# Makes the slot of a partition another hub leads: (partition, the leader's URL or "").
Remote = Callable[[int, str], Partition]


@dataclass
class Limits:
    """Per-connection limits. Memory a connection may hold is about ``max_frame`` (one frame
    being decoded) plus ``max_send_buffer`` bytes of encoded frames waiting for a slow reader
    (docs/operations.md, "Slow readers")."""

    max_frame: int = 1024 * 1024
    # Bytes of frames waiting for one connection beyond what its socket took; a reader this
    # far behind is closed (4008) and what waits for it is freed.
    max_send_buffer: int = 16 * 1024 * 1024
    max_send_queue: int = 1024  # frames; the same, counted in frames
    ping_interval: float = 5.0  # a dead peer is noticed within ping_interval + ping_timeout
    ping_timeout: float = 5.0
    max_wait: float = 300.0  # longest HTTP long poll (task result, consumer fetch), seconds


class Hub:
    """One lifecycle, one store, and the parts between them and the transports.

    Its parts are public: ``lc`` (the lifecycle), ``pipeline`` (commit pipeline and timer),
    ``connections``, ``dispatcher`` (``handle`` applies a WebSocket message), ``topics`` and
    ``watches``, ``wakers``, ``chains``, ``scheduler``, ``admin``.
    """

    def __init__(
        self,
        store: Store,
        *,
        registry: Registry | None = None,
        defaults: Defaults | None = None,
        limits: Limits | None = None,
        clock: Clock = time.time,
        name: str = "hub",
        retention: float | None = DEFAULT_RETENTION,
        archive: str | None = None,
        schedules: list[Schedule] | None = None,
        partitions: int = 1,
        partition_stores: Sequence[Store] | None = None,
        leased: bool = False,
        remote: Remote | None = None,
    ) -> None:
        """``retention``: seconds ended tasks are kept (None: forever), ``archive``: a JSON-lines
        file they are appended to before removal, ``schedules``: the config file's schedules.

        ``partitions`` (docs/deployment.md, "Partitions"): the deployment's partition count,
        checked against the one ``store`` records. With one, ``store`` is the partition's store;
        with several, ``store`` holds the cluster-wide records and ``partition_stores`` are the
        partitions' own (``open_store(url, partition=p, partitions=P)``).

        ``leased`` (docs/deployment.md, "Partition leases"): it leads the partitions it is given
        (:attr:`leading`); ``store`` (memory) serves its own connections. ``remote(p, url)``
        serves the others (default: over :attr:`links`, else ``UnledPartition``)."""
        self.root, self.partitions, self.leased = store, partitions, leased
        self.registry = registry or Registry()
        self.limits = limits or Limits()
        self.name, self.clock = name, clock
        self.connections = Connections(clock)
        self._make = partial(LocalPartition, hub=self, defaults=defaults, clock=clock)
        self._make = partial(self._make, retention=retention, archive=archive)
        self.lifecycle_hooks: list[Callable[[Lifecycle], None]] = []
        self.apply_hooks: list[Callable[[WriteBatch, float], None]] = []
        self.links: Links | None = None  # the hub-to-hub links, installed by the server
        self.leading = Leading(self)  # which partitions it leads, as the leases say
        self.router = Router(
            self._slots(store, partition_stores, remote), self.front, self.connections.hold
        )
        first = self.front  # with one partition, partition 0 (as before partitions)
        self.store, self.lc, self.pipeline = first.store, first.lc, first.pipeline
        self.watches, self.retention = first.watches, first.retention
        self.wakers = Wakers()
        self.topics = Topics(self.lc, self.kick)
        self.chains = Chains(self.lc, self.router)
        self.firing = Firing(self)  # schedules' slots whose tasks are in other partitions
        if not leased:
            self.parts[0].scheduler = Scheduler(self.parts[0].lc, self.firing)
        self.admin = Admin(self)
        self.dispatcher = first.dispatcher
        # Apply one WebSocket message in its partition (bound: a lookup saved per message).
        self.handle = first.dispatcher.handle if partitions == 1 else self.router.handle
        self.config_schedules, self._closing = list(schedules or []), False
        # GET /healthz: "standalone", "leader" of a cluster (hub/cluster.py), or "member".
        self.role = "member" if leased else "standalone"
        self.draining = False  # server.py: draining stops offers before a shutdown
        self.metrics: Metrics | None = None  # hub/http/metrics.py (for_hub), once installed

    def _slots(
        self, store: Store, stores: Sequence[Store] | None, remote: Remote | None
    ) -> list[Partition]:
        """The router's slots at start, and the hub's front and led partitions."""
        if self.leased:
            if stores is not None:
                raise ValueError("a leased hub opens each partition's store when it leads it")
            # The hub's own connections' lifecycle: welcome, errors, topics, operator answers.
            self.front = self._make(0, store, own_peers=False, retention=None, archive=None)
            self.parts: list[LocalPartition] = []
        else:
            self.parts = [
                self._make(i, s)
                for i, s in enumerate(_partition_stores(store, self.partitions, stores))
            ]
            self.front = self.parts[0]
        self.remote: Remote = remote or partial(_remote, self)
        for part in {*self.parts, self.front}:
            _share(self, part)
        if self.leased:
            return [self.remote(i, "") for i in range(self.partitions)]
        return list(self.parts)

    def new_partition(self, index: int, store: Store) -> LocalPartition:
        """A partition this hub is about to lead (:class:`~taskhub.hub.leading.Leading`)."""
        part = self._make(index, store, own_peers=True)
        _share(self, part)
        return part

    def each_lifecycle(self, fn: Callable[[Lifecycle], None]) -> None:
        """Call ``fn`` with every partition's lifecycle this hub runs, now and whenever it
        comes to lead another (listeners: metrics, the dashboard, the events log)."""
        self.lifecycle_hooks.append(fn)
        for lc in self.router.lifecycles:
            fn(lc)

    @property
    def scheduler(self) -> Scheduler:
        """The schedules: partition 0's (PartitionUnavailable when another hub leads it)."""
        part = self.router.local(0)
        assert part.scheduler is not None  # made when partition 0 is led
        return part.scheduler

    # --- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        # The count first, before anything is restored: the cluster-wide records live in the
        # root store, which with one partition is the partition's own. A leased hub's count
        # is checked by the server before it starts (its root is its own).
        await self.root.open()
        if not self.leased:
            await check_partition_count(self.root, self.partitions)
        if self.partitions > 1 and self.links is not None:
            await self.links.load_secret()
        restored = 0
        for part in self.parts:
            restored += await self.restore(part)
        await self.orphans()
        if restored:
            log.info("restored %d unfinished task(s) from %s", restored, self.root.url)
        if self.leased:
            self.front.start()
        for part in self.parts:
            part.start()

    async def restore(self, part: LocalPartition) -> int:
        """Open ``part``'s store and take back what it holds (partition 0: the schedules)."""
        if part.store is not self.root:
            await part.store.open()
        restored = await part.restore()
        if part.scheduler is not None:
            meta = (await part.store.list_meta(SCHEDULE_META)).values()
            caught_up = part.scheduler.restore(meta)
            part.scheduler.configure(self.config_schedules)
            if caught_up:
                log.info("fired %d schedule slot(s) missed while the hub was down", caught_up)
        return restored

    async def orphans(self) -> None:
        """Steps of restored chains whose task is no longer live: ended, read from its store."""
        for chain, index, task_id in self.chains.orphans():
            try:
                rec = await self.find(task_id)
            except TaskHubError:  # in a partition another hub leads: its end is not ours
                continue
            self.chains.step_ended(chain, index, rec)

    @property
    def led(self) -> list[int]:
        """The partitions this hub leads now."""
        return [part.index for part in self.parts]

    async def stop(self, *, flush_timeout: float = 10.0) -> None:
        """Write what is pending (waiting at most ``flush_timeout`` for a store that is down:
        what was not written was never acknowledged) and close the store."""
        self._closing = True
        self.end_waits()
        await self.firing.close()
        if self.links is not None:
            await self.links.close()
        parts = [*self.parts, self.front] if self.leased else self.parts
        await asyncio.gather(*(part.stop(flush_timeout) for part in parts))
        if self.partitions > 1 and not self.leased:
            await close_store(self.root, flush_timeout)

    @property
    def ready(self) -> bool:
        """Serving: the flusher runs, the store takes writes, not draining or fenced."""
        return (
            all(part.pipeline.running for part in self.parts)
            and self.front.pipeline.running
            and not self._closing
            and not self.draining
            and not self.fenced
            and self.store_ok
        )

    def drain(self) -> None:
        """Stop offering work before a shutdown; running deliveries may still finish.

        Dispatch lives in the lifecycle: it offers a group's waiting deliveries to the
        group's subscribed workers. Unsubscribing every connection (WebSocket and pull
        consumer) empties the groups' worker lists, so nothing new is offered, while what a
        connection holds stays with it (``Lifecycle.unsubscribe`` keeps held deliveries) and
        its ``return`` is still accepted. Offers not yet started go back to their groups at
        once (not counted as a try), so they wait, stored, for the next hub. ``sub`` messages
        are then answered ``ok`` without subscribing: the client keeps the subscription and
        sends it again to the hub it reconnects to.
        """
        self.draining = True
        for part in self.parts:
            part.drain()
        self.kick()

    def busy(self) -> int:
        """Deliveries connections still hold (started or offered): what a drain waits for."""
        return self.connections.busy() + sum(part.held() for part in self.parts if part.own_peers)

    # --- the commit pipeline -----------------------------------------------------------------
    def kick(self) -> None:
        """Something changed: write it, then send what it caused; re-arm the timer. With
        several partitions, each one the input changed (it may change more than one: a
        chain's next step, a watch) and only those: a frame of one partition's messages
        wakes one flusher, not every partition's."""
        if self.partitions == 1:
            self.pipeline.kick()
            return
        for part in self.parts:
            part.pipeline.kick_if_changed()
        if self.leased:
            self.front.pipeline.kick_if_changed()

    async def flush(self) -> None:
        """Wait until everything the lifecycle has produced so far is written and sent."""
        if self.partitions == 1:
            await self.pipeline.flush()
            return
        parts = [*self.parts, self.front] if self.leased else self.parts
        await asyncio.gather(*(part.flush() for part in parts))

    @property
    def commit_now(self) -> bool:
        """Whether a reader in the middle of a long frame should let the pipeline commit and
        send what it has applied so far (:attr:`Pipeline.commit_now`)."""
        return self.pipeline.commit_now

    @property
    def quick_apply(self) -> float:
        """A store write under this many seconds makes :attr:`commit_now` true."""
        return self.pipeline.quick_apply

    @quick_apply.setter
    def quick_apply(self, seconds: float) -> None:
        self.pipeline.quick_apply = seconds

    @property
    def fenced(self) -> bool:
        """The store refused a write: another hub leads."""
        return any(part.pipeline.fenced for part in self.parts)

    @property
    def store_ok(self) -> bool:
        """False while a batch write is failing and being retried."""
        return all(part.pipeline.store_ok for part in self.parts)

    # --- HTTP long polls and event streams ---------------------------------------------------
    @contextlib.contextmanager
    def long_wait(self, wake: Callable[[], None]) -> Iterator[None]:
        """Around an HTTP long poll or event stream: ``wake()`` is called when the hub shuts
        down (:meth:`end_waits`), at once if it already has. The request then answers with
        what it has (a task still running, nothing leased, the end of a stream), so a shutdown
        is not held up by requests that may wait minutes, and none is cut off mid-answer."""
        with self.wakers.waiting(wake):
            yield

    def end_waits(self) -> None:
        """Shutting down: every long poll and event stream answers now, and new ones at once."""
        self.wakers.end()

    @property
    def waits_ended(self) -> bool:
        return self.wakers.ended

    # --- connections -------------------------------------------------------------------------
    @property
    def senders(self) -> dict[Peer, Sender]:
        """The open connections' senders, by peer (:attr:`Connections.senders`)."""
        return self.connections.senders

    def attach(self, peer: Peer, sender: Sender, closer: Closer | None = None) -> None:
        self.connections.add(peer, sender, closer)
        self.lc.connect(peer)

    def hello_again(self, peer: Peer) -> None:
        """``peer`` said ``hello`` after its first message: the partitions that made their
        own peer for it, and the leaders it reached over a link, learn what it says now."""
        for part in self.parts:
            part.hello_again(peer)
        if self.links is not None:
            self.links.hello(peer)

    async def close_connections(self, *, code: int = 1012, reason: str = "") -> None:
        """Close every WebSocket connection (their clients reconnect, maybe elsewhere)."""
        await self.connections.close_all(code=code, reason=reason)

    def detach(self, peer: Peer) -> None:
        self.connections.remove(peer)
        self.topics.forget(peer)
        self.router.forget(peer)
        for part in self.parts:
            part.detach(peer)
        if self.leased:
            self.front.detach(peer)
        if self.links is not None:
            self.links.detach(peer)
        self.registry.release_connection(peer.creds)
        self.kick()

    def answer(self, peer: Peer, ref: int | None, **fields: Any) -> None:
        """Queue ``ok`` for the request ``ref`` of ``peer`` (nothing without a ``ref``), with
        ``fields``: it leaves once what the request changed is stored."""
        if ref is not None:
            self.lc.send(peer, {"op": "ok", "ref": ref, **fields})

    # --- reading tasks -----------------------------------------------------------------------
    async def find(self, task_id: str) -> TaskRecord | None:
        """The task's freshest record, from the partition its id names."""
        return await self.router.slot_of_task(task_id).find(task_id)

    def unwritten(self) -> dict[str, TaskRecord]:
        """Records newer than the store's copy, by id: the batch being written, the batch
        waiting, and the live tasks (freshest last). Listings merge them over a store page."""
        out: dict[str, TaskRecord] = {}
        for part in self.router.slots:
            out.update(part.unwritten())
        return out

    async def list_tasks(
        self, *, action: str | None, state: str | None, after: str | None, limit: int
    ) -> list[TaskRecord]:
        """A page of stored tasks by id (:meth:`Store.list_tasks`), over every partition."""
        if self.partitions == 1:
            return await self.store.list_tasks(action=action, state=state, after=after, limit=limit)
        pages = await asyncio.gather(
            *(
                part.list_tasks(action=action, state=state, after=after, limit=limit)
                for part in self.router.slots
            )
        )
        return heapq.nsmallest(limit, (rec for page in pages for rec in page), key=lambda r: r.id)

    def lc_of(self, task_id: str) -> Lifecycle:
        """The lifecycle of the partition ``task_id`` was made in."""
        return self.router.of_task(task_id)

    def store_of(self, task_id: str) -> Store:
        """The store of the partition ``task_id`` was made in."""
        return self.router.partition_of_task(task_id).store

    @property
    def lifecycles(self) -> tuple[Lifecycle, ...]:
        """Every partition's lifecycle, in partition order."""
        return self.router.lifecycles

    # --- broadcast events and chains (also called by the HTTP API) ---------------------------
    def emit(self, creds: Credentials, topic: str, data: Any, *, sender: Peer | None = None) -> int:
        """Broadcast ``data`` on ``topic`` (:meth:`Topics.emit`); returns how many
        connections it was queued for."""
        return self.topics.emit(creds, topic, data, sender=sender)

    def add_chain(
        self,
        creds: Credentials,
        steps: list[dict[str, Any]] | list[p.ChainStep],
        *,
        merge_input: bool = False,
        mode: Mode = "chain",
        trace: dict[str, str] | None = None,
    ) -> str:
        """Start a chain (or with ``mode="group"`` a group) and return its task id.

        ``steps`` are ``{"action", "payload", "options"}`` dicts (``options`` as in ``pub``).
        With ``merge_input`` each step's dict payload gets the previous step's dict result
        merged over it (seed 000's ``POST /add``). A malformed step raises
        :class:`InvalidOption`, :class:`InvalidAction` or :class:`PermissionDenied` whose
        message and ``details["step"]`` name it; then nothing is stored. ``trace`` (a W3C
        trace context) is kept with the chain and given to every step.
        """
        parsed: list[p.ChainStep] = []
        for i, step in enumerate(steps):
            if isinstance(step, p.ChainStep):
                parsed.append(step)
                continue
            try:
                parsed.append(msgspec.convert(step, p.ChainStep))
            except msgspec.ValidationError as exc:
                raise InvalidOption(f"step {i}: {exc}", step=i) from None
        chain = self.chains.start(creds, parsed, mode=mode, merge_input=merge_input, trace=trace)
        self.kick()
        return chain.id


def _share(hub: Hub, part: LocalPartition) -> None:
    """The metrics see every partition's writes, and with several partitions a fired timer
    kicks every partition (its effects, a chain's next step, may land anywhere)."""
    part.pipeline.apply_hooks = hub.apply_hooks
    if hub.partitions > 1:
        part.pipeline.after_timer = hub.kick


def _remote(hub: Hub, index: int, leader: str) -> Partition:
    """The slot of partition ``index`` led by ``leader``: reached over the link to it, or
    waiting for a leader while no hub holds it, the link to its leader is broken (or the hub
    has no links): a leased hub's learns it from the leases
    (:class:`~taskhub.hub.unled.UnledPartition`)."""
    links, down = hub.links, False
    if leader and links is not None:
        if links.reaches(leader):
            return links.remote(index, leader)
        down = True
    leading = hub.leading if hub.leased else None
    return UnledPartition(index, leader, hub.front, leading, down=down)


def _partition_stores(
    store: Store, partitions: int, stores: Sequence[Store] | None
) -> Sequence[Store]:
    if stores is None:
        if partitions != 1:
            raise ValueError(f"a hub of {partitions} partitions needs a store for each")
        return [store]
    if len(stores) != partitions:
        raise ValueError(f"{len(stores)} partition stores for {partitions} partitions")
    return stores
