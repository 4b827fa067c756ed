"""A hub's membership of a deployment whose partitions are led by their leases
(docs/deployment.md, "Partition leases"): the store's leases, this process's
:class:`~taskhub.hub.keeper.PartitionKeeper`, and its callbacks wired to the hub's
:class:`~taskhub.hub.leading.Leading`; and the member's connection slots
(:class:`~taskhub.hub.slots.SharedSlots`), so ``max_connections`` counts every hub's.
:class:`~taskhub.server.Server` runs one for a hub of several partitions on a store hubs share
(a sqlite file, Redis).
"""

from __future__ import annotations

import contextlib
import logging
import os

from taskhub.errors import StoreUnavailable
from taskhub.hub.hub import Hub
from taskhub.hub.keeper import PartitionKeeper
from taskhub.hub.slots import SharedSlots
from taskhub.store import open_partition_leases

log = logging.getLogger("taskhub.keeper")


class Membership:
    """The leases of one hub process over the store at ``store_url``."""

    def __init__(self, hub: Hub, store_url: str, *, lease: float) -> None:
        self.hub = hub
        self.leases = open_partition_leases(store_url, hub.partitions)
        self.store_url = store_url
        self.lease = lease
        self.keeper: PartitionKeeper | None = None
        self.instance = os.urandom(8).hex()  # a new member for every process
        # From now on, as connections may come before start() has opened the leases: a
        # claim waits for them.
        self.slots = SharedSlots(self.leases, self.instance, lease=lease, held=hub.registry.held)
        hub.registry.shared = self.slots
        # A message for a partition no hub holds waits up to a lease for its next leader,
        # which the keeper looks for at once (hub/unled.py): from now on, as a child of
        # `serve --processes` may take connections before its keeper's first round.
        hub.leading.hold, hub.leading.learn = lease, self.learn
        self.instance = os.urandom(8).hex()  # a new member for every process
        hub.leading.instance, hub.leading.members = self.instance, self.others

    async def start(self, url: str) -> None:
        """Join as ``url`` (where the other hubs reach this one): take a first share of the
        partitions before returning, then keep it every ``lease / 3`` seconds."""
        leases, leading = self.leases, self.hub.leading
        await leases.open()
        self.slots.opened()

        async def gained(p: int, token: str) -> None:
            await leading.lead(p, leases.fenced_store(p, token))

        self.keeper = PartitionKeeper(
            leases,
            instance=self.instance,
            url=url,
            lease=self.lease,
            poll=min(0.1, self.lease / 30),  # a lease waited for is read this often
            on_gained=gained,
            on_release=leading.hand_off,
            on_lost=leading.lose,
            on_leader=leading.follow,
            # The renewals and the heartbeat in a thread over leases of their own: on time
            # however busy the hub's loop is (hub/renewer.py).
            open_renewal_leases=lambda: open_partition_leases(self.store_url, self.hub.partitions),
        )
        with contextlib.suppress(StoreUnavailable):  # the keeper's rounds retry
            await self.keeper.tick()
        self.keeper.start()

    def others(self) -> dict[str, str]:
        """The other live hubs (member id -> URL), as the keeper's last round read them."""
        keeper = self.keeper
        if keeper is None:
            return {}
        me = keeper.member
        # Not this hub under an older instance either (a restart at the same URL, whose
        # heartbeat has not run out yet).
        return {m.instance: m.url for m in keeper.members if m.url != me.url}

    def learn(self, partition: int, past: str = "") -> None:
        """Find ``partition``'s leader now (before the keeper's first round: at that round);
        ``past``: a leader whose link broke, looked past until the lease names another."""
        if self.keeper is not None:
            self.keeper.look_soon(partition, past=past)

    async def stop(self) -> None:
        """SIGTERM's graceful hand-off: every partition flushed and released at once, so the
        other hubs take them at their next round, without waiting for expiry."""
        keeper, self.keeper = self.keeper, None
        await self.slots.close()  # its slots go with the member (leave)
        if self.hub.registry.shared is self.slots:
            self.hub.registry.shared = None
        try:
            if keeper is not None:
                await keeper.stop()
        except Exception:  # the hub stops all the same; what was not released expires
            log.exception("handing the partitions off failed")
        finally:
            await self.leases.close()
