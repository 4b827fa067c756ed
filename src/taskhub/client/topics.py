"""Broadcast events on the client side: a client's subscriptions to topics (kept across
reconnects), its handlers, and ``emit``. :class:`Client` owns one :class:`Topics`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from taskhub.client.connection import Message
from taskhub.client.link import Link
from taskhub.errors import ConnectionClosed, TaskHubError
from taskhub.names import topic_matches, validate_topic

log = logging.getLogger("taskhub.client")
EventHandler = Callable[[Any, str], Any]  # (data, topic); may be async


class Topics:
    """The topics one client subscribes to, by pattern, and their handlers."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.handlers: dict[str, list[EventHandler]] = {}  # by pattern
        self._running: set[asyncio.Task[Any]] = set()  # async handlers

    async def subscribe(self, topic: str, handler: EventHandler) -> None:
        """As :meth:`Client.subscribe`."""
        validate_topic(topic, pattern=True)
        handlers = self.handlers.setdefault(topic, [])
        handlers.append(handler)
        if len(handlers) > 1:
            return
        try:
            await self.link.request({"op": "subscribe", "topic": topic})
        except ConnectionClosed:
            pass  # kept: sent again when the connection is back
        except TaskHubError:
            self.handlers.pop(topic, None)
            raise

    async def unsubscribe(self, topic: str) -> None:
        if self.handlers.pop(topic, None) is not None and self.link.connected:
            await self.link.request({"op": "unsubscribe", "topic": topic})

    async def emit(self, topic: str, data: Any) -> int:
        validate_topic(topic)
        reply = await self.link.request({"op": "emit", "topic": topic, "data": data})
        return int(reply.get("receivers", 0))

    def restore(self) -> None:
        """After a reconnect: subscribe to every topic again."""
        for topic in self.handlers:
            fut = self.link.request({"op": "subscribe", "topic": topic})
            fut.add_done_callback(functools.partial(log_refusal, f"subscribing to {topic}"))

    def cancel_all(self) -> None:
        """The client closes: stop the async handlers still running."""
        for task in list(self._running):
            task.cancel()

    def feed_broadcast(self, msg: Message) -> None:
        """An event arrived: call the handlers of every pattern it matches."""
        topic = str(msg.get("topic", ""))
        data = msg.get("data")
        for pattern, handlers in list(self.handlers.items()):
            if not topic_matches(pattern, topic):
                continue
            for handler in handlers:
                try:
                    out = handler(data, topic)
                except Exception:
                    log.exception("the handler of event %s raised", topic)
                    continue
                if inspect.isawaitable(out):
                    runner = asyncio.ensure_future(out)
                    self._running.add(runner)
                    runner.add_done_callback(self._running.discard)
                    runner.add_done_callback(functools.partial(_log_failure, topic))


def log_refusal(what: str, fut: asyncio.Future[Message]) -> None:
    """A done callback: log why the hub refused a request sent without a caller waiting."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None and not isinstance(exc, ConnectionClosed):
        log.error("%s failed: %s", what, exc)


def _log_failure(topic: str, fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("the handler of event %s raised", topic, exc_info=fut.exception())
