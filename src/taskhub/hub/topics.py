"""What connections follow besides their tasks: broadcast topics and task-event watches.

:class:`Topics` carries ``emit`` to the connections subscribed to a topic (not stored);
:class:`Watches` streams the task events of every action matching a connection's pattern.
Both check permissions, route with a :class:`~taskhub.hub.events.Router`, and queue their
messages in the lifecycle's output, so they leave in the commit pipeline's next round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskhub.errors import PermissionDenied
from taskhub.hub.events import Router
from taskhub.lifecycle import Credentials, Lifecycle, Message, Peer, Task, event_msg
from taskhub.names import allowed, pattern_allowed, validate_topic
from taskhub.records import EventRecord


class Topics:
    """Broadcast event subscriptions, by topic pattern."""

    def __init__(self, lc: Lifecycle, kick: Callable[[], None]) -> None:
        self.lc = lc
        self.kick = kick
        self.router: Router[Peer] = Router()

    def emit(self, creds: Credentials, topic: str, data: Any, *, sender: Peer | None = None) -> int:
        """Broadcast ``data`` on ``topic`` to every subscribed connection but ``sender``.

        Needs pub permission for the topic. Not stored: connections subscribed right now get
        it, through their bounded send queue (a reader too far behind is disconnected, it
        does not slow the others). Returns how many connections it was queued for.
        """
        validate_topic(topic)
        if not allowed(creds.pub_permissions, topic):
            raise PermissionDenied(f"{creds.name!r} may not emit on {topic!r}", topic=topic)
        msg: Message = {"op": "broadcast", "topic": topic, "data": data, "from": creds.name}
        n = 0
        for peer in self.router.match(topic):
            if peer is not sender and peer.open:  # not open: closing as too slow a reader
                self.lc.send(peer, msg)
                n += 1
        if n:
            self.kick()
        return n

    def subscribe(self, peer: Peer, pattern: str) -> None:
        """Receive broadcasts on ``pattern``; needs sub permission covering all it matches."""
        validate_topic(pattern, pattern=True)
        if not pattern_allowed(peer.creds.sub_permissions, pattern):
            raise PermissionDenied(
                f"{peer.service!r} may not subscribe to {pattern!r}", topic=pattern
            )
        self.router.add(peer, pattern)

    def unsubscribe(self, peer: Peer, pattern: str) -> None:
        self.router.remove(peer, pattern)

    def forget(self, peer: Peer) -> None:
        """``peer`` is gone: drop every pattern it had."""
        self.router.remove_all(peer)


class Watches:
    """Task-event watches, by action pattern.

    :meth:`on_event` is a lifecycle listener while anyone watches, and only then (every task
    event would call it). Listeners run before end listeners: watchers see a step's end
    before a chain publishes the next.
    """

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.router: Router[Peer] = Router()

    def watch(self, peer: Peer, pattern: str) -> None:
        """Receive the task events of every action matching ``pattern``: allowed when the
        credential may publish or subscribe to everything the pattern matches."""
        validate_topic(pattern, pattern=True)
        creds = peer.creds
        if not (
            pattern_allowed(creds.pub_permissions, pattern)
            or pattern_allowed(creds.sub_permissions, pattern)
        ):
            raise PermissionDenied(f"{peer.service!r} may not watch {pattern!r}", action=pattern)
        self.router.add(peer, pattern)
        self._listen()

    def unwatch(self, peer: Peer, pattern: str) -> None:
        self.router.remove(peer, pattern)
        self._listen()

    def forget(self, peer: Peer) -> None:
        """``peer`` is gone: its watches end."""
        self.router.remove_all(peer)
        self._listen()

    def _listen(self) -> None:
        self.lc.listen(self.on_event, bool(self.router))

    def on_event(self, task: Task, ev: EventRecord) -> None:
        """Lifecycle listener: stream every task event to the connections watching it."""
        msg: Message | None = None
        for peer in self.router.match(task.rec.action):
            if msg is None:
                msg = event_msg(task, ev)
                msg["action"] = task.rec.action
                msg["watched"] = True  # tells it apart from the events of a followed task
            self.lc.send(peer, msg)
