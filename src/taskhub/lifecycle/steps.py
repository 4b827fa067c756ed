"""A worker's steps on a delivery it holds: ack, pickup (the start), update, extend, return,
drop, fail (with its retries and backoff) and release. Each checks the step's attempt: a
stale attempt never changes the outcome."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from taskhub.errors import InvalidOption, NotHolding, StaleAttempt
from taskhub.lifecycle.ending import Ending
from taskhub.lifecycle.keys import Keys
from taskhub.lifecycle.queues import Queues
from taskhub.lifecycle.shared import Shared
from taskhub.lifecycle.state import Delivery, Peer, options_of
from taskhub.records import DeliveryState, TaskState

# Bound once: an enum member read through its class costs ~0.15 µs on Python 3.11.
_OFFERED = DeliveryState.OFFERED
_STARTED = DeliveryState.STARTED
_INIT = TaskState.INIT
_START = TaskState.START
_SUCCESS = TaskState.SUCCESS


class Steps:
    """What a worker (or an observer) may do with a task it was offered."""

    def __init__(
        self, shared: Shared, queues: Queues, keys: Keys, ending: Ending, rng: random.Random
    ) -> None:
        self.tasks = shared.tasks
        self.journal = shared.journal
        self.queues = queues
        self.keys = keys
        self.ending = ending
        self.timers = shared.timers
        self.defaults = shared.defaults
        self.clock = shared.clock
        self.rng = rng

    def held(self, peer: Peer, task_id: str, attempt: int) -> Delivery:
        """The delivery ``peer`` holds at ``attempt``; NotHolding or StaleAttempt if none."""
        d = peer.holding.get(task_id)
        if d is not None and d.rec.attempt == attempt:
            return d
        task = self.tasks.get(task_id)
        if task is None:
            raise NotHolding(f"task {task_id} has ended or does not exist", task=task_id)
        sub = peer.subs.get(task.rec.action)
        mine = task.deliveries.get(sub.group) if sub else None
        if mine is not None and attempt < mine.rec.attempt:
            raise StaleAttempt(
                f"attempt {attempt} of task {task_id} was offered again (now attempt "
                f"{mine.rec.attempt}); this step is not counted",
                task=task_id,
            )
        raise NotHolding(
            f"this connection does not hold task {task_id} (attempt {attempt})", task=task_id
        )

    def ack(self, peer: Peer, task_id: str, attempt: int) -> None:
        if task_id in self.tasks:  # an ack racing the task's end is harmless
            d = self.held(peer, task_id, attempt)
            if not d.acked:
                self._picked(d)

    def _picked(self, d: Delivery) -> None:
        """The offer was acked: its pickup window no longer runs."""
        d.acked = True
        # Queues.close_pickup_window's, inline: a call less per task.
        self.timers.cancel("pickup", self.defaults.pickup_window, d.task.id, d.rec.group)

    def pickup(self, peer: Peer, task_id: str, attempt: int) -> None:
        if task_id in self.tasks:  # so is a pickup: the worker will hear how it ended
            self.start(self.held(peer, task_id, attempt))

    def start(self, d: Delivery, *, ending: bool = False) -> bool:
        """The holder started the delivery (idempotent); the first start starts the task.
        ``ending``: it ends at once too (a return without a pickup), so no end timer is armed
        only to be cancelled. True when this call started the task."""
        if not d.acked:
            self._picked(d)
        if d.rec.state != _OFFERED:
            return False  # idempotent
        d.rec.state = _STARTED
        task = d.task
        service = d.holder.peer.service if d.holder else None
        if task.rec.state != _INIT:
            self.journal.event(task, "pickup", group=d.rec.group, service=service, notify=False)
            return False
        task.rec.state = _START
        task.rec.started_at = self.clock()
        if self.keys.debounce:  # only once_every tasks are there
            self.keys.undebounce(task)
        timeout = task.rec.options.get("timeout")
        if d.holder is not None and d.holder.options:
            # The starting worker's declared timeout, unless the publisher set one: kept
            # in the record, so views show it and the end timer is cancelled by it.
            timeout = d.holder.option(task, "timeout", timeout)
            # A new dict, never a change in place: a sealed batch may share the old one.
            task.rec.options = {**task.rec.options, "timeout": timeout}
        if timeout is not None and not ending:
            self.timers.after(task.rec.started_at, timeout, "end", task.id)
        ev = self.journal.event(
            task, "start", group=d.rec.group, service=service, at=task.rec.started_at
        )
        self.journal.task_started(task, ev)
        return True

    def update(self, peer: Peer, task_id: str, attempt: int, data: Any) -> None:
        task = self.tasks.get(task_id)
        if attempt == 0 and task is not None and peer in task.observers:
            pass  # observers may update without holding a delivery
        else:
            d = self.held(peer, task_id, attempt)
            self.start(d)
            task = d.task
        task.rec.updates += 1
        task.rec.last_update = data
        ev = self.journal.event(task, "update", service=peer.service, data=data)
        self.journal.tell_holders(task, ev, but=peer)

    def complete(self, peer: Peer, task_id: str, attempt: int, result: Any) -> None:
        """A ``return``: the first one wins; later ones (any attempt) are ignored."""
        task = self.tasks.get(task_id)
        if task is None:
            return  # already ended: a late return is not an error
        d = peer.holding.get(task_id)
        # Whether an end timer may run: not when this return is also the task's start.
        end_timer = True
        if d is not None and d.rec.attempt == attempt:
            end_timer = not self.start(d, ending=True)
        elif peer in task.observers:
            raise NotHolding(
                f"observers cannot return a result for task {task_id}; the hub "
                "does not wait for them",
                task=task_id,
            )
        else:
            sub = peer.subs.get(task.rec.action)
            mine = task.deliveries.get(sub.group) if sub else None
            if mine is None or attempt > mine.rec.attempt or attempt < 1:
                raise NotHolding(
                    f"this connection was never offered task {task_id} (attempt {attempt})",
                    task=task_id,
                )
            # A stale attempt's return still completes the task (first wins); the current
            # holder, if any, hears `success` from finish like every other holder.
        peer.succeeded += 1
        self.ending.finish(task, _SUCCESS, result=result, by=peer, end_timer=end_timer)

    def drop(self, peer: Peer, task_id: str, attempt: int) -> None:
        d = self.held(peer, task_id, attempt)
        peer.dropped += 1
        self.queues.release(d)
        d.rec.state = DeliveryState.DROPPED
        self.journal.event(d.task, "drop", group=d.rec.group, service=peer.service)
        self.queues.partition_done(d)
        self.ending.check_end(d.task)

    def fail(
        self,
        peer: Peer,
        task_id: str,
        attempt: int,
        error: dict[str, Any],
        *,
        retry: bool = True,
        delay: float | None = None,
    ) -> None:
        """The handler failed. ``delay`` (the handler raised Retry): offer again after
        exactly that delay while ``max_attempts`` allows, whatever ``retries`` says."""
        d = self.held(peer, task_id, attempt)
        peer.failed += 1
        opt = options_of(d)
        self.queues.release(d)
        d.rec.tries += 1
        d.rec.error = error
        failures = d.rec.tries
        max_attempts = int(opt("max_attempts", 1))
        if (
            retry
            and failures < max_attempts
            and (delay is not None or failures <= int(opt("retries", 0)))
        ):
            self._retry(d, peer, error, delay, opt)
            return
        reason = "attempts" if retry and failures >= max_attempts else "error"
        self.ending.delivery_failed(d, {"reason": reason, **error})

    def _retry(
        self,
        d: Delivery,
        peer: Peer,
        error: dict[str, Any],
        delay: float | None,
        opt: Callable[[str, Any], Any],
    ) -> None:
        """Offer ``d`` again after ``delay``, or after the backoff its options (``opt``, read
        while ``peer`` held it: its declared defaults count) give."""
        failures = d.rec.tries
        if delay is not None:
            backoff = max(0.0, delay)
        else:
            backoff = min(
                float(opt("backoff_max", self.defaults.retry_backoff_max)),
                float(opt("backoff", self.defaults.retry_backoff)) * 2 ** (failures - 1),
            )
            backoff *= 0.5 + self.rng.random() / 2  # jitter: spread a burst of retries
        d.rec.state = DeliveryState.PENDING
        d.rec.not_before = self.clock() + backoff
        self.journal.event(
            d.task,
            "retry",
            group=d.rec.group,
            service=peer.service,
            data={"error": error, "in": round(backoff, 3), "tries": failures},
        )
        self.timers.at(d.rec.not_before, "retry", d.task.id, d.rec.group, d.rec.attempt)

    def release(self, peer: Peer, task_id: str, attempt: int) -> None:
        """The holder hands the delivery back unfinished (it is stopping): offered again, to
        another connection of the group when there is one, without counting a try."""
        d = self.held(peer, task_id, attempt)
        d.avoid = peer
        self.ending.take_back(d, "released", count_try=False)

    def take_back(
        self,
        peer: Peer,
        task_id: str,
        attempt: int,
        reason: str,
        *,
        count_try: bool,
        revoke: bool = True,
    ) -> None:
        """Give one delivery ``peer`` holds back to its group, as a closed connection would (a
        pull consumer's lease ran out, or it stopped). Raises NotHolding or StaleAttempt."""
        d = self.held(peer, task_id, attempt)
        self.ending.take_back(d, reason, count_try=count_try, revoke=revoke)

    def extend(self, peer: Peer, task_id: str, attempt: int, seconds: float) -> None:
        """Push the task's end deadline to at least ``seconds`` from now (never earlier);
        a task without an end timeout keeps none."""
        if seconds < 0:
            raise InvalidOption("extend: seconds must be >= 0", option="seconds")
        d = self.held(peer, task_id, attempt)
        self.start(d)
        rec = d.task.rec
        timeout = rec.options.get("timeout")
        if timeout is None or rec.started_at is None:
            return
        wanted = self.clock() + seconds - rec.started_at
        if wanted <= timeout:
            return
        self.timers.cancel("end", timeout, rec.id)
        rec.options = {**rec.options, "timeout": wanted}  # replaced: see start()
        # Its own deadline, in the heap: a lane per extended task would crowd out the lanes
        # of the common timeouts. The old heap entry (if any) is skipped when it fires.
        self.timers.at(rec.started_at + wanted, "end", rec.id)
        self.journal.event(
            d.task,
            "extend",
            group=d.rec.group,
            service=peer.service,
            data={"timeout": round(wanted, 3)},
            notify=False,
        )
