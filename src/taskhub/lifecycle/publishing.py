"""Publishing: a task accepted (or found again by its key), stored, timed and routed; and the
tasks the hub drives itself (chains), which no worker is offered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from taskhub.errors import PermissionDenied
from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.keys import Keys, key_of
from taskhub.lifecycle.options import resolve_options
from taskhub.lifecycle.queues import Queues
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import (
    HELD,
    Credentials,
    Peer,
    Task,
    follow,
    payload_size,
)
from taskhub.names import allowed, reserved_action, validate_action
from taskhub.records import TaskRecord, TaskState


class Publishing:
    """Accepts tasks: checks, keys, the record, its first event, its timers, its groups."""

    def __init__(
        self, shared: Shared, queues: Queues, keys: Keys, ending: Ending, new_id: Callable[[], str]
    ) -> None:
        self.tasks = shared.tasks
        self.journal = shared.journal
        self.queues = queues
        self.keys = keys
        self.ending = ending
        self.timers = shared.timers
        self.defaults = shared.defaults
        self.clock = shared.clock
        self.new_id = new_id
        self._seq = 0  # publish order: the queues' tie-breaker within a priority
        self._plain_key: tuple[Any, ...] | None = None  # the defaults _plain_opts was made from
        self._plain_opts: dict[str, Any] = {}

    def add(self, rec: TaskRecord) -> Task:
        """Hold ``rec`` as a live task (written with the next batch)."""
        self._seq += 1
        task = Task(rec.id, rec, self._seq)
        self.tasks[rec.id] = task
        self.journal.touch(task)
        return task

    def publish(
        self,
        creds: Credentials,
        action: str,
        payload: Any,
        options: Any = None,
        *,
        peer: Peer | None = None,
        extra: dict[str, Any] | None = None,
        task_id: str | None = None,
    ) -> tuple[Task | str, bool]:
        """Accept a task. Returns (task, created); ``created`` is False for a repeated ``key``.

        A repeated key of a task that has already ended answers with that task's id only: its
        record is in the store. ``task_id``: an id made for this partition elsewhere (a chain's
        step, published by the hub that holds the chain).
        """
        validate_action(action)
        if not allowed(creds.pub_permissions, action) or reserved_action(action):
            raise PermissionDenied(f"{creds.name!r} may not publish {action!r}", action=action)
        now = self.clock()
        if options is None and not extra and action not in self.defaults.actions:
            opts = self._plain()
        else:
            opts = resolve_options(options, self.defaults, now, action)
            if extra:  # set by the hub, not the publisher: a chain step's parent, previous_result
                opts.update(extra)
        key = opts.get("key")
        if key is not None or "once_every" in opts:
            found = self._found(action, key, opts, now)
            if found is not None:
                if peer is not None and isinstance(found, Task):
                    follow(peer, found)
                return found, False
        # id, action, publisher, created_at, payload, options (positional: the hot path)
        not_before = opts.pop("not_before", 0.0)
        rec = TaskRecord(
            task_id or self.new_id(), action, creds.name, now, payload, opts, not_before=not_before
        )
        # add() and follow() inline (calls per task on the hot path): the init event below
        # writes the record with the next batch, and a new task has no followers yet.
        self._seq += 1
        size = len(payload) if type(payload) is msgspec.Raw else payload_size(payload)
        task = self.tasks[rec.id] = Task(rec.id, rec, self._seq, payload_size=size)
        if "once_every" in opts:
            self.keys.debounce[key_of(action, key)] = rec.id
        elif key is not None:
            self.keys.remember(action, key, rec.id, now)
        if peer is not None:
            task.followers = {peer}
            peer.following.add(rec.id)
        self.journal.event(task, "init", service=creds.name, notify=False, at=now)
        start_timeout = opts["start_timeout"]
        if start_timeout is not None:
            self.timers.at(max(now, rec.not_before) + start_timeout, "start", rec.id)
        if rec.not_before > now:
            self.timers.at(rec.not_before, "due", rec.id)
        else:
            self.queues.route(task)
        return task, True

    def publish_many(
        self, creds: Credentials, action: str, payloads: list[Any], peer: Peer
    ) -> tuple[list[Task], bool] | None:
        """Accept tasks of one ``action`` published together by ``peer`` without options
        (a ``pubs`` of such items): each as :meth:`publish` would, in order, with what is the
        same for all of them checked and looked up once (docs/performance.md, "hub:
        fourteenth pass"). Returns the tasks and whether a group subscribes (else they were
        pooled); None, having done nothing, when the items need :meth:`publish` one by one
        (the action has ``[[actions]]`` defaults); raises as :meth:`publish` before anything
        is published."""
        validate_action(action)
        if not allowed(creds.pub_permissions, action) or reserved_action(action):
            raise PermissionDenied(f"{creds.name!r} may not publish {action!r}", action=action)
        if action in self.defaults.actions:
            return None
        now = self.clock()
        opts = self._plain()
        start_timeout = opts["start_timeout"]
        tasks, new_id, publisher, live = [], self.new_id, creds.name, self.tasks
        following = peer.following
        seq = self._seq
        for payload in payloads:
            # publish()'s record and task, for a task without options: no key, not delayed.
            rec = TaskRecord(new_id(), action, publisher, now, payload, opts)
            seq += 1
            size = len(payload) if type(payload) is msgspec.Raw else payload_size(payload)
            task = live[rec.id] = Task(rec.id, rec, seq, payload_size=size)
            task.followers = {peer}
            following.add(rec.id)
            tasks.append(task)
        self._seq = seq
        self.journal.inits(tasks, publisher, now)
        if start_timeout is not None:
            for task in tasks:
                self.timers.at(now + start_timeout, "start", task.id)
        return tasks, self.queues.route_many(tasks, action)

    def _plain(self) -> dict[str, Any]:
        """The options of a task published without any, of an action without defaults: one
        dict, shared by every such task. The lifecycle replaces a task's options and never
        changes them in place (tests/unit/test_sealed.py), so sharing is safe, and it spares
        a dict and its checks per task (docs/performance.md)."""
        d = self.defaults
        key = (d.task_end_timeout, d.task_start_timeout, d.retries, d.max_attempts)
        if key != self._plain_key:  # the defaults changed (tests do): made again
            self._plain_opts = resolve_options(None, d, 0.0)
            self._plain_key = key
        return self._plain_opts

    def _found(self, action: str, key: Any, opts: dict[str, Any], now: float) -> Task | str | None:
        """The task this pub's key stands for, if any. With ``once_every`` the key is a
        debounce key: a task of this action and key still waiting stands for this pub too."""
        if "once_every" in opts:
            return self.keys.debounced(key_of(action, key))
        return self.keys.known(action, key, now)

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
        keeps recovery from pooling it. Its state is ``start`` from the outset.
        """
        now = self.clock()
        rec = TaskRecord(
            id=self.new_id(),
            action=action,
            publisher=creds.name,
            created_at=now,
            payload=payload,
            options={HELD: {}, **options},
            state=TaskState.START,
            started_at=now,
        )
        task = self.add(rec)
        if peer is not None:
            follow(peer, task)
        self.journal.event(task, "init", service=creds.name, notify=False)
        return task

    def record(self, task: Task, type_: str, data: Any = None) -> None:
        """Record (and stream to followers and watchers) an event of a held task."""
        self.journal.event(task, type_, data=data)

    def finish(
        self,
        task: Task,
        state: TaskState | str,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """End a held task (``success``, ``fail`` or ``end``); a no-op once it has ended."""
        if not task.ended:
            self.ending.finish(task, TaskState(state), result=result, error=error)
