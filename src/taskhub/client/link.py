"""What a :class:`Client`'s objects share: the connection they send on, and the tables of what
the client follows (published tasks not yet ended, watches).

:class:`Handle`, :class:`TaskContext` and :class:`Watch` talk to their client only through
this object's public methods, never through the client's private state; the client feeds
them through their ``feed_*`` methods. Internal: applications use :class:`Client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from taskhub.client.connection import Connection, Message, Receiver
from taskhub.client.task import TaskContext
from taskhub.client.typed import Offer
from taskhub.errors import ConnectionClosed

if TYPE_CHECKING:
    from taskhub.client.task import Handle
    from taskhub.client.watch import Watch

log = logging.getLogger("taskhub.client")


class Link:
    """One client's connection and the tasks and watches it follows."""

    __slots__ = ("_told_unsubscribed", "conn", "handles", "same_task", "started", "watches")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Accepted, unfinished: followed again on reconnect, fed the tasks' events.
        self.handles: dict[str, Handle] = {}
        # Further handles of a task already in `handles`: a repeated key= while the first
        # publish of that key is still in flight. Rare, so kept apart from the hot path.
        self.same_task: dict[str, list[Handle]] = {}
        self.watches: dict[str, list[Watch]] = {}  # by pattern
        self._told_unsubscribed: set[str] = set()  # actions nobody_subscribed logged
        # Deliveries whose handler another thread started as it read their offer (a worker's
        # handler loop), by task id, until their books are kept here (the offer is then
        # handled with this context) or that thread ended them. Written by both threads,
        # one dict operation at a time.
        self.started: dict[str, TaskContext] = {}

    def context(self, offer: Message | Offer) -> TaskContext:
        """The context of the delivery ``offer`` makes: the one its handler got if it was
        started as the offer was read (``started``), else a new one."""
        if self.started:
            task_id, attempt = (
                (offer.task, offer.attempt)
                if isinstance(offer, Offer)
                else (offer["task"], offer["attempt"])
            )
            ctx = self.started.get(task_id)
            if ctx is not None and ctx.attempt == attempt:
                self.started.pop(task_id, None)
                return ctx
        return TaskContext(self, offer)

    def holding(self, task_id: str) -> TaskContext | None:
        """A delivery of ``task_id`` another thread started and still runs (``started``)."""
        return self.started.get(task_id) if self.started else None

    # --- sending -----------------------------------------------------------------------------
    def request(self, msg: Message) -> asyncio.Future[Message]:
        return self.conn.request(msg)

    def post(self, msg: Message, receiver: Receiver) -> None:
        self.conn.post(msg, receiver)

    def send(self, msg: Message, *, own: bool = False) -> None:
        self.conn.send(msg, own=own)

    def send_now(self, msg: Message | bytes) -> bool:
        """From another thread, at once if nothing waits before it (``Connection.send_now``)."""
        return self.conn.send_now(msg)

    def send_all_now(self, msgs: Sequence[Message | bytes]) -> bool:
        """:meth:`send_now` for several messages, in one frame (all or none)."""
        return self.conn.send_all_now(msgs)

    @property
    def connected(self) -> bool:
        return self.conn.connected.is_set()

    def future(self) -> asyncio.Future[Any]:
        """A future on the connection's loop (a handle may be awaited before it connects)."""
        return (self.conn.loop or asyncio.get_running_loop()).create_future()

    def create_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """An asyncio task on the connection's loop (without ``asyncio.ensure_future``'s
        checks and loop lookup: a worker makes one per delivery)."""
        return (self.conn.loop or asyncio.get_running_loop()).create_task(coro)

    def call_soon(self, fn: Callable[[Any], Any], arg: Any) -> None:
        (self.conn.loop or asyncio.get_running_loop()).call_soon(fn, arg)

    # --- the table of published tasks --------------------------------------------------------
    def accepted(self, handle: Handle, task_id: str, created: bool | None) -> None:
        """The hub stored ``handle``'s task: follow its events until it ends."""
        known = self.handles.setdefault(task_id, handle)
        if known is not handle:  # the same key= twice in flight: both handles hear the events
            self.same_task.setdefault(task_id, []).append(handle)
        if handle.pooled:
            self.nobody_subscribed(handle.action, task_id)
        if created is False:
            self.follow(task_id, handle)  # the same key was published before: catch up

    def started_tasks(self, task_ids: list[str]) -> None:
        """A ``starts`` message: these tasks started (their ``start`` events, without the
        fields no handle reads). A worker holding one hears nothing: its context ignores a
        start event."""
        handles, same_task = self.handles, self.same_task
        for task_id in task_ids:
            handle = handles.get(task_id)
            if handle is not None:
                handle.feed_started()
                if same_task:
                    for other in tuple(same_task.get(task_id, ())):
                        other.feed_started()

    def ended(self, handle: Handle) -> None:
        """``handle``'s task ended: nothing more to follow."""
        task_id = handle.id or ""
        if self.handles.get(task_id) is handle:
            del self.handles[task_id]
        others = self.same_task.get(task_id) if self.same_task else None
        if others is not None and handle in others:
            others.remove(handle)
            if not others:
                del self.same_task[task_id]

    def followed(self) -> list[tuple[str, Handle]]:
        """Every (task id, handle) followed, to follow again after a reconnect."""
        out = list(self.handles.items())
        out.extend((task_id, h) for task_id, hs in self.same_task.items() for h in hs)
        return out

    def take_all(self) -> list[Handle]:
        """Empty the table (the client closed) and return what was in it."""
        handles = list(self.handles.values())
        for others in self.same_task.values():
            handles.extend(others)
        self.handles.clear()
        self.same_task.clear()
        return handles

    def follow(self, task_id: str, handle: Handle) -> None:
        """Follow a task (again) and bring its handle up to date with the hub's view."""
        self.conn.post({"op": "follow", "task": task_id}, _Followed(handle))

    def nobody_subscribed(self, action: str, task_id: str) -> None:
        """The hub pooled a task: say so once per action (a mistyped action otherwise waits
        in silence until its start timeout, which by default is never)."""
        if action in self._told_unsubscribed:
            return
        self._told_unsubscribed.add(action)
        log.warning(
            "no worker subscribes to %r: task %s waits until one does "
            "(is the action spelled right?) [said once per action]",
            action,
            task_id,
        )

    # --- the table of watches ----------------------------------------------------------------
    async def unwatch(self, w: Watch) -> None:
        """Stop ``w``; the hub stops sending the pattern's events once no watch wants them."""
        watches = self.watches.get(w.pattern)
        if watches is None or w not in watches:
            return
        watches.remove(w)
        if not watches:
            del self.watches[w.pattern]
            if self.connected:
                with contextlib.suppress(ConnectionClosed):  # closed meanwhile: nothing to stop
                    await self.conn.request({"op": "unwatch", "pattern": w.pattern})


class _Followed:
    """The answer to a ``follow``: the task's view, given to its handle as it is read. The
    hub sends the task's next events after it, often in the same frame; a future's callback
    would run a loop turn later, after those events, and put the older view over them (a
    ``success`` undone: ``get_result`` raised "failed: error")."""

    __slots__ = ("handle",)

    def __init__(self, handle: Handle) -> None:
        self.handle = handle

    def feed_answer(self, reply: Message) -> None:
        if reply.get("op") == "ok":
            self.handle.feed_snapshot(reply["task"])

    def feed_unanswered(self, exc: BaseException) -> None:
        """A lost connection's follow: the next connection follows the task again."""
