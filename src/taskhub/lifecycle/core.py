"""The rules of a task's life over in-memory state: publish, offer, credit and round robin,
worker steps, timers, the end, and the messages and writes each step causes."""

from __future__ import annotations

import functools
import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from taskhub.errors import InvalidOption, NotHolding, PermissionDenied, StaleAttempt, TaskNotFound
from taskhub.lifecycle.options import resolve_options
from taskhub.lifecycle.state import (
    _ENDED,
    DEAD_META,
    DEAD_REASONS,
    HELD,
    QUEUE_META,
    Clock,
    Credentials,
    Defaults,
    Delivery,
    EventKey,
    Message,
    Peer,
    Queue,
    Subscription,
    Task,
    TimerHandler,
    _size,
    dead_letter,
    joined,
    queue_key,
)
from taskhub.names import allowed, reserved_action, validate_action
from taskhub.records import DeliveryRecord, EventRecord, MetaRecord, TaskRecord, WriteBatch
from taskhub.timers import Timers


class LifecycleCore:
    """Every rule of a task's life, over in-memory state (:class:`Lifecycle` adds recovery
    and the operator's tools)."""

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
        self.rng = rng or random.Random()
        self.tasks: dict[str, Task] = {}  # every task not yet ended
        self.queues: dict[tuple[str, str], Queue] = {}
        self.by_action: dict[str, list[Queue]] = {}
        self.observers: dict[str, list[Subscription]] = {}
        self.pooled: dict[str, list[Task]] = {}  # published while no group subscribed
        self.keys: dict[str, tuple[str, float]] = {}  # idempotency key -> (task id, time)
        self._keys_armed = False
        # Called with every task event. Each costs a call per event (four per task at least),
        # so a listener with nothing to do should not be in the list: the hub adds its
        # watchers' and HTTP waiters' listeners only while there are any.
        self.listeners: list[Callable[[Task, EventRecord], None]] = []
        # Called once per task, with its start event (the first pickup), after the above.
        self.start_listeners: list[Callable[[Task, EventRecord], None]] = []
        # Called once per task, with its terminal event (success, fail, end), after the above.
        self.end_listeners: list[Callable[[Task, EventRecord], None]] = []
        # Task events of one second of the hub clock (``counts_second``), per (action, event
        # type, group). The dashboard's rates and the metrics' counters are made from these,
        # so counting an event costs one dict update here instead of a listener call each.
        self.counts: dict[EventKey, int] = {}
        self.counts_second = -1
        # Told (second, its counts) once a second's counts are complete: at the first event
        # of a later second. Seconds without events are never told.
        self.second_listeners: list[Callable[[int, dict[EventKey, int]], None]] = []
        self.timers = Timers()
        self._seq = 0
        self._dirty: dict[str, TaskRecord] = {}
        self._events: list[EventRecord] = []
        self._deleted: list[str] = []
        self._outgoing: list[Peer] = []
        self._meta: dict[tuple[str, str], Any] = {}  # metadata writes of this batch
        self._meta_deleted: set[tuple[str, str]] = set()
        # Extra timer kinds (schedules.py): kind -> fn(key, now). Their timers sit in the same
        # heap, so one clock drives everything and a fake clock tests it all.
        self.timer_handlers: dict[str, TimerHandler] = {}
        self.debounce: dict[str, str] = {}  # once_every "<action>\0<key>" -> waiting task id

    # --- output ------------------------------------------------------------------------------
    def send(self, peer: Peer, msg: Message) -> None:
        if not peer.open:
            return
        peer.out.append(msg)
        if not peer.queued:
            peer.queued = True
            self._outgoing.append(peer)

    def take_output(self) -> list[tuple[Peer, list[Message]]]:
        """Messages queued since the last call, per peer, in order."""
        out = []
        for peer in self._outgoing:
            peer.queued = False
            if peer.out:
                out.append((peer, peer.out))
                peer.out = []
        self._outgoing = []
        return out

    def take_writes(self) -> WriteBatch:
        batch = WriteBatch(list(self._dirty.values()), self._events, self._deleted)
        if self._meta or self._meta_deleted:
            batch.meta = [MetaRecord(k, key, v) for (k, key), v in self._meta.items()]
            batch.meta_deleted = sorted(self._meta_deleted)
            self._meta = {}
            self._meta_deleted = set()
        self._dirty = {}
        self._events = []
        self._deleted = []
        return batch

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

    def _touch(self, task: Task) -> None:
        self._dirty[task.rec.id] = task.rec

    def _event(
        self,
        task: Task,
        type_: str,
        *,
        group: str | None = None,
        service: str | None = None,
        data: Any = None,
        notify: bool = True,
    ) -> EventRecord:
        rec = task.rec
        rec.seq += 1
        at = self.clock()
        ev = EventRecord(rec.id, rec.seq, at, type_, group, service, data)
        self._events.append(ev)
        if int(at) != self.counts_second:
            self._next_second(int(at))
        counts = self.counts
        key = (rec.action, type_, group)
        counts[key] = counts.get(key, 0) + 1
        self._dirty[rec.id] = rec  # as _touch, inline: four or more events per task
        if notify and task.followers:
            msg = self._event_msg(task, ev)
            for peer in task.followers:
                self.send(peer, msg)
        for listener in self.listeners:
            listener(task, ev)
        return ev

    def listen(self, listener: Callable[[Task, EventRecord], None], on: bool) -> None:
        """Have ``listener`` in :attr:`listeners` while ``on`` (idempotent): for a listener
        that has work only while someone is interested (watchers, waiting requests)."""
        if on:
            if listener not in self.listeners:
                self.listeners.append(listener)
        elif listener in self.listeners:
            self.listeners.remove(listener)

    def _next_second(self, second: int) -> None:
        done, self.counts = self.counts, {}
        previous, self.counts_second = self.counts_second, second
        if done:
            for listener in self.second_listeners:
                listener(previous, done)

    @staticmethod
    def _event_msg(task: Task, ev: EventRecord) -> Message:
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

    # --- timers ------------------------------------------------------------------------------
    def _arm(self, at: float, kind: str, task_id: str, group: str = "", attempt: int = 0) -> None:
        self.timers.at(at, kind, task_id, group, attempt)

    def arm(self, at: float, kind: str, key: str) -> None:
        """Arm a timer of a kind registered in :attr:`timer_handlers`; when it fires the
        handler gets ``(key, now)``. Cancel lazily: the handler checks the key is still due."""
        if kind not in self.timer_handlers:
            raise ValueError(f"no handler for timer kind {kind!r}")
        self._arm(at, kind, key)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def advance(self, now: float | None = None) -> None:
        """Fire every timer due by ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        for kind, task_id, group, attempt in self.timers.pop_due(now):
            if kind == "keys":
                self._prune_keys(now)
                continue
            handler = self.timer_handlers.get(kind)
            if handler is not None:
                handler(task_id, now)
                continue
            task = self.tasks.get(task_id)
            if task is None:
                continue  # ended meanwhile: timers are cancelled lazily
            if kind == "start" and task.rec.state == "init":
                self._finish(
                    task,
                    "fail",
                    error={
                        "reason": "start_timeout",
                        "message": "no worker started the task in time",
                    },
                )
            elif kind == "end" and self._end_due(task, now):
                self._finish(
                    task,
                    "fail",
                    error={"reason": "timeout", "message": "the task did not finish in time"},
                )
            elif kind == "due":
                self._route(task)
            elif kind == "retry":
                d = task.deliveries.get(group)
                if d is not None and d.rec.state == "pending" and d.rec.attempt == attempt:
                    self._enqueue(d)
            elif kind == "pickup":
                d = task.deliveries.get(group)
                if (
                    d is not None
                    and d.rec.state == "offered"
                    and not d.acked
                    and d.rec.attempt == attempt
                ):
                    self._take_back(d, "pickup_window", count_try=False)

    @staticmethod
    def _end_due(task: Task, now: float) -> bool:
        """An end timer fired: still due unless ``extend`` moved the deadline later."""
        rec = task.rec
        timeout = rec.options.get("timeout")
        if timeout is None or rec.started_at is None:
            return False
        return bool(now >= rec.started_at + timeout - 1e-6)

    # --- publish -----------------------------------------------------------------------------
    def publish(
        self,
        creds: Credentials,
        action: str,
        payload: Any,
        options: Any = None,
        *,
        peer: Peer | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[Task | str, bool]:
        """Accept a task. Returns (task, created); ``created`` is False for a repeated ``key``.

        A repeated key of a task that has already ended answers with that task's id only: its
        record is in the store.
        """
        validate_action(action)
        if not allowed(creds.pub_permissions, action) or reserved_action(action):
            raise PermissionDenied(f"{creds.name!r} may not publish {action!r}", action=action)
        d = self.defaults
        now = self.clock()
        opts = resolve_options(options, d, now, action)
        if extra:  # set by the hub, not the publisher: a chain step's parent, previous_result
            opts.update(extra)
        key = opts.get("key")
        debounce_key = None
        if "once_every" in opts:
            # Debounce: a task of this action and key still waiting for a worker stands for
            # this pub too. The key is a debounce key here, not an idempotency key.
            debounce_key = f"{action}\x00{'' if key is None else key}"
            waiting = self._debounced(debounce_key)
            if waiting is not None:
                if peer is not None:
                    self._follow(peer, waiting)
                return waiting, False
        elif key is not None:
            known = self.keys.get(f"{action}\x00{key}")
            if known is not None and now - known[1] < d.idempotency_window:
                task = self.tasks.get(known[0])
                if task is not None:
                    if peer is not None:
                        self._follow(peer, task)
                    return task, False
                return known[0], False
        rec = TaskRecord(
            id=self.new_id(),
            action=action,
            publisher=creds.name,
            created_at=now,
            payload=payload,
            options=opts,
            not_before=opts.pop("not_before", 0.0),
        )
        task = self._add(rec)
        task.payload_size = _size(payload)
        if debounce_key is not None:
            self.debounce[debounce_key] = rec.id
        elif key is not None:
            self._keys_timer(now)
            self.keys[f"{action}\x00{key}"] = (rec.id, now)
        if peer is not None:
            self._follow(peer, task)
        self._event(task, "init", service=creds.name, notify=False)
        start_timeout = opts["start_timeout"]
        if start_timeout is not None:
            self._arm(max(now, rec.not_before) + start_timeout, "start", rec.id)
        if rec.not_before > now:
            self._arm(rec.not_before, "due", rec.id)
        else:
            self._route(task)
        return task, True

    def _debounced(self, debounce_key: str) -> Task | None:
        """The task still waiting (not started) under this once_every key, if any."""
        task_id = self.debounce.get(debounce_key)
        if task_id is None:
            return None
        task = self.tasks.get(task_id)
        if task is not None and task.rec.state == "init":
            return task
        del self.debounce[debounce_key]
        return None

    def _undebounce(self, task: Task) -> None:
        """The task started or ended: a later pub with its key makes a new one."""
        opts = task.rec.options
        if "once_every" in opts:
            key = opts.get("key")
            dkey = f"{task.rec.action}\x00{'' if key is None else key}"
            if self.debounce.get(dkey) == task.id:
                del self.debounce[dkey]

    def _add(self, rec: TaskRecord) -> Task:
        self._seq += 1
        task = Task(rec.id, rec, self._seq)
        self.tasks[rec.id] = task
        self._touch(task)
        return task

    def _route(self, task: Task) -> None:
        """Give the task to every subscribed group of its action, or pool it."""
        action = task.rec.action
        queues = [q for q in self.by_action.get(action, ()) if q.subscribed]
        for sub in self.observers.get(action, ()):
            self._observe(task, sub)
        if not queues:
            self.pooled.setdefault(action, []).append(task)
            return
        for q in queues:
            rec = DeliveryRecord(q.group)
            task.rec.deliveries.append(rec)
            d = Delivery(task, rec)
            task.deliveries[q.group] = d
            self._enqueue(d, q)
        self._touch(task)

    def _observe(self, task: Task, sub: Subscription) -> None:
        peer = sub.peer
        if peer in task.observers:
            return
        task.observers = joined(task.observers, peer)
        peer.observing.add(task.id)
        self.send(peer, self._offer_msg(task, sub.group, 0, observe=True))

    def _offer_msg(self, task: Task, group: str, attempt: int, *, observe: bool = False) -> Message:
        rec = task.rec
        msg: Message = {
            "op": "offer",
            "task": rec.id,
            "attempt": attempt,
            "action": rec.action,
            "group": group,
            "publisher": rec.publisher,
            "created_at": rec.created_at,
        }
        if task.payload_size <= self.defaults.inline_payload_limit:
            msg["payload"] = rec.payload
        else:
            msg["payload_size"] = task.payload_size
        if observe:
            msg["observe"] = True
        prev = rec.options.get("previous_result", msgspec.UNSET)
        if prev is not msgspec.UNSET:
            msg["previous_result"] = prev
        trace = rec.options.get("trace")
        if trace is not None:
            msg["trace"] = trace
        return msg

    # --- queues and credit -------------------------------------------------------------------
    def _queue(self, action: str, group: str) -> Queue:
        q = self.queues.get((action, group))
        if q is None:
            q = self.queues[(action, group)] = Queue(action, group)
            self.by_action.setdefault(action, []).append(q)
        return q

    def _enqueue(self, d: Delivery, q: Queue | None = None) -> None:
        q = q or self._queue(d.task.rec.action, d.rec.group)
        d.rec.state = "pending"
        prio = -int(d.task.rec.options.get("priority", 0))
        heapq.heappush(q.waiting, (prio, d.task.seq, d))
        self._dispatch(q)

    def _dispatch(self, q: Queue) -> None:
        while q.waiting and q.workers:
            sub = self._free_worker(q)
            if sub is None:
                return
            entry = heapq.heappop(q.waiting)
            d = entry[2]
            if d.task.ended or d.rec.state != "pending" or d.task.deliveries.get(q.group) is not d:
                continue  # stale heap entry
            if not self._partition_free(q, d, entry):
                continue  # parked until its partition key's delivery in flight ends
            if d.avoid is not None and sub.peer is d.avoid:
                sub = self._free_worker(q, avoid=d.avoid) or sub
            d.avoid = None
            self._offer(d, sub)

    # Partition keys: within a group, the tasks of one `partition_key` are worked one at a time,
    # in the order the queue gives them out (publish order within a priority). The first one
    # offered owns the key until its delivery ends, so a retry or a re-offer after a lost
    # worker keeps its place ahead of the later tasks of the key.
    def _partition_free(self, q: Queue, d: Delivery, entry: tuple[int, int, Delivery]) -> bool:
        key = d.task.rec.options.get("partition_key")
        if key is None:
            return True
        owner = q.partitions.get(key)
        if owner is None or owner is d:
            q.partitions[key] = d
            return True
        q.parked.setdefault(key, deque()).append(entry)
        return False

    def _partition_done(self, d: Delivery) -> None:
        """``d`` ended (done, dropped or failed): the next parked delivery of its key may go."""
        key = d.task.rec.options.get("partition_key")
        if key is None:
            return
        q = self.queues.get((d.task.rec.action, d.rec.group))
        if q is None or q.partitions.get(key) is not d:
            return
        del q.partitions[key]
        parked = q.parked.get(key)
        while parked:
            entry = parked.popleft()
            nd = entry[2]
            if not nd.task.ended and nd.task.deliveries.get(q.group) is nd:
                heapq.heappush(q.waiting, entry)
                break
        if parked is not None and not parked:
            del q.parked[key]
        self._dispatch(q)

    @staticmethod
    def _free_worker(q: Queue, avoid: Peer | None = None) -> Subscription | None:
        n = len(q.workers)
        for i in range(n):
            sub = q.workers[(q.rr + i) % n]
            if sub.inflight < sub.concurrency and sub.peer is not avoid:
                q.rr = (q.rr + i + 1) % n
                return sub
        return None

    def _offer(self, d: Delivery, sub: Subscription) -> None:
        rec = d.rec
        rec.attempt += 1
        rec.state = "offered"
        d.holder = sub
        d.acked = False
        sub.inflight += 1
        sub.peer.holding[d.task.id] = d
        self.send(sub.peer, self._offer_msg(d.task, rec.group, rec.attempt))
        self._event(
            d.task,
            "offer",
            group=rec.group,
            service=sub.peer.service,
            data={"attempt": rec.attempt},
            notify=False,
        )
        self.timers.after(
            self.clock(), self.defaults.pickup_window, "pickup", d.task.id, rec.group, rec.attempt
        )

    def _release(self, d: Delivery) -> None:
        """The delivery's holder no longer holds it: give its credit back."""
        sub = d.holder
        if sub is None:
            return
        if not d.acked:
            self._close_pickup_window(d)
        d.holder = None
        sub.inflight -= 1
        if sub.peer.holding.get(d.task.id) is d:
            del sub.peer.holding[d.task.id]
        q = self.queues.get((sub.action, sub.group))
        if q is not None and sub.peer.open:
            self._dispatch(q)

    def _take_back(self, d: Delivery, reason: str, *, count_try: bool) -> None:
        """Offer the delivery again to its group (at-least-once), or fail it when out of tries."""
        holder = d.holder
        if holder is not None:
            self.send(
                holder.peer,
                {"op": "revoke", "task": d.task.id, "attempt": d.rec.attempt, "reason": reason},
            )
            if reason == "pickup_window":
                d.avoid = holder.peer  # "goes to another connection of its group"
        max_attempts = int(self._options_of(d)("max_attempts", 1))
        self._release(d)
        if count_try:
            d.rec.tries += 1
            if d.rec.tries >= max_attempts:
                self._delivery_failed(
                    d,
                    {
                        "reason": "attempts",
                        "type": "AttemptsExhausted",
                        "message": f"gave up after {d.rec.tries} attempts (last: {reason})",
                    },
                )
                return
        self._event(d.task, "requeue", group=d.rec.group, data={"reason": reason}, notify=False)
        self._enqueue(d)

    # --- subscriptions -----------------------------------------------------------------------
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
        validate_action(action)
        if not allowed(peer.creds.sub_permissions, action):
            raise PermissionDenied(
                f"{peer.service!r} may not subscribe to {action!r}", action=action
            )
        if concurrency < 1:
            raise InvalidOption("concurrency must be >= 1", option="concurrency")
        group = group or peer.service
        existing = peer.subs.get(action)
        if existing is not None:
            if existing.group != group or existing.observe != observe:
                raise InvalidOption(
                    f"this connection already subscribes to {action!r} as "
                    f"{'observer' if existing.observe else 'group ' + repr(existing.group)}; "
                    "unsubscribe first",
                    option="group",
                )
            existing.concurrency = concurrency  # a new credit
            existing.options = options or {}
            q = self.queues.get((action, group))
            if q is not None:
                self._dispatch(q)
            return
        sub = Subscription(peer, action, group, concurrency, observe, options=options or {})
        peer.subs[action] = sub
        if observe:
            self.observers.setdefault(action, []).append(sub)
            return
        q = self._queue(action, group)
        if durable and not q.durable:
            q.durable = True
            # Stored, so the group exists again after a restart and keeps accumulating.
            self.put_meta(QUEUE_META, queue_key(action, group), {"action": action, "group": group})
        q.workers.append(sub)
        pooled = self.pooled.pop(action, None)
        if pooled:
            # in priority order: each routed task is offered at once while credit lasts
            pooled.sort(key=lambda t: (-int(t.rec.options.get("priority", 0)), t.seq))
            for task in pooled:
                if not task.ended and not task.deliveries:
                    task.rec.deliveries = []
                    self._route(task)
        self._dispatch(q)

    def unsubscribe(self, peer: Peer, action: str) -> None:
        sub = peer.subs.pop(action, None)
        if sub is None:
            return
        if sub.observe:
            self.observers[action].remove(sub)
            return
        q = self.queues[(action, sub.group)]
        q.workers.remove(sub)
        # What it holds stays with it until it answers or disconnects: it is working on it.

    # --- worker steps ------------------------------------------------------------------------
    def _held(self, peer: Peer, task_id: str, attempt: int) -> Delivery:
        d = peer.holding.get(task_id)
        if d is not None and d.rec.attempt == attempt:
            return d
        task = self.tasks.get(task_id)
        if task is None:
            raise NotHolding(f"task {task_id} has ended or does not exist", task=task_id)
        sub = peer.subs.get(task.rec.action)
        mine = task.deliveries.get(sub.group) if sub else None
        if mine is not None and attempt < mine.rec.attempt:
            raise StaleAttempt(
                f"attempt {attempt} of task {task_id} was offered again (now attempt "
                f"{mine.rec.attempt}); this step is not counted",
                task=task_id,
            )
        raise NotHolding(
            f"this connection does not hold task {task_id} (attempt {attempt})", task=task_id
        )

    def ack(self, peer: Peer, task_id: str, attempt: int) -> None:
        if task_id in self.tasks:  # an ack racing the task's end is harmless
            d = self._held(peer, task_id, attempt)
            if not d.acked:
                self._picked(d)

    def _picked(self, d: Delivery) -> None:
        """The offer was acked: its pickup window no longer runs."""
        d.acked = True
        self._close_pickup_window(d)

    def _close_pickup_window(self, d: Delivery) -> None:
        self.timers.cancel("pickup", self.defaults.pickup_window, d.task.id, d.rec.group)

    def pickup(self, peer: Peer, task_id: str, attempt: int) -> None:
        if task_id in self.tasks:  # so is a pickup: the worker will hear how it ended
            self._start(self._held(peer, task_id, attempt))

    def _start(self, d: Delivery) -> None:
        if not d.acked:
            self._picked(d)
        if d.rec.state != "offered":
            return  # idempotent
        d.rec.state = "started"
        task = d.task
        service = d.holder.peer.service if d.holder else None
        if task.rec.state == "init":
            task.rec.state = "start"
            task.rec.started_at = self.clock()
            if self.debounce:  # only once_every tasks are there
                self._undebounce(task)
            timeout = task.rec.options.get("timeout")
            if d.holder is not None and d.holder.options:
                # The starting worker's declared timeout, unless the publisher set one: kept
                # in the record, so views show it and the end timer is cancelled by it.
                timeout = d.holder.option(task, "timeout", timeout)
                task.rec.options["timeout"] = timeout
            if timeout is not None:
                self.timers.after(task.rec.started_at, timeout, "end", task.id)
            ev = self._event(task, "start", group=d.rec.group, service=service)
            for listener in self.start_listeners:
                listener(task, ev)
        else:
            self._event(task, "pickup", group=d.rec.group, service=service, notify=False)

    def update(self, peer: Peer, task_id: str, attempt: int, data: Any) -> None:
        task = self.tasks.get(task_id)
        if attempt == 0 and task is not None and peer in task.observers:
            pass  # observers may update without holding a delivery
        else:
            d = self._held(peer, task_id, attempt)
            self._start(d)
            task = d.task
        task.rec.updates += 1
        task.rec.last_update = data
        ev = self._event(task, "update", service=peer.service, data=data)
        self._tell_holders(task, self._event_msg(task, ev), but=peer)

    def _tell_holders(self, task: Task, msg: Message, *, but: Peer | None = None) -> None:
        for d in task.deliveries.values():
            if d.holder is not None and d.holder.peer is not but:
                self.send(d.holder.peer, msg)
        for peer in task.observers:
            if peer is not but:
                self.send(peer, msg)

    def complete(self, peer: Peer, task_id: str, attempt: int, result: Any) -> None:
        """A ``return``: the first one wins; later ones (any attempt) are ignored."""
        task = self.tasks.get(task_id)
        if task is None:
            return  # already ended: a late return is not an error
        d = peer.holding.get(task_id)
        if d is not None and d.rec.attempt == attempt:
            self._start(d)
        elif peer in task.observers:
            raise NotHolding(
                f"observers cannot return a result for task {task_id}; the hub "
                "does not wait for them",
                task=task_id,
            )
        else:
            sub = peer.subs.get(task.rec.action)
            mine = task.deliveries.get(sub.group) if sub else None
            if mine is None or attempt > mine.rec.attempt or attempt < 1:
                raise NotHolding(
                    f"this connection was never offered task {task_id} (attempt {attempt})",
                    task=task_id,
                )
            # A stale attempt's return still completes the task (first wins); the current
            # holder, if any, hears `success` from _finish like every other holder.
        peer.succeeded += 1
        self._finish(task, "success", result=result, by=peer)

    def drop(self, peer: Peer, task_id: str, attempt: int) -> None:
        d = self._held(peer, task_id, attempt)
        peer.dropped += 1
        self._release(d)
        d.rec.state = "dropped"
        self._event(d.task, "drop", group=d.rec.group, service=peer.service)
        self._partition_done(d)
        self._check_end(d.task)

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
        """The handler failed. ``delay`` (the handler raised Retry): offer again after
        exactly that delay while ``max_attempts`` allows, whatever ``retries`` says."""
        d = self._held(peer, task_id, attempt)
        peer.failed += 1
        task = d.task
        opt = self._options_of(d)
        self._release(d)
        d.rec.tries += 1
        d.rec.error = error
        failures = d.rec.tries
        max_attempts = int(opt("max_attempts", 1))
        if (
            retry
            and failures < max_attempts
            and (delay is not None or failures <= int(opt("retries", 0)))
        ):
            if delay is not None:
                backoff = max(0.0, delay)
            else:
                backoff = min(
                    float(opt("backoff_max", self.defaults.retry_backoff_max)),
                    float(opt("backoff", self.defaults.retry_backoff)) * 2 ** (failures - 1),
                )
                backoff *= 0.5 + self.rng.random() / 2  # jitter: spread a burst of retries
            d.rec.state = "pending"
            d.rec.not_before = self.clock() + backoff
            self._event(
                task,
                "retry",
                group=d.rec.group,
                service=peer.service,
                data={"error": error, "in": round(backoff, 3), "tries": failures},
            )
            self._arm(d.rec.not_before, "retry", task.id, d.rec.group, d.rec.attempt)
            return
        reason = "attempts" if retry and failures >= max_attempts else "error"
        self._delivery_failed(d, {"reason": reason, **error})

    @staticmethod
    def _options_of(d: Delivery) -> Callable[[str, Any], Any]:
        """How to read ``d``'s options: through its holder's declared defaults if any."""
        holder = d.holder
        if holder is not None and holder.options:
            return functools.partial(holder.option, d.task)
        return d.task.rec.options.get

    def release(self, peer: Peer, task_id: str, attempt: int) -> None:
        """The holder hands the delivery back unfinished (it is stopping): offered again, to
        another connection of the group when there is one, without counting a try."""
        d = self._held(peer, task_id, attempt)
        d.avoid = peer
        self._take_back(d, "released", count_try=False)

    def extend(self, peer: Peer, task_id: str, attempt: int, seconds: float) -> None:
        """Push the task's end deadline to at least ``seconds`` from now (never earlier);
        a task without an end timeout keeps none."""
        if seconds < 0:
            raise InvalidOption("extend: seconds must be >= 0", option="seconds")
        d = self._held(peer, task_id, attempt)
        self._start(d)
        rec = d.task.rec
        timeout = rec.options.get("timeout")
        if timeout is None or rec.started_at is None:
            return
        wanted = self.clock() + seconds - rec.started_at
        if wanted <= timeout:
            return
        self.timers.cancel("end", timeout, rec.id)
        rec.options["timeout"] = wanted
        # Its own deadline, in the heap: a lane per extended task would crowd out the lanes
        # of the common timeouts. The old heap entry (if any) is skipped when it fires.
        self.timers.at(rec.started_at + wanted, "end", rec.id)
        self._event(
            d.task,
            "extend",
            group=d.rec.group,
            service=peer.service,
            data={"timeout": round(wanted, 3)},
            notify=False,
        )

    def _delivery_failed(self, d: Delivery, error: dict[str, Any]) -> None:
        d.rec.state = "failed"
        d.rec.error = error
        self._event(d.task, "delivery_fail", group=d.rec.group, data=error, notify=False)
        self._partition_done(d)
        self._check_end(d.task)

    def _check_end(self, task: Task) -> None:
        if task.ended or any(d.rec.state not in _ENDED for d in task.deliveries.values()):
            return
        failed = [d for d in task.deliveries.values() if d.rec.state == "failed"]
        if failed:
            self._finish(task, "fail", error=failed[0].rec.error or {"reason": "error"})
        else:
            self._finish(task, "end")

    def cancel(self, creds: Credentials, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"no running task {task_id}", task=task_id)
        if creds.name != task.rec.publisher and not allowed(creds.pub_permissions, task.rec.action):
            raise PermissionDenied(
                f"{creds.name!r} may not cancel task {task_id}", action=task.rec.action
            )
        self._finish(
            task, "fail", error={"reason": "cancelled", "message": f"cancelled by {creds.name}"}
        )
        return task

    def _finish(
        self,
        task: Task,
        state: str,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        by: Peer | None = None,
    ) -> None:
        rec = task.rec
        rec.state = state
        rec.ended_at = self.clock()
        rec.result = result
        rec.error = error
        del self.tasks[rec.id]
        if self.debounce:  # only once_every tasks are there
            self._undebounce(task)
        timeout = rec.options.get("timeout")
        if timeout is not None and rec.started_at is not None:
            self.timers.cancel("end", timeout, rec.id)
        if (
            state == "fail"
            and self.defaults.dead_letters
            and (error or {}).get("reason") in DEAD_REASONS
            and HELD not in rec.options
        ):
            self.put_meta(DEAD_META, rec.id, dead_letter(rec))
        reason = (error or {}).get("reason")
        data = result if state == "success" else error
        ev = self._event(task, state, service=by.service if by else None, data=data)
        for listener in self.end_listeners:
            listener(task, ev)
        msg = self._event_msg(task, ev)
        if state == "success":
            self._tell_holders(task, msg, but=by)  # before their credit is given back below
        for d in task.deliveries.values():
            holder = d.holder
            if holder is None:
                if d.rec.state == "pending":
                    d.rec.state = "done"
                continue
            if state != "success":
                # Before the credit is given back: the offer it frees must follow the revoke,
                # or the worker holds one more than its credit until the revoke arrives.
                self.send(
                    holder.peer,
                    {
                        "op": "revoke",
                        "task": rec.id,
                        "attempt": d.rec.attempt,
                        "reason": reason or state,
                    },
                )
            self._release(d)
            d.rec.state = "done"
        for peer in task.observers:
            peer.observing.discard(rec.id)
            if state != "success" and peer is not by:
                self.send(peer, msg)
        for peer in task.followers:
            peer.following.discard(rec.id)
        for d in task.deliveries.values():
            self._partition_done(d)
        # Deliveries point back at their task: without this cycle an ended task is freed
        # as soon as nothing else holds it, instead of waiting for the garbage collector.
        task.deliveries = {}

    # --- tasks the hub drives itself (chains.py) ----------------------------------------------
    def hold(
        self,
        creds: Credentials,
        action: str,
        payload: Any,
        options: dict[str, Any],
        *,
        peer: Peer | None = None,
    ) -> Task:
        """Store a task that no worker is offered: a chain, run by the hub step by step.

        It is followed, watched, read, cancelled and restored like any task; ``options[HELD]``
        keeps :meth:`restore` from pooling it. Its state is ``start`` from the outset.
        """
        now = self.clock()
        rec = TaskRecord(
            id=self.new_id(),
            action=action,
            publisher=creds.name,
            created_at=now,
            payload=payload,
            options={HELD: {}, **options},
            state="start",
            started_at=now,
        )
        task = self._add(rec)
        if peer is not None:
            self._follow(peer, task)
        self._event(task, "init", service=creds.name, notify=False)
        return task

    def record(self, task: Task, type_: str, data: Any = None) -> None:
        """Record (and stream to followers and watchers) an event of a held task."""
        self._event(task, type_, data=data)

    def finish(
        self,
        task: Task,
        state: str,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """End a held task (``success``, ``fail`` or ``end``); a no-op once it has ended."""
        if not task.ended:
            self._finish(task, state, result=result, error=error)

    # --- reading and following ---------------------------------------------------------------
    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def follow(self, peer: Peer, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        if task is not None:
            self._follow(peer, task)
        return task

    def _follow(self, peer: Peer, task: Task) -> None:
        task.followers = joined(task.followers, peer)
        peer.following.add(task.id)

    def may_read(self, creds: Credentials, rec: TaskRecord) -> bool:
        return (
            creds.name == rec.publisher
            or allowed(creds.sub_permissions, rec.action)
            or allowed(creds.pub_permissions, rec.action)
        )

    # --- connections -------------------------------------------------------------------------
    def connect(self, peer: Peer) -> None:
        peer.open = True

    def disconnect(self, peer: Peer) -> None:
        """A connection is gone: its deliveries go back to their groups (at-least-once)."""
        peer.open = False
        for action in list(peer.subs):
            self.unsubscribe(peer, action)
        for d in list(peer.holding.values()):
            self._take_back(d, "connection_lost", count_try=d.rec.state == "started")
        for task_id in peer.following:
            task = self.tasks.get(task_id)
            if task is not None and isinstance(task.followers, set):
                task.followers.discard(peer)
        peer.following.clear()
        for task_id in peer.observing:
            task = self.tasks.get(task_id)
            if task is not None and isinstance(task.observers, set):
                task.observers.discard(peer)
        peer.observing.clear()

    def take_back(
        self, peer: Peer, task_id: str, attempt: int, reason: str, *, count_try: bool
    ) -> None:
        """Give one delivery ``peer`` holds back to its group, as a closed connection would (a
        pull consumer's lease ran out, or it stopped). Raises NotHolding or StaleAttempt."""
        self._take_back(self._held(peer, task_id, attempt), reason, count_try=count_try)

    def _keys_timer(self, now: float) -> None:
        if not self._keys_armed:
            self._keys_armed = True
            self._arm(now + self.defaults.idempotency_window / 4, "keys", "")

    def _prune_keys(self, now: float) -> None:
        window = self.defaults.idempotency_window
        for k, (_, at) in list(self.keys.items()):
            if now - at >= window:
                del self.keys[k]
            else:
                break  # insertion order is time order
        self._keys_armed = False
        if self.keys:
            self._keys_timer(now)
