"""A hub's leases, renewed from a thread of its own over a connection of its own
(docs/deployment.md, "Leadership: lease, renewal, step-down" and "Partition leases").

The hub's event loop can be busy for seconds on end: a worker subscribing to an action with
100,000 waiting tasks routes them all in one step, and a new leader restores that many before
it serves. A renewal that waits for that loop came late and lost a lease the hub was using
(seen at load 10-17 with 100,000 tasks in flight, and within seconds under a saturating load
on hubs of several partitions). Here the renewals run in a thread with its own event loop and
store connection, so they go out on time whatever the hub's loop does. A loop that does not
run for ``stall`` seconds is taken for a hub that hangs: the renewals stop and the leases run
out, so another hub takes over. A hub paused whole (SIGSTOP) pauses this thread too.

Renewals are paced from when the last one was *sent* (every ``lease / 3``): one answered late
is followed by the next at once, not ``lease / 3`` after the late answer. A lease is counted
from when the last successful renewal was sent.

:class:`LeaseRenewer` keeps the one-partition cluster's leader lock; :class:`PartitionRenewer`
keeps every partition lease a hub holds, and its member record, in one store call per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from taskhub.store.lock import LeaderLock, Member, PartitionLeases

log = logging.getLogger("taskhub.cluster")

# A hub whose event loop has not run for this many leases lets its leases lapse.
STALL_LEASES = 10.0


class _RenewalThread:
    """The thread, its pacing and the hub loop's beat, shared by the two renewers. A subclass
    opens its connection (:meth:`_connect`), renews once per round (:meth:`_round`: False
    ends the thread) and closes the connection (:meth:`_disconnect`)."""

    at_once = False  # the first round at start, not a pause after it

    def __init__(
        self, *, lease: float, loop: asyncio.AbstractEventLoop, stall: float | None, name: str
    ) -> None:
        self.lease = lease
        self.stall = STALL_LEASES * lease if stall is None else stall
        self.loop = loop
        self._alive_at = time.monotonic()  # when the hub's loop last ran (its beat)
        self._beat: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._ended = False  # stop() was called: a loss found meanwhile is not told
        self._wake: Callable[[], None] = lambda: None  # ends the thread's wait at once
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def stopped(self) -> bool:
        """It renews no more (stopped, or it let the leases go)."""
        return self._stopped.is_set()

    def start(self) -> None:
        """Start renewing (call on the hub's loop)."""
        self._on_beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the thread ends by itself; a renewal under way is not waited for)."""
        self._ended = True
        self._stopped.set()
        with contextlib.suppress(RuntimeError):  # the thread's loop has ended already
            self._wake()
        if self._beat is not None:
            self._beat.cancel()

    def _on_beat(self) -> None:
        self._alive_at = time.monotonic()
        self._beat = self.loop.call_later(self.lease / 3, self._on_beat)

    def _stalled(self, sent: float) -> str:
        """Why the thread must stop renewing: the hub's loop hangs; "" while it runs."""
        stalled = sent - self._alive_at
        if stalled > self.stall:
            return f"the hub's event loop has not run for {stalled:.1f}s; letting the lease go"
        return ""

    def _tell(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` on the hub's loop, unless the renewer was stopped by then."""

        def told() -> None:
            if not self._ended:
                fn(*args)

        with contextlib.suppress(RuntimeError):  # the hub's loop is closed: nothing to tell
            self.loop.call_soon_threadsafe(told)

    def _failed(self) -> None:
        """The thread failed (a bug): the leases must not be kept by a renewer that failed."""

    # --- the thread ----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:
            log.exception("the lease renewer failed")
            self._failed()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        self._wake = wake_up
        if self._stopped.is_set():
            return
        conn = self._connect()
        try:
            sent = time.monotonic() - (self.lease / 3 if self.at_once else 0.0)
            while not self._stopped.is_set():
                pause = sent + self.lease / 3 - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(pause, 0.0))
                wake.clear()
                if self._stopped.is_set():
                    return
                sent = time.monotonic()
                if not await self._round(conn, sent):
                    self._stopped.set()
                    return
        finally:
            with contextlib.suppress(Exception):
                await self._disconnect(conn)

    def _connect(self) -> Any:
        raise NotImplementedError

    async def _round(self, conn: Any, sent: float) -> bool:
        raise NotImplementedError

    async def _disconnect(self, conn: Any) -> None:
        raise NotImplementedError


class LeaseRenewer(_RenewalThread):
    """Keeps ``token``'s lease on the lock ``open_lock()`` opens (a new one, for the thread)
    from ``until`` (``time.monotonic()`` seconds) on, until :meth:`stop` or until it is lost:
    then ``on_lost(why)`` is called on ``loop`` (the hub's), once."""

    def __init__(
        self,
        open_lock: Callable[[], LeaderLock],
        token: str,
        *,
        lease: float,
        until: float,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[str], None],
        stall: float | None = None,
    ) -> None:
        super().__init__(lease=lease, loop=loop, stall=stall, name="taskhub-lease")
        self.open_lock = open_lock
        self.token = token
        # Until when the lease surely holds (monotonic seconds); 0 once lost or stopped.
        self.until = until
        self.on_lost = on_lost

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.until

    def stop(self) -> None:
        self.until = 0.0
        super().stop()

    def _lost(self, why: str) -> None:
        if self._stopped.is_set():
            return
        self.until = 0.0
        self._stopped.set()
        self._tell(self._on_lost, why)

    def _on_lost(self, why: str) -> None:
        if self._beat is not None:
            self._beat.cancel()
        self.on_lost(why)

    def _failed(self) -> None:
        self._lost("the lease renewer failed")

    def _connect(self) -> LeaderLock:
        return self.open_lock()

    async def _disconnect(self, conn: LeaderLock) -> None:
        await conn.close()

    async def _round(self, conn: LeaderLock, sent: float) -> bool:
        why = await self._renew(conn, sent)
        if why:
            self._lost(why)
        return not why

    async def _renew(self, lock: LeaderLock, sent: float) -> str:
        """One renewal sent at ``sent``: why the lease is lost, or "" (kept, or Redis out of
        reach with time left to retry)."""
        left = self.until - sent
        if left <= 0:
            return "the lease ran out before it could be renewed"
        stalled = self._stalled(sent)
        if stalled:
            return stalled

        async def renew() -> bool:
            await lock.open()  # connects at the first renewal, and again after a failure
            return await lock.renew(self.token, int(self.lease * 1000))

        try:
            kept = await asyncio.wait_for(renew(), left)
        except TimeoutError:
            return "Redis did not answer the lease renewal in time"
        except Exception as exc:  # unreachable for now: retry while the lease lasts
            log.warning("cannot renew the leader lease: %s", exc)
            return ""
        if not kept:
            return "another hub holds the lock now"
        if not self._stopped.is_set():
            self.until = sent + self.lease
        return ""


class PartitionRenewer(_RenewalThread):
    """Keeps every partition lease the hub's keeper holds (:meth:`hold` ... :meth:`drop`) and
    the keeper's ``member`` record, over the leases ``open_leases()`` opens (new ones, for the
    thread), every round in one call (:meth:`PartitionLeases.renew_many`). A lease refused,
    or not renewed before it runs out, is lost: ``on_lost(partition, token, why)`` on ``loop``
    (the hub's), once; the keeper then stops leading it. A hub loop that stalls loses them
    all and stops the heartbeat, so the other hubs take its partitions."""

    at_once = True  # the member record goes out at once: the other hubs count this one

    def __init__(
        self,
        open_leases: Callable[[], PartitionLeases],
        member: Member,
        *,
        lease: float,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[int, str, str], None],
        stall: float | None = None,
    ) -> None:
        super().__init__(lease=lease, loop=loop, stall=stall, name="taskhub-leases")
        self.open_leases = open_leases
        self.member: Member | None = member
        self.on_lost = on_lost
        # partition -> (token, until: monotonic seconds the lease surely lasts). Written by
        # both threads: a round reads a copy and writes back only what still holds the token.
        self._held: dict[int, tuple[str, float]] = {}
        self._guard = threading.Lock()
        self._busy = False  # a round's store call is under way (its answer still to come)
        self._ended_round: asyncio.Event | None = None  # leave() waits for that round's end

    def hold(self, partition: int, token: str, until: float) -> None:
        """Renew ``partition``'s lease, held with ``token`` until ``until``, from now on."""
        with self._guard:
            self._held[partition] = (token, until)

    def drop(self, partition: int) -> None:
        """Stop renewing ``partition``'s lease (handed off, released or lost)."""
        with self._guard:
            self._held.pop(partition, None)

    def until(self, partition: int) -> float:
        """Until when (monotonic seconds) ``partition``'s lease surely holds; 0 if not held."""
        with self._guard:
            held = self._held.get(partition)
        return 0.0 if held is None else held[1]

    async def leave(self) -> None:
        """Heartbeat no more, and wait (at most a lease) for a round under way to end, so a
        member record taken off after this stays off."""
        ended = asyncio.Event()
        with self._guard:
            self.member = None
            if not self._busy:
                return
            self._ended_round = ended
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), self.lease)

    def stop(self) -> None:
        with self._guard:
            self._held.clear()
        super().stop()

    def _lose(self, partition: int, token: str, why: str) -> None:
        with self._guard:
            if self._held.get(partition, ("", 0.0))[0] != token:
                return  # dropped, or held again with a new token, meanwhile
            del self._held[partition]
        self._tell(self.on_lost, partition, token, why)

    def _failed(self) -> None:
        with self._guard:
            held = list(self._held.items())
        for p, (token, _) in held:
            self._lose(p, token, "the lease renewer failed")

    def _connect(self) -> PartitionLeases:
        return self.open_leases()

    async def _disconnect(self, conn: PartitionLeases) -> None:
        await conn.close()

    async def _round(self, conn: PartitionLeases, sent: float) -> bool:
        with self._guard:
            held = dict(self._held)
            member = self.member
            self._busy = True
        try:
            return await self._renew(conn, sent, held, member)
        finally:
            with self._guard:
                self._busy = False
                ended, self._ended_round = self._ended_round, None
            if ended is not None:
                with contextlib.suppress(RuntimeError):  # the hub's loop is closed
                    self.loop.call_soon_threadsafe(ended.set)

    async def _renew(
        self,
        leases: PartitionLeases,
        sent: float,
        held: dict[int, tuple[str, float]],
        member: Member | None,
    ) -> bool:
        """One round sent at ``sent``: False when the hub's loop stalled (every lease lost,
        the thread ends)."""
        stalled = self._stalled(sent)
        if stalled:
            for p, (token, _) in held.items():
                self._lose(p, token, stalled)
            return False
        for p, (token, until) in list(held.items()):
            if until <= sent:
                del held[p]
                self._lose(p, token, "the lease ran out before it was renewed")
        if not held and member is None:
            return True
        left = max((until for _, until in held.values()), default=sent + self.lease) - sent
        ttl_ms = int(self.lease * 1000)
        items = sorted((p, token) for p, (token, _) in held.items())

        async def renew() -> list[bool]:
            await leases.open()  # connects at the first round, and again after a failure
            return await leases.renew_many(items, ttl_ms, member)

        try:
            kept = await asyncio.wait_for(renew(), left)
        except TimeoutError:
            for p, token in items:
                self._lose(p, token, "the store did not answer the lease renewal in time")
            return True
        except Exception as exc:  # unreachable for now: retry while the leases last
            log.warning("cannot renew the partition leases: %s", exc)
            return True
        for (p, token), renewed in zip(items, kept, strict=True):
            if not renewed:
                self._lose(p, token, "another hub holds the lease now")
                continue
            with self._guard:
                if self._held.get(p, ("", 0.0))[0] == token and not self._stopped.is_set():
                    self._held[p] = (token, sent + self.lease)
        return True
