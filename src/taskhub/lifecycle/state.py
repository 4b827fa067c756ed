"""The lifecycle's in-memory state: connections, subscriptions, deliveries and tasks, with the
names and constants the rest of the hub shares (the group queues are in ``queues.py``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from taskhub.protocol import plain
from taskhub.records import TERMINAL_STATES, DeliveryRecord, TaskRecord

Clock = Callable[[], float]
Message = dict[str, Any]
_json = msgspec.json.Encoder()
# Options key: the names of the worker-defaultable options (protocol.WORKER_OPTIONS) the
# publisher set itself; absent when it set none (the common case costs no bytes).
GIVEN = "given"
HELD = "chain"  # options key of a task the hub drives itself (chains.py): never offered
# Metadata kinds (records.MetaRecord) the lifecycle owns.
QUEUE_META = "queue"  # durable group subscriptions, key "<action> <group>"
DEAD_META = "dead"  # the dead-letter list, key: task id
# Failure reasons that put a task into the dead-letter list: it ran out of attempts, or its
# handler failed after its retries. Cancelled, timed-out and purged tasks were ended on purpose
# or by a deadline the publisher chose, so they are not "dead letters".
DEAD_REASONS = frozenset({"attempts", "error"})
TimerHandler = Callable[[str, float], None]
# (action, event type, group or None): what the lifecycle counts task events by.
EventKey = tuple[str, str, str | None]


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
    # The hub closed it (a partition moved, a link broke, the hub stops): not a worker lost,
    # so what it held goes back to its groups without counting a try.
    closed_by_hub: bool = False
    queued: bool = False  # already in the lifecycle's list of peers with output
    service: str = field(init=False)  # the credentials' name (a plain attribute: hot path)
    # What the dashboard shows of a connection (docs/dashboard.md): its `hello` (host, pid,
    # client version), the address it came from, when it connected, and how many of its
    # deliveries it finished, by outcome.
    hello: dict[str, Any] | None = None
    batch: bool = False  # it reads batched messages (its hello said so; docs/protocol.md)
    # It takes its followed tasks' start events as one `starts` message (its hello said so):
    # that message while it is being filled (Journal.started), until the output is taken.
    starts: bool = False
    starts_msg: dict[str, Any] | None = None
    remote: str | None = None
    connected_at: float = 0.0
    succeeded: int = 0
    failed: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self.service = self.creds.name


@dataclass(eq=False)
class Subscription:
    peer: Peer
    action: str
    group: str
    concurrency: int
    observe: bool
    inflight: int = 0
    # The worker's declared defaults (protocol.WorkerOptions, only those it set).
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, task: Task, name: str, default: Any) -> Any:
        """``name`` for ``task`` held by this worker: the publisher's value if it set one,
        else this worker's, else the task's stored one (hub config, hub default)."""
        opts = task.rec.options
        if self.options and name in self.options and name not in opts.get(GIVEN, ()):
            return self.options[name]
        return opts.get(name, default)


# Delivery and Task are structs for their constructor, which runs in C (a dataclass's runs
# in Python: ~50 bytecodes a task); eq=False keeps identity comparison and hashing.
class Delivery(msgspec.Struct, eq=False):
    task: Task
    rec: DeliveryRecord
    holder: Subscription | None = None
    acked: bool = False
    avoid: Peer | None = None  # let its pickup window lapse: offer elsewhere if possible


# Most tasks are followed by their publisher only and observed by nobody: they share this
# empty set until someone is added (two empty sets a task were ~430 B of ~2 KB in flight).
_NOBODY: frozenset[Peer] = frozenset()


def joined(members: set[Peer] | frozenset[Peer], peer: Peer) -> set[Peer]:
    """``members`` with ``peer`` added; the shared empty set becomes a set of the task's own."""
    if isinstance(members, set):
        members.add(peer)
        return members
    return {peer}


class Task(msgspec.Struct, eq=False, weakref=True):  # weakref: tests check tasks are freed
    id: str  # rec.id, kept as a plain attribute: read ~8 times per task on the hot path
    rec: TaskRecord
    seq: int  # heap tie-breaker: publish order
    deliveries: dict[str, Delivery] = msgspec.field(default_factory=dict)
    followers: set[Peer] | frozenset[Peer] = _NOBODY
    observers: set[Peer] | frozenset[Peer] = _NOBODY
    payload_size: int = 0

    @property
    def ended(self) -> bool:
        return self.rec.state in TERMINAL_STATES


def payload_size(value: Any) -> int:
    """A payload's size in JSON bytes (offers carry it inline up to a limit)."""
    if isinstance(value, msgspec.Raw):
        return len(value)
    return len(_json.encode(value))


def dead_letter(rec: TaskRecord) -> dict[str, Any]:
    """A dead-letter entry: a copy of what re-queueing needs and what an operator inspects.

    A copy, not a reference: retention removes the task record itself in time, the entry
    stays until it is re-queued or deleted.
    """
    return {
        "id": rec.id,
        "action": rec.action,
        "publisher": rec.publisher,
        "payload": plain(rec.payload),  # read back by views that cannot encode Raw
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


def options_of(d: Delivery) -> Callable[[str, Any], Any]:
    """How to read ``d``'s options: through its holder's declared defaults if any."""
    holder = d.holder
    if holder is not None and holder.options:
        return functools.partial(holder.option, d.task)
    return d.task.rec.options.get


def follow(peer: Peer, task: Task) -> None:
    """``peer`` hears the task's events until it ends (or ``peer`` disconnects)."""
    task.followers = joined(task.followers, peer)
    peer.following.add(task.id)
