"""The task lifecycle as a pure state machine: no sockets, no database, an injected clock.

The hub feeds it what connections say (:meth:`Lifecycle.publish`, :meth:`Lifecycle.pickup`, ...)
and the passing of time (:meth:`Lifecycle.advance`). It answers with messages queued on each
:class:`Peer` and with records to write (:meth:`Lifecycle.take_writes`). The hub must make the
writes durable *before* it sends the queued messages: nothing leaves the hub before the state
that caused it is stored.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from taskhub.errors import (
    InvalidOption,
    NotHolding,
    PermissionDenied,
    StaleAttempt,
    TaskNotFound,
)
from taskhub.intervals import parse_interval
from taskhub.names import allowed, reserved_action, validate_action
from taskhub.store.base import (
    TERMINAL_STATES,
    DeliveryRecord,
    EventRecord,
    MetaRecord,
    TaskRecord,
    WriteBatch,
)
from taskhub.timers import Timers

Clock = Callable[[], float]
Message = dict[str, Any]
_ENDED = frozenset({"done", "dropped", "failed"})
_json = msgspec.json.Encoder()
HELD = "chain"  # options key of a task the hub drives itself (chains.py): never offered
# Metadata kinds (store.base.MetaRecord) the lifecycle owns.
QUEUE_META = "queue"  # durable group subscriptions, key "<action> <group>"
DEAD_META = "dead"  # the dead-letter list, key: task id
# Failure reasons that put a task into the dead-letter list: it ran out of attempts, or its
# handler failed after its retries. Cancelled, timed-out and purged tasks were ended on purpose
# or by a deadline the publisher chose, so they are not "dead letters".
DEAD_REASONS = frozenset({"attempts", "error"})
# Options an [[actions]] entry may default (per action, between the task's and the hub's).
ACTION_OPTIONS = frozenset(
    {"timeout", "start_timeout", "retries", "max_attempts", "backoff", "backoff_max", "priority"}
)
# Options a re-queued dead letter keeps: not `key` (its window would hand back the dead task),
# nor delay/once_every (they were spent).
_REQUEUE_KEEP = (
    "timeout",
    "start_timeout",
    "retries",
    "max_attempts",
    "priority",
    "backoff",
    "backoff_max",
    "partition_key",
)
REQUEUE_OPTIONS = _REQUEUE_KEEP  # public: `taskhub tasks retry` copies the same options
TimerHandler = Callable[[str, float], None]


@dataclass
class Defaults:
    """Hub-wide defaults; a task's own options override the first five."""

    task_start_timeout: float | None = None  # None: wait forever for a worker (durable queue)
    task_end_timeout: float | None = 60.0
    retries: int = 0  # re-offers after a handler failure
    max_attempts: int = 5  # started attempts (lost or failed) before the delivery fails
    retry_backoff: float = 1.0  # first retry delay, doubled each time, with jitter
    retry_backoff_max: float = 300.0
    pickup_window: float = 10.0  # an offer neither acked nor picked up goes elsewhere after this
    inline_payload_limit: int = 64 * 1024  # larger payloads are fetched by the worker on demand
    idempotency_window: float = 3600.0  # how long a pub `key` keeps returning the same task
    # Per-action option defaults ([[actions]] in the config): action -> {option: value}; a
    # task's own option wins, then these, then the hub-wide defaults above.
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: bool = True  # keep exhausted tasks in the dead-letter list


@dataclass(eq=False)
class Credentials:
    name: str
    sub_permissions: tuple[str, ...] = ("*",)
    pub_permissions: tuple[str, ...] = ("*",)
    max_connections: int | None = None


@dataclass(eq=False)
class Peer:
    """A connection as the lifecycle sees it: who it is and what it is owed."""

    id: str
    creds: Credentials
    out: list[Message] = field(default_factory=list)
    subs: dict[str, Subscription] = field(default_factory=dict)  # by action
    holding: dict[str, Delivery] = field(default_factory=dict)  # by task id
    following: set[str] = field(default_factory=set)
    observing: set[str] = field(default_factory=set)
    open: bool = True
    queued: bool = False  # already in the lifecycle's list of peers with output

    @property
    def service(self) -> str:
        return self.creds.name


@dataclass(eq=False)
class Subscription:
    peer: Peer
    action: str
    group: str
    concurrency: int
    observe: bool
    inflight: int = 0


@dataclass(eq=False)
class Queue:
    """One group's deliveries of one action, waiting for a worker with free credit."""

    action: str
    group: str
    durable: bool = False
    workers: list[Subscription] = field(default_factory=list)
    waiting: list[tuple[int, int, Delivery]] = field(default_factory=list)  # heap
    rr: int = 0
    # partition_key -> the delivery that owns it (offered first, not yet ended); later ones of
    # the key wait in `parked`, in the order the heap gave them out.
    partitions: dict[str, Delivery] = field(default_factory=dict)
    parked: dict[str, deque[tuple[int, int, Delivery]]] = field(default_factory=dict)

    @property
    def subscribed(self) -> bool:
        return bool(self.workers) or self.durable


@dataclass(eq=False, slots=True)
class Delivery:
    task: Task
    rec: DeliveryRecord
    holder: Subscription | None = None
    acked: bool = False
    avoid: Peer | None = None  # let its pickup window lapse: offer elsewhere if possible


# Most tasks are followed by their publisher only and observed by nobody: they share this
# empty set until someone is added (two empty sets a task were ~430 B of ~2 KB in flight).
_NOBODY: frozenset[Peer] = frozenset()


@dataclass(eq=False, slots=True, weakref_slot=True)  # weakref: tests check tasks are freed
class Task:
    rec: TaskRecord
    seq: int  # heap tie-breaker: publish order
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    followers: set[Peer] | frozenset[Peer] = _NOBODY
    observers: set[Peer] | frozenset[Peer] = _NOBODY
    payload_size: int = 0

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def ended(self) -> bool:
        return self.rec.state in TERMINAL_STATES


def _size(value: Any) -> int:
    if isinstance(value, msgspec.Raw):
        return len(value)
    return len(_json.encode(value))


def _opt(value: Any, default: Any) -> Any:
    return default if value is msgspec.UNSET else value


def _check_options(opts: dict[str, Any]) -> None:
    """The checks every task's timeouts, retries and attempts pass (``Lifecycle._options``)."""
    for name in ("timeout", "start_timeout"):
        if opts[name] is not None and opts[name] < 0:
            raise InvalidOption(f"option {name!r} must be >= 0 seconds or null", option=name)
    if opts["retries"] < 0:
        raise InvalidOption("option 'retries' must be >= 0", option="retries")
    if opts["max_attempts"] < 1:
        raise InvalidOption("option 'max_attempts' must be >= 1", option="max_attempts")


def dead_letter(rec: TaskRecord) -> dict[str, Any]:
    """A dead-letter entry: a copy of what re-queueing needs and what an operator inspects.

    A copy, not a reference: retention removes the task record itself in time, the entry
    stays until it is re-queued or deleted.
    """
    return {
        "id": rec.id,
        "action": rec.action,
        "publisher": rec.publisher,
        "payload": rec.payload,
        "options": {k: v for k, v in rec.options.items() if k != "previous_result"},
        "error": rec.error,
        "created_at": rec.created_at,
        "ended_at": rec.ended_at,
        "deliveries": [
            {"group": d.group, "state": d.state, "tries": d.tries, "error": d.error}
            for d in rec.deliveries
        ],
    }


def queue_key(action: str, group: str) -> str:
    """The metadata key of a durable group: a space cannot occur in an action."""
    return f"{action} {group}"


def _queue_order(q: Queue) -> tuple[str, str]:
    return (q.action, q.group)


class _Options:
    """Stored options read back like a PubOptions (the lifecycle reads options by name)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


class Lifecycle:
    """Every rule of the task lifecycle, over in-memory state."""

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
        self.listeners: list[Callable[[Task, EventRecord], None]] = []
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
        ev = EventRecord(rec.id, rec.seq, self.clock(), type_, group, service, data)
        self._events.append(ev)
        self._touch(task)
        if notify and task.followers:
            msg = self._event_msg(task, ev)
            for peer in task.followers:
                self.send(peer, msg)
        for listener in self.listeners:
            listener(task, ev)
        return ev

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
            elif kind == "end":
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
        opts = self._options(options, d, now, action)
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

    def _options(
        self, options: Any, d: Defaults, now: float, action: str | None = None
    ) -> dict[str, Any]:
        per_action = d.actions.get(action, {}) if action is not None else {}
        if options is None and not per_action:
            # The common case (a pub without options, an action without defaults): the
            # hub-wide defaults, with the same checks as below and nothing else to read.
            opts: dict[str, Any] = {
                "timeout": d.task_end_timeout,
                "start_timeout": d.task_start_timeout,
                "retries": d.retries,
                "max_attempts": d.max_attempts,
                "priority": 0,
            }
            _check_options(opts)
            return opts

        def get(name: str, default: Any) -> Any:
            return _opt(getattr(options, name, msgspec.UNSET), per_action.get(name, default))

        opts = {
            "timeout": get("timeout", d.task_end_timeout),
            "start_timeout": get("start_timeout", d.task_start_timeout),
            "retries": get("retries", d.retries),
            "max_attempts": get("max_attempts", d.max_attempts),
            "priority": get("priority", 0),
        }
        # Backoff is stored only when the task or its action sets it: most tasks use the
        # hub's, and every stored option costs bytes in every task record.
        for name in ("backoff", "backoff_max"):
            value = get(name, None)
            if value is not None:
                if value < 0:
                    raise InvalidOption(f"option {name!r} must be >= 0 seconds", option=name)
                opts[name] = float(value)
        _check_options(opts)
        key = get("key", None)
        if key is not None:
            opts["key"] = key
        partition_key = get("partition_key", None)  # only the HTTP API sets it so far
        if partition_key is not None:
            opts["partition_key"] = str(partition_key)
        delay = get("delay", 0.0) or 0.0
        if isinstance(delay, str):  # "7 days", "PT1H": the HTTP API passes them through
            delay = parse_interval(delay, option="delay")
        at = get("at", None)
        if delay < 0:
            raise InvalidOption("option 'delay' must be >= 0 seconds", option="delay")
        not_before = at if at is not None else (now + delay if delay else 0.0)
        once_every = get("once_every", None)
        if once_every is not None:
            if isinstance(once_every, str):
                once_every = parse_interval(once_every, option="once_every")
            if once_every < 0:
                raise InvalidOption("option 'once_every' must be >= 0 seconds", option="once_every")
            opts["once_every"] = float(once_every)
            not_before = max(not_before, now + once_every)
        if not_before:
            opts["not_before"] = not_before
        return opts

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
        task = Task(rec, self._seq)
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
        if isinstance(task.observers, set):
            task.observers.add(peer)
        else:
            task.observers = {peer}
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
        if not d.acked:  # its pickup window is over too
            self.timers.cancel("pickup", self.defaults.pickup_window, d.task.id, d.rec.group)
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
        self._release(d)
        if count_try:
            d.rec.tries += 1
            if d.rec.tries >= int(d.task.rec.options.get("max_attempts", 1)):
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
    ) -> None:
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
            q = self.queues.get((action, group))
            if q is not None:
                self._dispatch(q)
            return
        sub = Subscription(peer, action, group, concurrency, observe)
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
        """The offer was acked (or given up): its pickup window no longer runs."""
        d.acked = True
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
            self._undebounce(task)
            timeout = task.rec.options.get("timeout")
            if timeout is not None:
                self.timers.after(task.rec.started_at, timeout, "end", task.id)
            self._event(task, "start", group=d.rec.group, service=service)
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
        self._finish(task, "success", result=result, by=peer)

    def drop(self, peer: Peer, task_id: str, attempt: int) -> None:
        d = self._held(peer, task_id, attempt)
        self._release(d)
        d.rec.state = "dropped"
        self._event(d.task, "drop", group=d.rec.group, service=peer.service)
        self._partition_done(d)
        self._check_end(d.task)

    def fail(
        self, peer: Peer, task_id: str, attempt: int, error: dict[str, Any], *, retry: bool = True
    ) -> None:
        d = self._held(peer, task_id, attempt)
        task = d.task
        self._release(d)
        d.rec.tries += 1
        d.rec.error = error
        opts = task.rec.options
        failures = d.rec.tries
        if (
            retry
            and failures <= int(opts.get("retries", 0))
            and failures < int(opts.get("max_attempts", 1))
        ):
            backoff = min(
                float(opts.get("backoff_max", self.defaults.retry_backoff_max)),
                float(opts.get("backoff", self.defaults.retry_backoff)) * 2 ** (failures - 1),
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
        reason = "attempts" if retry and failures >= int(opts.get("max_attempts", 1)) else "error"
        self._delivery_failed(d, {"reason": reason, **error})

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
        msg = self._event_msg(task, ev)
        if state == "success":
            self._tell_holders(task, msg, but=by)  # before their credit is given back below
        for d in task.deliveries.values():
            holder = d.holder
            if holder is None:
                if d.rec.state == "pending":
                    d.rec.state = "done"
                continue
            self._release(d)
            d.rec.state = "done"
            if state != "success":
                self.send(
                    holder.peer,
                    {
                        "op": "revoke",
                        "task": rec.id,
                        "attempt": d.rec.attempt,
                        "reason": reason or state,
                    },
                )
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
        if isinstance(task.followers, set):
            task.followers.add(peer)
        else:
            task.followers = {peer}
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

    # --- recovery ----------------------------------------------------------------------------
    def restore(self, records: Iterable[TaskRecord]) -> int:
        """Take back the unfinished tasks of a previous run (after a crash or restart).

        Deliveries that were offered or started go back to their groups: the hub cannot know
        whether their workers are still alive. A started one counts as a try.
        """
        now = self.clock()
        n = 0
        for rec in records:
            task = self._add(rec)
            task.payload_size = _size(rec.payload)
            n += 1
            key = rec.options.get("key")
            if key is not None:
                self.keys[f"{rec.action}\x00{key}"] = (rec.id, rec.created_at)
            opts = rec.options
            if rec.state == "init" and opts.get("start_timeout") is not None:
                self._arm(
                    max(rec.created_at, rec.not_before) + opts["start_timeout"], "start", rec.id
                )
            if rec.state == "start" and opts.get("timeout") is not None and rec.started_at:
                self._arm(rec.started_at + opts["timeout"], "end", rec.id)
            if HELD in opts:
                continue  # the hub drives it (chains.py); offering it would be a bug
            if "once_every" in opts and rec.state == "init":
                key = opts.get("key")
                self.debounce[f"{rec.action}\x00{'' if key is None else key}"] = rec.id
            if not rec.deliveries:
                if rec.not_before > now:
                    self._arm(rec.not_before, "due", rec.id)
                elif any(q.subscribed for q in self.by_action.get(rec.action, ())):
                    self._route(task)  # a durable group (restore_queues) takes it now
                else:
                    self.pooled.setdefault(rec.action, []).append(task)
                continue
            for drec in rec.deliveries:
                d = Delivery(task, drec)
                task.deliveries[drec.group] = d
                if drec.state in ("offered", "started"):
                    if drec.state == "started":
                        drec.tries += 1
                    if drec.tries >= int(opts.get("max_attempts", 1)):
                        drec.state = "failed"
                        drec.error = {
                            "reason": "attempts",
                            "type": "AttemptsExhausted",
                            "message": "gave up after a hub restart",
                        }
                        continue
                    drec.state = "pending"
                if drec.state == "pending" and drec.not_before > now:
                    self._arm(drec.not_before, "retry", rec.id, drec.group, drec.attempt)
                elif drec.state == "pending":
                    q = self._queue(rec.action, drec.group)
                    heapq.heappush(q.waiting, (-int(opts.get("priority", 0)), task.seq, d))
            self._check_end(task)
        if self.keys:
            self._keys_timer(now)
        return n

    def restore_queues(self, entries: Iterable[dict[str, Any]]) -> None:
        """Mark the stored durable groups subscribed again; call before :meth:`restore`, so
        restored tasks that were waiting for a group are routed to them."""
        for entry in entries:
            self._queue(str(entry["action"]), str(entry["group"])).durable = True

    # --- durable queues and dead letters (operations: docs/scheduling.md) ---------------------
    def queue_views(self) -> list[dict[str, Any]]:
        """Every group queue the hub knows, with its counts (admin listings)."""
        return [self.queue_view(q) for q in sorted(self.queues.values(), key=_queue_order)]

    def queue_view(self, q: Queue) -> dict[str, Any]:
        waiting = in_flight = 0
        for task in self.tasks.values():
            d = task.deliveries.get(q.group)
            if d is None or task.rec.action != q.action:
                continue
            if d.rec.state == "pending":
                waiting += 1
            elif d.rec.state in ("offered", "started"):
                in_flight += 1
        return {
            "action": q.action,
            "group": q.group,
            "durable": q.durable,
            "workers": len(q.workers),
            "credit": sum(s.concurrency for s in q.workers),
            "waiting": waiting,
            "in_flight": in_flight,
        }

    def find_queue(self, action: str, group: str) -> Queue:
        q = self.queues.get((action, group))
        if q is None:
            raise TaskNotFound(f"no queue for group {group!r} of {action!r}", action=action)
        return q

    def purge(self, creds: Credentials, action: str, group: str, *, forget: bool = False) -> int:
        """Fail the group's waiting deliveries (reason ``purged``); with ``forget`` the group
        also stops being durable (its stored subscription is removed). Needs sub permission
        for the action. Deliveries a worker holds are left alone: it is working on them.
        Returns how many deliveries were purged."""
        validate_action(action)
        if not allowed(creds.sub_permissions, action):
            raise PermissionDenied(f"{creds.name!r} may not purge {action!r}", action=action)
        q = self.find_queue(action, group)
        # Every pending delivery of the group: in the heap, parked behind its partition key,
        # or waiting out a retry backoff (not in the heap yet).
        error = {"reason": "purged", "type": "Purged", "message": f"purged by {creds.name}"}
        purged = [
            d
            for task in self.tasks.values()
            if task.rec.action == action
            and (d := task.deliveries.get(group)) is not None
            and d.rec.state == "pending"
        ]
        q.waiting = []
        q.parked.clear()
        for d in purged:
            self._delivery_failed(d, dict(error))
        if forget and q.durable:
            q.durable = False
            self.delete_meta(QUEUE_META, queue_key(action, group))
        if forget and not q.workers and not q.partitions:
            del self.queues[(action, group)]
            self.by_action[action].remove(q)
        return len(purged)

    def requeue(self, creds: Credentials, entry: dict[str, Any]) -> Task:
        """Publish a fresh copy of a dead letter (a new task id, ``requeued_from`` the dead
        one) and remove the entry in the same batch. Needs pub permission for the action."""
        options = entry.get("options") or {}
        kept = {k: options[k] for k in _REQUEUE_KEEP if k in options}
        task, _ = self.publish(
            Credentials(creds.name, pub_permissions=creds.pub_permissions),
            str(entry["action"]),
            entry.get("payload"),
            _Options(kept),
            extra={"requeued_from": entry["id"]},
        )
        assert isinstance(task, Task)  # no key, no once_every: always a new task
        self.delete_meta(DEAD_META, str(entry["id"]))
        return task

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
