"""One connection's frames applied in order, without a queue while none has to wait."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable

from taskhub import protocol as p
from taskhub.errors import FrameTooLarge, ProtocolError
from taskhub.hub.hub import Hub
from taskhub.hub.ws.transport import HubWebSocketProtocol
from taskhub.lifecycle import Peer
from taskhub.protocol import BATCHES, Bad, Inbound

log = logging.getLogger("taskhub.ws")

# Messages of one frame applied before the flusher gets a turn (see FrameFeed); an item of a
# batched message counts as one.
CHUNK = 32


class FrameFeed:
    """Applies one connection's frames in order: at once, in the protocol's callback, while
    none waits; behind the one that waits otherwise (a message that reads the store, or the
    flusher's turn between chunks of a long frame). While frames wait it holds the socket
    once ``max_queue`` of them have come, as uvicorn's own queue would."""

    def __init__(
        self, hub: Hub, peer: Peer, proto: HubWebSocketProtocol | None, max_queue: int
    ) -> None:
        self.hub = hub
        self.peer = peer
        self.proto = proto
        self.max_queue = max_queue
        self.backlog: deque[str | bytes] = deque()  # frames that came while one waits
        self.resuming: asyncio.Task[None] | None = None  # applies the rest, then the backlog

    def __call__(self, data: str | bytes) -> None:
        if self.resuming is not None:
            self.backlog.append(data)
            if self.proto is not None and len(self.backlog) >= self.max_queue:
                self.proto.hold()
            return
        msgs = self._parse(data)
        if msgs is None:
            return
        stop = self._apply(msgs, 0)
        if stop is not None:
            self.resuming = asyncio.get_running_loop().create_task(self._resume(msgs, *stop))

    async def finish(self) -> None:
        """Wait until every frame received so far is applied."""
        if self.resuming is not None:
            await asyncio.shield(self.resuming)

    def cancel(self) -> None:
        if self.resuming is not None:
            self.resuming.cancel()

    def _parse(self, data: str | bytes) -> list[Inbound | Bad] | None:
        """The frame's messages; None, with the error sent, if none can be read."""
        hub = self.hub
        try:
            if len(data) > hub.limits.max_frame:  # text frames are measured in characters
                raise FrameTooLarge(
                    f"frame of {len(data)} bytes/characters is over the limit "
                    f"of {hub.limits.max_frame}; none of its messages were applied"
                )
            return p.decode_frame(data)
        except ProtocolError as exc:  # FrameTooLarge is one too
            hub.lc.send(self.peer, p.error_msg(exc))
            hub.kick()
            return None

    def _apply(
        self, msgs: list[Inbound | Bad], i: int
    ) -> tuple[int, Awaitable[None] | None] | None:
        """Apply ``msgs[i:]`` until one needs the store, or a chunk ends with more to come:
        where to go on and what to wait for first; None once the frame is applied."""
        hub, peer, n = self.hub, self.peer, len(msgs)
        done = 0  # messages applied in this chunk, a batched one counting its items
        while i < n:
            msg = msgs[i]
            pending = hub.handle(peer, msg)
            i += 1
            if pending is not None:
                return i, pending
            done += len(msg.items) if type(msg) in BATCHES else 1  # type: ignore[union-attr]
            if done >= CHUNK and i < n and hub.commit_now:
                # Let the flusher commit and send what this much caused before going on:
                # a worker gets the offers its first returns freed while the hub is still
                # applying the rest, instead of hub and worker taking turns being idle.
                return i, None
        hub.kick()
        return None

    async def _resume(
        self, msgs: list[Inbound | Bad], i: int, pending: Awaitable[None] | None
    ) -> None:
        try:
            while True:
                if pending is not None:
                    await pending
                else:
                    self.hub.kick()
                    await asyncio.sleep(0)
                stop = self._apply(msgs, i)
                while stop is None and self.backlog:
                    parsed = self._parse(self.backlog.popleft())
                    if parsed is not None:
                        msgs = parsed
                        stop = self._apply(msgs, 0)
                if stop is None:
                    return
                i, pending = stop
        except Exception:  # a bug: say so and end the connection, rather than lose frames
            log.exception("applying frames from %s failed; closing it", self.peer.service)
            self.backlog.clear()
            if self.proto is not None:
                self.proto.transport.close()
        finally:
            self.resuming = None
            if self.proto is not None:
                self.proto.release()
