"""``max_connections`` across the hubs of a deployment (docs/deployment.md, "Connections
across hubs"): each hub's count of a credential's connections kept in the store, beside its
member record and living as long as it, so that a claim counts the connections of every live
hub.

The registry (:mod:`taskhub.hub.auth`) counts this hub's connections and refuses past the
limit at once; for a credential with ``max_connections`` it then asks :meth:`SharedSlots.claim`,
which writes this hub's count only if the other live members leave room for it, in one atomic
step of the store. A closed connection's count is written in the background
(:meth:`SharedSlots.changed`). Every write sets this hub's whole count for the service, read
when the write runs, and writes run one at a time: a late write never undoes a newer one. A hub
killed with SIGKILL stops counting when its member record expires (at most one lease after its
last heartbeat): the engines keep the slots with the member's TTL and its heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from taskhub.errors import StoreUnavailable
from taskhub.store import PartitionLeases

log = logging.getLogger("taskhub.auth")


class SharedSlots:
    """This hub's (``instance``'s) connection slots in the store of ``leases``.

    ``held(service)``: how many connections of the service this hub counts now (the
    registry's count, the one being claimed included). ``lease``: seconds; the slots' TTL, as
    the member record's, and a failed background write is tried again after a third of it.
    """

    def __init__(
        self,
        leases: PartitionLeases,
        instance: str,
        *,
        lease: float,
        held: Callable[[str], int],
    ) -> None:
        self.leases = leases
        self.instance = instance
        self.ttl_ms = int(lease * 1000)
        self.retry = lease / 3
        self.held = held
        self._turn = asyncio.Lock()  # one store call at a time, in the order asked
        self._ready = asyncio.Event()  # the leases are open (or this was closed)
        self._closed = False
        self._dirty: set[str] = set()  # services whose count changed since written
        self._writer: asyncio.Task[None] | None = None

    def opened(self) -> None:
        """The leases are open: claims go to the store from now on (those waiting too)."""
        self._ready.set()

    async def claim(self, service: str, limit: int) -> int | None:
        """Count this hub's connections of ``service`` (``held``) in the store if every live
        hub's together stay within ``limit``: None when counted, else how many connections
        the service has besides this one (nothing written). StoreUnavailable when the store
        cannot say."""
        await self._wait_ready()
        async with self._turn:
            held = self.held(service)
            others = await self.leases.claim_slot(self.instance, service, held, limit, self.ttl_ms)
        return None if others is None else others + held - 1

    def changed(self, service: str) -> None:
        """This hub's count of ``service`` changed (a connection closed, a claim refused):
        write it soon."""
        if self._closed:
            return
        self._dirty.add(service)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="taskhub-slots")

    async def _write(self) -> None:
        while self._dirty and not self._closed:
            service = self._dirty.pop()
            try:
                await self._wait_ready()
                async with self._turn:
                    held = self.held(service)
                    await self.leases.set_slots(self.instance, service, held, self.ttl_ms)
            except StoreUnavailable as exc:  # counted too high until written: try again
                log.warning("cannot write the connections of %r to the store: %s", service, exc)
                self._dirty.add(service)
                await asyncio.sleep(self.retry)
            except Exception:  # a bug: said; the next change of the service writes it
                log.exception("writing the connections of %r failed", service)

    async def settle(self) -> None:
        """Wait until every change so far is written (or given up: :meth:`close`)."""
        while self._writer is not None and not self._writer.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._writer)

    async def _wait_ready(self) -> None:
        await self._ready.wait()
        if self._closed:
            raise StoreUnavailable("this hub is leaving its deployment: connections not counted")

    async def close(self) -> None:
        """Stop writing (the member's slots go with it when it leaves the member list)."""
        self._closed = True
        self._ready.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
