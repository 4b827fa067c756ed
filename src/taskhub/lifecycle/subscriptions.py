"""Subscriptions and connections: a worker joins a group with its credit (or observes), leaves
it, and a closed connection gives back what it held (at-least-once)."""

from __future__ import annotations

from typing import Any

from taskhub.errors import InvalidOption, PermissionDenied
from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.queues import Queues
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import QUEUE_META, Peer, Subscription, queue_key
from taskhub.names import allowed, validate_action
from taskhub.records import DeliveryState


class Subscriptions:
    """Who works on (or observes) which action, with how much credit."""

    def __init__(self, shared: Shared, queues: Queues, ending: Ending) -> None:
        self.tasks = shared.tasks
        self.journal = shared.journal
        self.queues = queues
        self.ending = ending

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
            self._resubscribe(existing, group, concurrency, observe, options or {})
            return
        sub = Subscription(peer, action, group, concurrency, observe, options=options or {})
        peer.subs[action] = sub
        if observe:
            self.queues.observers.setdefault(action, []).append(sub)
            return
        q = self.queues.queue(action, group)
        if durable and not q.durable:
            q.durable = True
            # Stored, so the group exists again after a restart and keeps accumulating.
            self.journal.put_meta(
                QUEUE_META, queue_key(action, group), {"action": action, "group": group}
            )
        q.workers.append(sub)
        self.queues.route_pooled(action)
        q.dispatch()

    def _resubscribe(
        self,
        sub: Subscription,
        group: str,
        concurrency: int,
        observe: bool,
        options: dict[str, Any],
    ) -> None:
        """A ``sub`` again on the same action: a new credit and new declared defaults."""
        if sub.group != group or sub.observe != observe:
            raise InvalidOption(
                f"this connection already subscribes to {sub.action!r} as "
                f"{'observer' if sub.observe else 'group ' + repr(sub.group)}; "
                "unsubscribe first",
                option="group",
            )
        sub.concurrency = concurrency
        sub.options = options
        q = self.queues.queues.get((sub.action, group))
        if q is not None:
            q.dispatch()

    def unsubscribe(self, peer: Peer, action: str) -> None:
        sub = peer.subs.pop(action, None)
        if sub is None:
            return
        if sub.observe:
            self.queues.observers[action].remove(sub)
            return
        q = self.queues.queues[(action, sub.group)]
        q.workers.remove(sub)
        # What it holds stays with it until it answers or disconnects: it is working on it.

    def connect(self, peer: Peer) -> None:
        peer.open = True

    def disconnect(self, peer: Peer) -> None:
        """A connection is gone: its deliveries go back to their groups (at-least-once). A
        started one counts a try when the connection was lost (its worker may have died of
        it), not when the hub closed it (``peer.closed_by_hub``): one failover may close a
        worker once per partition that moves, and none of those closes is the task's doing."""
        peer.open = False
        for action in list(peer.subs):
            self.unsubscribe(peer, action)
        lost = not peer.closed_by_hub
        reason = "connection_lost" if lost else "closed_by_hub"
        for d in list(peer.holding.values()):
            started = d.rec.state == DeliveryState.STARTED
            self.ending.take_back(d, reason, count_try=started and lost)
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
