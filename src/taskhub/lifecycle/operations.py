"""The operator's tools over the lifecycle: group queue listings, purge, and re-queueing a
dead letter (docs/scheduling.md)."""

from __future__ import annotations

from typing import Any

from taskhub.errors import PermissionDenied
from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.options import REQUEUE_OPTIONS, StoredOptions
from taskhub.lifecycle.publishing import Publishing
from taskhub.lifecycle.queues import Queue, Queues
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import DEAD_META, QUEUE_META, Credentials, Task, queue_key
from taskhub.names import allowed, validate_action
from taskhub.records import DeliveryState


class Operations:
    """Durable queues and dead letters, as an operator handles them."""

    def __init__(
        self, shared: Shared, queues: Queues, ending: Ending, publishing: Publishing
    ) -> None:
        self.tasks = shared.tasks
        self.journal = shared.journal
        self.queues = queues
        self.ending = ending
        self.publishing = publishing

    def queue_views(self) -> list[dict[str, Any]]:
        """Every group queue the hub knows, with its counts (admin listings)."""
        ordered = sorted(self.queues.queues.values(), key=lambda q: q.order)
        return [self.queue_view(q) for q in ordered]

    def queue_view(self, q: Queue) -> dict[str, Any]:
        return self.queues.view(q, self.tasks)

    def purge(self, creds: Credentials, action: str, group: str, *, forget: bool = False) -> int:
        """Fail the group's waiting deliveries (reason ``purged``); with ``forget`` the group
        also stops being durable (its stored subscription is removed). Needs sub permission
        for the action. Deliveries a worker holds are left alone: it is working on them.
        Returns how many deliveries were purged."""
        validate_action(action)
        if not allowed(creds.sub_permissions, action):
            raise PermissionDenied(f"{creds.name!r} may not purge {action!r}", action=action)
        q = self.queues.find(action, group)
        # Every pending delivery of the group: in the heap, parked behind its partition key,
        # or waiting out a retry backoff (not in the heap yet).
        error = {"reason": "purged", "type": "Purged", "message": f"purged by {creds.name}"}
        purged = [
            d
            for task in self.tasks.values()
            if task.rec.action == action
            and (d := task.deliveries.get(group)) is not None
            and d.rec.state == DeliveryState.PENDING
        ]
        q.clear()
        q.parked.clear()
        for d in purged:
            self.ending.delivery_failed(d, dict(error))
        if forget and q.durable:
            q.durable = False
            self.journal.delete_meta(QUEUE_META, queue_key(action, group))
        if forget and not q.workers and not q.partitions:
            self.queues.remove(q)
        return len(purged)

    def requeue(self, creds: Credentials, entry: dict[str, Any]) -> Task:
        """Publish a fresh copy of a dead letter (a new task id, ``requeued_from`` the dead
        one) and remove the entry in the same batch. Needs pub permission for the action."""
        options = entry.get("options") or {}
        kept = {k: options[k] for k in REQUEUE_OPTIONS if k in options}
        task, _ = self.publishing.publish(
            Credentials(creds.name, pub_permissions=creds.pub_permissions),
            str(entry["action"]),
            entry.get("payload"),
            StoredOptions(kept),
            extra={"requeued_from": entry["id"]},
        )
        assert isinstance(task, Task)  # no key, no once_every: always a new task
        self.journal.delete_meta(DEAD_META, str(entry["id"]))
        return task
