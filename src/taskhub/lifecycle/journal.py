"""The lifecycle's output journal: the messages it queued for each peer, and the records it
changed and the events it recorded, waiting to be taken together by the commit pipeline;
with the events' per-second counts and the listeners told of each event."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from taskhub.lifecycle.state import Clock, EventKey, Message, Peer, Task
from taskhub.records import (
    TERMINAL_STATES,
    EventRecord,
    MetaRecord,
    TaskRecord,
    WriteBatch,
)

EventListener = Callable[[Task, EventRecord], None]
# Told once per batch: the records of the tasks it started (first pickup) and ended, in order.
BatchListener = Callable[[list[TaskRecord], list[TaskRecord]], None]
_replace = msgspec.structs.replace  # with no changes: a shallow copy


def sealed_copy(rec: TaskRecord) -> TaskRecord:
    """A copy of ``rec`` that the lifecycle's later changes cannot reach: the record's own
    fields and its deliveries are copied (both changed in place); the rest (options, a
    chain's progress in them, payload, result, errors, updates) the lifecycle replaces but
    never changes in place, so they are shared. tests/unit/test_sealed.py and the lifecycle
    state machine hold the lifecycle to that."""
    ds = rec.deliveries
    # Most tasks have one delivery: a list display costs half what list(map(...)) does.
    return _replace(rec, deliveries=[_replace(ds[0])] if len(ds) == 1 else list(map(_replace, ds)))


def event_msg(task: Task, ev: EventRecord) -> Message:
    """The ``event`` message telling a follower (or a watcher) of ``ev``."""
    msg: Message = {
        "op": "event",
        "task": ev.task_id,
        "type": ev.type,
        "state": task.rec.state,
        "at": ev.at,
    }
    if ev.data is not None:
        msg["data"] = ev.data
    if ev.group is not None:
        msg["group"] = ev.group
    if ev.service is not None:
        msg["service"] = ev.service
    return msg


class Journal:
    """What the lifecycle has to say since the commit pipeline last took it: messages per
    peer (:meth:`take_output`) and writes (:meth:`take_writes`). The hub reads a record not
    yet written with :meth:`pending`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._dirty: dict[str, TaskRecord] = {}
        self._events: list[EventRecord] = []
        self._outgoing: list[Peer] = []
        self._meta: dict[tuple[str, str], Any] = {}  # metadata writes of this batch
        self._meta_deleted: set[tuple[str, str]] = set()
        # Offers whose writing waits for the task's next change (docs/decisions.md, "An offer
        # is written with the task's next change"): task id -> its record and the deferred
        # events. Only while :attr:`defer_offers`.
        self.defer_offers = False
        self._deferred: dict[str, tuple[TaskRecord, list[EventRecord]]] = {}
        self._deferred_now = False  # an offer was deferred since the last take_writes
        # Called with every task event. Each costs a call per event (four per task at least),
        # so a listener with nothing to do should not be in the list: the hub adds its
        # watchers' and HTTP waiters' listeners only while there are any.
        self.listeners: list[EventListener] = []
        # Called once per task, with its start event (the first pickup), after the above.
        self.start_listeners: list[EventListener] = []
        # Called once per task, with its terminal event (success, fail, end), after the above.
        self.end_listeners: list[EventListener] = []
        # Told the tasks started and ended once per batch (take_writes, or settle): what counts
        # tasks (the metrics' histograms, the dashboard's charts) then does its work for the
        # whole batch at once instead of a call per task. Only kept while there are any.
        self.batch_listeners: list[BatchListener] = []
        self._started: list[TaskRecord] = []
        self._ended: list[TaskRecord] = []
        # Task events of one second of the hub clock (``counts_second``), per (action, event
        # type, group). The dashboard's rates and the metrics' counters are made from these,
        # so counting an event costs one dict lookup here instead of a listener call each:
        # each count is a one-item list, so its key (a tuple) is hashed once, not for a get
        # and again for a set; :attr:`counts` reads them out as ints.
        self._cells: dict[EventKey, list[int]] = {}
        self.counts_second = -1
        # The clock readings of ``counts_second``, [lo, hi): an event's check is two float
        # comparisons instead of int(at) (an empty range for a second <= 0: int() decides).
        self._second_lo = self._second_hi = 0.0
        # Told (second, its counts) once a second's counts are complete: at the first event
        # of a later second. Seconds without events are never told.
        self.second_listeners: list[Callable[[int, dict[EventKey, int]], None]] = []

    # --- messages ----------------------------------------------------------------------------
    def send(self, peer: Peer, msg: Message) -> None:
        if not peer.open:
            return
        peer.out.append(msg)
        if not peer.queued:
            peer.queued = True
            self._outgoing.append(peer)

    def _tell_started(self, task: Task, ev: EventRecord) -> None:
        """Tell ``task``'s followers it started: its ``start`` event, or its id in the one
        ``starts`` message of this output for a follower that takes those (no event message
        made, encoded and read per task; docs/protocol.md, "starts"). That message goes
        where the first start of the output went: no earlier message names a task it holds."""
        msg = None
        for peer in task.followers:
            if not peer.starts:
                msg = msg or event_msg(task, ev)
                self.send(peer, msg)
            elif peer.open:
                starts = peer.starts_msg
                if starts is None:
                    peer.starts_msg = starts = {"op": "starts", "tasks": []}
                    self.send(peer, starts)
                starts["tasks"].append(ev.task_id)

    def take_output(self) -> list[tuple[Peer, list[Message]]]:
        """Messages queued since the last call, per peer, in order."""
        out = []
        for peer in self._outgoing:
            peer.queued = False
            peer.starts_msg = None
            if peer.out:
                out.append((peer, peer.out))
                peer.out = []
        self._outgoing = []
        return out

    def tell_holders(self, task: Task, ev: EventRecord, *, but: Peer | None = None) -> None:
        """Tell the workers holding a delivery of ``task`` and its observers of ``ev`` (its
        message made only if someone but ``but`` is told: usually the one holder is ``but``)."""
        msg = None
        for d in task.deliveries.values():
            if d.holder is not None and d.holder.peer is not but:
                msg = msg or event_msg(task, ev)
                self.send(d.holder.peer, msg)
        for peer in task.observers:
            if peer is not but:
                msg = msg or event_msg(task, ev)
                self.send(peer, msg)

    @property
    def changed(self) -> bool:
        """Whether :meth:`take_writes` or :meth:`take_output` has anything."""
        return bool(
            self._dirty or self._events or self._outgoing or self._meta or self._meta_deleted
        )

    # --- writes ------------------------------------------------------------------------------
    def take_writes(self) -> WriteBatch:
        """The records changed and the events recorded since the last call, as a sealed
        batch: nothing in it is changed afterwards, so a store may keep it as it is. An ended
        task's record goes as it is (the lifecycle is done with it); a live one's goes as a
        copy of what the lifecycle changes in place (:func:`sealed_copy`), one per batch the
        task is in, which costs less than encoding it (docs/performance.md)."""
        if self._deferred_now:
            self._deferred_now = False
            if not (self._dirty or self._meta or self._meta_deleted):
                # A batch of nothing else is not written at all, so no fence would be checked
                # before its offers are sent: a hub another one has fenced out (paused past
                # its lease) must not hand out tasks. The offers are written then.
                self.write_deferred()
        events = self._events
        deferred = self._deferred
        if deferred:
            # A deferred offer goes with its task's next change: its events first (their seqs
            # are older than any of this batch's for that task).
            dirty = self._dirty
            now = [tid for tid in deferred if tid in dirty]
            if now:
                events = [e for tid in now for e in deferred.pop(tid)[1]] + events
        batch = WriteBatch(
            [
                rec
                if rec.state in TERMINAL_STATES
                # sealed_copy's one-delivery case, inline: a call less per live record.
                else _replace(rec, deliveries=[_replace(ds[0])])
                if len(ds := rec.deliveries) == 1
                else sealed_copy(rec)
                for rec in self._dirty.values()
            ],
            events,
            sealed=True,
        )
        if self._meta or self._meta_deleted:
            batch.meta = [MetaRecord(k, key, v) for (k, key), v in self._meta.items()]
            batch.meta_deleted = sorted(self._meta_deleted)
            self._meta = {}
            self._meta_deleted = set()
        self._dirty = {}
        self._events = []
        self.settle()
        return batch

    def settle(self) -> None:
        """Tell the batch listeners the tasks started and ended since they were last told.
        :meth:`take_writes` does, once per batch; a reader of their figures calls it first
        to count the batch under way too (as the event counts of the second under way)."""
        started, ended = self._started, self._ended
        if started or ended:
            self._started, self._ended = [], []
            for listener in self.batch_listeners:
                listener(started, ended)

    def write_deferred(self, task_id: str | None = None) -> None:
        """Write the deferred offers (of ``task_id`` only, if given) with the next batch: for a
        reader of the stored events, and before a partition stops."""
        if task_id is None:
            items = list(self._deferred.values())
            self._deferred = {}
        else:
            item = self._deferred.pop(task_id, None)
            items = [] if item is None else [item]
        for rec, events in items:
            # Ahead of this batch's events: theirs for the same task have later seqs.
            self._events[:0] = events
            self._dirty[rec.id] = rec

    def touch(self, task: Task) -> None:
        """Write the task's record with the next batch."""
        self._dirty[task.id] = task.rec

    def pending(self, task_id: str) -> TaskRecord | None:
        """The task's record if it changed since the last :meth:`take_writes` (not yet
        taken for writing), else ``None``."""
        return self._dirty.get(task_id)

    def pending_tasks(self) -> Mapping[str, TaskRecord]:
        """Every record changed since the last :meth:`take_writes`, by task id (read only)."""
        return self._dirty

    def put_meta(self, kind: str, key: str, value: Any) -> None:
        """Store a metadata entry in the next batch, with the task writes it goes with."""
        self._meta_deleted.discard((kind, key))
        self._meta[(kind, key)] = value

    def delete_meta(self, kind: str, key: str) -> None:
        self._meta.pop((kind, key), None)
        self._meta_deleted.add((kind, key))

    def pending_meta(self, kind: str) -> tuple[dict[str, Any], set[str]]:
        """This kind's metadata not yet taken for writing: (puts by key, deleted keys). A read
        of the store merges them over what it got, like ``Hub.unwritten`` for tasks."""
        puts = {key: v for (k, key), v in self._meta.items() if k == kind}
        return puts, {key for k, key in self._meta_deleted if k == kind}

    # --- events ------------------------------------------------------------------------------
    def event(
        self,
        task: Task,
        type_: str,
        *,
        group: str | None = None,
        service: str | None = None,
        data: Any = None,
        notify: bool = True,
        at: float | None = None,
        defer: bool = False,
    ) -> EventRecord:
        """Record an event of ``task`` (and write its record), count it, tell its followers
        (unless ``notify`` is false) and the listeners. ``at``: the clock's reading the caller
        just took for the same step (default: the clock now). ``defer`` (an offer), with
        :attr:`defer_offers`: the event and the record are written with the task's next
        change instead, unless it has changed in this batch already."""
        rec = task.rec
        rec.seq += 1
        if at is None:
            at = self.clock()
        ev = EventRecord(rec.id, rec.seq, at, type_, group, service, data)
        if defer and self.defer_offers and rec.id not in self._dirty:
            # Nothing of it needs to survive a crash: a restore offers a delivery that was
            # offered and not started again, as one still queued (recovery.py).
            self._deferred_now = True
            item = self._deferred.get(rec.id)
            if item is None:
                self._deferred[rec.id] = (rec, [ev])
            else:
                item[1].append(ev)
        else:
            self._events.append(ev)
            self._dirty[rec.id] = rec  # as touch, inline: four or more events per task
        if not self._second_lo <= at < self._second_hi:
            self._at_second(at)
        cell = self._cells.get((rec.action, type_, group))
        if cell is None:
            self._cells[(rec.action, type_, group)] = [1]
        else:
            cell[0] += 1
        if notify and task.followers:
            if type_ == "start":
                self._tell_started(task, ev)
            else:
                msg = event_msg(task, ev)
                for peer in task.followers:
                    self.send(peer, msg)
        for listener in self.listeners:
            listener(task, ev)
        return ev

    def inits(self, tasks: list[Task], service: str, at: float) -> None:
        """The ``init`` events of new tasks of one action published together at ``at``, as
        :meth:`event` records each (followers not told, as for any publish), counted once."""
        if not tasks:
            return
        if not self._second_lo <= at < self._second_hi:
            self._at_second(at)
        key = (tasks[0].rec.action, "init", None)
        cell = self._cells.get(key)
        if cell is None:
            self._cells[key] = [len(tasks)]
        else:
            cell[0] += len(tasks)
        events, dirty, listeners = self._events, self._dirty, self.listeners
        for task in tasks:
            rec = task.rec
            rec.seq += 1
            ev = EventRecord(rec.id, rec.seq, at, "init", None, service, None)
            events.append(ev)
            dirty[rec.id] = rec
            for listener in listeners:
                listener(task, ev)

    def task_started(self, task: Task, ev: EventRecord) -> None:
        """``task`` started (its first pickup, event ``ev``): tell the listeners."""
        for listener in self.start_listeners:
            listener(task, ev)
        if self.batch_listeners:
            # The live record: what a batch listener reads of it (action, created_at,
            # started_at, not_before) no longer changes once the task has started.
            self._started.append(task.rec)

    def task_ended(self, task: Task, ev: EventRecord) -> None:
        """``task`` ended (its terminal event ``ev``): tell the listeners."""
        for listener in self.end_listeners:
            listener(task, ev)
        if self.batch_listeners:
            self._ended.append(task.rec)  # sealed: an ended task's record no longer changes

    def listen(self, listener: EventListener, on: bool) -> None:
        """Have ``listener`` in :attr:`listeners` while ``on`` (idempotent): for a listener
        that has work only while someone is interested (watchers, waiting requests)."""
        if on:
            if listener not in self.listeners:
                self.listeners.append(listener)
        elif listener in self.listeners:
            self.listeners.remove(listener)

    @property
    def counts(self) -> dict[EventKey, int]:
        """Task events of the second :attr:`counts_second`, per (action, type, group)."""
        return {key: cell[0] for key, cell in self._cells.items()}

    def _at_second(self, at: float) -> None:
        """An event at ``at``, outside the range of :attr:`counts_second`'s readings."""
        second = int(at)
        if second > 0:
            self._second_lo, self._second_hi = float(second), float(second + 1)
        else:  # int() truncates toward zero: [second, second + 1) is not its range here
            self._second_lo = self._second_hi = 0.0
        if second != self.counts_second:
            self._next_second(second)

    def _next_second(self, second: int) -> None:
        done = self.counts
        self._cells = {}
        previous, self.counts_second = self.counts_second, second
        if done:
            for listener in self.second_listeners:
                listener(previous, done)
