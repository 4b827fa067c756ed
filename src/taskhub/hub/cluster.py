"""Several hubs over one Redis: one leads (runs the lifecycle), the others relay to it.

Leadership is the store's leader lock (:class:`~taskhub.store.LeaderLock`, taken through that
protocol only; on Redis ``SET NX PX``, renewed by compare-and-``PEXPIRE``) whose token is
``"<instance id> <advertised URL>"``: the instance id is new for every process, so a hub
restarted on the same address does not take a dead incarnation's lock for its own, and never
relays to itself. The leader's store is *fenced* by that lock (``fenced_store``): a batch is
written only while the lock still holds the leader's token, so a hub that stalled past its
lease cannot overwrite what its successor does.

The lease is kept from the moment the lock is taken by a thread of its own, over a connection
of its own (:mod:`taskhub.hub.renewer`), so nothing the hub does while it leads (restoring
100,000 unfinished tasks, routing them to a worker that subscribes, stopping) can let it
lapse; a hub whose event loop does not run for ten leases lets it go. The leader counts its
lease from when it *sent* its last successful renewal: once that much time has passed without
another, it stops serving as the leader at once (Redis may have let the lock go by then), and
steps down. A step-down
is bounded in time, and afterwards the hub always looks for the current leader and follows
it. Connections to any hub are relayed to the leader (:mod:`taskhub.hub.proxy`); when the
leader changes, relayed connections are closed and clients reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from taskhub.hub.hub import Hub
from taskhub.hub.proxy import RELAYED_HEADER, Receive, Relay, Scope, Send, send_json, try_again
from taskhub.hub.renewer import LeaseRenewer
from taskhub.store import Store, open_leader_lock

log = logging.getLogger("taskhub.cluster")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")


class Cluster:
    """The role of one hub process in a cluster, and the ASGI app that follows the role."""

    def __init__(
        self,
        store_url: str,
        *,
        make_hub: Callable[[Store], Hub],
        make_app: Callable[[Hub], ASGIApp],
        lease: float = 3.0,
        ssl: Any = None,
        keepalive: tuple[float | None, float | None] = (5.0, 5.0),
    ) -> None:
        """``keepalive``: ping interval and timeout of the WebSocket links this hub relays to
        the leader (the hub's own ``ping_interval``/``ping_timeout``): a leader that stops
        answering is noticed within their sum, and the relayed clients are closed with 1013."""
        self.store_url = store_url
        self.advertise_url = ""
        # This process's incarnation: in the lock's value, so a restarted hub on the same
        # address tells a dead predecessor's lock from its own.
        self.instance = os.urandom(8).hex()
        self.token = ""
        self.make_hub = make_hub
        self.make_app = make_app
        self.lease = lease
        self.hub: Hub | None = None  # the hub this process leads with, once it serves
        self._own: Hub | None = None  # the hub made when the lock was taken (restoring, serving)
        self._app: ASGIApp | None = None
        self._lock = open_leader_lock(store_url)
        self._leader: str | None = None  # the leader's base URL, as its lock value says
        self.relay = Relay(lambda: self._leader, ssl=ssl, keepalive=keepalive, via=self.instance)
        self._loop_task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set at every change of role or leader (tests)
        self._holding = False  # this process took the lock and has not stepped down since
        self._lease_until = 0.0  # time.monotonic() until which the lock surely is ours
        self._lost = asyncio.Event()  # the lease could not be renewed in time
        self._release = False  # step down releasing the lock (the hub could not start)
        self.renewer: LeaseRenewer | None = None  # keeps the lease while this hub leads
        self._self_named = False  # the lock names our address under another instance (logged)
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def leading(self) -> bool:
        """This hub runs the lifecycle now: it holds the lock and its lease has not run out."""
        return self._app is not None and self._lease_valid()

    def _lease_valid(self) -> bool:
        renewer = self.renewer
        return renewer.valid if renewer is not None else time.monotonic() < self._lease_until

    async def start(self, advertise_url: str) -> None:
        """``advertise_url``: where the other hubs reach this one (its lock value says it)."""
        self.advertise_url = advertise_url.rstrip("/")
        self.relay.own_url = self.advertise_url
        self.token = f"{self.instance} {self.advertise_url}"
        await self._lock.open()
        with contextlib.suppress(Exception):  # Redis not there yet: the role loop retries
            await self._step()
        self._loop_task = asyncio.create_task(self._run(), name="taskhub-cluster")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.relay.close()
        if self._holding:
            await self._step_down(release=True, bound=self.lease + 15.0)
        for task in list(self._background):
            task.cancel()
        await self._lock.close()

    # --- the role loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if self._holding:
                await self._lost.wait()
                await self._step_down(release=self._release, bound=2 * self.lease + 1.0)
                continue  # find and follow whoever leads now, at once
            try:
                await self._step()
            except Exception:  # Redis unreachable: nobody known to lead
                log.warning("cannot reach Redis at %s", self._lock.url, exc_info=True)
                self._follow(None)
            if not self._holding:
                await asyncio.sleep(self.lease / 3)

    async def _step(self) -> None:
        """Not leading: take the lock if it is free, else follow the hub its value names."""
        sent = time.monotonic()
        ttl = int(self.lease * 1000)
        if await _bounded(self._lock.acquire(self.token, ttl), self.lease):
            self._lease_until = sent + self.lease
            await self._lead()
            return
        owner = await _bounded(self._lock.owner(), self.lease)
        self._follow(self._leader_of(owner))

    def _leader_of(self, owner: str | None) -> str | None:
        """The URL to relay to, from the lock's value; None when nobody can be followed."""
        if owner is None or " " not in owner:
            return None
        instance, url = owner.split(" ", 1)
        if instance == self.instance or url.rstrip("/") == self.advertise_url:
            # Our address under another instance id: a predecessor that died holding the lock
            # (or a hub misconfigured with our advertise_url). Relaying there is relaying to
            # ourselves; wait for the lock to expire instead.
            if not self._self_named:
                log.warning(
                    "the leader lock names this hub's address (%s) for another process "
                    "(instance %s, this one is %s); waiting for it to expire",
                    url,
                    instance,
                    self.instance,
                )
                self._self_named = True
            return None
        self._self_named = False
        return url

    async def _lead(self) -> None:
        """The lock is ours: keep it alive from now on, restore, then serve as the leader."""
        self._holding = True
        self._release = False
        self._lost.clear()
        self.renewer = LeaseRenewer(
            lambda: open_leader_lock(self.store_url),
            self.token,
            lease=self.lease,
            until=self._lease_until,
            loop=asyncio.get_running_loop(),
            on_lost=self._lose,
        )
        self.renewer.start()
        hub = self.make_hub(self._lock.fenced_store(self.token))
        hub.role = "leader"
        self._own = hub
        starting = asyncio.ensure_future(hub.start())  # restores what the last leader left
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({starting, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # this hub stops meanwhile
            self._abandon(starting)
            raise
        finally:
            lost.cancel()
        if not starting.done():  # the lease ran out first (Redis unreachable)
            self._abandon(starting)
            return  # the role loop steps down
        if starting.exception() is not None:
            log.error("could not take the lead", exc_info=starting.exception())
            self._release = True  # let another hub try at once
            self._lost.set()
            return
        if self._lost.is_set():
            return
        self.hub = hub
        self._app = self.make_app(hub)
        self._leader = None
        self._self_named = False
        # Relayed connections reconnect, now to us. Not awaited: a relayed link to a stalled
        # hub may take its close timeout to go, and the lease must not wait for it.
        self._spawn(self.relay.drop_all())
        log.info(
            "this hub now leads the cluster (%s, instance %s)", self.advertise_url, self.instance
        )
        self.changed.set()

    def _lose(self, why: str) -> None:
        log.warning("lost the leader lease (%s); stepping down", why)
        self._app = None  # from now on requests are answered as a follower's
        self._lease_until = 0.0
        self._lost.set()
        self.changed.set()

    async def _step_down(self, *, release: bool, bound: float) -> None:
        """Stop the hub (at most ``bound`` seconds: a stop stuck on an unreachable Redis is
        left behind, fenced, so the role loop always goes on to follow the next leader)."""
        hub, self._own, self.hub, self._app = self._own, None, None, None
        renewer, self.renewer = self.renewer, None
        if renewer is not None:
            renewer.stop()
        self._lease_until = 0.0
        if hub is not None:
            stopping = asyncio.ensure_future(self._stop_hub(hub, release=release))
            done, _ = await asyncio.wait({stopping}, timeout=bound)
            if not done:
                log.error("the old leader's hub did not stop within %.0fs; left behind", bound)
                self._abandon(stopping)
        self._holding = False
        self._lost.clear()
        self.changed.set()

    async def _stop_hub(self, hub: Hub, *, release: bool) -> None:
        await hub.close_connections(code=1012, reason="hub leadership changed; reconnect")
        await hub.stop(flush_timeout=self.lease)
        if release:
            with contextlib.suppress(Exception):
                await _bounded(self._lock.release(self.token), self.lease)

    def _follow(self, leader: str | None) -> None:
        if leader != self._leader:
            log.info("cluster leader is now %s", leader or "nobody")
            self._leader = leader
            self._spawn(self.relay.drop_all())
            self.changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @staticmethod
    def _abandon(task: asyncio.Future[Any]) -> None:
        """Cancel ``task`` without waiting for it (it may be stuck on the network)."""
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # --- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is not None and self._lease_valid():
            await app(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/healthz":
            # A follower (or a hub between roles) is healthy on its own account.
            await send_json(send, 200, b'{"status":"ok","role":"follower"}')
        elif any(k.lower() == RELAYED_HEADER for k, _ in scope.get("headers", ())):
            # Relayed here by a hub that took us for the leader: relaying again could loop.
            await self._refuse(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.relay.websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self.relay.http(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await try_again(send, "this hub does not lead the cluster; retry shortly")
        else:
            await send_json(
                send,
                503,
                b'{"code":"no_leader","message":"no hub leads the cluster right now; '
                b'retry shortly"}',
            )


async def _bounded(coro: Awaitable[T], seconds: float) -> T:
    """``await coro``, but raise TimeoutError after ``seconds`` without waiting for it to
    unwind: a call stuck on a cut network must not hold the caller up (unlike wait_for, which
    waits for the cancelled call to finish)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    if not done:
        Cluster._abandon(task)
        raise TimeoutError(f"no answer within {seconds:.1f}s")
    return task.result()
