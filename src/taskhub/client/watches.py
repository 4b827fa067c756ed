"""The watches of one client (``client.watch(pattern)``): opening them, asking the hub again
after a reconnect, feeding them task events, ending them when the client closes. The table
itself is the :class:`Link`'s (``Link.watches``), which :class:`Watch` reaches to unwatch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from taskhub.client.connection import Message
from taskhub.client.link import Link
from taskhub.client.watch import Watch
from taskhub.errors import ConnectionClosed
from taskhub.names import topic_matches, validate_topic

if TYPE_CHECKING:
    from taskhub.client.client import Client


class Watches:
    """Opens and feeds the watches in ``link.watches``."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def open(self, client: Client, pattern: str, *, closed: bool) -> Watch:
        """A new watch of ``pattern``; ``closed``: the client is, so it ends at once."""
        validate_topic(pattern, pattern=True)
        w = Watch(client, self.link, pattern)
        if closed:
            w.feed_lost(ConnectionClosed(f"the client is closed; cannot watch {pattern!r}"))
            return w
        watches = self.link.watches.setdefault(pattern, [])
        watches.append(w)
        if self.link.connected:
            self._send(pattern)
        return w

    def restore(self) -> None:
        """After a reconnect: watch every pattern again."""
        for pattern in self.link.watches:
            self._send(pattern)

    def _send(self, pattern: str) -> None:
        fut = self.link.request({"op": "watch", "pattern": pattern})

        def done(f: asyncio.Future[Message]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if isinstance(exc, ConnectionClosed):
                return  # sent again on reconnect
            watches = self.link.watches.get(pattern, [])
            if exc is not None:
                self.link.watches.pop(pattern, None)
            for w in watches:
                w.feed_confirm(exc)

        fut.add_done_callback(done)

    def feed_event(self, msg: Message) -> None:
        """A watched task event: to every watch whose pattern matches its action."""
        action = str(msg.get("action", ""))
        for pattern, watches in self.link.watches.items():
            if topic_matches(pattern, action):
                for w in watches:
                    w.feed_event(msg)

    def end_all(self) -> None:
        """The client closed: end every watch (after the events already queued)."""
        watches = [w for ws in self.link.watches.values() for w in ws]
        self.link.watches.clear()
        for w in watches:
            w.feed_lost(ConnectionClosed(f"the client was closed while watching {w.pattern!r}"))
