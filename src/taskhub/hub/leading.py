"""Which partitions a leased hub leads, changed at runtime (docs/deployment.md, "Partition
leases"): the server's :class:`~taskhub.hub.keeper.PartitionKeeper` calls :meth:`lead` when
the hub takes a partition's lease, :meth:`hand_off` before it lets one go, :meth:`lose` when a
lease ran out, and :meth:`follow` with the leader of a partition it does not lead; the links
(:class:`~taskhub.hub.link.HubLinks`) call :meth:`unreachable` when the link to a leader
broke and :meth:`reachable` when it opens again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskhub.hub.partition import LocalPartition, close_store
from taskhub.lifecycle.schedules import Scheduler
from taskhub.store import Store

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

log = logging.getLogger("taskhub.hub")

CLOSE_MOVED = 1012  # WebSocket "service restart": the client reconnects and subscribes again


def _nobody(index: int, past: str = "") -> None:
    return None


def _no_members() -> dict[str, str]:
    return {}


class Leading:
    """Puts partitions in and out of one hub's router as their leases come and go."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.leaders: dict[int, str] = {}  # partitions led elsewhere -> the leader's URL
        # Seconds a message waits for the leader of a partition no hub holds (the lease, set
        # by the hub's Membership; 0: answered partition_unavailable at once), and how the
        # slot asks the keeper to find that leader now, (index, past): until the lease names
        # another leader than ``past`` (hub/unled.py).
        self.hold = 0.0
        self.learn: Callable[[int, str], None] = _nobody
        # This hub's member id in the leases ("" without them), and the deployment's other
        # live hubs, those that lead no partition included: member id -> advertised URL
        # (the hub's Membership: the keeper's last round).
        self.instance = ""
        self.members: Callable[[], dict[str, str]] = _no_members
        # Partitions whose lease this hub took and that it is restoring: set once it serves
        # them. The other hubs may learn of the lease and send work first (the links hold it).
        self.restoring: dict[int, asyncio.Event] = {}

    async def lead(self, index: int, store: Store) -> None:
        """Lead partition ``index`` from now on over ``store`` (not open yet, fenced by the
        partition's lease): restore what it holds, start it, route its messages here."""
        restored = self.restoring[index] = asyncio.Event()
        try:
            await self._lead(index, store)
        finally:
            del self.restoring[index]
            restored.set()

    async def _lead(self, index: int, store: Store) -> None:
        hub = self.hub
        part = hub.new_partition(index, store)
        if index == 0:
            part.scheduler = Scheduler(part.lc, hub.firing)  # schedules fire where 0 is led
        try:
            restored = await hub.restore(part)
        except BaseException:
            await close_store(store, 5.0)
            raise
        hub.chains.attach(part.lc)
        for fn in hub.lifecycle_hooks:  # the metrics, the dashboard, the events log
            fn(part.lc)
        hub.parts = sorted([*hub.parts, part], key=lambda p: p.index)
        self.leaders.pop(index, None)
        hub.router.place(index, part)
        part.start()  # first: what waited for a leader (hub/unled.py) may flush already
        await hub.orphans()
        if hub.draining:
            part.drain()
        hub.kick()
        log.info("partition %d: restored %d unfinished task(s), serving", index, restored)

    async def hand_off(self, index: int, *, flush_timeout: float = 10.0) -> None:
        """Stop leading partition ``index`` gracefully (another hub takes it): stop offering
        there, give the started deliveries back without a try (unless the hub stops), write
        what is pending, stop. Connections with work in it (subscriptions included) are
        closed (1012) so their clients reconnect and subscribe again where it is led now."""
        part = self._unlead(index)
        if part is None:
            return
        engaged = set(part.engaged())  # before the drain takes their subscriptions
        part.drain()
        if not self.hub.draining:
            # Its workers live on: what they started goes back uncounted. A hub that stops
            # has closed its connections first, past its grace, and counts one (operations.md).
            part.hand_back()
        part.kick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(part.flush(), flush_timeout)
        await part.stop(flush_timeout)
        await self._close(engaged, f"partition {index} moved to another hub")

    async def lose(self, index: int) -> None:
        """Partition ``index``'s lease is lost (another hub may lead it already): stop it at
        once, writing nothing (its store refuses writes anyway). Every connection that reached
        it is closed (1012): what it was owed there was never stored, so never answered."""
        part = self._unlead(index)
        if part is None:
            return
        await part.stop(1.0, write=False)
        await self._close(set(part.peers), f"partition {index} was lost")

    def follow(self, index: int, leader: str) -> None:
        """Partition ``index``, not led here, is led at ``leader`` ("" when nobody holds it)."""
        hub = self.hub
        if hub.router.slots[index].local is not None or self.leaders.get(index) == leader:
            return
        self.leaders[index] = leader
        hub.router.place(index, hub.remote(index, leader))

    def unreachable(self, leader: str) -> None:
        """The link to the hub at ``leader`` broke (its clients here were closed once, 1013):
        the partitions it leads wait as leaderless from now on (hub/unled.py), so a client's
        messages for them are held for their next leader instead of dialling a hub that may
        be dead, and being closed again, at every reconnect."""
        for index, led_by in list(self.leaders.items()):
            if led_by == leader and self.hub.router.slots[index].linked is not None:
                self.hub.router.place(index, self.hub.remote(index, leader))

    def reachable(self, leader: str) -> None:
        """The link to the hub at ``leader`` opened again, which the leases still name: its
        partitions are reached over it, and what waited for them goes there."""
        for index, led_by in list(self.leaders.items()):
            slot = self.hub.router.slots[index]
            if led_by == leader and slot.local is None and slot.linked is None:
                self.hub.router.place(index, self.hub.remote(index, leader))

    def names(self, leader: str) -> bool:
        """Whether the leases name the hub at ``leader`` as a partition's leader."""
        return leader in self.leaders.values()

    def _unlead(self, index: int) -> LocalPartition | None:
        hub = self.hub
        part = hub.router.slots[index].local
        if part is None or part is hub.front:
            return None
        hub.parts = [p for p in hub.parts if p is not part]
        self.leaders[index] = ""
        hub.router.place(index, hub.remote(index, ""))
        return part

    async def _close(self, ids: set[str], reason: str) -> None:
        """Close the connections ``ids`` (1012): they reconnect and subscribe again."""
        connections = self.hub.connections
        for peer in [peer for peer in connections if peer.id in ids]:
            await connections.close(peer, code=CLOSE_MOVED, reason=reason)
