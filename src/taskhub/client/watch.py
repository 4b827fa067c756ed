"""Watching task events live: what :meth:`Client.watch` returns."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskhub.client.client import Client

Event = dict[str, Any]


class Watch:
    """The task events of every action matching ``pattern``, as they happen.

    An async iterator of event dicts (``task``, ``action``, ``type``, ``state``, ``at`` and,
    when set, ``data``, ``group``, ``service``), and an async context manager that stops
    watching on exit. Events are live only: the ones that happen while the connection is
    down are not replayed (read a task with :meth:`Client.get` to catch up). Events wait in
    an unbounded local queue until you read them.
    """

    def __init__(self, client: Client, pattern: str) -> None:
        self.client = client
        self.pattern = pattern
        self.closed = False
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
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        await self.started()
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop watching; an iteration in progress ends after the events already queued."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        await self.client._unwatch(self)

    def _deliver(self, event: Event) -> None:
        if not self.closed:
            self._queue.put_nowait(event)

    def _confirm(self, exc: BaseException | None) -> None:
        if self._confirmed.done():
            return
        if exc is None:
            self._confirmed.set_result(None)
        else:
            self._confirmed.set_exception(exc)
            self.closed = True
            self._queue.put_nowait(None)
