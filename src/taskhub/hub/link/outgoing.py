"""What one side of a link has to send: entries gathered through one turn of the event loop
and written as one frame (or a few, over :data:`~taskhub.hub.link.wire.FRAME_BYTES`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from taskhub.hub.link.wire import frames

# Bytes of entries one side may have waiting for a link that does not take them; past it the
# link is given up (its connections are closed and reconnect), as a slow client is.
MAX_WAITING = 64 * 1024 * 1024


class Outgoing:
    """Entries waiting for one link (:meth:`add`), written by a task of their own.

    The writer runs once the turn that added an entry is over, so everything the hub sent
    in that turn leaves in one frame. While it waits for the socket to take a frame, the
    next ones gather. More than :data:`MAX_WAITING` bytes waiting call ``too_slow`` once.
    """

    def __init__(
        self, send: Callable[[bytes], Awaitable[None]], too_slow: Callable[[int], None]
    ) -> None:
        self.send = send
        self.too_slow = too_slow
        self.entries: list[bytes] = []
        self.waiting = 0
        self.given_up = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._write_loop(), name="taskhub-link-writer")

    def add(self, entry: bytes) -> None:
        if self.given_up:
            return
        self.entries.append(entry)
        self.waiting += len(entry)
        if self.waiting > MAX_WAITING:
            self.given_up = True
            self.entries.clear()
            self.too_slow(self.waiting)
            return
        self.wake.set()

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            # A send that failed: the link is over anyway.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            entries, self.entries = self.entries, []
            self.waiting = 0  # what waits behind the frames being written from now on
            for frame in frames(entries):
                await self.send(frame)
