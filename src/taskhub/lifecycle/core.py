"""The :class:`Lifecycle`: the one entry the hub uses, composed of parts, one idea each.

- ``journal.py``: the output, messages per peer and records to write, events and counts.
- ``queues.py``: group queues (priority, round robin, credit, partition keys) and offers.
- ``keys.py``: idempotency and debounce keys.
- ``publishing.py``: a task accepted, stored, timed and routed; tasks the hub drives.
- ``subscriptions.py``: subscriptions and connections.
- ``steps.py``: a worker's steps on what it holds.
- ``ending.py``: how deliveries and tasks end.
- ``deadlines.py``: what each timer does when it fires.
- ``recovery.py``: a previous run's tasks taken back.
- ``operations.py``: the operator's tools (queue listings, purge, dead letters).

Every part gets a :class:`~taskhub.lifecycle.shared.Shared` (the live tasks, the clock, the
defaults, the timers, the journal) and the parts it calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from taskhub.lifecycle.deadlines import Deadlines
from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.journal import BatchListener, EventListener, Journal
from taskhub.lifecycle.keys import Keys
from taskhub.lifecycle.operations import Operations
from taskhub.lifecycle.publishing import Publishing
from taskhub.lifecycle.queues import Queue, Queues
from taskhub.lifecycle.recovery import Recovery
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import (
    Clock,
    Credentials,
    Defaults,
    EventKey,
    Message,
    Peer,
    Task,
    follow,
)
from taskhub.lifecycle.steps import Steps
from taskhub.lifecycle.subscriptions import Subscriptions
from taskhub.names import allowed
from taskhub.records import TaskRecord, TaskState, WriteBatch
from taskhub.timers import Timers


class Lifecycle:
    """Every rule of a task's life, over in-memory state, without I/O.

    Inputs are method calls (what connections say, :meth:`advance` for time); outputs are the
    messages queued per peer (:meth:`take_output`) and the writes (:meth:`take_writes`), which
    the hub must make durable before it sends the messages.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        defaults: Defaults | None = None,
        new_id: Callable[[], str],
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.defaults = defaults or Defaults()
        self.new_id = new_id
        self.tasks: dict[str, Task] = {}  # every task not yet ended
        self.timers = Timers()
        self._journal = journal = Journal(clock)
        shared = Shared(self.tasks, clock, self.defaults, self.timers, journal)
        # The parts, each given the parts it uses (they depend on each other in one direction).
        self._keys = keys = Keys(shared)
        self._queues = queues = Queues(shared)
        self._ending = ending = Ending(shared, queues, keys)
        self._publishing = publishing = Publishing(shared, queues, keys, ending, new_id)
        self._steps = Steps(shared, queues, keys, ending, rng or random.Random())
        self._subscriptions = Subscriptions(shared, queues, ending)
        self._deadlines = Deadlines(shared, queues, keys, ending)
        self._recovery = Recovery(shared, publishing, queues, keys, ending)
        self._operations = Operations(shared, queues, ending, publishing)
        # The parts' tables, read by the hub's views (never replaced, only changed in place).
        self.queues: dict[tuple[str, str], Queue] = queues.queues
        self.by_action: dict[str, list[Queue]] = queues.by_action
        self.observers = queues.observers
        self.pooled: dict[str, list[Task]] = queues.pooled  # published while nobody subscribed
        self.keys = keys.keys  # idempotency key -> (task id, time)
        self.debounce = keys.debounce  # once_every "<action>\0<key>" -> waiting task id
        self.timer_handlers = self._deadlines.handlers  # extra timer kinds: kind -> fn(key, now)
        self.listeners: list[EventListener] = journal.listeners
        self.start_listeners: list[EventListener] = journal.start_listeners
        self.end_listeners: list[EventListener] = journal.end_listeners
        self.batch_listeners: list[BatchListener] = journal.batch_listeners
        self.second_listeners = journal.second_listeners
        # The steps every task takes, bound straight to the part that does them: a method
        # here that only called the part was a Python call more per message (four a task).
        self.send = journal.send  # queue a message for a peer (sent after the next commit)
        # Accept a task: (task, created); ``created`` is False for a repeated ``key`` (then
        # the task, or the id of one that has ended). ``task_id``: an id made for this
        # partition elsewhere (a chain's step published by the hub that holds its chain).
        self.publish = publishing.publish
        # Tasks of one action published together without options (a ``pubs``): each as
        # ``publish`` would; None when they need ``publish`` one by one.
        self.publish_many = publishing.publish_many
        self.ack = self._steps.ack
        self.pickup = self._steps.pickup
        # A ``return``: the first one wins; later ones (any attempt) are ignored.
        self.complete = self._steps.complete
        # A batch of returns: the credit it gives back offered once, at its end.
        self.hold_dispatch = queues.hold_dispatch
        self.dispatch_held = queues.dispatch_held

    # --- the parts' state that changes identity ------------------------------------------------
    @property
    def counts(self) -> dict[EventKey, int]:
        """Task events of the second :attr:`counts_second`, per (action, type, group)."""
        return self._journal.counts

    @property
    def counts_second(self) -> int:
        return self._journal.counts_second

    @property
    def rng(self) -> random.Random:
        """The retry jitter's random numbers (seeded in tests)."""
        return self._steps.rng

    @rng.setter
    def rng(self, rng: random.Random) -> None:
        self._steps.rng = rng

    # --- output ------------------------------------------------------------------------------
    def take_output(self) -> list[tuple[Peer, list[Message]]]:
        """Messages queued since the last call, per peer, in order."""
        return self._journal.take_output()

    @property
    def changed(self) -> bool:
        """Whether :meth:`take_writes` or :meth:`take_output` has anything to give."""
        return self._journal.changed

    def take_writes(self) -> WriteBatch:
        """The records changed and the events recorded since the last call, sealed: the
        lifecycle never changes what it handed over (a store may keep the objects)."""
        return self._journal.take_writes()

    def settle(self) -> None:
        """Tell :attr:`batch_listeners` now what the batch under way has started and ended
        so far (:meth:`take_writes` does once per batch): for readers of their figures."""
        self._journal.settle()

    @property
    def defer_offers(self) -> bool:
        """Whether an offer is written with its task's next change instead of on its own: a
        restore offers a delivery offered and not started again anyway (recovery.py), so the
        offer need not survive a crash. Readers of a task's stored events call
        :meth:`write_deferred` first."""
        return self._journal.defer_offers

    @defer_offers.setter
    def defer_offers(self, on: bool) -> None:
        self._journal.defer_offers = on
        if not on:
            self._journal.write_deferred()

    def write_deferred(self, task_id: str | None = None) -> None:
        """Write the offers :attr:`defer_offers` deferred (of ``task_id`` only, if given) with
        the next batch."""
        self._journal.write_deferred(task_id)

    def pending(self, task_id: str) -> TaskRecord | None:
        """The task's record if it changed since the last :meth:`take_writes`."""
        return self._journal.pending(task_id)

    def pending_tasks(self) -> Mapping[str, TaskRecord]:
        """Every record changed since the last :meth:`take_writes`, by task id."""
        return self._journal.pending_tasks()

    def put_meta(self, kind: str, key: str, value: Any) -> None:
        """Store a metadata entry in the next batch, with the task writes it goes with."""
        self._journal.put_meta(kind, key, value)

    def delete_meta(self, kind: str, key: str) -> None:
        self._journal.delete_meta(kind, key)

    def pending_meta(self, kind: str) -> tuple[dict[str, Any], set[str]]:
        """This kind's metadata not yet taken for writing: (puts by key, deleted keys)."""
        return self._journal.pending_meta(kind)

    def listen(self, listener: EventListener, on: bool) -> None:
        """Have ``listener`` in :attr:`listeners` while ``on`` (idempotent)."""
        self._journal.listen(listener, on)

    # --- time --------------------------------------------------------------------------------
    def arm(self, at: float, kind: str, key: str) -> None:
        """Arm a timer of a kind registered in :attr:`timer_handlers`; when it fires the
        handler gets ``(key, now)``. Cancel lazily: the handler checks the key is still due."""
        self._deadlines.arm(at, kind, key)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def advance(self, now: float | None = None) -> None:
        """Fire every timer due by ``now`` (default: the clock)."""
        self._deadlines.advance(now)

    # --- publishing --------------------------------------------------------------------------
    def hold(
        self,
        creds: Credentials,
        action: str,
        payload: Any,
        options: dict[str, Any],
        *,
        peer: Peer | None = None,
    ) -> Task:
        """Store a task that no worker is offered: a chain, run by the hub step by step."""
        return self._publishing.hold(creds, action, payload, options, peer=peer)

    def record(self, task: Task, type_: str, data: Any = None) -> None:
        """Record (and stream to followers and watchers) an event of a held task."""
        self._publishing.record(task, type_, data)

    def finish(
        self,
        task: Task,
        state: TaskState | str,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """End a held task (``success``, ``fail`` or ``end``); a no-op once it has ended."""
        self._publishing.finish(task, state, result=result, error=error)

    def cancel(self, creds: Credentials, task_id: str) -> Task:
        return self._ending.cancel(creds, task_id)

    # --- subscriptions and connections -------------------------------------------------------
    def subscribe(
        self,
        peer: Peer,
        action: str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        """``options``: the worker's declared defaults (``options.worker_options``)."""
        self._subscriptions.subscribe(
            peer,
            action,
            group=group,
            concurrency=concurrency,
            observe=observe,
            durable=durable,
            options=options,
        )

    def unsubscribe(self, peer: Peer, action: str) -> None:
        self._subscriptions.unsubscribe(peer, action)

    def connect(self, peer: Peer) -> None:
        self._subscriptions.connect(peer)

    def disconnect(self, peer: Peer) -> None:
        """A connection is gone: its deliveries go back to their groups (at-least-once)."""
        self._subscriptions.disconnect(peer)

    # --- worker steps ------------------------------------------------------------------------
    def update(self, peer: Peer, task_id: str, attempt: int, data: Any) -> None:
        self._steps.update(peer, task_id, attempt, data)

    def drop(self, peer: Peer, task_id: str, attempt: int) -> None:
        self._steps.drop(peer, task_id, attempt)

    def fail(
        self,
        peer: Peer,
        task_id: str,
        attempt: int,
        error: dict[str, Any],
        *,
        retry: bool = True,
        delay: float | None = None,
    ) -> None:
        """The handler failed; retried per the task's options, or after ``delay``."""
        self._steps.fail(peer, task_id, attempt, error, retry=retry, delay=delay)

    def release(self, peer: Peer, task_id: str, attempt: int) -> None:
        """The holder hands the delivery back unfinished, without counting a try."""
        self._steps.release(peer, task_id, attempt)

    def extend(self, peer: Peer, task_id: str, attempt: int, seconds: float) -> None:
        """Push the task's end deadline to at least ``seconds`` from now (never earlier)."""
        self._steps.extend(peer, task_id, attempt, seconds)

    def take_back(
        self,
        peer: Peer,
        task_id: str,
        attempt: int,
        reason: str,
        *,
        count_try: bool,
        revoke: bool = True,
    ) -> None:
        """Give one delivery ``peer`` holds back to its group, as a closed connection would;
        ``revoke``: and tell ``peer`` (its handler stops)."""
        self._steps.take_back(peer, task_id, attempt, reason, count_try=count_try, revoke=revoke)

    # --- reading and following ---------------------------------------------------------------
    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def follow(self, peer: Peer, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        if task is not None:
            follow(peer, task)
        return task

    def may_read(self, creds: Credentials, rec: TaskRecord) -> bool:
        return (
            creds.name == rec.publisher
            or allowed(creds.sub_permissions, rec.action)
            or allowed(creds.pub_permissions, rec.action)
        )

    # --- recovery and the operator's tools -----------------------------------------------------
    def restore(self, records: Iterable[TaskRecord]) -> int:
        """Take back the unfinished tasks of a previous run (after a crash or restart)."""
        return self._recovery.restore(records)

    def restore_queues(self, entries: Iterable[dict[str, Any]]) -> None:
        """Mark the stored durable groups subscribed again; call before :meth:`restore`."""
        self._recovery.restore_queues(entries)

    def queue_views(self) -> list[dict[str, Any]]:
        """Every group queue the hub knows, with its counts (admin listings)."""
        return self._operations.queue_views()

    def queue_view(self, q: Queue) -> dict[str, Any]:
        return self._operations.queue_view(q)

    def find_queue(self, action: str, group: str) -> Queue:
        return self._queues.find(action, group)

    def purge(self, creds: Credentials, action: str, group: str, *, forget: bool = False) -> int:
        """Fail the group's waiting deliveries (reason ``purged``); returns how many."""
        return self._operations.purge(creds, action, group, forget=forget)

    def requeue(self, creds: Credentials, entry: dict[str, Any]) -> Task:
        """Publish a fresh copy of a dead letter and remove the entry in the same batch."""
        return self._operations.requeue(creds, entry)
