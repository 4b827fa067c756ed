"""What each of the lifecycle's timers does when it fires: a start or end timeout, a delayed
task coming due, a retry's backoff over, a pickup window lapsed, the idempotency keys'
pruning, and the kinds other parts register (schedules). Timers are cancelled lazily: a
handler first checks that what armed it still holds."""

from __future__ import annotations

from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.keys import Keys
from taskhub.lifecycle.queues import Queues
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import Task, TimerHandler
from taskhub.records import DeliveryState, TaskState


class Deadlines:
    """Fires the timers that are due, by kind."""

    def __init__(self, shared: Shared, queues: Queues, keys: Keys, ending: Ending) -> None:
        self.tasks = shared.tasks
        self.queues = queues
        self.keys = keys
        self.ending = ending
        self.timers = shared.timers
        self.clock = shared.clock
        # Extra timer kinds (schedules.py): kind -> fn(key, now). Their timers sit in the same
        # heap, so one clock drives everything and a fake clock tests it all.
        self.handlers: dict[str, TimerHandler] = {}

    def arm(self, at: float, kind: str, key: str) -> None:
        """Arm a timer of a kind registered in :attr:`handlers`; when it fires the
        handler gets ``(key, now)``. Cancel lazily: the handler checks the key is still due."""
        if kind not in self.handlers:
            raise ValueError(f"no handler for timer kind {kind!r}")
        self.timers.at(at, kind, key)

    def advance(self, now: float | None = None) -> None:
        """Fire every timer due by ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        for kind, task_id, group, attempt in self.timers.pop_due(now):
            if kind == "keys":
                self.keys.prune(now)
                continue
            handler = self.handlers.get(kind)
            if handler is not None:
                handler(task_id, now)
                continue
            task = self.tasks.get(task_id)
            if task is not None:  # else ended meanwhile: timers are cancelled lazily
                self._fire(task, kind, group, attempt, now)

    def _fire(self, task: Task, kind: str, group: str, attempt: int, now: float) -> None:
        if kind == "start" and task.rec.state == TaskState.INIT:
            self.ending.finish(
                task,
                TaskState.FAIL,
                error={"reason": "start_timeout", "message": "no worker started the task in time"},
            )
        elif kind == "end" and self._end_due(task, now):
            self.ending.finish(
                task,
                TaskState.FAIL,
                error={"reason": "timeout", "message": "the task did not finish in time"},
            )
        elif kind == "due":
            self.queues.route(task)
        elif kind in ("retry", "pickup"):
            d = task.deliveries.get(group)
            if d is None or d.rec.attempt != attempt:
                return
            if kind == "retry" and d.rec.state == DeliveryState.PENDING:
                self.queues.enqueue(d)
            elif kind == "pickup" and d.rec.state == DeliveryState.OFFERED and not d.acked:
                self.ending.take_back(d, "pickup_window", count_try=False)

    @staticmethod
    def _end_due(task: Task, now: float) -> bool:
        """An end timer fired: still due unless ``extend`` moved the deadline later."""
        rec = task.rec
        timeout = rec.options.get("timeout")
        if timeout is None or rec.started_at is None:
            return False
        return bool(now >= rec.started_at + timeout - 1e-6)
