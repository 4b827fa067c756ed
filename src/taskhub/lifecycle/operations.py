"""Recovery after a restart and the operator's tools: durable queues, purge, dead letters."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from taskhub.errors import PermissionDenied, TaskNotFound
from taskhub.lifecycle.core import LifecycleCore
from taskhub.lifecycle.options import _REQUEUE_KEEP, StoredOptions
from taskhub.lifecycle.state import (
    DEAD_META,
    HELD,
    QUEUE_META,
    Credentials,
    Delivery,
    Queue,
    Task,
    _queue_order,
    _size,
    queue_key,
)
from taskhub.names import allowed, validate_action
from taskhub.records import TaskRecord


class Lifecycle(LifecycleCore):
    """The task lifecycle: :class:`LifecycleCore`'s rules, plus taking back a previous run's
    tasks and the operator's tools over group queues and the dead-letter list."""

    # --- recovery ----------------------------------------------------------------------------
    def restore(self, records: Iterable[TaskRecord]) -> int:  # noqa: C901  #18: split
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
            StoredOptions(kept),
            extra={"requeued_from": entry["id"]},
        )
        assert isinstance(task, Task)  # no key, no once_every: always a new task
        self.delete_meta(DEAD_META, str(entry["id"]))
        return task
