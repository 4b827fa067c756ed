"""Watching task events live: what :meth:`Client.watch` returns."""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskhub.client.client import Client
    from taskhub.client.link import Link

Event = dict[str, Any]


class Watch:
    """The task events of every action matching ``pattern``, as they happen.

    An async iterator of event dicts (``task``, ``action``, ``type``, ``state``, ``at`` and,
    when set, ``data``, ``group``, ``service``), and an async context manager that stops
    watching on exit. Events are live only: the ones that happen while the connection is
    down are not replayed (read a task with :meth:`Client.get` to catch up). Events wait in
    an unbounded local queue until you read them. When the client is closed, an iteration
    reads the events already queued, then raises :class:`ConnectionClosed`.
    """

    def __init__(self, client: Client, link: Link, pattern: str) -> None:
        self.client = client
        self._link = link
        self.pattern = pattern
        self.closed = False
        self._lost_by: BaseException | None = None  # the client closed: raised at the end
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def started(self) -> Watch:
        """Wait until the hub has accepted the watch (raises e.g. PermissionDenied)."""
        await asyncio.shield(self._confirmed)
        return self

    async def __aenter__(self) -> Watch:
        return await self.started()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        if not self.closed or self._confirmed.done():  # not for a watch closed unconfirmed
            await self.started()
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # every later call ends too
            if self._lost_by is not None:
                raise copy.copy(self._lost_by)
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop watching; an iteration in progress ends after the events already queued."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        await self._link.unwatch(self)

    # --- fed by the client (internal) -------------------------------------------------------
    def feed_event(self, event: Event) -> None:
        if not self.closed:
            self._queue.put_nowait(event)

    def feed_lost(self, exc: BaseException) -> None:
        """The client was closed: nothing more comes; a reader gets ``exc`` after the events
        already queued (and a caller of :meth:`started` at once, if not yet confirmed)."""
        if self._lost_by is not None:
            return
        self._lost_by = exc
        if not self._confirmed.done():
            self._confirmed.set_exception(exc)
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    def feed_confirm(self, exc: BaseException | None) -> None:
        if self._confirmed.done():
            return
        if exc is None:
            self._confirmed.set_result(None)
        else:
            self._confirmed.set_exception(exc)
            self.closed = True
            self._queue.put_nowait(None)
