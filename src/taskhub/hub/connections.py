"""The hub's open connections: how to send each one its messages, and how to close it.

A WebSocket connection registers a sender (writes a frame) and a closer; a pull consumer
(:mod:`taskhub.hub.consumers`) a sender that buffers instead. The commit pipeline hands each
round's messages to :meth:`Connections.deliver` once their state is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator

from taskhub import protocol as p
from taskhub.lifecycle import Clock, Message, Peer

log = logging.getLogger("taskhub.hub")

Sender = Callable[[bytes], None]
Closer = Callable[[int, str], Awaitable[None]]
# Close codes by which the hub sends a connection away of its own accord (going away, service
# restart, try again later): its client reconnects, and what it held is given back without a
# try counted (Lifecycle.disconnect, Peer.closed_by_hub).
GOING_AWAY = frozenset({1001, 1012, 1013})


def note_close(peer: Peer, code: int) -> None:
    """The hub sends ``peer``'s connection away with ``code`` (a partition moved, a link
    broke): note whether that is a going-away close, which counts no try."""
    if code in GOING_AWAY:
        peer.closed_by_hub = True


class Connections:
    """Senders and closers by peer. ``senders`` is public: the metrics and the dashboard
    count and list the connections through it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.senders: dict[Peer, Sender] = {}
        self.closers: dict[Peer, Closer] = {}
        # Connections of other hubs' clients that reach a partition led here over a link
        # (hub/link/leader.py): served like any, counted and listed by their own hub.
        self.linked: set[Peer] = set()

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.senders)

    def __len__(self) -> int:
        return len(self.senders)

    def add(self, peer: Peer, sender: Sender, closer: Closer | None = None) -> None:
        peer.connected_at = self.clock()
        self.senders[peer] = sender
        if closer is not None:
            self.closers[peer] = closer

    def remove(self, peer: Peer) -> None:
        self.senders.pop(peer, None)
        self.closers.pop(peer, None)
        self.linked.discard(peer)

    def clients(self) -> list[Peer]:
        """The connections of this hub's own clients (WebSocket and pull consumers), not
        those other hubs' links carry here: what the metrics and the dashboard count."""
        linked = self.linked
        return [peer for peer in self.senders if peer not in linked]

    def busy(self) -> int:
        """Deliveries connections still hold (started or offered): what a drain waits for."""
        return sum(len(peer.holding) for peer in self.senders)

    async def close(self, peer: Peer, *, code: int, reason: str) -> None:
        """Close ``peer``'s connection if it has a closer (its client reconnects): a partition
        it has work in moved. At 1012/1013 its started deliveries go back uncounted."""
        closer = self.closers.get(peer)
        if closer is not None:
            note_close(peer, code)
            with contextlib.suppress(Exception):
                await closer(code, reason)

    async def close_all(self, *, code: int, reason: str) -> None:
        """Close every connection that has a closer (their clients reconnect, maybe elsewhere):
        the hub stops. A started delivery still held then counts a try, as a lost
        connection's: its handler had the grace period, and one that never finishes in it
        must not be handed back at every restart for ever."""
        for closer in list(self.closers.values()):
            with contextlib.suppress(Exception):
                await closer(code, reason)

    def deliver(self, output: Iterable[tuple[Peer, list[Message]]]) -> None:
        """Send one commit round's messages, one frame per peer still connected."""
        senders = self.senders
        for peer, msgs in output:
            sender = senders.get(peer)
            if sender is not None:
                self.send(peer, sender, msgs)

    def send(self, peer: Peer, sender: Sender, msgs: list[Message]) -> None:
        """Hand ``msgs`` to ``peer``'s connection. One that fails (a bug in the transport, or
        a dependency's API that changed under us) loses its messages, so it is closed (its
        client reconnects and catches up); the others are still served."""
        try:
            sender(p.encode_batched(msgs) if peer.batch else p.encode(msgs))
        except Exception:
            self._failed(peer)

    def send_frame(self, peer: Peer, frame: bytes) -> None:
        """Hand ``peer``'s connection a frame encoded elsewhere (by the hub that leads a
        partition, over the hub-to-hub link), as :meth:`send` hands it one it encoded."""
        sender = self.senders.get(peer)
        if sender is not None:
            try:
                sender(frame)
            except Exception:
                self._failed(peer)

    def hold(self, peer: Peer) -> Callable[[list[Message]], None]:
        """Hold the frames sent to ``peer`` from now on; the function returned sends the
        messages it is given, then what was held. A batch whose items other hubs store
        answers first this way: its tasks' events must not reach the client before the
        answer that names them. Held frames are bounded by the batch's round trip."""
        sender = self.senders.get(peer)
        if sender is None:
            return _nothing
        held: list[bytes] = []
        hold = held.append
        self.senders[peer] = hold

        def release(first: list[Message]) -> None:
            if self.senders.get(peer) is not hold:  # closed meanwhile
                return
            self.senders[peer] = sender
            if first:
                self.send(peer, sender, first)
            for frame in held:
                self.send_frame(peer, frame)

        return release

    def _failed(self, peer: Peer) -> None:
        log.exception("sending to connection %s (%s) failed; closing it", peer.id, peer.service)
        self.senders.pop(peer, None)
        closer = self.closers.get(peer)
        if closer is not None:
            closing = asyncio.ensure_future(closer(1011, "internal error"))
            closing.add_done_callback(_retrieve)


def _nothing(msgs: list[Message]) -> None:
    return None


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # closing a failed connection may fail too: nothing more to do
