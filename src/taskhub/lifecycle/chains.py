"""Chains and groups of tasks, run by the hub on top of the pure lifecycle (no I/O).

A chain is itself a stored task (action ``taskhub:chain``, or ``taskhub:group``) that no worker
is offered: :meth:`Lifecycle.hold`. Its payload is the plan (the steps) and
``options["chain"]`` its progress, so it is written with every step and survives the
publisher leaving and a hub restart. Each step is an ordinary task whose options name its
chain (``chain_task``, ``chain_step``); when a step ends, the lifecycle's listener hook lands
here and the next step is published in the same synchronous turn, hence in the same store
batch as the step's end: a crash cannot lose the hand-over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from taskhub.errors import InvalidOption, PermissionDenied, TaskHubError
from taskhub.lifecycle import (
    HELD,
    Credentials,
    Lifecycle,
    Peer,
    Task,
    check_trace,
    resolve_options,
)
from taskhub.lifecycle.placement import OnePartition, Placement, StepPub
from taskhub.names import CHAIN_ACTION, GROUP_ACTION, allowed, reserved_action, validate_action
from taskhub.protocol import ChainStep, PubOptions, plain
from taskhub.records import EventRecord, TaskRecord, TaskState

log = logging.getLogger("taskhub.chains")

MAX_STEPS = 1000  # the whole plan is one stored record (and one frame)
Mode = Literal["chain", "group"]


def step_payload(declared: Any, previous: Any, *, merge: bool) -> Any:
    """A chain step's input: ``None`` takes the previous result; with ``merge`` a dict input
    gets the previous result (a dict) merged over it, as seed 000's ``POST /add`` does."""
    if declared is None:
        return previous
    if merge and isinstance(declared, dict):
        previous = plain(previous)  # a worker's result is still its JSON (protocol.kept)
        if isinstance(previous, dict):
            return {**declared, **previous}
    return declared


def _progress(parent: Task, i: int, **columns: Any) -> dict[str, Any]:
    """Set step ``i`` in the chain's progress columns (``tasks``, ``states``, ``results``).

    The progress and the options holding it are replaced, never changed in place: a sealed
    batch (records.WriteBatch) may hold the ones written before."""
    state = dict(parent.rec.options[HELD])
    for name, value in columns.items():
        column = list(state[name])
        column[i] = value
        state[name] = column
    parent.rec.options = {**parent.rec.options, HELD: state}
    return state


def _named(exc: TaskHubError, index: int, action: object) -> TaskHubError:
    """The same error, its message naming the step (a malformed plan is refused whole)."""
    details = {**exc.details, "step": index}
    return type(exc)(f"step {index} ({action}): {exc.message}", **details)


class Chains:
    """Starts chains and groups and moves them on as their steps end.

    With several partitions (``placement``) a chain is held in the partition of its first
    step's action; every step is published in the partition of its own action, and a step's
    end moves its chain on wherever the chain is held, in the same synchronous turn.
    """

    def __init__(self, lc: Lifecycle, placement: Placement | None = None) -> None:
        self.lc = lc  # the defaults and the clock (the same in every partition)
        self.place = placement or OnePartition(lc)
        for each in self.place.lifecycles:
            self.attach(each)

    def attach(self, lc: Lifecycle) -> None:
        """Follow the steps ending in ``lc``: a partition's lifecycle the hub leads from now
        on (its chains and steps were restored in it)."""
        lc.end_listeners.append(self._on_end)

    # --- starting ----------------------------------------------------------------------------
    def start(
        self,
        creds: Credentials,
        steps: list[ChainStep],
        *,
        mode: Mode = "chain",
        merge_input: bool = False,
        peer: Peer | None = None,
        begin: bool = True,
        trace: dict[str, str] | None = None,
    ) -> Task:
        """Check every step (action, permission, options) and start the chain or group.

        Raises the first problem, naming the step; nothing is stored then. With
        ``begin=False`` the first steps wait for :meth:`begin`, so the hub can answer the
        publisher (with the chain's id) before the chain's first events reach it. ``trace``
        (the publisher's trace context) is kept with the chain and given to every step that
        has none of its own.
        """
        if mode not in ("chain", "group"):
            raise InvalidOption(f"mode must be 'chain' or 'group', not {mode!r}", option="mode")
        if not steps:
            raise InvalidOption(f"a {mode} needs at least one step", option="steps")
        if len(steps) > MAX_STEPS:
            raise InvalidOption(f"a {mode} has at most {MAX_STEPS} steps", option="steps")
        if merge_input and mode == "group":
            raise InvalidOption("merge_input applies to chains only", option="merge_input")
        for i, step in enumerate(steps):
            self._check(creds, i, step)
        kept_trace = check_trace(trace)
        plan = [
            {
                "action": s.action,
                "payload": s.payload,
                "options": msgspec.to_builtins(s.options) if s.options else None,
            }
            for s in steps
        ]
        n = len(steps)
        state: dict[str, Any] = {
            "mode": mode,
            "merge": merge_input,
            "tasks": [None] * n,  # each step's task id, once published
            "states": [None] * n,  # each step's final state
            "results": [None] * n,
        }
        action = CHAIN_ACTION if mode == "chain" else GROUP_ACTION
        options: dict[str, Any] = {HELD: state}
        if kept_trace is not None:
            options["trace"] = kept_trace
        home = self.place.for_action(steps[0].action)  # with its first step
        parent = home.hold(creds, action, plan, options, peer=peer)
        if begin:
            self.begin(parent)
        return parent

    def begin(self, parent: Task) -> None:
        """Publish a new chain's first step, or every step of a group."""
        state = parent.rec.options[HELD]
        for i in range(1 if state["mode"] == "chain" else len(state["tasks"])):
            self._publish(parent, i, None)

    def _check(self, creds: Credentials, i: int, step: ChainStep) -> None:
        try:
            validate_action(step.action)
            if reserved_action(step.action) or not allowed(creds.pub_permissions, step.action):
                raise PermissionDenied(
                    f"{creds.name!r} may not publish {step.action!r}", action=step.action
                )
            if step.options is not None and step.options.key is not None:
                raise InvalidOption("chain steps take no idempotency 'key'", option="key")
            resolve_options(step.options, self.lc.defaults, self.lc.clock())  # pub's checks
        except TaskHubError as exc:
            raise _named(exc, i, step.action) from None

    def _publish(self, parent: Task, i: int, previous: Any) -> None:
        state = parent.rec.options[HELD]
        plan = parent.rec.payload[i]
        extra: dict[str, Any] = {"chain_task": parent.id, "chain_step": i}
        payload = plan["payload"]
        if state["mode"] == "chain" and i > 0:
            extra["previous_result"] = previous
            payload = step_payload(payload, previous, merge=bool(state["merge"]))
        options = msgspec.convert(plan["options"], PubOptions) if plan["options"] else None
        trace = parent.rec.options.get("trace")
        if trace is not None and (options is None or options.trace is None):
            extra["trace"] = trace  # the step's span is a child of the chain's publisher
        # Every step's permission was checked when the chain started; the publisher may have
        # gone since, so the step is published in its name with that check already made.
        creds = Credentials(parent.rec.publisher, pub_permissions=("*",))
        elsewhere = self.place.elsewhere_for(plan["action"])
        if elsewhere is not None:  # another hub leads the step's partition
            step = StepPub(creds.name, plan["action"], payload, options, extra)
            task_id = elsewhere.publish_step(step)
        else:
            try:
                lc = self.place.for_action(plan["action"])
                task, _ = lc.publish(creds, plan["action"], payload, options, extra=extra)
            except TaskHubError as exc:  # e.g. an `at` that was fine at the start: fail, named
                why = {"reason": "error", "type": type(exc).__name__}
                self._fail(parent, i, why, exc.message)
                return
            assert isinstance(task, Task)  # steps carry no key, so publish always creates one
            task_id = task.id
        _progress(parent, i, tasks=task_id)
        self._lc(parent).record(
            parent, "step", {"index": i, "action": plan["action"], "task": task_id}
        )

    # --- moving on ---------------------------------------------------------------------------
    def _on_end(self, task: Task, ev: EventRecord) -> None:
        opts = task.rec.options
        parent_id = opts.get("chain_task")
        if parent_id is not None:
            self.move_on(parent_id, int(opts["chain_step"]), task.rec)
        elif HELD in opts and ev.type != TaskState.SUCCESS:
            self._stop_steps(task)

    def move_on(self, parent_id: str, i: int, rec: TaskRecord) -> None:
        """Step ``i`` of chain ``parent_id`` ended as ``rec`` says: move the chain on where
        it is held (here, or over the link; held for its partition's next leader while no
        hub leads it)."""
        elsewhere = self.place.elsewhere_of(parent_id)
        if elsewhere is not None:
            elsewhere.step_ended(parent_id, i, rec)
            return
        try:
            parent = self.place.of_task(parent_id).tasks.get(parent_id)
        except TaskHubError:  # a hub without leases: the hub that takes the chain's
            # partition finds the step ended when it restores the chain (orphans)
            log.warning("step %s ended; no hub leads its chain %s now", rec.id, parent_id)
            return
        if parent is not None:  # else the chain has ended already (failed, cancelled)
            self.step_ended(parent, i, rec)

    def place_step(self, step: StepPub, task_id: str) -> None:
        """Publish a chain's step whose id was made for its partition while no hub led it,
        where the partition is led now; a step that cannot be published fails, moving its
        chain on (which then fails, naming it)."""
        publisher, action, payload, options, extra = step
        elsewhere = self.place.elsewhere_for(action)
        if elsewhere is not None:
            elsewhere.publish_step(step, task_id=task_id)
            return
        creds = Credentials(publisher, pub_permissions=("*",))
        try:
            lc = self.place.for_action(action)
            lc.publish(creds, action, payload, options, extra=extra, task_id=task_id)
        except TaskHubError as exc:
            error = {"reason": "error", "type": type(exc).__name__, "message": exc.message}
            failed = TaskRecord(
                task_id, action, publisher, self.lc.clock(), state=TaskState.FAIL, error=error
            )
            self.move_on(extra["chain_task"], int(extra["chain_step"]), failed)

    def step_ended(self, parent: Task, i: int, rec: TaskRecord | None) -> None:
        """Step ``i`` of a running chain ended as ``rec`` says (None: its task was lost)."""
        state = parent.rec.options[HELD]
        plan = parent.rec.payload
        if state["states"][i] is not None:
            return
        if rec is None or rec.state == TaskState.FAIL:
            err = (rec.error if rec else None) or {"reason": "error", "message": "task lost"}
            _progress(parent, i, states=TaskState.FAIL)
            self._fail(parent, i, err, str(err.get("message") or err.get("reason", "")))
            return
        # `end` (every delivery dropped) is not a failure: the step simply has no result.
        result = rec.result if rec.state == TaskState.SUCCESS else None
        state = _progress(parent, i, states=rec.state, results=result)
        data = {"index": i, "action": plan[i]["action"], "task": rec.id, "state": rec.state}
        lc = self._lc(parent)
        lc.record(parent, "step", data)  # also writes the parent: its progress is durable
        if state["mode"] == "group":
            if all(s is not None for s in state["states"]):
                lc.finish(parent, TaskState.SUCCESS, result=list(state["results"]))
        elif i + 1 < len(plan):
            self._publish(parent, i + 1, result)
        else:
            lc.finish(parent, TaskState.SUCCESS, result=result)

    def _fail(self, parent: Task, i: int, err: dict[str, Any], message: str) -> None:
        action = parent.rec.payload[i]["action"]
        error: dict[str, Any] = {
            "reason": err.get("reason", "error"),
            "message": f"step {i} ({action}) failed: {message}",
            "step": i,
            "action": action,
        }
        if err.get("type"):
            error["type"] = err["type"]
        task_id = parent.rec.options[HELD]["tasks"][i]
        if task_id is not None:
            error["task"] = task_id
        self._lc(parent).finish(parent, TaskState.FAIL, error=error)

    def _lc(self, task: Task) -> Lifecycle:
        """The lifecycle ``task`` lives in."""
        return self.place.of_task(task.id)

    def _stop_steps(self, parent: Task) -> None:
        """The chain failed or was cancelled: its steps still running are cancelled too."""
        why = (parent.rec.error or {}).get("message", "it ended")
        error = {"reason": "cancelled", "message": f"chain {parent.id} failed: {why}"}
        for task_id in parent.rec.options[HELD]["tasks"]:
            if task_id:
                self.cancel_step(task_id, error)

    def cancel_step(self, task_id: str, error: dict[str, Any]) -> None:
        """A failed chain's step ``task_id`` fails with ``error`` if it still runs, where it
        runs (held for its partition's next leader while no hub leads it)."""
        elsewhere = self.place.elsewhere_of(task_id)
        if elsewhere is not None:  # on the hub that leads its partition
            elsewhere.cancel_step(task_id, error)
            return
        try:
            step = self.place.of_task(task_id).tasks.get(task_id)
        except TaskHubError:  # a hub without leases: the step runs to its end
            return
        if step is not None:
            self._lc(step).finish(step, TaskState.FAIL, error=error)

    # --- recovery ----------------------------------------------------------------------------
    def orphans(self) -> list[tuple[Task, int, str]]:
        """Steps of restored chains whose task is no longer live: (chain, index, task id).

        The hub reads those tasks from the store and hands them to :meth:`step_ended`. With a
        transactional store the step's end and the chain's hand-over share one batch, so this
        only matters for an engine that lost part of a batch.
        """
        out = []
        of_task = self.place.of_task
        for lc in self.place.lifecycles:
            for task in lc.tasks.values():
                state = task.rec.options.get(HELD)
                if not state:
                    continue
                for i, task_id in enumerate(state["tasks"]):
                    if task_id and state["states"][i] is None and not _live(of_task, task_id):
                        out.append((task, i, task_id))
        return out


def _live(of_task: Callable[[str], Lifecycle], task_id: str) -> bool:
    """Whether ``task_id`` runs in its partition; True when another hub leads that partition
    (not an orphan this hub can tell)."""
    try:
        return task_id in of_task(task_id).tasks
    except TaskHubError:
        return True
