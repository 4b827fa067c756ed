"""The dashboard's numbers and lists over every partition of the deployment, whichever hub
serves the page (docs/dashboard.md, "Several hubs").

Each hub computes its share — live tasks, queues and the connections' work of the partitions
it leads, its own clients, its rates and ended counts — in :func:`share`, which other hubs
ask for over the hub-to-hub link (``Admin.ops``: ``dashboard``, ``dashboard_tasks``); the hub
serving the page adds the shares up (:func:`stats`, :func:`tasks`). A partition that no hub
leads right now, or whose hub does not answer, is left out and named (``missing``) rather
than failing the page.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from taskhub.errors import TaskHubError
from taskhub.hub.dashboard.monitor import Monitor
from taskhub.hub.dashboard.rows import IDLE, connection_view, with_work, work
from taskhub.hub.hub import Hub
from taskhub.hub.partition import LocalPartition
from taskhub.hub.router import task_partition
from taskhub.hub.views import event_view
from taskhub.lifecycle import Credentials, Peer
from taskhub.records import TERMINAL_STATES

OPERATOR = Credentials("dashboard")  # the operations read every action
# Seconds another hub has to answer before the page leaves its partitions out (`missing`): a
# stalled hub's link breaks only after ping_interval + ping_timeout (10 s by default).
ASK_TIMEOUT = 2.0
# Seconds between two reads of a task's events that another hub stores (its task page).
EVENTS_POLL = 0.5
_COUNTED = ("published", "started", "succeeded", "failed", "ended", "failed_tries")

# The pull consumers by connection id (the HTTP API's, when it is installed).
Pull = Callable[[], dict[str, Any]]


def install(hub: Hub, monitor: Monitor, pull: Pull) -> None:
    """Let other hubs ask this one for its share (over the link)."""

    async def dashboard(
        creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> dict[str, Any]:
        return share(hub, monitor, parts, pull())

    async def dashboard_tasks(
        creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> list[dict[str, Any]]:
        led, count = {part.index for part in parts}, hub.partitions
        # The recent list keeps what ended in any partition this hub led: the ones it leads
        # now first, then the limit (the hub that leads the others answers for them).
        rows = monitor.tasks(
            args.get("action"),
            args.get("state"),
            args.get("kind"),
            None,
            lcs=[part.lc for part in parts],
        )
        return [r for r in rows if task_partition(r["id"], count) in led][: int(args["limit"])]

    async def dashboard_events(
        creds: Credentials, parts: list[LocalPartition], args: dict[str, Any]
    ) -> dict[str, Any]:
        task_id, after, part = str(args["task"]), int(args["after"]), parts[0]
        part.lc.write_deferred(task_id)  # its offers too (Lifecycle.defer_offers)
        await part.flush()  # what it has applied so far is stored: the events are all there
        stored = await part.store.get_events(task_id)
        return {
            "events": [event_view(ev) for ev in stored if ev.seq > after],
            "live": part.lc.get(task_id) is not None,
        }

    hub.admin.ops["dashboard"] = dashboard
    hub.admin.ops["dashboard_tasks"] = dashboard_tasks
    hub.admin.ops["dashboard_events"] = dashboard_events


def _peers(hub: Hub, part: LocalPartition) -> list[Peer]:
    # Partition 0 of a hub that leads every partition uses the hub's peers themselves.
    return list(part.peers.values()) if part.own_peers else list(hub.senders)


def share(
    hub: Hub, monitor: Monitor, parts: list[LocalPartition], pull: dict[str, Any]
) -> dict[str, Any]:
    """This hub's share of the dashboard's numbers: the partitions ``parts`` (those it
    leads), its own clients, and what it counted since it started."""
    counts, queues = monitor.live([part.lc for part in parts])
    works: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for peer in _peers(hub, part):
            works.setdefault(peer.id, []).append(work(peer))
    now = hub.clock()
    clients = []
    for peer in hub.connections.clients():
        # Who it is; its work is in `works`, from its peer in each partition (here and on
        # the other hubs: one connection, one row).
        view = {**connection_view(peer, now, pull.get(peer.id)), **IDLE, "hub": hub.name}
        clients.append(view)
    return {
        "hub": hub.name,
        "partitions": sorted(part.index for part in parts),
        "counts": {**counts, **monitor.ended},
        "rates": monitor.rates(),
        "queues": queues,
        "clients": clients,
        "works": works,
        "services": dict(hub.registry.connections),
    }


async def stats(hub: Hub, monitor: Monitor, pull: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's live numbers over every partition of the deployment (its shares)."""
    if hub.partitions == 1:
        shares = [share(hub, monitor, hub.parts, pull)]
        missing: list[int] = []
    else:
        shares, missing = await hub.admin.everywhere(
            "dashboard", OPERATOR, partial=True, timeout=ASK_TIMEOUT, every_hub=True
        )
    counts: dict[str, int] = {}
    services: dict[str, int] = {}
    for s in shares:
        for into, more in ((counts, s["counts"]), (services, s["services"])):
            for key, n in more.items():
                into[key] = into.get(key, 0) + n
    return {
        "hub": hub.name,
        "hubs": [{"name": s["hub"], "partitions": s["partitions"]} for s in shares],
        "missing": missing,
        "counts": counts,
        "rates": _rates([row for s in shares for row in s["rates"]]),
        "queues": sorted(
            (q for s in shares for q in s["queues"]), key=lambda q: (q["action"], q["group"])
        ),
        "connections": _connections(shares),
        "services": services,
    }


def _connections(shares: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every hub's clients, each with the work its peers hold in every partition."""
    works: dict[str, list[dict[str, Any]]] = {}
    for s in shares:
        for conn, each in s["works"].items():
            works.setdefault(conn, []).extend(each)
    views = [with_work(view, works.get(view["id"], [])) for s in shares for view in s["clients"]]
    return sorted(views, key=lambda v: (v["service"], v["id"]))


def _rates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rate rows of several hubs, one per action (its groups added up too)."""
    by_action: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = by_action.get(row["action"])
        if into is None:
            by_action[row["action"]] = {**row, "groups": [dict(g) for g in row["groups"]]}
            continue
        for key in _COUNTED:
            into[key] += row[key]
        groups = {g["group"]: g for g in into["groups"]}
        for g in row["groups"]:
            if g["group"] in groups:
                groups[g["group"]]["started"] += g["started"]
                groups[g["group"]]["failed"] += g["failed"]
            else:
                into["groups"].append(dict(g))
        into["groups"].sort(key=lambda g: g["group"])
    return [by_action[a] for a in sorted(by_action)]


async def tasks(
    hub: Hub, monitor: Monitor, action: str | None, state: str | None, kind: str, limit: int
) -> list[dict[str, Any]]:
    """The live and recently ended tasks of every partition, newest first."""
    if hub.partitions == 1:
        return monitor.tasks(action, state, kind, limit)
    args = {"action": action, "state": state, "kind": kind, "limit": limit}
    shares, _ = await hub.admin.everywhere(
        "dashboard_tasks", OPERATOR, args, partial=True, timeout=ASK_TIMEOUT
    )
    rows: dict[str, dict[str, Any]] = {}
    for row in (r for share in shares for r in share):
        rows.setdefault(row["id"], row)
    return sorted(rows.values(), key=lambda r: r["id"], reverse=True)[:limit]


def led_elsewhere(hub: Hub, task_id: str) -> int | None:
    """The partition of ``task_id`` when another hub leads it (reached over the link)."""
    slot = hub.router.slot_of_task(task_id)
    return slot.index if slot.linked is not None else None


async def remote_events(hub: Hub, index: int, task_id: str, after: int) -> AsyncIterator[bytes]:
    """The event stream of a task partition ``index`` holds on another hub: its stored events
    after ``after``, then what it stores, asked for every :data:`EVENTS_POLL` seconds, until
    its terminal event. It ends when the hub shuts down or the other hub cannot be asked (an
    EventSource reconnects with ``Last-Event-ID``)."""
    seq, ended = after, asyncio.Event()
    with hub.long_wait(ended.set):
        while not ended.is_set():
            try:
                got = await hub.admin.at(
                    index, "dashboard_events", OPERATOR, {"task": task_id, "after": seq}
                )
            except TaskHubError:
                return
            for ev in got["events"]:
                seq = max(seq, int(ev["seq"]))
                yield b"id: %d\ndata: %s\n\n" % (ev["seq"], msgspec.json.encode(ev))
                if ev["type"] in TERMINAL_STATES:
                    return
            if not got["live"] and not got["events"]:
                return  # ended, and its terminal event is no longer stored (retention)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), EVENTS_POLL)


__all__ = ["install", "led_elsewhere", "remote_events", "share", "stats", "tasks"]
