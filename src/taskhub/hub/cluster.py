"""Several hubs over one Redis: one leads (runs the lifecycle), the others relay to it.

Leadership is a Redis lock (``SET NX PX``, renewed by compare-and-``PEXPIRE``) whose value
names the leader's URL. The leader's store is *fenced* by that lock: a batch is written only
while the lock still holds the leader's token, so a hub that stalled past its lease cannot
overwrite what its successor does. A new leader restores the unfinished tasks from Redis,
exactly as a single hub does after a restart, and re-offers the deliveries that were in
flight. Connections to any hub are relayed to the leader (:mod:`taskhub.hub.proxy`); when the
leader changes, relayed connections are closed and clients reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from taskhub.hub.hub import Hub
from taskhub.hub.proxy import Receive, Relay, Scope, Send, _json
from taskhub.store.redis import RedisStore

log = logging.getLogger("taskhub.cluster")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LOCK = "leader"


class Cluster:
    """The role of one hub process in a cluster, and the ASGI app that follows the role."""

    def __init__(
        self,
        store_url: str,
        *,
        make_hub: Callable[[RedisStore], Hub],
        make_app: Callable[[Hub], ASGIApp],
        lease: float = 3.0,
        ssl: Any = None,
    ) -> None:
        self.store_url = store_url
        self.advertise_url = ""
        self.token = ""
        self.make_hub = make_hub
        self.make_app = make_app
        self.lease = lease
        self.hub: Hub | None = None
        self._app: ASGIApp | None = None
        self._lock_store = RedisStore.from_url(store_url)
        self._leader: str | None = None  # the leader's base URL, as its lock value says
        self.relay = Relay(lambda: self._leader, ssl=ssl)
        self._loop_task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set at every change of role or leader (tests)

    @property
    def leading(self) -> bool:
        return self.hub is not None

    async def start(self, advertise_url: str) -> None:
        """``advertise_url``: where the other hubs reach this one (its lock value says it)."""
        self.advertise_url = advertise_url.rstrip("/")
        self.token = f"{os.urandom(6).hex()} {self.advertise_url}"
        await self._lock_store.open()
        await self._tick()
        self._loop_task = asyncio.create_task(self._run(), name="taskhub-cluster")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.relay.close()
        if self.hub is not None:
            await self._resign(release=True)
        await self._lock_store.close()

    # --- the role loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self._tick()
            except Exception:  # Redis unreachable: a leader that cannot renew steps down
                log.warning("cannot reach Redis at %s", self._lock_store.url, exc_info=True)
                if self.hub is not None:
                    await self._resign(release=False)
                self._follow(None)

    async def _tick(self) -> None:
        ttl = int(self.lease * 1000)
        if self.hub is not None:
            if not await self._lock_store.renew_lock(LOCK, self.token, ttl):
                log.warning("lost the leader lease; stepping down")
                await self._resign(release=False)
            return
        if await self._lock_store.acquire_lock(LOCK, self.token, ttl):
            await self._lead()
            return
        owner = await self._lock_store.lock_owner(LOCK)
        self._follow(owner.split(" ", 1)[1] if owner and " " in owner else None)

    async def _lead(self) -> None:
        store = RedisStore.from_url(self.store_url)
        store.set_fence(self._lock_store.lock_key(LOCK), self.token)
        hub = self.make_hub(store)
        hub.role = "leader"
        try:
            await hub.start()  # restores what the previous leader left unfinished
        except Exception:
            log.exception("could not take the lead")
            with contextlib.suppress(Exception):
                await self._lock_store.release_lock(LOCK, self.token)
            return
        await self.relay.drop_all()  # relayed connections reconnect, now to us
        self.hub = hub
        self._app = self.make_app(hub)
        self._leader = None
        log.info("this hub now leads the cluster (%s)", self.advertise_url)
        self.changed.set()

    async def _resign(self, *, release: bool) -> None:
        hub, self.hub, self._app = self.hub, None, None
        if hub is None:
            return
        await hub.close_connections(code=1012, reason="hub leadership changed; reconnect")
        await hub.stop(flush_timeout=self.lease)
        if release:
            with contextlib.suppress(Exception):
                await self._lock_store.release_lock(LOCK, self.token)
        self.changed.set()

    def _follow(self, leader: str | None) -> None:
        if leader != self._leader:
            log.info("cluster leader is now %s", leader or "nobody")
            self._leader = leader
            task = asyncio.ensure_future(self.relay.drop_all())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self.changed.set()

    # --- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.relay.websocket(scope, receive, send)
        elif scope["type"] == "http":
            if scope["path"] == "/healthz":  # a follower is healthy on its own account
                await _json(send, 200, b'{"status":"ok","role":"follower"}')
            else:
                await self.relay.http(scope, receive, send)
