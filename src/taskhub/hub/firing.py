"""A schedule's slot whose action falls in another partition than the schedules' own (0):
published there (here, over the hub-to-hub link, or once the partition is led) and sent again
until it is stored, then recorded as fired (docs/scheduling.md, "Schedules across partitions
and hubs"). Its task's id is made from the schedule and the slot (:func:`~taskhub.ids.named_id`),
so a copy sent again after an answer that never came, or the slot fired again by partition 0's
next leader, publishes nothing more: once, not at most once nor at least once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskhub.errors import StoreUnavailable, TaskHubError
from taskhub.hub.partition import LocalPartition
from taskhub.hub.router import action_partition
from taskhub.hub.unled import UnledPartition
from taskhub.ids import named_id
from taskhub.lifecycle import Lifecycle
from taskhub.lifecycle.schedules import InPlace, Slot, publish_slot

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

log = logging.getLogger("taskhub.schedules")

# Seconds between two sends of a slot not stored yet: the first, doubled up to the last.
RESEND_FIRST, RESEND_MAX = 0.1, 1.0


def slot_task_id(slot: Slot, partition: int) -> str:
    """The id of ``slot``'s task in ``partition`` (its action's): the same wherever it is made."""
    at = float(slot.extra.get("slot") or 0.0)
    return named_id(at, f"{slot.schedule}\x00{slot.action}", partition)


class Firing:
    """The hub's :class:`~taskhub.lifecycle.schedules.Fires`: the slots sent to another
    partition and not stored yet (at most one per schedule and slot; a slot waits while its
    partition has no leader, however long). A hub that stops drops them unrecorded, so
    partition 0's next leader fires the latest of them again (the catch-up rule), once."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.sending: set[asyncio.Task[None]] = set()
        # Slots being published in a partition of this hub, by task id: a copy that comes
        # meanwhile (sent again over a new link, or by partition 0's next leader) waits for it.
        self.publishing: dict[str, asyncio.Task[None]] = {}
        self.closed = False

    def fire(self, home: Lifecycle, slot: Slot, stored: Callable[[], None]) -> None:
        index = action_partition(slot.action, self.hub.router.count)
        if index == 0:  # the schedules' partition: the task and its slot in one write batch
            InPlace().fire(home, slot, stored)
            return
        if self.closed:
            log.warning(
                "schedule %r: its slot is not published, the hub stops (partition 0's next "
                "leader fires it when it finds it missed)",
                slot.schedule,
            )
            return
        sending = asyncio.create_task(
            self._send(home, index, slot, stored), name=f"taskhub-schedule {slot.schedule}"
        )
        self.sending.add(sending)
        sending.add_done_callback(self.sending.discard)

    async def _send(
        self, home: Lifecycle, index: int, slot: Slot, stored: Callable[[], None]
    ) -> None:
        task_id = slot_task_id(slot, index)
        delay, tries = RESEND_FIRST, 0
        while True:
            try:
                await self._once(index, slot, task_id)
            except StoreUnavailable as exc:  # no leader now, a link that broke, a leader moved
                tries += 1
                log.log(
                    logging.WARNING if tries == 1 else logging.DEBUG,
                    "schedule %r: task %s of its slot is not stored yet (%s); sending it again",
                    slot.schedule,
                    task_id,
                    exc.message,
                )
                await asyncio.sleep(delay)
                delay = min(2 * delay, RESEND_MAX)
                continue
            except TaskHubError as exc:  # refused there: a hub default changed since the put
                log.error("schedule %r could not publish %s: %s", slot.schedule, slot.action, exc)
            except Exception:  # a bug (here, or on the partition's hub: a RuntimeError)
                log.exception("schedule %r could not publish %s", slot.schedule, slot.action)
            if tries:
                log.info("schedule %r: task %s of its slot is stored", slot.schedule, task_id)
            break
        zero = self.hub.router.slots[0].local
        if zero is not None and zero.lc is home:
            stored()
            zero.kick()
        # Otherwise partition 0 moved meanwhile: its new leader fires the slot again if it
        # finds it missed, and the task's id makes that the same task.

    async def _once(self, index: int, slot: Slot, task_id: str) -> None:
        """Publish the slot's task where partition ``index`` is led now; return once it is
        stored. ``StoreUnavailable``: not now (try again)."""
        while True:
            part = self.hub.router.slots[index]
            local = part.local
            if local is not None:
                if not local.pipeline.running:  # restored at the hub's start: in a moment
                    await asyncio.sleep(RESEND_FIRST)
                    continue
                await self.publish_once(local, slot, task_id)
                return
            if part.linked is not None:
                try:
                    await part.linked.fire(slot, task_id)
                except StoreUnavailable:
                    # That hub no longer leads it, or the link broke: the lease names who does.
                    self.hub.leading.learn(index, "")
                    raise
                return
            if not isinstance(part, UnledPartition):
                raise StoreUnavailable(f"partition {index} cannot be reached from this hub")
            # No hub leads it right now, or its leader does not answer: wait for the slot
            # that replaces this one (a lease at most), then go there.
            if await part.placed() is None:
                raise part.error()

    async def publish_once(self, part: LocalPartition, slot: Slot, task_id: str) -> None:
        """Publish ``slot``'s task as ``task_id`` in ``part``, a partition this hub leads,
        unless it is there already (live, being written, or stored: a copy sent again), and
        return once it is stored."""
        running = self.publishing.get(task_id)
        if running is None:
            running = asyncio.create_task(self._publish_once(part, slot, task_id))
            self.publishing[task_id] = running
            running.add_done_callback(lambda t: self._published(task_id, t))
        await asyncio.shield(running)

    async def _publish_once(self, part: LocalPartition, slot: Slot, task_id: str) -> None:
        if await part.find(task_id) is None and part.lc.get(task_id) is None:
            publish_slot(part.lc, slot, task_id)
            part.kick()
        await part.flush()
        if self.hub.router.slots[part.index] is not part:
            # Handed off or lost meanwhile: stored only if its last write took it. The
            # partition's next leader tells, by the task's id.
            raise StoreUnavailable(f"partition {part.index} moved while the slot was published")

    def _published(self, task_id: str, task: asyncio.Task[None]) -> None:
        if self.publishing.get(task_id) is task:
            del self.publishing[task_id]
        if not task.cancelled():
            task.exception()  # retrieved: the callers that waited for it were told

    async def close(self) -> None:
        """The hub stops: the slots not stored yet are dropped unrecorded (class docstring)."""
        self.closed = True
        # And the copies being published here: what they published is written as the
        # partition stops, and their senders are told by the link that ends.
        running = [*self.sending, *self.publishing.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
