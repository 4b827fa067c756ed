"""A task and a connection as the dashboard's lists show them: small rows, no payload."""

from __future__ import annotations

from typing import Any

from taskhub.hub.http.search import INTERNAL_PREFIX
from taskhub.lifecycle import Peer
from taskhub.names import CHAIN_ACTION, GROUP_ACTION
from taskhub.records import TERMINAL_STATES, TaskRecord

CURRENT = 20  # a connection's held deliveries listed, at most
# An ended task as the recent list keeps it: id, action, state, publisher, created_at,
# started_at, ended_at, updates, error, (group, delivery state) per delivery, and its chain
# (chain task id and step index) when it is a step. Taken when the terminal event fires; the
# row dict is only built when the task list is read.
Snapshot = tuple[
    str,
    str,
    str,
    str,
    float,
    float | None,
    float | None,
    int,
    dict[str, Any] | None,
    list[tuple[str, str]],
    tuple[str, int] | None,
]


def _chain_of(rec: TaskRecord) -> tuple[str, int] | None:
    chain = rec.options.get("chain_task")
    return (str(chain), int(rec.options.get("chain_step", 0))) if chain else None


def snapshot(rec: TaskRecord) -> Snapshot:
    ds = rec.deliveries
    return (
        rec.id,
        rec.action,
        rec.state,
        rec.publisher,
        rec.created_at,
        rec.started_at,
        rec.ended_at,
        rec.updates,
        rec.error,  # replaced on change, never mutated: the reference is a snapshot
        # One delivery (most tasks): a display, not a comprehension (a frame each in 3.11).
        [(ds[0].group, ds[0].state)] if len(ds) == 1 else [(d.group, d.state) for d in ds],
        _chain_of(rec) if "chain_task" in rec.options else None,
    )


def short_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error cut for a list row: the task page has all of it (tracebacks too)."""
    if error is None:
        return None
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in error.items() if k != "traceback"}


def row(snap: Snapshot) -> dict[str, Any]:
    """A task list row: no payload, result or update data, so the recent list stays small."""
    (task_id, action, state, publisher, created_at, started_at, ended_at, updates, error, ds,
     chain) = snap  # fmt: skip
    return {
        "id": task_id,
        "action": action,
        "state": state,
        "publisher": publisher,
        "created_at": created_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "updates": updates,
        "error": short_error(error),
        "groups": {group: _delivery_state(state, d_state) for group, d_state in ds},
        "kind": _kind(action),
        "chain": {"task": chain[0], "step": chain[1]} if chain else None,
    }


def summary(rec: TaskRecord) -> dict[str, Any]:
    return row(snapshot(rec))


def _kind(action: str) -> str:
    if action == CHAIN_ACTION:
        return "chain"
    if action == GROUP_ACTION:
        return "group"
    return "task"


def _delivery_state(task_state: str, state: str) -> str:
    # The terminal event comes before the lifecycle closes the deliveries: close them here
    # as it is about to (whatever was still pending, offered or started becomes done).
    if task_state in TERMINAL_STATES and state in ("pending", "offered", "started"):
        return "done"
    return state


def kind_matches(kind: str | None, action: str) -> bool:
    if kind == "all":
        return True
    internal = action.startswith(INTERNAL_PREFIX)
    return internal if kind == "chain" else not internal


def connection_view(peer: Peer, now: float, consumer: Any = None) -> dict[str, Any]:
    """A connection as the Workers page lists it: who it is (``peer``, the hub's own) and
    the work ``peer`` holds (:func:`with_work` puts in what its peers of other partitions
    hold)."""
    hello = peer.hello or {}
    view: dict[str, Any] = {
        "id": peer.id,
        "service": peer.service,
        "kind": "pull" if consumer is not None else "websocket",
        "host": hello.get("host"),
        "pid": hello.get("pid"),
        "client": hello.get("client"),
        "version": hello.get("version"),
        "remote": peer.remote,
        "connected_at": peer.connected_at,
        "uptime": max(0.0, now - peer.connected_at),
        **_counts(work(peer)),
    }
    if consumer is not None:
        view["last_seen"] = consumer.last_seen
        view["leases"] = len(consumer.leases)
    return view


def work(peer: Peer) -> dict[str, Any]:
    """What a connection's peer in one partition holds and did: its share of the view."""
    holding = sorted(peer.holding.values(), key=lambda d: d.task.id)
    return {
        "succeeded": peer.succeeded,
        "failed": peer.failed,
        "dropped": peer.dropped,
        "holding": len(peer.holding),
        "current": [
            {
                "task": d.task.id,
                "action": d.task.rec.action,
                "group": d.rec.group,
                "state": d.rec.state,
                "attempt": d.rec.attempt,
                "started_at": d.task.rec.started_at,
            }
            for d in holding[:CURRENT]
        ],
        "subscriptions": [
            {
                "action": s.action,
                "group": s.group,
                "concurrency": s.concurrency,
                "inflight": s.inflight,
                "observe": s.observe,
            }
            for s in peer.subs.values()
        ],
    }


def add_work(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add one partition's :func:`work` of a connection to another's."""
    for key in ("succeeded", "failed", "dropped", "holding"):
        into[key] += more[key]
    into["current"] = sorted([*into["current"], *more["current"]], key=lambda t: t["task"])
    del into["current"][CURRENT:]
    into["subscriptions"] = [*into["subscriptions"], *more["subscriptions"]]


def with_work(view: dict[str, Any], works: list[dict[str, Any]]) -> dict[str, Any]:
    """``view`` with the work of the connection's peers in other partitions added."""
    if not works:
        return view
    total = {k: view[k] for k in ("succeeded", "failed", "dropped", "holding", "current")}
    total["subscriptions"] = view["subscriptions"]
    for more in works:
        add_work(total, more)
    return {**view, **_counts(total)}


def _counts(w: dict[str, Any]) -> dict[str, Any]:
    return {"processed": w["succeeded"] + w["failed"] + w["dropped"], **w}


# The work of a connection that holds nothing and did nothing (yet).
IDLE: dict[str, Any] = {
    "processed": 0, "succeeded": 0, "failed": 0, "dropped": 0, "holding": 0, "current": [],
    "subscriptions": [],
}  # fmt: skip
