"""Recovery after a restart: a previous run's unfinished tasks taken back, with their timers,
keys and deliveries. Deliveries that were offered or started go back to their groups: the hub
cannot know whether their workers are still alive. A started one counts as a try."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.keys import Keys, key_of
from taskhub.lifecycle.publishing import Publishing
from taskhub.lifecycle.queues import Queues
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import HELD, Delivery, Task, payload_size
from taskhub.records import DeliveryRecord, DeliveryState, TaskRecord, TaskState

_LOST = (DeliveryState.OFFERED, DeliveryState.STARTED)


class Recovery:
    """Takes back the unfinished tasks and the durable groups of a previous run."""

    def __init__(
        self, shared: Shared, publishing: Publishing, queues: Queues, keys: Keys, ending: Ending
    ) -> None:
        self.publishing = publishing
        self.queues = queues
        self.keys = keys
        self.ending = ending
        self.timers = shared.timers
        self.clock = shared.clock

    def restore_queues(self, entries: Iterable[dict[str, Any]]) -> None:
        """Mark the stored durable groups subscribed again; call before :meth:`restore`, so
        restored tasks that were waiting for a group are routed to them."""
        for entry in entries:
            self.queues.queue(str(entry["action"]), str(entry["group"])).durable = True

    def restore(self, records: Iterable[TaskRecord]) -> int:
        """Take back the unfinished tasks of a previous run (after a crash or restart);
        returns how many."""
        now = self.clock()
        n = 0
        for rec in records:
            self._restore(rec, now)
            n += 1
        self.keys.arm(now)
        return n

    def _restore(self, rec: TaskRecord, now: float) -> None:
        task = self.publishing.add(rec)
        task.payload_size = payload_size(rec.payload)
        opts = rec.options
        key = opts.get("key")
        if key is not None:
            self.keys.keys[key_of(rec.action, key)] = (rec.id, rec.created_at)
        self._arm(rec)
        if HELD in opts:
            return  # the hub drives it (chains.py); offering it would be a bug
        if "once_every" in opts and rec.state == TaskState.INIT:
            self.keys.debounce[key_of(rec.action, key)] = rec.id
        if not rec.deliveries:
            self._route(task, now)
            return
        for drec in rec.deliveries:
            self._restore_delivery(task, drec, now)
        self.ending.check_end(task)

    def _arm(self, rec: TaskRecord) -> None:
        """The task's start or end timeout, from when it was published or started."""
        opts = rec.options
        if rec.state == TaskState.INIT and opts.get("start_timeout") is not None:
            at = max(rec.created_at, rec.not_before) + opts["start_timeout"]
            self.timers.at(at, "start", rec.id)
        if rec.state == TaskState.START and opts.get("timeout") is not None and rec.started_at:
            self.timers.at(rec.started_at + opts["timeout"], "end", rec.id)

    def _route(self, task: Task, now: float) -> None:
        """A task not routed yet: due later, routed now, or pooled."""
        rec = task.rec
        if rec.not_before > now:
            self.timers.at(rec.not_before, "due", rec.id)
        elif any(q.subscribed for q in self.queues.by_action.get(rec.action, ())):
            self.queues.route(task)  # a durable group (restore_queues) takes it now
        else:
            self.queues.pooled.setdefault(rec.action, []).append(task)

    def _restore_delivery(self, task: Task, drec: DeliveryRecord, now: float) -> None:
        d = Delivery(task, drec)
        task.deliveries[drec.group] = d
        if drec.state in _LOST:
            if drec.state == DeliveryState.STARTED:
                drec.tries += 1
            if drec.tries >= int(task.rec.options.get("max_attempts", 1)):
                drec.state = DeliveryState.FAILED
                drec.error = {
                    "reason": "attempts",
                    "type": "AttemptsExhausted",
                    "message": "gave up after a hub restart",
                }
                return
            drec.state = DeliveryState.PENDING
        if drec.state == DeliveryState.PENDING and drec.not_before > now:
            self.timers.at(drec.not_before, "retry", task.id, drec.group, drec.attempt)
        elif drec.state == DeliveryState.PENDING:
            self.queues.queue(task.rec.action, drec.group).push(d)
