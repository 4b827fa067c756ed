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
from taskhub.errors import InvalidOption
from taskhub.hub.admin import Admin
from taskhub.hub.auth import Registry
from taskhub.hub.connections import Closer, Connections, Sender
from taskhub.hub.partition import Links, LocalPartition, close_store
from taskhub.hub.partitioning import check_partition_count
from taskhub.hub.retention import DEFAULT_RETENTION
from taskhub.hub.router import Router
from taskhub.hub.topics import Topics
from taskhub.hub.views import task_view
from taskhub.hub.wakers import Wakers
from taskhub.lifecycle import Clock, Credentials, Defaults, Lifecycle, Peer
from taskhub.lifecycle.chains import Chains, Mode
from taskhub.lifecycle.schedules import SCHEDULE_META, Schedule, Scheduler
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import Store

if TYPE_CHECKING:
    from taskhub.hub.http.metrics import Metrics

__all__ = ["Closer", "Hub", "Limits", "Sender", "task_view"]

log = logging.getLogger("taskhub.hub")


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
    ) -> None:
        """``retention``: seconds ended tasks are kept (None: forever), ``archive``: a JSON-lines
        file they are appended to before removal, ``schedules``: the config file's schedules.

        ``partitions`` (docs/deployment.md, "Partitions"): the deployment's partition count,
        checked against the one ``store`` records. With one, ``store`` is the partition's store;
        with several, ``store`` holds the cluster-wide records and ``partition_stores`` are the
        partitions' own (``open_store(url, partition=p, partitions=P)``)."""
        self.root = store
        self.partitions = partitions
        self.registry = registry or Registry()
        self.limits = limits or Limits()
        self.name = name
        self.clock = clock
        self.connections = Connections(clock)
        make = partial(
            LocalPartition, hub=self, defaults=defaults, clock=clock, retention=retention
        )
        stores = _partition_stores(store, partitions, partition_stores)
        self.parts = [make(i, s, archive=archive) for i, s in enumerate(stores)]
        self.router = Router(self.parts, self.connections.deliver, self.connections.hold)
        # Links to the hubs that lead the partitions this one does not (docs/deployment.md,
        # "The hub-to-hub link"), installed by the transport (taskhub.hub.link.HubLinks):
        # links.remote(index, url) makes the router slot of a partition another hub leads.
        self.links: Links | None = None
        # Partition 0's parts, and with one partition the hub's (as before partitions).
        first = self.parts[0]
        self.store, self.lc, self.pipeline = first.store, first.lc, first.pipeline
        self.watches, self.retention = first.watches, first.retention
        self.wakers = Wakers()
        self.topics = Topics(self.lc, self.kick)
        self.chains = Chains(self.lc, self.router)
        self.scheduler = Scheduler(self.lc, self.router)
        self.admin = Admin(self)
        self.dispatcher = first.dispatcher
        # Apply one WebSocket message (bound: per message): in its partition.
        self.handle = first.dispatcher.handle if partitions == 1 else self.router.handle
        self._share_pipelines()
        self.config_schedules = list(schedules or [])
        self._closing = False
        # "standalone", or "leader" of a cluster of hubs (hub/cluster.py; followers run no
        # Hub and answer /healthz themselves): reported by GET /healthz.
        self.role = "standalone"
        # Operation (server.py): draining stops offers before a shutdown.
        self.draining = False
        self.metrics: Metrics | None = None  # hub/http/metrics.py (for_hub), once installed

    def _share_pipelines(self) -> None:
        """With several partitions: the metrics see every partition's writes, and a fired
        timer kicks every partition (its effects, a chain's next step, may land anywhere)."""
        if self.partitions == 1:
            return
        for part in self.parts:
            part.pipeline.apply_hooks = self.pipeline.apply_hooks
            part.pipeline.after_timer = self.kick

    # --- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        # The count first, before anything is restored: the cluster-wide records live in the
        # root store, which with one partition is the partition's own.
        await self.root.open()
        await check_partition_count(self.root, self.partitions)
        if self.partitions > 1 and self.links is not None:
            await self.links.load_secret()
        restored = 0
        for part in self.parts:
            if part.store is not self.root:
                await part.store.open()
            restored += await part.restore()
        caught_up = self.scheduler.restore((await self.store.list_meta(SCHEDULE_META)).values())
        self.scheduler.configure(self.config_schedules)
        if caught_up:
            log.info("fired %d schedule slot(s) missed while the hub was down", caught_up)
        for chain, index, task_id in self.chains.orphans():
            self.chains.step_ended(chain, index, await self.find(task_id))
        if restored:
            log.info("restored %d unfinished task(s) from %s", restored, self.root.url)
        for part in self.parts:
            part.start()

    async def stop(self, *, flush_timeout: float = 10.0) -> None:
        """Write what is pending (waiting at most ``flush_timeout`` for a store that is down:
        what was not written was never acknowledged) and close the store."""
        self._closing = True
        self.end_waits()
        if self.links is not None:
            await self.links.close()
        await asyncio.gather(*(part.stop(flush_timeout) for part in self.parts))
        if self.partitions > 1:
            await close_store(self.root, flush_timeout)

    @property
    def ready(self) -> bool:
        """Serving: the flusher runs, the store takes writes, not draining or fenced."""
        return (
            all(part.pipeline.running for part in self.parts)
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
        return self.connections.busy() + sum(part.held() for part in self.parts[1:])

    # --- the commit pipeline -----------------------------------------------------------------
    def kick(self) -> None:
        """Something changed: write it, then send what it caused; re-arm the timer. With
        several partitions each one is kicked (an input may change more than one: a chain's
        next step, a watch)."""
        if self.partitions == 1:
            self.pipeline.kick()
            return
        for part in self.parts:
            part.kick()

    async def flush(self) -> None:
        """Wait until everything the lifecycle has produced so far is written and sent."""
        if self.partitions == 1:
            await self.pipeline.flush()
            return
        await asyncio.gather(*(part.flush() for part in self.parts))

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

    @property
    def apply_hooks(self) -> list[Callable[[WriteBatch, float], None]]:
        """Called with every written batch and how long the store took (hub/http/metrics.py)."""
        return self.pipeline.apply_hooks

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

    async def close_connections(self, *, code: int = 1012, reason: str = "") -> None:
        """Close every WebSocket connection (their clients reconnect, maybe elsewhere)."""
        await self.connections.close_all(code=code, reason=reason)

    def detach(self, peer: Peer) -> None:
        self.connections.remove(peer)
        self.topics.forget(peer)
        for part in self.parts:
            part.detach(peer)
        if self.links is not None:
            for remote in self.router.remotes():
                remote.detach(peer)
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
        return await self.router.find(task_id)  # over the link where another hub leads it

    def unwritten(self) -> dict[str, TaskRecord]:
        """Records newer than the store's copy, by id: the batch being written, the batch
        waiting, and the live tasks (freshest last). Listings merge them over a store page."""
        out: dict[str, TaskRecord] = {}
        for part in self.parts:
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
                part.store.list_tasks(action=action, state=state, after=after, limit=limit)
                if isinstance(part, LocalPartition)
                else part.list_tasks(action=action, state=state, after=after, limit=limit)
                for part in self.router.slots()
            )
        )
        return heapq.nsmallest(limit, (rec for page in pages for rec in page), key=lambda r: r.id)

    def for_task(self, peer: Peer, task_id: str) -> tuple[Lifecycle, Peer]:
        """The lifecycle of ``task_id``'s partition and ``peer`` as that partition knows it
        (a connection has a peer of its own in each partition it reaches)."""
        part = self.router.partition_of_task(task_id)
        return part.lc, part.peer(peer)

    def for_action(self, peer: Peer, action: str) -> tuple[Lifecycle, Peer]:
        """The lifecycle of ``action``'s partition and ``peer`` as that partition knows it."""
        part = self.router.partition_for(action)
        return part.lc, part.peer(peer)

    def lc_of(self, task_id: str) -> Lifecycle:
        """The lifecycle of the partition ``task_id`` was made in."""
        return self.router.of_task(task_id)

    def store_of(self, task_id: str) -> Store:
        """The store of the partition ``task_id`` was made in."""
        return self.router.partition_of_task(task_id).store

    def lc_for(self, action: str) -> Lifecycle:
        """The lifecycle of the partition that holds ``action``'s tasks and group queues."""
        return self.router.for_action(action)

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
