"""The async client's façade, :class:`Client`: connect, publish (``pub``, chains, schedules),
subscribe (``sub``), broadcast events, watch. The worker side (running handlers, credit,
pickups) is :mod:`taskhub.client.handlers`; publish options are :mod:`taskhub.client.options`;
what the client's objects share is :mod:`taskhub.client.link`."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from taskhub.client import tracing
from taskhub.client.connection import Connection, Message
from taskhub.client.handlers import Handlers
from taskhub.client.link import Link
from taskhub.client.options import (
    _UNSET,
    Duration,
    pub_options,
    pub_options_from,
    worker_options,
)
from taskhub.client.task import Handle, TaskContext
from taskhub.client.watch import Watch
from taskhub.errors import ConnectionClosed, TaskHubError
from taskhub.names import topic_matches, validate_action, validate_topic

if TYPE_CHECKING:
    pass

log = logging.getLogger("taskhub.client")
Handler = Callable[[TaskContext], Any]
R = TypeVar("R")
EventHandler = Callable[[Any, str], Any]  # (data, topic); may be async
# A chain or group step: (action, payload) or (action, payload, options as in the wire `pub`).
Step = tuple[str, Any] | tuple[str, Any, dict[str, Any]]
CHAIN_ACTION = "taskhub:chain"
GROUP_ACTION = "taskhub:group"


class Subscription(Generic[R]):
    """A subscription; calling it calls the handler, awaiting it waits for the hub's answer."""

    def __init__(
        self,
        client: Client,
        action: str,
        handler: Callable[[TaskContext], R],
        *,
        group: str | None,
        concurrency: int,
        observe: bool,
        durable: bool,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.action = action
        self.handler = handler
        self.group = group
        self.concurrency = concurrency
        self.observe = observe
        self.durable = durable
        self.options = options or {}  # the worker's declared defaults (sub.options)
        self.slots = asyncio.Semaphore(concurrency)
        self.claimed = 0  # offers taken whose handler has not finished (running or waiting)
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())

    def message(self) -> Message:
        msg: Message = {"op": "sub", "action": self.action, "concurrency": self.concurrency}
        if self.group:
            msg["group"] = self.group
        if self.observe:
            msg["observe"] = True
        if self.durable:
            msg["durable"] = True
        if self.options:
            msg["options"] = self.options
        return msg

    def __call__(self, task: TaskContext) -> R:
        return self.handler(task)

    def __await__(self) -> Any:
        return asyncio.shield(self.confirmed).__await__()


class Client:
    """A connection to a hub as service ``name``.

    ``url`` may be a list: the client connects to the first that answers and, when the
    connection drops, reconnects (with backoff) to the next, re-subscribing and following its
    unfinished tasks again.

    With OpenTelemetry's API installed, publishing and handling tasks make spans
    (docs/tracing.md), from ``tracer_provider`` or else the global tracer provider.
    """

    def __init__(
        self,
        url: str | list[str] = "ws://127.0.0.1:8080",
        *,
        name: str = "anonymous",
        key: str = "",
        max_backoff: float = 5.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 5.0,
        ssl: Any = None,
        tracer_provider: Any = None,
    ) -> None:
        self.name = name
        self._conn = Connection(
            [url] if isinstance(url, str) else list(url),
            name=name,
            key=key,
            on_message=self._on_message,
            on_connect=self._restore,
            max_backoff=max_backoff,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            ssl=ssl,
        )
        # The connection and what the client follows, shared with its handles and watches.
        self._link = Link(self._conn)
        # Spans from tracer_provider, by default the global one (docs/tracing.md); None until
        # the application imports OpenTelemetry (_late_tracing), or if it never does.
        self._tracer_provider = tracer_provider
        self._tracing = tracing.load(tracer_provider)
        # The worker side: subscriptions, the deliveries held, the handlers running them. It
        # traces with the client's tracing (kept in step by _late_tracing).
        self._handlers = Handlers(
            self._link, tracing=self._tracing, late_tracing=self._late_tracing
        )
        self._subs = self._handlers.subs  # the same dict: the façade adds and removes
        self._running: set[asyncio.Task[Any]] = set()  # async event handlers
        self._topics: dict[str, list[EventHandler]] = {}  # broadcast subscriptions by pattern
        self._closed = False  # close() was called: nothing waits any more

    # --- life --------------------------------------------------------------------------------
    async def connect(self) -> Client:
        await self._conn.open()
        return self

    async def close(self) -> None:
        """Disconnect. Running handlers are cancelled, and everything still waiting ends with
        :class:`ConnectionClosed`: results of tasks not yet ended (``get_result``,
        ``accepted``, ``await handle``, done callbacks), watches (after the events already
        queued), subscriptions not yet confirmed, requests without an answer."""
        self._closed = True
        for task in list(self._running):
            task.cancel()
        self._handlers.cancel_all()
        await self._conn.close()
        self._end_all()

    def _end_all(self) -> None:
        """Closed: end every handle, watch and subscription still waiting. Nothing follows
        them again (that is for a reconnect), so without this they would wait forever."""
        for handle in self._link.take_all():
            handle.feed_lost(
                ConnectionClosed(
                    f"the client was closed before task {handle.id} ({handle.action}) ended"
                )
            )
        watches = [w for ws in self._link.watches.values() for w in ws]
        self._link.watches.clear()
        for w in watches:
            w.feed_lost(ConnectionClosed(f"the client was closed while watching {w.pattern!r}"))
        for sub in self._subs.values():
            if not sub.confirmed.done():
                sub.confirmed.set_exception(
                    ConnectionClosed(f"the client was closed before the hub confirmed {sub.action}")
                )

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._conn.connected.is_set()

    async def _restore(self) -> None:
        """After (re)connecting: subscribe again and catch up with followed tasks."""
        for sub in self._subs.values():
            self._send_sub(sub)
        for topic in self._topics:
            fut = self._conn.request({"op": "subscribe", "topic": topic})
            fut.add_done_callback(functools.partial(_log_refusal, f"subscribing to {topic}"))
        for pattern in self._link.watches:
            self._send_watch(pattern)
        for task_id, handle in self._link.followed():
            self._link.follow(task_id, handle)

    # --- subscribing -------------------------------------------------------------------------
    @overload
    def sub(
        self,
        action: str,
        handler: None = None,
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
        timeout: Duration | None = _UNSET,
        retries: int = _UNSET,
        max_attempts: int = _UNSET,
        backoff: Duration = _UNSET,
        backoff_max: Duration = _UNSET,
    ) -> Callable[[Callable[[TaskContext], R]], Subscription[R]]: ...

    @overload
    def sub(
        self,
        action: str,
        handler: Callable[[TaskContext], R],
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
        timeout: Duration | None = _UNSET,
        retries: int = _UNSET,
        max_attempts: int = _UNSET,
        backoff: Duration = _UNSET,
        backoff_max: Duration = _UNSET,
    ) -> Subscription[R]: ...

    def sub(
        self,
        action: str,
        handler: Callable[[TaskContext], R] | None = None,
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
        timeout: Duration | None = _UNSET,
        retries: int = _UNSET,
        max_attempts: int = _UNSET,
        backoff: Duration = _UNSET,
        backoff_max: Duration = _UNSET,
    ) -> Subscription[R] | Callable[[Callable[[TaskContext], R]], Subscription[R]]:
        """Work on tasks of ``action``: ``client.sub(action, handler)`` or as a decorator.

        ``concurrency`` is the credit: how many of these tasks run here at once. ``group``
        (default: the service name) decides who competes for a task. ``observe=True`` sees
        every task without the hub waiting for this service. The returned
        :class:`Subscription` can be awaited to learn whether the hub accepted it.

        ``timeout`` (``None``: no end timeout), ``retries``, ``max_attempts``, ``backoff``
        and ``backoff_max`` are this worker's defaults for the tasks it takes: the hub applies
        them where the publisher did not set the option (publisher > worker > hub config >
        hub default; docs/workers.md).
        """
        validate_action(action)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        options = worker_options(
            timeout=timeout,
            retries=retries,
            max_attempts=max_attempts,
            backoff=backoff,
            backoff_max=backoff_max,
        )

        def register(fn: Callable[[TaskContext], R]) -> Subscription[R]:
            if action in self._subs:
                raise ValueError(f"this client already subscribes to {action!r}")
            sub = Subscription(
                self,
                action,
                fn,
                group=group,
                concurrency=concurrency,
                observe=observe,
                durable=durable,
                options=options,
            )
            self._subs[action] = sub
            if self._closed:
                sub.confirmed.set_exception(ConnectionClosed("the client is closed"))
            elif self.connected:
                self._send_sub(sub)
            return sub

        return register if handler is None else register(handler)

    def _send_sub(self, sub: Subscription[Any]) -> None:
        fut = self._conn.request(sub.message())

        def done(f: asyncio.Future[Message]) -> None:
            if sub.confirmed.done() or f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                sub.confirmed.set_result(None)
            elif not isinstance(exc, ConnectionClosed):
                log.error("subscribing to %s failed: %s", sub.action, exc)
                self._subs.pop(sub.action, None)
                sub.confirmed.set_exception(exc)

        fut.add_done_callback(done)

    async def unsub(self, action: str) -> None:
        if self._subs.pop(action, None) is not None and self.connected:
            await self._conn.request({"op": "unsub", "action": action})

    # --- publishing --------------------------------------------------------------------------
    def pub(
        self,
        action: str,
        payload: Any = None,
        *,
        timeout: float | None = _UNSET,
        start_timeout: float | None = _UNSET,
        delay: float | dt.timedelta | str | None = None,
        at: dt.datetime | None = None,
        priority: int = 0,
        key: str | None = None,
        retries: int = _UNSET,
        max_attempts: int = _UNSET,
        backoff: float = _UNSET,
        backoff_max: float = _UNSET,
        once_every: float | dt.timedelta | str | None = None,
        partition_key: str | None = None,
    ) -> Handle:
        """Publish a task and return its :class:`Handle` at once.

        ``timeout`` is the end timeout (seconds after a worker started it), ``start_timeout``
        how long it may wait for a worker; ``None`` means forever, unset the hub default.
        ``delay`` and ``once_every`` take seconds, a ``timedelta`` or an interval string
        (``"7 days"``, ``"1h30m"``, ``"PT1H30M"``); ``at`` a timezone-aware datetime.
        See docs/scheduling.md for ``retries``/``backoff``/``max_attempts`` and ``once_every``.
        """
        validate_action(action)
        options = pub_options(
            timeout=timeout,
            start_timeout=start_timeout,
            delay=delay,
            at=at,
            priority=priority,
            key=key,
            retries=retries,
            max_attempts=max_attempts,
            backoff=backoff,
            backoff_max=backoff_max,
            once_every=once_every,
            partition_key=partition_key,
        )
        msg: Message = {"op": "pub", "action": action, "payload": payload}
        if self._tracing is not None or self._late_tracing() is not None:
            return self._publish_traced(action, msg, options)
        if options:
            msg["options"] = options
        return self._publish(action, msg)

    # --- schedules, queues, dead letters (docs/scheduling.md) -------------------------------
    async def schedule(
        self,
        name: str,
        cron: str,
        action: str,
        payload: Any = None,
        *,
        timezone: str = "UTC",
        **pub_options: Any,
    ) -> dict[str, Any]:
        """Create or replace the schedule ``name``: publish ``action`` at every slot of
        ``cron`` (5 fields, in ``timezone``) with ``payload`` and the given ``pub`` options.
        Returns the schedule, with ``next_at``."""
        validate_action(action)
        msg: Message = {
            "op": "schedule",
            "name": name,
            "cron": cron,
            "action": action,
            "payload": payload,
            "timezone": timezone,
        }
        options = pub_options_from(pub_options)
        if options:
            msg["options"] = options
        reply = await self._conn.request(msg)
        out: dict[str, Any] = reply["schedule"]
        return out

    async def schedules(self) -> list[dict[str, Any]]:
        reply = await self._conn.request({"op": "schedules"})
        out: list[dict[str, Any]] = reply["schedules"]
        return out

    async def unschedule(self, name: str) -> None:
        await self._conn.request({"op": "unschedule", "name": name})

    async def queues(self) -> list[dict[str, Any]]:
        """Every group queue: action, group, durable, workers, waiting, in_flight."""
        reply = await self._conn.request({"op": "queues"})
        out: list[dict[str, Any]] = reply["queues"]
        return out

    async def purge(self, action: str, group: str, *, forget: bool = False) -> int:
        """Fail the group's waiting deliveries (reason ``purged``); ``forget=True`` also
        removes its durable subscription. Returns how many were purged."""
        msg: Message = {"op": "purge", "action": action, "group": group, "forget": forget}
        reply = await self._conn.request(msg)
        return int(reply["purged"])

    async def dead_letters(self, action: str | None = None) -> list[dict[str, Any]]:
        """The dead-letter list (without payloads), oldest first."""
        msg: Message = {"op": "dead_letters"}
        if action is not None:
            msg["action"] = action
        reply = await self._conn.request(msg)
        out: list[dict[str, Any]] = reply["dead_letters"]
        return out

    async def dead_letter(self, task_id: str) -> dict[str, Any]:
        """One dead letter, with its payload and the error of each delivery."""
        reply = await self._conn.request({"op": "dead_letter", "task": task_id})
        out: dict[str, Any] = reply["dead_letter"]
        return out

    async def requeue(self, task_id: str) -> str:
        """Publish a fresh copy of a dead letter; returns the new task's id."""
        reply = await self._conn.request({"op": "requeue", "task": task_id})
        return str(reply["task"])

    def _late_tracing(self) -> tracing.Tracing | None:
        """If OpenTelemetry was imported since this client was made: trace from now on."""
        if tracing.imported():
            self._tracing = self._handlers.tracing = tracing.load(self._tracer_provider)
        return self._tracing

    def _publish_traced(self, action: str, msg: Message, into: Message) -> Handle:
        """Publish inside a ``publish`` span whose context goes with the task as ``trace``,
        in ``into``: the pub's options (a step of a chain gets its chain's), or ``msg``."""
        assert self._tracing is not None
        span, carrier = self._tracing.publish(action)
        if carrier:
            into["trace"] = carrier
        if into and into is not msg:
            msg["options"] = into
        try:
            handle = self._publish(action, msg)
        except Exception as exc:  # not sent (a payload that is not JSON): the span says why
            self._tracing.failed(span, exc)
            span.end()
            raise
        self._tracing.published(span, handle)
        return handle

    def _publish(self, action: str, msg: Message) -> Handle:
        handle = Handle(self._link, action)
        if self._conn.connected.is_set():
            # The handle itself gets the answer (Handle.feed_answer) or the loss
            # (Handle.feed_unanswered):
            # no future, closure or callback per task.
            self._conn.post(msg, handle)
        else:
            handle.feed_lost(ConnectionClosed("not connected to a hub"))
        return handle

    async def get(self, task_id: str) -> dict[str, Any]:
        """A task as the hub has it now."""
        reply = await self._conn.request({"op": "get", "task": task_id})
        task: dict[str, Any] = reply["task"]
        return task

    async def cancel(self, task_id: str) -> None:
        await self._conn.request({"op": "cancel", "task": task_id})

    async def payload(self, task_id: str) -> Any:
        """A task's payload (the task view leaves it out); read rules as for :meth:`get`."""
        reply = await self._conn.request({"op": "payload", "task": task_id})
        return reply.get("payload")

    # --- chains and groups -------------------------------------------------------------------
    def chain(self, steps: Sequence[Step], *, merge_input: bool = False) -> Handle:
        """Run ``steps`` one after another; the handle's result is the last step's result.

        Each step is ``(action, payload)`` or ``(action, payload, options)`` with ``options``
        as in the wire ``pub`` (``timeout``, ``retries``, ...). A step whose payload is
        ``None`` gets the previous step's result; every step sees it as
        ``task.previous_result``. With ``merge_input`` a dict payload gets the previous dict
        result merged over it. The hub runs the chain: it goes on if this client leaves. A
        failing step fails the chain, with the step's index and action in the error.
        """
        msg = self._chain_msg(steps, "chain")
        if merge_input:
            msg["merge_input"] = True
        if self._tracing is not None or self._late_tracing() is not None:
            return self._publish_traced(CHAIN_ACTION, msg, msg)
        return self._publish(CHAIN_ACTION, msg)

    def group(self, steps: Sequence[Step]) -> Handle:
        """Run ``steps`` at once; the handle's result is the list of their results, in order.

        The first step that fails fails the group and cancels the steps still running.
        """
        msg = self._chain_msg(steps, "group")
        if self._tracing is not None or self._late_tracing() is not None:
            return self._publish_traced(GROUP_ACTION, msg, msg)
        return self._publish(GROUP_ACTION, msg)

    @staticmethod
    def _chain_msg(steps: Sequence[Step], mode: str) -> Message:
        out = []
        for step in steps:
            action, payload = step[0], step[1]
            validate_action(action)
            item: Message = {"action": action, "payload": payload}
            if len(step) > 2:
                item["options"] = step[2]
            out.append(item)
        return {"op": "chain", "mode": mode, "steps": out}

    # --- broadcast events --------------------------------------------------------------------
    async def subscribe(self, topic: str, handler: EventHandler) -> None:
        """Call ``handler(data, topic)`` (sync or async) for every event on ``topic``.

        ``topic`` may be a pattern: ``*`` stands for one segment and a trailing ``>`` for the
        rest (``orders:*``, ``orders/>``). Events sent by this very client are not delivered
        back to it. Raises :class:`PermissionDenied` without sub permission for the topic.
        """
        validate_topic(topic, pattern=True)
        handlers = self._topics.setdefault(topic, [])
        handlers.append(handler)
        if len(handlers) > 1:
            return
        try:
            await self._conn.request({"op": "subscribe", "topic": topic})
        except ConnectionClosed:
            pass  # kept: sent again when the connection is back
        except TaskHubError:
            self._topics.pop(topic, None)
            raise

    async def unsubscribe(self, topic: str) -> None:
        """Stop every handler of ``topic`` (the same string given to :meth:`subscribe`)."""
        if self._topics.pop(topic, None) is not None and self.connected:
            await self._conn.request({"op": "unsubscribe", "topic": topic})

    async def emit(self, topic: str, data: Any = None) -> int:
        """Broadcast ``data`` to every other connection subscribed to ``topic``.

        Events are not stored: only connections subscribed now receive them. Returns how
        many connections the hub queued it for.
        """
        validate_topic(topic)
        reply = await self._conn.request({"op": "emit", "topic": topic, "data": data})
        return int(reply.get("receivers", 0))

    def _broadcast(self, msg: Message) -> None:
        topic = str(msg.get("topic", ""))
        data = msg.get("data")
        for pattern, handlers in list(self._topics.items()):
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

    # --- watching task events ----------------------------------------------------------------
    def watch(self, pattern: str) -> Watch:
        """Every task event of the actions matching ``pattern`` (``*``/``>`` wildcards).

        ``async for event in client.watch("email:*")`` or ``async with client.watch(p) as
        w: ...``. Needs pub or sub permission covering the pattern.
        """
        validate_topic(pattern, pattern=True)
        w = Watch(self, self._link, pattern)
        if self._closed:
            w.feed_lost(ConnectionClosed(f"the client is closed; cannot watch {pattern!r}"))
            return w
        watches = self._link.watches.setdefault(pattern, [])
        watches.append(w)
        if self.connected:
            self._send_watch(pattern)
        return w

    def _send_watch(self, pattern: str) -> None:
        fut = self._conn.request({"op": "watch", "pattern": pattern})

        def done(f: asyncio.Future[Message]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if isinstance(exc, ConnectionClosed):
                return  # sent again on reconnect
            watches = self._link.watches.get(pattern, [])
            if exc is not None:
                self._link.watches.pop(pattern, None)
            for w in watches:
                w.feed_confirm(exc)

        fut.add_done_callback(done)

    def _watched(self, msg: Message) -> None:
        action = str(msg.get("action", ""))
        for pattern, watches in self._link.watches.items():
            if topic_matches(pattern, action):
                for w in watches:
                    w.feed_event(msg)

    # --- messages from the hub ---------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        op = msg.get("op")
        if op == "event":
            if msg.get("watched"):
                self._watched(msg)
                return
            task_id = msg["task"]
            link = self._link
            handle = link.handles.get(task_id)
            if handle is not None:
                handle.feed_event(msg)
                if link.same_task:
                    for other in tuple(link.same_task.get(task_id, ())):
                        other.feed_event(msg)
            self._handlers.event(task_id, msg)
        elif op == "offer":
            self._handlers.offered(msg)
        elif op == "broadcast":
            self._broadcast(msg)
        elif op == "revoke":
            self._handlers.revoke(msg)
        elif op == "error":
            log.warning("the hub reported: %s (%s)", msg.get("message"), msg.get("code"))

    # --- stopping a worker (the runtime does it: client/handlers.py) --------------------------
    @property
    def working(self) -> int:
        """Deliveries this client holds whose handler has not finished (running or waiting
        for a slot)."""
        return self._handlers.held()

    async def drain(self) -> None:
        """Take nothing new: unsubscribe every action (the hub stops offering), and hand back
        at once what arrives meanwhile and what waits for a slot. Running handlers go on."""
        await self._handlers.drain()

    async def hand_back(self) -> int:
        """Hand every unfinished delivery back to the hub (offered again elsewhere, no try
        counted) and stop its handler; returns how many. Called when stopping past the
        grace: a thread running a plain function cannot be stopped, its result is ignored."""
        return await self._handlers.hand_back()


def _log_refusal(what: str, fut: asyncio.Future[Message]) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None and not isinstance(exc, ConnectionClosed):
        log.error("%s failed: %s", what, exc)


def _log_failure(topic: str, fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("the handler of event %s raised", topic, exc_info=fut.exception())
