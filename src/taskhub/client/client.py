"""The async client's façade, :class:`Client`: connect, publish (``pub``, chains, schedules),
subscribe (``sub``), broadcast events, watch. It composes its parts and keeps the public API:
the worker side (running handlers, credit, pickups) is :mod:`taskhub.client.handlers`,
publishing :mod:`taskhub.client.publisher`, broadcast events :mod:`taskhub.client.topics`,
watches :mod:`taskhub.client.watches`; what the parts share is :mod:`taskhub.client.link`.
Publish options are declared once, in :mod:`taskhub.options_table`."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, Unpack, overload

from taskhub.client import typed
from taskhub.client.connection import Connection, Message
from taskhub.client.handlers import Handlers, Slots
from taskhub.client.link import Link
from taskhub.client.publisher import PubItem, Publisher, Step
from taskhub.client.task import Handle, TaskContext
from taskhub.client.topics import EventHandler, Topics
from taskhub.client.watch import Watch
from taskhub.client.watches import Watches
from taskhub.errors import ConnectionClosed, PartitionUnavailable
from taskhub.names import CHAIN_ACTION, GROUP_ACTION, validate_action
from taskhub.options_table import PubArgs, WorkerArgs, pub_options, worker_options

__all__ = [
    "CHAIN_ACTION",
    "GROUP_ACTION",
    "Client",
    "EventHandler",
    "Handler",
    "PubItem",
    "Step",
    "Subscription",
]

log = logging.getLogger("taskhub.client")
Handler = Callable[[TaskContext], Any]
R = TypeVar("R")


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
        self.slots = Slots(concurrency)
        self.claimed = 0  # offers taken whose handler has not finished (running or waiting)
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.confirmed.add_done_callback(lambda f: f.cancelled() or f.exception())
        # The one ``sub`` request this subscription has in flight (with the resends of
        # client/retry.py), and the send planned after a refusal past those resends: one at
        # most, so that a reconnect's own send and an older one never both reach the hub.
        self.sending: asyncio.Future[Message] | None = None
        self.again: asyncio.TimerHandle | None = None

    def stop_sending(self) -> None:
        """Forget the ``sub`` in flight and the send planned (a newer send replaces them,
        or the subscription is gone): no answer of theirs acts, none is sent again."""
        if self.again is not None:
            self.again.cancel()
            self.again = None
        if self.sending is not None:
            self.sending.cancel()  # its resends stop too (retry.Resend.wanted)
            self.sending = None

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
        # The connection and what it follows, shared with its parts (and a Worker's loops).
        self._link = self.link = Link(self._conn)
        # Publishing, with spans from tracer_provider, by default the global one.
        self._publisher = Publisher(self._link, tracer_provider)
        # The worker side: subscriptions, the deliveries held, the handlers running them. It
        # traces with the publisher's tracing (kept in step when it is loaded late).
        self._handlers = Handlers(
            self._link,
            tracing=self._publisher.tracing,
            late_tracing=self._publisher.late_tracing,
        )
        self._publisher.also_traces(self._handlers)
        # The hottest frames as structs (client/typed.py): offers, task events.
        events = functools.partial(_feed_events, self._link, self._handlers)
        self._conn.typed = typed.Reader(self._handlers.offered_all, events, self._conn.answered)
        self._subs = self._handlers.subs  # the same dict: the façade adds and removes
        self._topics = Topics(self._link)  # broadcast subscriptions by pattern
        self._watches = Watches(self._link)
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
        self._topics.cancel_all()
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
        self._watches.end_all()
        for sub in self._subs.values():
            sub.stop_sending()
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
        self._topics.restore()
        self._watches.restore()
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
        **defaults: Unpack[WorkerArgs],
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
        **defaults: Unpack[WorkerArgs],
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
        **defaults: Unpack[WorkerArgs],
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
        options = worker_options(defaults)

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
        sub.stop_sending()
        fut = sub.sending = self._conn.request(sub.message())
        fut.add_done_callback(functools.partial(_subscribed, sub, self._subs))

    async def unsub(self, action: str) -> None:
        sub = self._subs.pop(action, None)
        if sub is not None:
            sub.stop_sending()
            if self.connected:
                await self._conn.request({"op": "unsub", "action": action})

    # --- publishing --------------------------------------------------------------------------
    def pub(self, action: str, payload: Any = None, **options: Unpack[PubArgs]) -> Handle:
        """Publish a task and return its :class:`Handle` at once.

        ``timeout`` is the end timeout (seconds after a worker started it), ``start_timeout``
        how long it may wait for a worker; ``None`` means forever, unset the hub default.
        ``delay`` and ``once_every`` take seconds, a ``timedelta`` or an interval string
        (``"7 days"``, ``"1h30m"``, ``"PT1H30M"``); ``at`` a timezone-aware datetime. Also
        ``priority``, ``key``, ``retries``, ``max_attempts``, ``backoff``, ``backoff_max`` and
        ``partition_key``: the table of them is in docs/protocol.md (§3, ``pub``); see
        docs/scheduling.md for retries, backoff and ``once_every``. A misspelt option is a
        TypeError (and a type-check error).
        """
        return self._publisher.pub(action, payload, options)

    def pub_many(self, items: Iterable[PubItem]) -> list[Handle]:
        """Publish ``(action, payload[, options as pub's keywords])`` items; their handles, in
        order. All are checked first (a bad one raises, naming its index, nothing is sent)."""
        return self._publisher.pub_many(items)

    def chain(self, steps: Sequence[Step], *, merge_input: bool = False) -> Handle:
        """Run ``steps`` one after another; the handle's result is the last step's result.

        Each step is ``(action, payload)`` or ``(action, payload, options)`` with ``options``
        as in the wire ``pub`` (``timeout``, ``retries``, ...). A step whose payload is
        ``None`` gets the previous step's result; every step sees it as
        ``task.previous_result``. With ``merge_input`` a dict payload gets the previous dict
        result merged over it. The hub runs the chain: it goes on if this client leaves. A
        failing step fails the chain, with the step's index and action in the error.
        """
        return self._publisher.chain(steps, "chain", merge_input=merge_input)

    def group(self, steps: Sequence[Step]) -> Handle:
        """Run ``steps`` at once; the handle's result is the list of their results, in order.

        The first step that fails fails the group and cancels the steps still running.
        """
        return self._publisher.chain(steps, "group")

    async def get(self, task_id: str) -> dict[str, Any]:
        """A task as the hub has it now."""
        return await self._record({"op": "get", "task": task_id}, "task")

    async def cancel(self, task_id: str) -> None:
        await self._conn.request({"op": "cancel", "task": task_id})

    async def payload(self, task_id: str) -> Any:
        """A task's payload (the task view leaves it out); read rules as for :meth:`get`."""
        reply = await self._conn.request({"op": "payload", "task": task_id})
        return reply.get("payload")

    async def _answer(self, msg: Message, field: str) -> Any:
        """Ask the hub; the ``field`` of its answer."""
        reply = await self._conn.request(msg)
        return reply[field]

    async def _record(self, msg: Message, field: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._answer(msg, field)
        return out

    async def _records(self, msg: Message, field: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self._answer(msg, field)
        return out

    # --- schedules, queues, dead letters (docs/scheduling.md) -------------------------------
    async def schedule(
        self,
        name: str,
        cron: str,
        action: str,
        payload: Any = None,
        *,
        timezone: str = "UTC",
        **options: Unpack[PubArgs],
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
        wire = pub_options(options)
        if wire:
            msg["options"] = wire
        return await self._record(msg, "schedule")

    async def schedules(self) -> list[dict[str, Any]]:
        return await self._records({"op": "schedules"}, "schedules")

    async def unschedule(self, name: str) -> None:
        await self._conn.request({"op": "unschedule", "name": name})

    async def queues(self) -> list[dict[str, Any]]:
        """Every group queue: action, group, durable, workers, waiting, in_flight."""
        return await self._records({"op": "queues"}, "queues")

    async def purge(self, action: str, group: str, *, forget: bool = False) -> int:
        """Fail the group's waiting deliveries (reason ``purged``); ``forget=True`` also
        removes its durable subscription. Returns how many were purged."""
        msg: Message = {"op": "purge", "action": action, "group": group, "forget": forget}
        return int(await self._answer(msg, "purged"))

    async def dead_letters(self, action: str | None = None) -> list[dict[str, Any]]:
        """The dead-letter list (without payloads), oldest first."""
        msg: Message = {"op": "dead_letters"}
        if action is not None:
            msg["action"] = action
        return await self._records(msg, "dead_letters")

    async def dead_letter(self, task_id: str) -> dict[str, Any]:
        """One dead letter, with its payload and the error of each delivery."""
        return await self._record({"op": "dead_letter", "task": task_id}, "dead_letter")

    async def requeue(self, task_id: str) -> str:
        """Publish a fresh copy of a dead letter; returns the new task's id."""
        return str(await self._answer({"op": "requeue", "task": task_id}, "task"))

    # --- broadcast events --------------------------------------------------------------------
    async def subscribe(self, topic: str, handler: EventHandler) -> None:
        """Call ``handler(data, topic)`` (sync or async) for every event on ``topic``.

        ``topic`` may be a pattern: ``*`` stands for one segment and a trailing ``>`` for the
        rest (``orders:*``, ``orders/>``). Events sent by this very client are not delivered
        back to it. Raises :class:`PermissionDenied` without sub permission for the topic.
        """
        await self._topics.subscribe(topic, handler)

    async def unsubscribe(self, topic: str) -> None:
        """Stop every handler of ``topic`` (the same string given to :meth:`subscribe`)."""
        await self._topics.unsubscribe(topic)

    async def emit(self, topic: str, data: Any = None) -> int:
        """Broadcast ``data`` to every other connection subscribed to ``topic``.

        Events are not stored: only connections subscribed now receive them. Returns how
        many connections the hub queued it for.
        """
        return await self._topics.emit(topic, data)

    # --- watching task events ----------------------------------------------------------------
    def watch(self, pattern: str) -> Watch:
        """Every task event of the actions matching ``pattern`` (``*``/``>`` wildcards).

        ``async for event in client.watch("email:*")`` or ``async with client.watch(p) as
        w: ...``. Needs pub or sub permission covering the pattern.
        """
        return self._watches.open(self, pattern, closed=self._closed)

    # --- messages from the hub ---------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        op = msg.get("op")
        if op == "event":
            if msg.get("watched"):
                self._watches.feed_event(msg)
                return
            task_id, kind, data = msg["task"], msg.get("type", ""), msg.get("data")
            link = self._link
            handle = link.handles.get(task_id)
            if handle is not None:
                handle.feed_event(kind, msg.get("state"), data)
            handlers = self._handlers
            if link.same_task or handlers.working or link.started:  # a publisher: no call
                _feed_others(link, handlers, task_id, kind, msg.get("state"), data)
        elif op == "starts":  # the start events of a frame, by task id (docs/protocol.md)
            self._link.started_tasks(msg["tasks"])
        elif op == "offers":  # several at once (docs/protocol.md, "Batched messages")
            for item in msg["items"]:
                self._handlers.offered(item)
        elif op == "offer":
            self._handlers.offered(msg)
        elif op == "broadcast":
            self._topics.feed_broadcast(msg)
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


def _feed_events(link: Link, handlers: Handlers, events: list[typed.Event]) -> None:
    """A frame of task events read as structs (client/typed.py): to their handles, and to
    the handlers holding their tasks, as ``Client._on_message`` hands each one."""
    handles = link.handles
    for ev in events:
        try:
            handle = handles.get(ev.task)
            if handle is not None:
                handle.feed_event(ev.type, ev.state, ev.data)
            if link.same_task or handlers.working or link.started:
                _feed_others(link, handlers, ev.task, ev.type, ev.state, ev.data)
        except Exception:
            log.exception("handling event from the hub failed")


def _feed_others(
    link: Link, handlers: Handlers, task_id: str, kind: str, state: str | None, data: Any
) -> None:
    """A task event to the other handles of its task (the same ``key=`` twice in flight)
    and to a handler holding it (``task.on``)."""
    if link.same_task:
        for other in tuple(link.same_task.get(task_id, ())):
            other.feed_event(kind, state, data)
    if handlers.working or link.started:
        handlers.event(task_id, kind, data)


def _subscribed(
    sub: Subscription[Any], subs: dict[str, Subscription[Any]], f: asyncio.Future[Message]
) -> None:
    """The hub's answer to a ``sub``: the first one confirms or refuses the subscription."""
    if f.cancelled():  # replaced by a newer send (Subscription.stop_sending)
        return
    exc = f.exception()  # always read: a re-sent sub's lost connection is not worth a warning
    if sub.sending is f:
        sub.sending = None
    if sub.confirmed.done():
        if isinstance(exc, PartitionUnavailable) and subs.get(sub.action) is sub:
            # Sent again at a reconnect and refused past the resends (client/retry.py): the
            # partition is between leaders for longer. The worker keeps its subscription.
            if sub.sending is None and sub.again is None:  # else a newer send is under way
                after = float(exc.details.get("retry_after", 1.0))
                sub.again = asyncio.get_running_loop().call_later(after, _sub_again, sub, subs)
            return
        if exc is not None and not isinstance(exc, ConnectionClosed):
            log.error("subscribing to %s again failed: %s", sub.action, exc)
        return
    if exc is None:
        sub.confirmed.set_result(None)
    elif not isinstance(exc, ConnectionClosed):
        log.error("subscribing to %s failed: %s", sub.action, exc)
        subs.pop(sub.action, None)
        sub.confirmed.set_exception(exc)


def _sub_again(sub: Subscription[Any], subs: dict[str, Subscription[Any]]) -> None:
    """Send a subscription refused with ``partition_unavailable`` again, while it stands
    (a reconnect meanwhile sent it already: :meth:`Client._restore` cancels this)."""
    sub.again = None
    client = sub.client
    if subs.get(sub.action) is sub and client.connected and not client._closed:
        client._send_sub(sub)
