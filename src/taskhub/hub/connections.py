"""The hub's open connections: how to send each one its messages, and how to close it.

A WebSocket connection registers a sender (writes a frame) and a closer; a pull consumer
(:mod:`taskhub.hub.consumers`) a sender that buffers instead. The commit pipeline hands each
round's messages to :meth:`Connections.deliver` once their state is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
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
        # Connections whose frames are held behind answers that wait (:meth:`hold`).
        self.gates: dict[Peer, _Gates] = {}

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
        self.gates.pop(peer, None)

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
            self.send_frame_to(peer, sender, frame)

    def hold(self, peer: Peer) -> Callable[[list[Message]], None]:
        """Hold the frames sent to ``peer`` from now on; the function returned sends the
        messages it is given, then what was held. A batch whose items several partitions
        store answers first this way: its tasks' events must not reach the client before the
        answer that names them. Holds overlap (the connection's later batches go on while one
        waits): each is released in the order it was made, its messages and frames after
        those of the holds before it, so the connection's answers keep their order. Held
        frames are bounded by the round trip of the batches that wait (at most
        :data:`~taskhub.hub.router.MAX_ANSWERS` of them per connection: the router holds the
        connection's next messages past that)."""
        gates = self.gates.get(peer)
        if gates is None:
            sender = self.senders.get(peer)
            if sender is None:
                return _nothing
            gates = self.gates[peer] = _Gates(sender)
            self.senders[peer] = gates.sink
        gate = _Gate()
        gates.waiting.append(gate)

        def release(first: list[Message]) -> None:
            gate.first, gate.ready = first, True
            waiting = gates.waiting
            while waiting and waiting[0].ready:
                if self.gates.get(peer) is not gates:  # closed (or failed) meanwhile
                    return
                done = waiting.popleft()
                if not waiting:  # the last: the connection's own sender from now on
                    del self.gates[peer]
                    self.senders[peer] = gates.sender
                if done.first:
                    self.send(peer, gates.sender, done.first)
                for frame in done.held:
                    self.send_frame_to(peer, gates.sender, frame)

        return release

    def holds(self, peer: Peer) -> int:
        """How many holds of ``peer``'s frames wait for their answer (:meth:`hold`)."""
        gates = self.gates.get(peer)
        return 0 if gates is None else len(gates.waiting)

    def send_frame_to(self, peer: Peer, sender: Sender, frame: bytes) -> None:
        try:
            sender(frame)
        except Exception:
            self._failed(peer)

    def _failed(self, peer: Peer) -> None:
        log.exception("sending to connection %s (%s) failed; closing it", peer.id, peer.service)
        self.senders.pop(peer, None)
        self.gates.pop(peer, None)
        closer = self.closers.get(peer)
        if closer is not None:
            closing = asyncio.ensure_future(closer(1011, "internal error"))
            closing.add_done_callback(_retrieve)


class _Gate:
    """One hold of a connection's frames: what was sent it while it was the newest, and the
    messages that go first once its answer is ready."""

    __slots__ = ("first", "held", "ready")

    def __init__(self) -> None:
        self.held: list[bytes] = []
        self.first: list[Message] = []
        self.ready = False


class _Gates:
    """A connection's holds, oldest first, and its own sender, which :attr:`sink` replaces
    meanwhile (frames sent go to the newest hold)."""

    __slots__ = ("sender", "sink", "waiting")

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.waiting: deque[_Gate] = deque()
        self.sink: Sender = self._put

    def _put(self, frame: bytes) -> None:
        self.waiting[-1].held.append(frame)


def _nothing(msgs: list[Message]) -> None:
    return None


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # closing a failed connection may fail too: nothing more to do
