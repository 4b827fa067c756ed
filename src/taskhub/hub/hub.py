"""The running hub: one lifecycle, one store, the commit pipeline and the timer.

Every input (a WebSocket frame, an HTTP call, a timer) runs the lifecycle synchronously and
then :meth:`Hub.kick` wakes the flusher. The flusher writes the lifecycle's batch to the store
and only then hands the queued messages to their connections, so a publisher never hears
of a task that a crash could lose (group commit: many frames share one store transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from taskhub import protocol as p
from taskhub.errors import (
    InvalidOption,
    PermissionDenied,
    ProtocolError,
    StoreFenced,
    StoreUnavailable,
    TaskHubError,
    TaskNotFound,
)
from taskhub.hub.admin import Admin
from taskhub.hub.auth import Registry
from taskhub.hub.events import Router
from taskhub.hub.retention import DEFAULT_RETENTION, Retention
from taskhub.ids import new_id
from taskhub.lifecycle import (
    QUEUE_META,
    Clock,
    Credentials,
    Defaults,
    Lifecycle,
    Message,
    Peer,
    Task,
    event_msg,
)
from taskhub.lifecycle.chains import Chains, Mode
from taskhub.lifecycle.options import worker_options
from taskhub.lifecycle.schedules import SCHEDULE_META, Schedule, Scheduler
from taskhub.names import allowed, pattern_allowed, validate_topic
from taskhub.records import EventRecord, TaskRecord, WriteBatch
from taskhub.store import Store

if TYPE_CHECKING:
    from taskhub.hub.http.metrics import Metrics

log = logging.getLogger("taskhub.hub")

Sender = Callable[[bytes], None]
Closer = Callable[[int, str], Awaitable[None]]


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


# A store write this quick (seconds) is cheap enough to make mid-frame (Hub.commit_now).
QUICK_APPLY = 0.0005


def task_view(rec: TaskRecord, *, payload: bool = False) -> dict[str, Any]:
    """The public shape of a task (protocol, HTTP and CLI)."""
    out: dict[str, Any] = {
        "id": rec.id,
        "action": rec.action,
        "state": rec.state,
        "publisher": rec.publisher,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "options": p.plain({k: v for k, v in rec.options.items() if k != "previous_result"}),
        "updates": rec.updates,
        "last_update": rec.last_update,
        "result": p.plain(rec.result),
        "error": rec.error,
        "deliveries": [
            {"group": d.group, "state": d.state, "attempt": d.attempt, "tries": d.tries}
            for d in rec.deliveries
        ],
    }
    if payload:
        out["payload"] = p.plain(rec.payload)
    return out


class Hub:
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
    ) -> None:
        """``retention``: seconds ended tasks are kept (None: forever), ``archive``: a JSON-lines
        file they are appended to before removal, ``schedules``: the config file's schedules."""
        self.store = store
        self.registry = registry or Registry()
        self.limits = limits or Limits()
        self.name = name
        self.lc = Lifecycle(clock=clock, defaults=defaults, new_id=new_id)
        self.topics: Router[Peer] = Router()  # broadcast event subscriptions
        self.watches: Router[Peer] = Router()  # task-event watches, by action pattern
        # `_watched` is a lifecycle listener while anyone watches (_watching). Listeners run
        # before end listeners: watchers see a step's end before the chain publishes the next.
        self.chains = Chains(self.lc)
        self.scheduler = Scheduler(self.lc)
        self.admin = Admin(self)
        self.config_schedules = list(schedules or [])
        self.retention = (
            None
            if retention is None
            else Retention(store, retention=retention, archive=archive, clock=clock)
        )
        self._sweeper: asyncio.Task[None] | None = None
        self.senders: dict[Peer, Sender] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._applying: dict[str, TaskRecord] = {}  # records of the batch being written
        self._flushed = asyncio.Condition()
        self._generation = 0  # batches fully written
        self.closers: dict[Peer, Closer] = {}
        self.fenced = False  # set once the store refused a write: another hub leads
        self._closing = False
        # Set when stop() ends the commit pipeline. The flusher checks it besides being
        # cancelled: a store client can swallow a cancellation that lands while it waits on
        # the network (seen with redis-py during a partition), and a flusher that lives on
        # waiting for a wake-up that never comes held a cluster's step-down forever.
        self._flusher_stop = False
        self._in_round = False
        self._last_apply = 0.0  # seconds the last store write took
        self.quick_apply = QUICK_APPLY
        # "standalone", or "leader" of a cluster of hubs (hub/cluster.py; followers run no
        # Hub and answer /healthz themselves): reported by GET /healthz.
        self.role = "standalone"
        self.clock = clock
        # Operation (server.py, hub/http/metrics.py): draining stops offers before a shutdown;
        # apply_hooks see every written batch and how long the store took (metrics).
        self.draining = False
        self.store_ok = True  # False while a batch write is failing and being retried
        self.apply_hooks: list[Callable[[WriteBatch, float], None]] = []
        self.metrics: Metrics | None = None  # hub/http/metrics.py, once installed
        # HTTP long polls and event streams under way (long_wait), woken by end_waits().
        self.waits_ended = False
        self._wakers: set[Callable[[], None]] = set()

    # --- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        # Durable groups first: restored tasks waiting for a group are routed to them.
        self.lc.restore_queues((await self.store.list_meta(QUEUE_META)).values())
        restored = self.lc.restore(await self.store.load_active())
        caught_up = self.scheduler.restore((await self.store.list_meta(SCHEDULE_META)).values())
        self.scheduler.configure(self.config_schedules)
        if caught_up:
            log.info("fired %d schedule slot(s) missed while the hub was down", caught_up)
        for chain, index, task_id in self.chains.orphans():
            self.chains.step_ended(chain, index, await self.store.get_task(task_id))
        if restored:
            log.info("restored %d unfinished task(s) from %s", restored, self.store.url)
        self._flusher = asyncio.create_task(self._flush_loop(), name="taskhub-flusher")
        self._flusher.add_done_callback(_flusher_ended)
        if self.retention is not None:
            self._sweeper = asyncio.create_task(self.retention.run(), name="taskhub-retention")
        self.kick()

    async def stop(self, *, flush_timeout: float = 10.0) -> None:
        """Write what is pending (waiting at most ``flush_timeout`` for a store that is down:
        what was not written was never acknowledged) and close the store."""
        self._closing = True
        self.end_waits()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if not self.fenced:
            try:
                await asyncio.wait_for(self.flush(), flush_timeout)
            except TimeoutError:
                log.error("the store did not take the last writes within %.0fs", flush_timeout)
        if self._flusher is not None:
            self._flusher_stop = True
            self._wake.set()
            self._flusher.cancel()
            # A write the flusher was waiting on may not unwind while the store is out of
            # reach (a partition): what it held was never acknowledged, so do not wait on it.
            done, _ = await asyncio.wait({self._flusher}, timeout=flush_timeout)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("the commit pipeline had failed", exc_info=task.exception())
            if not done:
                log.error(
                    "the commit pipeline did not stop within %.0fs; left behind", flush_timeout
                )
        if self._timer is not None:
            self._timer.cancel()
        closing = asyncio.ensure_future(self.store.close())
        done, _ = await asyncio.wait({closing}, timeout=flush_timeout)
        if not done:
            log.error("the store did not close within %.0fs; left behind", flush_timeout)
            closing.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            closing.result()

    # --- the commit pipeline -----------------------------------------------------------------
    def kick(self) -> None:
        """Something changed: write it, then send what it caused; re-arm the timer."""
        self._wake.set()
        deadline = self.lc.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            loop = asyncio.get_running_loop()
            self._timer_at = deadline
            self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.lc.advance()
        self.kick()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            if self._flusher_stop:
                return
            self._wake.clear()
            self._in_round = True
            try:
                batch = self.lc.take_writes()
                output = self.lc.take_output()
                if batch and not await self._apply(batch):
                    output = []  # fenced: this state was never stored, so it must not be told
                for peer, msgs in output:
                    sender = self.senders.get(peer)
                    if sender is not None:
                        self._send(peer, sender, msgs)
            except Exception:
                # A bug. The flusher must outlive it: without it the hub would take frames
                # and never answer again, looking alive. Say so, loudly, and go on.
                log.critical("a commit round failed; the hub goes on", exc_info=True)
            finally:
                self._generation += 1
                self._in_round = False
            async with self._flushed:
                self._flushed.notify_all()

    def _send(self, peer: Peer, sender: Sender, msgs: list[Message]) -> None:
        """Hand ``msgs`` to ``peer``'s connection. One that fails (a bug in the transport, or
        a dependency's API that changed under us) loses its messages, so it is closed (its
        client reconnects and catches up); the others are still served."""
        try:
            sender(p.encode(msgs))
        except Exception:
            log.exception("sending to connection %s (%s) failed; closing it", peer.id, peer.service)
            self.senders.pop(peer, None)
            closer = self.closers.get(peer)
            if closer is not None:
                closing = asyncio.ensure_future(closer(1011, "internal error"))
                closing.add_done_callback(_retrieve)

    @property
    def commit_now(self) -> bool:
        """Whether a reader in the middle of a long frame should let the flusher commit and
        send what it has applied so far: yes when the flusher is idle and the last write took
        under :attr:`quick_apply` seconds (memory://). For sqlite:// and redis:// a write costs a
        transaction and a thread or network round trip, and more, smaller ones measured
        slower than one for the whole frame."""
        return not self._in_round and self._last_apply < self.quick_apply

    async def _apply(self, batch: WriteBatch) -> bool:
        """Write ``batch``; False if this hub may no longer write (another hub leads)."""
        self._applying = {rec.id: rec for rec in batch.tasks}
        delay = 0.05
        failures = 0
        while True:
            try:
                started = time.perf_counter()
                await self.store.apply(batch)
                self.store_ok = True
                self._last_apply = time.perf_counter() - started
                self._applied(batch, self._last_apply)
                break
            except StoreFenced:
                log.error("another hub leads the cluster now; this hub's writes are refused")
                self._applying = {}
                self.fenced = True
                return False
            except (StoreUnavailable, OSError, ConnectionError):
                # The store is down: keep the batch and retry; nothing is answered meanwhile.
                self.store_ok = False
                if self._flusher_stop:  # stopping: what was not written was not acknowledged
                    self._applying = {}
                    return False
                log.exception("store write failed; retrying in %.2fs", delay)
            except Exception:
                # Not the store's health but the batch itself: retrying forever would stall
                # every connection, so after a few tries it is given up, loudly.
                failures += 1
                if failures >= 3:
                    log.critical(
                        "giving up writing a batch of %d task(s): %s",
                        len(batch.tasks),
                        [rec.id for rec in batch.tasks],
                        exc_info=True,
                    )
                    break
                log.exception("store write failed; retrying in %.2fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self._applying = {}
        return True

    def _applied(self, batch: WriteBatch, seconds: float) -> None:
        for hook in self.apply_hooks:
            try:
                hook(batch, seconds)
            except Exception:  # an observer must never stop the commit pipeline
                log.exception("an apply hook failed")

    @property
    def ready(self) -> bool:
        """Serving: the flusher runs, the store takes writes, not draining or fenced."""
        return (
            self._flusher is not None
            and not self._flusher.done()
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
        for peer in list(self.senders):
            for action in list(peer.subs):
                self.lc.unsubscribe(peer, action)
            for task_id, d in list(peer.holding.items()):
                if d.rec.state == "offered":
                    self.lc.take_back(peer, task_id, d.rec.attempt, "draining", count_try=False)
        self.kick()

    @contextlib.contextmanager
    def long_wait(self, wake: Callable[[], None]) -> Iterator[None]:
        """Around an HTTP long poll or event stream: ``wake()`` is called when the hub shuts
        down (:meth:`end_waits`), at once if it already has. The request then answers with
        what it has (a task still running, nothing leased, the end of a stream), so a shutdown
        is not held up by requests that may wait minutes, and none is cut off mid-answer."""
        self._wakers.add(wake)
        try:
            if self.waits_ended:
                wake()
            yield
        finally:
            self._wakers.discard(wake)

    def end_waits(self) -> None:
        """Shutting down: every long poll and event stream answers now, and new ones at once."""
        self.waits_ended = True
        for wake in list(self._wakers):
            wake()

    def busy(self) -> int:
        """Deliveries connections still hold (started or offered): what a drain waits for."""
        return sum(len(peer.holding) for peer in self.senders)

    async def flush(self) -> None:
        """Wait until everything the lifecycle has produced so far is written and sent."""
        if self._flusher is None or self._flusher.done():
            return
        # A round in progress may have taken its batch before now: then wait for the next.
        target = self._generation + (2 if self._in_round else 1)
        self.kick()
        async with self._flushed:
            await self._flushed.wait_for(lambda: self._generation >= target)

    # --- connections -------------------------------------------------------------------------
    def attach(self, peer: Peer, sender: Sender, closer: Closer | None = None) -> None:
        peer.connected_at = self.clock()
        self.senders[peer] = sender
        if closer is not None:
            self.closers[peer] = closer
        self.lc.connect(peer)

    async def close_connections(self, *, code: int = 1012, reason: str = "") -> None:
        """Close every WebSocket connection (their clients reconnect, maybe elsewhere)."""
        for closer in list(self.closers.values()):
            with contextlib.suppress(Exception):
                await closer(code, reason)

    def detach(self, peer: Peer) -> None:
        self.senders.pop(peer, None)
        self.closers.pop(peer, None)
        self.topics.remove_all(peer)
        self.watches.remove_all(peer)
        self._watching()
        self.lc.disconnect(peer)
        self.registry.release_connection(peer.creds)
        self.kick()

    # --- reading tasks -----------------------------------------------------------------------
    async def find(self, task_id: str) -> TaskRecord | None:
        task = self.lc.get(task_id)
        if task is not None:
            return task.rec
        rec = self.lc.pending(task_id) or self._applying.get(task_id)
        if rec is not None:
            return rec
        return await self.store.get_task(task_id)

    def unwritten(self) -> dict[str, TaskRecord]:
        """Records newer than the store's copy, by id: the batch being written, the batch
        waiting, and the live tasks (freshest last). Listings merge them over a store page."""
        out = dict(self._applying)
        out.update(self.lc.pending_tasks())
        out.update((t.id, t.rec) for t in self.lc.tasks.values())
        return out

    # --- messages from a WebSocket connection ------------------------------------------------
    def handle(self, peer: Peer, msg: p.Inbound | p.Bad) -> Awaitable[None] | None:
        """Apply one message. Returns an awaitable when it needs the store (reads)."""
        try:
            return self._handle(peer, msg)
        except TaskHubError as exc:
            ref = getattr(msg, "ref", None)
            self.lc.send(peer, p.error_msg(exc, ref, **_task_of(msg)))
            return None
        except Exception:
            # A bug, not bad input: said loudly here, answered without its details (as the
            # HTTP API's 500), and the connection and the rest of its frame go on.
            log.exception("handling a %s message from %s failed", type(msg).__name__, peer.service)
            ref = getattr(msg, "ref", None)
            self.lc.send(peer, p.error_msg(RuntimeError("internal error; the hub logged it"), ref))
            return None

    def _handle(self, peer: Peer, msg: p.Inbound | p.Bad) -> Awaitable[None] | None:  # noqa: C901  #18: split
        lc = self.lc
        match msg:
            case p.Ack():
                lc.ack(peer, msg.task, msg.attempt)
            case p.Return():
                lc.complete(peer, msg.task, msg.attempt, self._result(peer, msg))
                self._ok(peer, msg.ref)
            case p.Pub():
                task, created = lc.publish(
                    peer.creds, msg.action, p.kept(msg.payload, "payload"), msg.options, peer=peer
                )
                if isinstance(task, Task):
                    pool = lc.pooled.get(msg.action) if not task.deliveries else None
                    if pool and pool[-1] is task:  # pooled just now: no group subscribes
                        # A hint for the publisher (a typo waits forever): docs/protocol.md.
                        self._ok(
                            peer,
                            msg.ref,
                            task=task.id,
                            state=task.rec.state,
                            created=created,
                            pooled=True,
                        )
                    else:
                        self._ok(peer, msg.ref, task=task.id, state=task.rec.state, created=created)
                else:
                    self._ok(peer, msg.ref, task=task, created=False)
            case p.Pickup():
                lc.pickup(peer, msg.task, msg.attempt)
                self._ok(peer, msg.ref)
            case p.Update():
                lc.update(peer, msg.task, msg.attempt, msg.data)
                self._ok(peer, msg.ref)
            case p.Drop():
                lc.drop(peer, msg.task, msg.attempt)
                self._ok(peer, msg.ref)
            case p.Fail():
                err = p.error_of(msg.error)
                lc.fail(peer, msg.task, msg.attempt, err, retry=msg.retry, delay=msg.delay)
                self._ok(peer, msg.ref)
            case p.Release():
                lc.release(peer, msg.task, msg.attempt)
                self._ok(peer, msg.ref)
            case p.Extend():
                lc.extend(peer, msg.task, msg.attempt, msg.seconds)
                self._ok(peer, msg.ref)
            case p.Sub():
                if not self.draining:  # draining: ok, but no offers (see drain())
                    lc.subscribe(
                        peer,
                        msg.action,
                        group=msg.group,
                        concurrency=msg.concurrency,
                        observe=msg.observe,
                        durable=msg.durable,
                        options=worker_options(msg.options),
                    )
                self._ok(peer, msg.ref)
            case p.Unsub():
                lc.unsubscribe(peer, msg.action)
                self._ok(peer, msg.ref)
            case p.Cancel():
                lc.cancel(peer.creds, msg.task)
                self._ok(peer, msg.ref)
            case p.Get() | p.Follow() | p.GetPayload():
                return self._read(peer, msg)
            case p.Subscribe():
                self.subscribe(peer, msg.topic)
                self._ok(peer, msg.ref)
            case p.Unsubscribe():
                self.topics.remove(peer, msg.topic)
                self._ok(peer, msg.ref)
            case p.Emit():
                n = self.emit(peer.creds, msg.topic, msg.data, sender=peer)
                self._ok(peer, msg.ref, receivers=n)
            case p.Watch():
                self.watch(peer, msg.pattern)
                self._ok(peer, msg.ref)
            case p.Unwatch():
                self.watches.remove(peer, msg.pattern)
                self._watching()
                self._ok(peer, msg.ref)
            case p.Chain():
                chain = self.chains.start(
                    peer.creds,
                    msg.steps,
                    mode=msg.mode,
                    merge_input=msg.merge_input,
                    peer=peer,
                    begin=False,
                    trace=msg.trace,
                )
                self._ok(peer, msg.ref, task=chain.id, state=chain.rec.state)
                self.chains.begin(chain)  # after the ok: its events follow the chain's id
            case (
                p.Schedule()
                | p.Unschedule()
                | p.Schedules()
                | p.Queues()
                | p.Purge()
                | p.DeadLetters()
                | p.DeadLetter()
                | p.Requeue()
            ):
                return self.admin.answer(peer, msg)
            case p.Hello():
                peer.hello = {
                    k: v
                    for k, v in (
                        ("client", msg.client),
                        ("version", msg.version),
                        ("host", msg.host),
                        ("pid", msg.pid),
                    )
                    if v is not None
                }
                self._ok(peer, msg.ref)
            case p.Bad():
                raise msg.error
        return None

    # --- broadcast events, watches and chains (also called by the HTTP API) -------------------
    def emit(self, creds: Credentials, topic: str, data: Any, *, sender: Peer | None = None) -> int:
        """Broadcast ``data`` on ``topic`` to every subscribed connection but ``sender``.

        Needs pub permission for the topic. Not stored: connections subscribed right now get
        it, through their bounded send queue (a reader too far behind is disconnected, it
        does not slow the others). Returns how many connections it was queued for.
        """
        validate_topic(topic)
        if not allowed(creds.pub_permissions, topic):
            raise PermissionDenied(f"{creds.name!r} may not emit on {topic!r}", topic=topic)
        msg: Message = {"op": "broadcast", "topic": topic, "data": data, "from": creds.name}
        n = 0
        for peer in self.topics.match(topic):
            if peer is not sender and peer.open:  # not open: closing as too slow a reader
                self.lc.send(peer, msg)
                n += 1
        if n:
            self.kick()
        return n

    def subscribe(self, peer: Peer, pattern: str) -> None:
        """Receive broadcasts on ``pattern``; needs sub permission covering all it matches."""
        validate_topic(pattern, pattern=True)
        if not pattern_allowed(peer.creds.sub_permissions, pattern):
            raise PermissionDenied(
                f"{peer.service!r} may not subscribe to {pattern!r}", topic=pattern
            )
        self.topics.add(peer, pattern)

    def watch(self, peer: Peer, pattern: str) -> None:
        """Receive the task events of every action matching ``pattern``: allowed when the
        credential may publish or subscribe to everything the pattern matches."""
        validate_topic(pattern, pattern=True)
        creds = peer.creds
        if not (
            pattern_allowed(creds.pub_permissions, pattern)
            or pattern_allowed(creds.sub_permissions, pattern)
        ):
            raise PermissionDenied(f"{peer.service!r} may not watch {pattern!r}", action=pattern)
        self.watches.add(peer, pattern)
        self._watching()

    def _watching(self) -> None:
        """Listen to task events while some connection watches, and only then."""
        self.lc.listen(self._watched, bool(self.watches))

    def _watched(self, task: Task, ev: EventRecord) -> None:
        """Lifecycle listener: stream every task event to the connections watching it."""
        msg: Message | None = None
        for peer in self.watches.match(task.rec.action):
            if msg is None:
                msg = event_msg(task, ev)
                msg["action"] = task.rec.action
                msg["watched"] = True  # tells it apart from the events of a followed task
            self.lc.send(peer, msg)

    def add_chain(
        self,
        creds: Credentials,
        steps: list[dict[str, Any]] | list[p.ChainStep],
        *,
        merge_input: bool = False,
        mode: Mode = "chain",
    ) -> str:
        """Start a chain (or with ``mode="group"`` a group) and return its task id.

        ``steps`` are ``{"action", "payload", "options"}`` dicts (``options`` as in ``pub``).
        With ``merge_input`` each step's dict payload gets the previous step's dict result
        merged over it (seed 000's ``POST /add``). A malformed step raises
        :class:`InvalidOption`, :class:`InvalidAction` or :class:`PermissionDenied` whose
        message and ``details["step"]`` name it; then nothing is stored.
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
        chain = self.chains.start(creds, parsed, mode=mode, merge_input=merge_input)
        self.kick()
        return chain.id

    def _result(self, peer: Peer, msg: p.Return) -> Any:
        """A ``return``'s result as the hub keeps it. One it cannot keep (JSON msgspec cannot
        read, such as the number ``1e400``) fails the delivery with why, as a handler's
        error would, before the worker is told: a return usually has no ``ref``, and the task
        would otherwise wait, started, for its end timeout."""
        try:
            return p.kept(msg.result, "result")
        except ProtocolError as exc:
            # Not this worker's delivery (any more): then there is nothing to fail.
            with contextlib.suppress(TaskHubError):
                error = {"type": "ProtocolError", "message": exc.message}
                self.lc.fail(peer, msg.task, msg.attempt, error, retry=False)
            raise

    def _ok(self, peer: Peer, ref: int | None, **fields: Any) -> None:
        if ref is not None:
            self.lc.send(peer, {"op": "ok", "ref": ref, **fields})

    async def _read(self, peer: Peer, msg: p.Get | p.Follow | p.GetPayload) -> None:
        try:
            rec = await self.find(msg.task)
            if rec is None:
                raise TaskNotFound(f"no task {msg.task}", task=msg.task)
            if (
                not self.lc.may_read(peer.creds, rec)
                and msg.task not in peer.holding
                and (msg.task not in peer.observing)
            ):
                raise PermissionDenied(
                    f"{peer.service!r} may not read task {msg.task} ({rec.action})",
                    action=rec.action,
                )
            if isinstance(msg, p.GetPayload):
                self._ok(peer, msg.ref, payload=rec.payload)
            else:
                if isinstance(msg, p.Follow):
                    self.lc.follow(peer, msg.task)
                self._ok(peer, msg.ref, task=task_view(rec))
        except TaskHubError as exc:
            self.lc.send(peer, p.error_msg(exc, msg.ref, task=msg.task))
        except Exception:  # the store failed: say so, keep the connection
            log.exception("reading task %s failed", msg.task)
            err = StoreUnavailable(f"could not read task {msg.task} from the store; try again")
            self.lc.send(peer, p.error_msg(err, msg.ref, task=msg.task))
        self.kick()


def _task_of(msg: object) -> dict[str, Any]:
    task = getattr(msg, "task", None)
    return {"task": task} if isinstance(task, str) else {}


def welcome(hub: Hub, peer: Peer) -> Message:
    return {
        "op": "welcome",
        "protocol": p.PROTOCOL_VERSION,
        "hub": hub.name,
        "connection": peer.id,
        "service": peer.service,
        "max_frame": hub.limits.max_frame,
    }


def _flusher_ended(task: asyncio.Task[None]) -> None:
    """The flusher ends only when the hub stops; anything else is said at once, not when the
    task is collected (the hub is then deaf: /readyz answers 503)."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("the hub's flusher died; the hub no longer answers", exc_info=task.exception())


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # closing a failed connection may fail too: nothing more to do
