"""Publish keys: idempotency keys (a repeated ``key`` within the window returns the first task)
and debounce keys (``once_every``: a task still waiting stands for later pubs of its key)."""

from __future__ import annotations

from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import Task
from taskhub.records import TaskState

_INIT = TaskState.INIT  # bound once: an enum member read through its class is slow on 3.11


def key_of(action: str, key: str | None) -> str:
    """The table key of a pub ``key`` (or of no key, for debouncing) of ``action``."""
    return f"{action}\x00{'' if key is None else key}"


class Keys:
    """The idempotency keys of the last ``idempotency_window`` and the debounce keys of the
    tasks still waiting. Keys are pruned by a timer a quarter window apart."""

    def __init__(self, shared: Shared) -> None:
        self.defaults = shared.defaults
        self.timers = shared.timers
        self.tasks = shared.tasks
        self.keys: dict[str, tuple[str, float]] = {}  # idempotency key -> (task id, time)
        self.debounce: dict[str, str] = {}  # once_every "<action>\0<key>" -> waiting task id
        self._armed = False

    # --- idempotency -------------------------------------------------------------------------
    def known(self, action: str, key: str, now: float) -> Task | str | None:
        """The task a pub with ``key`` made within the window: the live task, or the id of
        one that has ended (its record is in the store); ``None`` when there is none."""
        known = self.keys.get(key_of(action, key))
        if known is None or now - known[1] >= self.defaults.idempotency_window:
            return None
        return self.tasks.get(known[0]) or known[0]

    def remember(self, action: str, key: str, task_id: str, at: float) -> None:
        self.keys[key_of(action, key)] = (task_id, at)
        self.arm(at)

    def arm(self, now: float) -> None:
        """Arm the pruning timer unless it is armed."""
        if not self._armed and self.keys:
            self._armed = True
            self.timers.at(now + self.defaults.idempotency_window / 4, "keys", "")

    def prune(self, now: float) -> None:
        """The pruning timer fired: forget the keys older than the window."""
        window = self.defaults.idempotency_window
        for k, (_, at) in list(self.keys.items()):
            if now - at >= window:
                del self.keys[k]
            else:
                break  # insertion order is time order
        self._armed = False
        self.arm(now)

    # --- debounce ----------------------------------------------------------------------------
    def debounced(self, dkey: str) -> Task | None:
        """The task still waiting (not started) under this once_every key, if any."""
        task_id = self.debounce.get(dkey)
        if task_id is None:
            return None
        task = self.tasks.get(task_id)
        if task is not None and task.rec.state == _INIT:
            return task
        del self.debounce[dkey]
        return None

    def undebounce(self, task: Task) -> None:
        """The task started or ended: a later pub with its key makes a new one."""
        opts = task.rec.options
        if "once_every" in opts:
            dkey = key_of(task.rec.action, opts.get("key"))
            if self.debounce.get(dkey) == task.id:
                del self.debounce[dkey]
