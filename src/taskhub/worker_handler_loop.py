"""The handler loop of a :class:`taskhub.Worker`: the event loop, on a thread of its own, where
``async def`` handlers run (and plain ones with ``pool="async"``), with the watchdog that names
a handler blocking it, and the reading of the connection's socket while it is free.

Each delivery whose handler runs here has one record (:class:`Running`) from its start to its
end. A delivery started here as its offer was read, and over with its result sent from here,
as nearly every short task is, never reaches the connection's loop: the client's books are
kept only for the deliveries it must hear of (a failure, a result that could not be written
from here, a stop). See docs/decisions.md, "A `Worker` delivery has one record".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from types import CoroutineType
from typing import Any

from taskhub.client import TaskContext, tracing
from taskhub.client.connection import Connection, Message
from taskhub.client.link import Link
from taskhub.client.wire import Wire
from taskhub.worker_loops import Bridge, LoopThread

log = logging.getLogger("taskhub.worker")

# How long a handler may hold the handler loop before the watchdog names it.
BLOCKED_AFTER = 1.0
# How long the handler loop may go without turning before the connection's loop reads the
# socket too (pings, results and acks then never wait for a busy handler loop).
TAKE_OVER_AFTER = 0.1
_BEAT = 0.05  # the handler loop's heartbeat, seconds
_WATCH = 0.05  # how often the watchdog looks, seconds

# Running.state: what the handler loop knows of the handler's outcome.
RUNNING = 0  # running, or returned with its result not written yet
RETURNED = 1  # returned, and its result went out from the handler loop if it could
FAILED = 2  # raised (Running.error)
CANCELLED = 3


@dataclasses.dataclass(frozen=True)
class Fast:
    """A task whose handler runs on the handler loop: what that loop needs to start it
    itself when it reads the offer."""

    fn: Callable[[Any], Any]
    name: str  # the handler's, for the watchdog
    concurrency: int
    make_task: Callable[[TaskContext], Any]


class Running:
    """One delivery whose handler runs on the handler loop, from its start to its end.

    Written by the handler loop, except ``waiter`` (the connection's loop's). Until the
    connection's loop adopts it, it is also the delivery's ``ctx.runner``: a revoke read
    meanwhile cancels the handler through it."""

    __slots__ = (
        "at",
        "context",
        "ctx",
        "error",
        "fn",
        "name",
        "offer",
        "owner",
        "result",
        "state",
        "task",
        "waiter",
    )

    def __init__(
        self,
        owner: HandlerLoop,
        ctx: TaskContext,
        fn: Callable[[Any], Any],
        name: str,
        offer: Message | None,
    ) -> None:
        self.owner = owner
        self.ctx = ctx
        self.fn = fn
        self.name = name  # the handler's
        self.offer = offer  # started as read: the offer the connection's loop adopts
        self.at = time.monotonic()
        self.state = RUNNING
        self.result: Any = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None  # on the handler loop, once started
        self.waiter: asyncio.Future[Any] | None = None  # the connection's loop awaits it
        self.context: contextvars.Context | None = None  # handed over: the delivery's

    def describe(self) -> str:
        return f"{self.name} ({self.ctx.action} {self.ctx.id})"

    # As ctx.runner (TaskContext.feed_revoke, on the connection's loop).
    def done(self) -> bool:
        return self.state != RUNNING

    def cancel(self) -> bool:
        self.owner.cancel(self)
        return True

    def revoked(self, ctx: TaskContext) -> None:
        """A revoke listener (once adopted): cancel the handler too."""
        self.owner.revoked(self)

    def outcome(self) -> Any:
        """The handler's result, or raise what it raised (once it ended)."""
        if self.state == RETURNED:
            return self.result
        if self.state == FAILED:
            assert self.error is not None
            raise self.error
        raise asyncio.CancelledError


class HandlerLoop:
    """The event loop where ``async def`` handlers run (and plain ones with
    ``pool="async"``), on a thread of its own. A watchdog on the connection's loop names a
    handler that holds this loop over a second.

    While this loop is free it reads the connection's socket itself (a
    :class:`~taskhub.client.connection.Reader`): an offer for one of its tasks (:attr:`fast`)
    with a free slot starts the handler at once, on this thread, and nothing of it goes to
    the connection's loop unless that loop must act (:meth:`_ended`). When this loop has not
    turned for ``TAKE_OVER_AFTER`` (a handler blocks it), the connection's loop reads
    instead: pings, results, acks and offers keep flowing, and the offers for this loop wait
    for it (:meth:`run`)."""

    def __init__(self, conn: LoopThread) -> None:
        self.conn = conn
        self.thread = LoopThread("taskhub-worker-handlers")
        self.loop = self.thread.loop
        self._to_handlers = Bridge(self.loop)  # conn loop -> handler loop, batched
        self._to_conn = Bridge(conn.loop)  # and back
        self._beat_at = time.monotonic()
        self._blocked_warned = False
        self.fast: dict[str, Fast] = {}  # by action; set before the connection opens
        self.taking = True  # False once the worker stops: start nothing more here
        # Deliveries started here as read that the connection's loop has not adopted, by task
        # id: added here; removed (dict.pop, atomic) by whichever thread ends their books
        # first: this one as the handler ends, or the connection's loop adopting them.
        self._live: dict[str, Running] = {}
        self._adopted: dict[int, Running] = {}  # by id() of the context, until run() takes it
        self._held: set[Running] = set()  # awaited by run() (the connection's loop)
        self._running: dict[str, int] = {}  # handlers running here, by action (this thread)
        self._handed: dict[str, int] = {}  # handed over by run() (the connection's thread)
        self._taken: dict[str, int] = {}  # of those, started (this thread)
        self._reading: dict[Wire, int] = {}  # our duplicate of each wire's socket (this thread)
        self._pickups: list[TaskContext] = []  # started by the read being handled
        self._returns: list[Running] = []  # handlers that returned in this loop turn
        self._deferred: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()  # _later
        self._deferring = False
        self._urgent = False  # the read being handled queued messages for the connection
        self._connection: Connection | None = None  # the connection read (its loop's side)
        self.link: Link | None = None  # its client's (set before it connects)
        self.tracer_provider = False  # the worker was given one
        self._here = False  # the connection's loop reads too (this one is stalled)
        self.thread.run(self._beat())
        conn.loop.call_soon_threadsafe(conn.loop.call_later, _WATCH, self._watchdog)

    def traced(self) -> bool:
        """Whether deliveries may be traced (docs/tracing.md): the worker has a tracer
        provider, or the global one is an SDK's. Their handlers then start on the
        connection's loop, inside its ``process`` span."""
        if self.tracer_provider or not tracing.imported():
            return self.tracer_provider
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)

    # --- reading the socket (Reader) ---------------------------------------------------------
    def attach(self, conn: Connection, ws: Wire) -> None:
        """On the connection's loop: read ``ws`` from this loop too, with a duplicate of its
        socket (this loop closes it)."""
        self._connection = conn
        self._here = False
        if ws.fd is None:
            return
        fd = os.dup(ws.fd)
        try:
            self.loop.call_soon_threadsafe(self._attach, conn, ws, fd)
        except RuntimeError:  # this loop closed (stopping): nothing to read any more
            os.close(fd)

    def detach(self, ws: Wire) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._detach, ws)

    def _attach(self, conn: Connection, ws: Wire, fd: int) -> None:
        self._reading[ws] = fd
        self.loop.add_reader(fd, self._readable, conn, ws, fd)

    def _detach(self, ws: Wire) -> None:
        fd = self._reading.pop(ws, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def _readable(self, conn: Connection, ws: Wire, fd: int) -> None:
        """The socket has bytes and this loop is free: read them here."""
        self._beat_at = time.monotonic()
        if not conn.inbox.receive(ws, fd, self._tap):
            self._detach(ws)
        if self._pickups:  # in one frame, before the handlers' first step (next turn)
            pickups = [
                {"op": "pickup", "task": ctx.id, "attempt": ctx.attempt} for ctx in self._pickups
            ]
            self._pickups = []
            if not conn.send_all_now(pickups, own=True):
                for msg in pickups:
                    self._to_conn.put(conn.send, msg)
        if self._urgent:
            # Something the connection's loop must hear of soon (an answer, a revoke, an
            # offer it starts itself): at its next turn, after this loop's handlers.
            self._urgent = False
            self._later(conn.inbox.drain)

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """On this loop: call ``fn(*args)`` on the connection's loop, two turns of this loop
        from now, in one batch with the others by then: after the handlers just started
        took their first step, and those that ended wrote their results. Woken before, the
        connection's thread would take the GIL from them as they write (a system call
        releases it) and delay what the publisher waits for; so it is woken once, when this
        loop has done what it had to (or by the watchdog, if this loop stalls first)."""
        self._deferred.append((fn, args))
        if not self._deferring:
            self._deferring = True
            self.loop.call_soon(self.loop.call_soon, self._flush_later)

    def _flush_later(self) -> None:
        self._deferring = False
        self._to_conn.put(self._run_deferred)

    def _run_deferred(self) -> None:
        """On the connection's loop: the calls _later queued, in order."""
        deferred = self._deferred
        while deferred:
            fn, args = deferred.popleft()
            fn(*args)

    def catch_up(self) -> None:
        """On the connection's loop: take in at once what this loop read and did (the
        watchdog does it at each look). Once the worker stops taking (:attr:`taking`), also
        adopt every delivery started here that still runs, so that the client counts it
        and hands it back if it outlives the grace."""
        self._run_deferred()
        if self._connection is not None:
            self._connection.inbox.drain()
        if not self.taking:
            for rec in list(self._live.values()):
                if self._live.pop(rec.ctx.id, None) is rec:  # else it ended meanwhile
                    self._adopt(rec)

    def _tap(self, msgs: list[Message]) -> list[Message | Callable[[], None]]:
        """The messages of a frame read here (the wire's lock held): start the handler of
        each offer for this loop that has a free slot (the delivery stays this loop's until
        the connection's loop must hear of it); the rest go to the connection's loop."""
        out: list[Message | Callable[[], None]] = []
        for msg in msgs:
            op = msg.get("op")
            if op == "offers":  # several at once: each as if sent alone (docs/protocol.md)
                offers = msg["items"]
                for item in offers:
                    item["op"] = "offer"
            elif op == "offer":
                offers = [msg]
            else:
                out.append(msg)
                self._urgent = True
                continue
            for offer in offers:
                if self._can_start(offer):
                    self._start_read(offer)
                else:
                    out.append(offer)
                    self._urgent = True
        return out

    def _can_start(self, msg: Message) -> bool:
        action = msg["action"]
        fast = self.fast.get(action)
        if fast is None or not self.taking or "payload" not in msg or msg.get("observe"):
            return False
        waiting = self._handed.get(action, 0) - self._taken.get(action, 0)
        if self._running.get(action, 0) + waiting >= fast.concurrency:
            return False  # no free slot: the connection's loop queues it, as it does
        link = self.link
        if link is None or msg["task"] in link.started:
            return False  # another attempt of it is still here: the client sorts it out
        # Traced: the connection's loop starts it inside its span. (traced()'s first check
        # inline: no call per offer while OpenTelemetry is not imported.)
        if self.tracer_provider or tracing.imported_now():
            return "trace" not in msg and not self.traced()
        return "trace" not in msg

    def _start_read(self, msg: Message) -> None:
        link = self.link
        assert link is not None
        fast = self.fast[msg["action"]]
        ctx = TaskContext(link, msg)
        ctx.picked_up = True  # the pickup leaves once the read is handled (_readable)
        rec = Running(self, ctx, fast.fn, fast.name, msg)
        ctx.runner = rec  # a revoke cancels the handler through it until adopted
        # Known to the client for the events and revokes of its task (Link.started).
        link.started[ctx.id] = ctx
        self._live[ctx.id] = rec
        self._running[ctx.action] = self._running.get(ctx.action, 0) + 1
        rec.task = self.loop.create_task(self._run(rec, fast.make_task(ctx)))
        self._pickups.append(ctx)

    # --- running handlers --------------------------------------------------------------------
    async def run(
        self, fn: Callable[[Any], Any], name: str, make_task: Callable[[], Any], ctx: TaskContext
    ) -> Any:
        """On the connection's loop: ``fn(make_task())`` on the handler loop (``name`` is the
        handler's, for the watchdog), or the handler this loop started as it read the offer;
        its outcome. Cancelling this cancels the handler too. Its result leaves from the
        handler loop's thread at once (``ctx.return_from_thread``); the outcome then crosses
        back to the connection's loop, which ends the delivery's bookkeeping."""
        rec = self._adopted.pop(id(ctx), None)
        if rec is None:
            rec = Running(self, ctx, fn, name, None)
            # The handler runs in this delivery's context (its process span is current
            # there): the batched hand-over to the handler loop would otherwise lose it.
            rec.context = contextvars.copy_context()
            self._handed[ctx.action] = self._handed.get(ctx.action, 0) + 1
            self._to_handlers.put(self._start, rec, make_task())
        elif rec.state != RUNNING:
            return rec.outcome()
        rec.waiter = self.conn.loop.create_future()
        self._held.add(rec)
        try:
            return await rec.waiter
        except asyncio.CancelledError:
            # Revoked, or the worker stops past its grace: cancel the handler too.
            self.cancel(rec)
            raise
        finally:
            self._held.discard(rec)

    def _start(self, rec: Running, task: Any) -> None:
        """On the handler loop: run a handler handed over by :meth:`run`."""
        action = rec.ctx.action
        self._taken[action] = self._taken.get(action, 0) + 1
        if rec.state != RUNNING:  # cancelled before it started
            return
        self._running[action] = self._running.get(action, 0) + 1
        rec.task = self.loop.create_task(self._run(rec, task), context=rec.context)

    def cancel(self, rec: Running) -> None:
        """From any thread: cancel ``rec``'s handler (on this loop)."""
        self._to_handlers.put(_cancel, rec)

    def revoked(self, rec: Running) -> None:
        """On the connection's loop: the hub took away a delivery adopted from this loop."""
        self._adopted.pop(id(rec.ctx), None)  # its handler is not called for again
        self.cancel(rec)

    async def _run(self, rec: Running, task: Any) -> None:
        """A handler's call on this loop, and what follows its end."""
        try:
            out = rec.fn(task)
            if type(out) is CoroutineType or inspect.isawaitable(out):  # no call for a coroutine
                out = await out
        except asyncio.CancelledError:
            rec.state = CANCELLED
            self._ended(rec)
            raise
        except BaseException as exc:  # the connection's loop reports it (logged, a fail)
            rec.error = exc
            rec.state = FAILED
            self._ended(rec)
            return
        finally:
            self._running[rec.ctx.action] -= 1
        # The hub gets it before the connection's loop wakes: written from here at the end
        # of this turn, in one frame with the others that returned in it.
        rec.result = out
        if not self._returns:
            self.loop.call_soon(self._send_returns)
        self._returns.append(rec)

    def _send_returns(self) -> None:
        """The results of one turn's handlers in one frame, as the plain client's flush sends
        them (a frame per result cost the hub and this process a read and a write each);
        only then does each delivery end (:meth:`_ended`)."""
        batch, self._returns = self._returns, []
        if len(batch) == 1:
            batch[0].ctx.return_from_thread(batch[0].result)
        else:
            TaskContext.return_all_from_thread([(rec.ctx, rec.result) for rec in batch])
        info = log.isEnabledFor(logging.INFO)  # once per turn, not per delivery
        for rec in batch:
            rec.state = RETURNED
            self._ended(rec, info)

    def _ended(self, rec: Running, info: bool | None = None) -> None:
        """On this loop, once a handler ended (and its result went out, if it could): a
        delivery started here and not adopted ends here if nothing is left to say for it;
        otherwise the connection's loop adopts it (a failure to report, a result to send)
        or, if it did already, settles what it awaits. ``info``: whether the log takes
        INFO lines (asked if not given)."""
        ctx = rec.ctx
        if rec.offer is None or self._live.pop(ctx.id, None) is not rec:
            self._later(_settle, rec)  # the connection's loop keeps its books
            return
        returned = rec.state == RETURNED and (ctx.returned or ctx.dropped or ctx.revoked)
        if not (returned or (rec.state == CANCELLED and ctx.revoked)):
            self._later(self._adopt, rec)
            return
        assert self.link is not None
        self.link.started.pop(ctx.id, None)
        ctx.runner = None  # no cycle left: the delivery is freed as soon as it ends
        if returned and (log.isEnabledFor(logging.INFO) if info is None else info):
            log.info("received %s %s (attempt %d)", ctx.action, ctx.id, ctx.attempt)
            took = time.monotonic() - rec.at
            log.info("%s %s succeeded in %.3fs", ctx.action, ctx.id, took)
        elif not returned:
            took = time.monotonic() - rec.at
            log.warning(
                "%s %s was taken away after %.3fs (%s)", ctx.action, ctx.id, took, ctx.revoked
            )

    def _adopt(self, rec: Running) -> None:
        """On the connection's loop: keep the books of a delivery started here, as for any
        offer (the client's ``offered``; its handler then reaches :meth:`run`, which takes
        this record)."""
        assert self._connection is not None and rec.offer is not None
        ctx = rec.ctx
        self._adopted[id(ctx)] = rec
        # From now on ctx.runner is the client's: a revoke that cancels it before it reaches
        # run() must still reach the handler (and run() will not take this record then).
        ctx.on("revoke", rec.revoked)
        self._connection.on_message(rec.offer)
        if ctx.runner is rec:  # not taken (its action was unsubscribed: handed back)
            del self._adopted[id(ctx)]
            self.cancel(rec)

    # --- the watchdog ------------------------------------------------------------------------
    def blocking(self) -> None:
        """From any thread, before it blocks waiting for the connection's loop: if it is this
        loop's (a plain handler with ``pool="async"`` waits for a step), that loop reads the
        socket from now on (the answer would otherwise wait for the watchdog)."""
        if threading.current_thread() is self.thread.thread:
            with contextlib.suppress(RuntimeError):
                self.conn.loop.call_soon_threadsafe(self._read_on_conn, True)

    def _read_on_conn(self, on: bool) -> None:
        connection = self._connection
        if on != self._here and connection is not None:
            self._here = on
            connection.read_here(on)

    def _watchdog(self) -> None:
        """Every _WATCH s on the connection loop: is the handler loop stalled (then read the
        socket there too), or blocked for long (then say so)?"""
        if self.loop.is_closed():
            return
        stalled = time.monotonic() - self._beat_at
        self._read_on_conn(stalled > TAKE_OVER_AFTER)
        self.catch_up()
        if stalled > BLOCKED_AFTER and not self._blocked_warned:
            self._blocked_warned = True
            log.warning(
                "handler %s has blocked the worker's event loop for %.1fs: the other async "
                "handlers wait meanwhile (the connection does not); await instead, or make "
                "it a plain def (it then runs in a thread)",
                self._blocker(),
                stalled,
            )
        elif stalled <= BLOCKED_AFTER:
            self._blocked_warned = False
        asyncio.get_running_loop().call_later(_WATCH, self._watchdog)

    def _blocker(self) -> str:
        """The handler running on the handler loop now, named (built only when warning)."""
        current = asyncio.current_task(self.loop)
        if current is None:
            return "a handler"
        for rec in [*self._live.values(), *self._held]:
            if rec.task is current:
                return rec.describe()
        return current.get_name()

    async def _beat(self) -> None:
        while True:
            self._beat_at = time.monotonic()
            await asyncio.sleep(_BEAT)

    def stop(self) -> None:
        if self.thread.thread.is_alive() and not self.loop.is_closed():
            with contextlib.suppress(Exception):
                self.thread.run(self._detach_all()).result(2)
        self.thread.stop()

    async def _detach_all(self) -> None:
        for ws in list(self._reading):
            self._detach(ws)


def _cancel(rec: Running) -> None:
    """On the handler loop: cancel a handler (one not started yet never starts)."""
    if rec.task is not None:
        rec.task.cancel()
    elif rec.state == RUNNING:
        rec.state = CANCELLED


def _settle(rec: Running) -> None:
    """On the connection's loop: a handler it awaits (:meth:`HandlerLoop.run`) ended."""
    fut = rec.waiter
    if fut is None or fut.done():
        return  # run() saw the outcome itself, or gave up (cancelled)
    if rec.state == RETURNED:
        fut.set_result(rec.result)
    elif rec.state == FAILED:
        assert rec.error is not None
        fut.set_exception(rec.error)
    else:
        fut.cancel()
