"""The leader's lease, renewed from a thread of its own over a connection of its own
(docs/deployment.md, "Leadership: lease, renewal, step-down").

The hub's event loop can be busy for seconds on end: a worker subscribing to an action with
100,000 waiting tasks routes them all in one step, and a new leader restores that many before
it serves. A renewal that waits for that loop came late and lost a lease the hub was using
(seen at load 10-17 with 100,000 tasks in flight). Here the renewals run in a thread with its
own event loop and lock connection, so they go out on time whatever the hub's loop does. A
loop that does not run for ``stall`` seconds is taken for a hub that hangs: the renewals stop
and the lease runs out, so another hub takes over.

Renewals are paced from when the last one was *sent* (every ``lease / 3``): one answered late
is followed by the next at once, not ``lease / 3`` after the late answer. The lease is counted
from when the last successful renewal was sent, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from taskhub.store.lock import LeaderLock

log = logging.getLogger("taskhub.cluster")

# A hub whose event loop has not run for this many leases lets its lease lapse.
STALL_LEASES = 10.0


class LeaseRenewer:
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
        self.open_lock = open_lock
        self.token = token
        self.lease = lease
        # Until when the lease surely holds (monotonic seconds); 0 once lost or stopped.
        self.until = until
        self.stall = STALL_LEASES * lease if stall is None else stall
        self.loop = loop
        self.on_lost = on_lost
        self._alive_at = time.monotonic()  # when the hub's loop last ran (its beat)
        self._beat: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._ended = False  # stop() was called: a loss found meanwhile is not told
        self._wake: Callable[[], None] = lambda: None  # ends the thread's wait at once
        self._thread = threading.Thread(target=self._main, name="taskhub-lease", daemon=True)

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.until

    def start(self) -> None:
        """Start renewing (call on the hub's loop)."""
        self._on_beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the thread ends by itself; a renewal under way is not waited for)."""
        self.until = 0.0
        self._ended = True
        self._stopped.set()
        with contextlib.suppress(RuntimeError):  # the thread's loop has ended already
            self._wake()
        if self._beat is not None:
            self._beat.cancel()

    def _on_beat(self) -> None:
        self._alive_at = time.monotonic()
        self._beat = self.loop.call_later(self.lease / 3, self._on_beat)

    def _lost(self, why: str) -> None:
        if self._stopped.is_set():
            return
        self.until = 0.0
        self._stopped.set()
        with contextlib.suppress(RuntimeError):  # the hub's loop is closed: nothing to tell
            self.loop.call_soon_threadsafe(self._tell, why)

    def _tell(self, why: str) -> None:
        if self._ended:
            return
        if self._beat is not None:
            self._beat.cancel()
        self.on_lost(why)

    # --- the thread ----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:  # a bug: the lease must not be kept by a renewer that failed
            log.exception("the lease renewer failed")
            self._lost("the lease renewer failed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        self._wake = wake_up
        if self._stopped.is_set():
            return
        lock = self.open_lock()
        try:
            sent = time.monotonic()
            while not self._stopped.is_set():
                pause = sent + self.lease / 3 - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(pause, 0.0))
                if self._stopped.is_set():
                    return
                sent = time.monotonic()
                why = await self._renew(lock, sent)
                if why:
                    self._lost(why)
                    return
        finally:
            with contextlib.suppress(Exception):
                await lock.close()

    async def _renew(self, lock: LeaderLock, sent: float) -> str:
        """One renewal sent at ``sent``: why the lease is lost, or "" (kept, or Redis out of
        reach with time left to retry)."""
        left = self.until - sent
        if left <= 0:
            return "the lease ran out before it could be renewed"
        stalled = sent - self._alive_at
        if stalled > self.stall:
            return f"the hub's event loop has not run for {stalled:.1f}s; letting the lease go"

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
