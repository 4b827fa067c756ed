"""Where a :class:`taskhub.Worker`'s handlers run, away from its connection's loop: the
handler loop (``async def`` handlers, with a watchdog that names one that blocks it), thread
pools and a process pool (plain ``def`` handlers), and the log lines of every delivery."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import inspect
import logging
import multiprocessing
import multiprocessing.pool
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection as PipeEnd
from typing import Any

from taskhub.client import TaskContext, tracing
from taskhub.client.connection import Connection, Message
from taskhub.client.control import Reject, Retry, handler_tb
from taskhub.client.link import Link
from taskhub.client.wire import Wire
from taskhub.errors import TaskHubError
from taskhub.worker_loops import Bridge, LoopThread

log = logging.getLogger("taskhub.worker")

# How long a handler may hold the handler loop before the watchdog names it.
BLOCKED_AFTER = 1.0
# How long the handler loop may go without turning before the connection's loop reads the
# socket too (pings, results and acks then never wait for a busy handler loop).
TAKE_OVER_AFTER = 0.1
_BEAT = 0.05  # the handler loop's heartbeat, seconds
_WATCH = 0.05  # how often the watchdog looks, seconds


async def logged(name: str, ctx: TaskContext, run: Callable[[], Awaitable[Any]]) -> Any:
    """Run one delivery's handler (``run``) with its log lines: received, succeeded (with its
    duration), retried, rejected, taken away, or failed with the handler's traceback."""
    log.info("received %s %s (attempt %d)", ctx.action, ctx.id, ctx.attempt)
    started = time.monotonic()
    try:
        await ctx.get_payload()  # so task.payload never blocks
        result = await run()
    except asyncio.CancelledError:
        log.warning(
            "%s %s was taken away after %.3fs (%s)",
            ctx.action,
            ctx.id,
            time.monotonic() - started,
            ctx.revoked or "stopped",
        )
        raise
    except Retry as exc:
        log.info("%s %s asked to be retried in %gs", ctx.action, ctx.id, exc.delay)
        raise
    except Reject as exc:
        log.warning("%s %s rejected: %s", ctx.action, ctx.id, exc.reason)
        raise
    except Exception as exc:
        log.error(
            "%s %s failed after %.3fs (attempt %d, handler %s)",
            ctx.action,
            ctx.id,
            time.monotonic() - started,
            ctx.attempt,
            name,
            exc_info=(type(exc), exc, handler_tb(exc)),
        )
        raise
    log.info("%s %s succeeded in %.3fs", ctx.action, ctx.id, time.monotonic() - started)
    return result


@dataclasses.dataclass
class Started:
    """A handler the handler loop started as it read the offer."""

    done: asyncio.Future[Any]  # its outcome, on the connection's loop
    at: float  # time.monotonic() when it started
    running: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    ended: float | None = None

    @property
    def took(self) -> float:
        return (self.ended or time.monotonic()) - self.at


@dataclasses.dataclass(frozen=True)
class Fast:
    """A task whose handler runs on the handler loop: what that loop needs to start it
    itself when it reads the offer."""

    fn: Callable[[Any], Any]
    name: str  # the handler's, for the watchdog
    concurrency: int
    make_task: Callable[[TaskContext], Any]


class HandlerLoop:
    """The event loop where ``async def`` handlers run (and plain ones with
    ``pool="async"``), on a thread of its own. A watchdog on the connection's loop names a
    handler that holds this loop over a second.

    While this loop is free it reads the connection's socket itself (a
    :class:`~taskhub.client.connection.Reader`): an offer for one of its tasks (:attr:`fast`)
    with a free slot starts the handler at once, on this thread, and the offer then goes on to
    the connection's loop, which keeps the delivery's books (:meth:`run` adopts the handler).
    When this loop has not turned for ``TAKE_OVER_AFTER`` (a handler blocks it), the
    connection's loop reads instead: pings, results, acks and offers keep flowing, and the
    offers for this loop wait for it (:meth:`run`)."""

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
        self._started: dict[int, Started] = {}  # by id() of the TaskContext
        self._running: dict[str, int] = {}  # handlers running here, by action (this thread)
        self._handed: dict[str, int] = {}  # handed over by run() (the connection's thread)
        self._taken: dict[str, int] = {}  # of those, started (this thread)
        self._reading: dict[Wire, int] = {}  # our duplicate of each wire's socket (this thread)
        self._pickups: list[TaskContext] = []  # started by the read being handled
        # Results of handlers that ended in this loop turn, with what settles them (_done).
        self._returns: list[tuple[TaskContext, Any, asyncio.Future[Any], bool]] = []
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
            if not conn.send_all_now(pickups):
                for msg in pickups:
                    self._to_conn.put(conn.send, msg)
        if self._urgent:
            # Something the connection's loop must hear of soon (an answer, a revoke...).
            # Only started deliveries (adopted in order before what follows them): those
            # wait for its next turn, or the watchdog's (catch_up).
            self._urgent = False
            self._later(conn.inbox.drain)

    def _later(self, fn: Callable[..., Any], *args: Any, lazy: bool = False) -> None:
        """On this loop: call ``fn(*args)`` on the connection's loop, two turns of this loop
        from now, in one batch with the others by then: after the handlers just started
        took their first step, and those that ended wrote their results. Woken before, the
        connection's thread would take the GIL from them as they write (a system call
        releases it) and delay what the publisher waits for; so it is woken once, when this
        loop has done what it had to (or by the watchdog, if this loop stalls first).
        ``lazy``: no hurry, it goes with the next batch or the watchdog's next look."""
        self._deferred.append((fn, args))
        if not lazy and not self._deferring:
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
        watchdog does it at each look; stopping does it first, so that every delivery
        started here is known to the client)."""
        self._run_deferred()
        if self._connection is not None:
            self._connection.inbox.drain()

    def _tap(self, msgs: list[Message]) -> list[Message | Callable[[], None]]:
        """The messages of a frame read here (the wire's lock held): start the handler of
        each offer for this loop that has a free slot; the connection's loop then adopts it
        (_adopt) where it would have dispatched the offer, so that what comes after it
        (a revoke, an event) finds it known."""
        out: list[Message | Callable[[], None]] = []
        for msg in msgs:
            op = msg.get("op")
            if op == "offers":  # several at once: each as if sent alone (docs/protocol.md)
                for item in msg["items"]:
                    item["op"] = "offer"
                    self._take(item, out)
            elif op == "offer":
                self._take(msg, out)
            else:
                out.append(msg)
                self._urgent = True
        return out

    def _take(self, offer: Message, out: list[Message | Callable[[], None]]) -> None:
        if self._can_start(offer):
            out.append(self._start_read(offer))
        else:
            out.append(offer)
            self._urgent = True

    def _can_start(self, msg: Message) -> bool:
        action = msg["action"]
        fast = self.fast.get(action)
        if fast is None or not self.taking or "payload" not in msg or msg.get("observe"):
            return False
        waiting = self._handed.get(action, 0) - self._taken.get(action, 0)
        if self._running.get(action, 0) + waiting >= fast.concurrency:
            return False  # no free slot: the connection's loop queues it, as it does
        # Traced: the connection's loop starts it inside its span.
        return "trace" not in msg and not self.traced()

    def _start_read(self, msg: Message) -> Callable[[], None]:
        link = self.link
        assert link is not None
        fast = self.fast[msg["action"]]
        ctx = TaskContext(link, msg)
        ctx.picked_up = True  # the pickup leaves once the read is handled (_readable)
        started = Started(self.conn.loop.create_future(), time.monotonic())
        name = f"{fast.name} ({ctx.action} {ctx.id})"
        t = self.loop.create_task(_call(fast.fn, fast.make_task(ctx)), name=name)
        started.running.append(t)
        self._running[ctx.action] = self._running.get(ctx.action, 0) + 1
        t.add_done_callback(functools.partial(self._done, ctx, started.done, ctx.action))
        self._started[id(ctx)] = started
        ctx.on("revoke", functools.partial(self._revoked, started.running))
        link.started[(ctx.id, ctx.attempt)] = ctx
        self._pickups.append(ctx)
        return functools.partial(self._adopt, ctx, msg)

    def _adopt(self, ctx: TaskContext, msg: Message) -> None:
        """On the connection's loop, in the offer's place: keep the books of a delivery
        started on this loop (the client's, as for any offer: run() then adopts its
        handler), unless it is over already with its result sent, as it mostly is."""
        started = self._started[id(ctx)]
        t = started.running[0]
        if ctx.returned and t.done() and not t.cancelled() and t.exception() is None:
            del self._started[id(ctx)]
            if self.link is not None:
                self.link.started.pop((ctx.id, ctx.attempt), None)
            if log.isEnabledFor(logging.INFO):
                log.info("received %s %s (attempt %d)", ctx.action, ctx.id, ctx.attempt)
                took = started.took
                log.info("%s %s succeeded in %.3fs", ctx.action, ctx.id, took)
            return
        assert self._connection is not None
        self._connection.on_message(msg)

    def _revoked(self, running: list[asyncio.Task[Any]], ctx: TaskContext) -> None:
        """On the connection's loop: the hub took away a delivery started here."""
        self._to_handlers.put(_cancel_started, running)

    # --- running handlers --------------------------------------------------------------------
    async def run(
        self, fn: Callable[[Any], Any], name: str, make_task: Callable[[], Any], ctx: TaskContext
    ) -> Any:
        """On the connection's loop: ``fn(make_task())`` on the handler loop, as an asyncio
        task called ``name`` (what the watchdog names), or the handler this loop started as
        it read the offer; its outcome. Cancelling this cancels the handler too. Its result
        leaves from the handler loop's thread at once (``ctx.return_from_thread``); the
        outcome then crosses back to the connection's loop, which ends the delivery's
        bookkeeping."""
        started = self._started.pop(id(ctx), None)
        if started is not None:
            done, running = started.done, started.running
        else:
            done = self.conn.loop.create_future()
            running = []  # the handler's task, once it started
            # The handler runs in this delivery's context (its process span is current
            # there): the batched hand-over to the handler loop would otherwise lose it.
            context = contextvars.copy_context()
            self._handed[ctx.action] = self._handed.get(ctx.action, 0) + 1
            task = make_task()
            self._to_handlers.put(self._start, fn, task, name, ctx, done, running, context)
        try:
            return await done
        except asyncio.CancelledError:
            # Revoked, or the worker stops past its grace: cancel the handler too.
            self._to_handlers.put(_cancel_started, running)
            raise

    def _start(
        self,
        fn: Callable[[Any], Any],
        task: Any,
        name: str,
        ctx: TaskContext,
        done: asyncio.Future[Any],
        running: list[asyncio.Task[Any]],
        context: contextvars.Context,
    ) -> None:
        """On the handler loop: run the handler; its outcome crosses back in a batch."""
        action = ctx.action
        self._taken[action] = self._taken.get(action, 0) + 1
        if done.cancelled():
            return
        t = self.loop.create_task(_call(fn, task), name=name, context=context)
        running.append(t)
        self._running[action] = self._running.get(action, 0) + 1
        t.add_done_callback(functools.partial(self._done, ctx, done, action))

    def _done(
        self, ctx: TaskContext, done: asyncio.Future[Any], action: str, t: asyncio.Task[Any]
    ) -> None:
        self._running[action] -= 1
        # Started here and not adopted yet: nobody waits for the outcome (_adopt reads it).
        started = self._started.get(id(ctx))
        lazy = started is not None
        if started is not None:
            started.ended = time.monotonic()
        if t.cancelled():
            self._later(done.cancel, lazy=lazy)
        elif t.exception() is not None:
            self._later(_settle, done, None, t.exception(), lazy=lazy)
        else:
            # The hub gets it before the connection's loop wakes: written from here at the
            # end of this turn, in one frame with the others that ended in it.
            if not self._returns:
                self.loop.call_soon(self._send_returns)
            self._returns.append((ctx, t.result(), done, lazy))

    def _send_returns(self) -> None:
        """The results of one turn's handlers in one frame, as the plain client's flush sends
        them (a frame per result cost the hub and this process a read and a write each);
        then, and only then, their outcomes go to the connection's loop, which sends what
        could not go here."""
        batch, self._returns = self._returns, []
        if len(batch) == 1:
            batch[0][0].return_from_thread(batch[0][1])
        else:
            TaskContext.return_all_from_thread([(ctx, result) for ctx, result, _, _ in batch])
        for _, result, done, lazy in batch:
            self._later(_settle, done, result, None, lazy=lazy)

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
            current = asyncio.current_task(self.loop)
            who = current.get_name() if current is not None else "a handler"
            log.warning(
                "handler %s has blocked the worker's event loop for %.1fs: the other async "
                "handlers wait meanwhile (the connection does not); await instead, or make "
                "it a plain def (it then runs in a thread)",
                who,
                stalled,
            )
        elif stalled <= BLOCKED_AFTER:
            self._blocked_warned = False
        asyncio.get_running_loop().call_later(_WATCH, self._watchdog)

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


class ThreadPools:
    """One thread pool per plain ``def`` task (``pool="threads"``), sized to its concurrency."""

    def __init__(self) -> None:
        self._pools: list[concurrent.futures.ThreadPoolExecutor] = []
        self._running: set[concurrent.futures.Future[Any]] = set()

    def pool(self, action: str, size: int) -> concurrent.futures.ThreadPoolExecutor:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix=f"taskhub-{action}"
        )
        self._pools.append(executor)
        return executor

    async def run(
        self,
        executor: concurrent.futures.Executor,
        fn: Callable[[Any], Any],
        task: Any,
        ctx: TaskContext,
    ) -> Any:
        # In the delivery's context, as asyncio.to_thread does (its process span is current).
        call = contextvars.copy_context().run
        running = executor.submit(call, _call_and_return, fn, task, ctx)
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        return await asyncio.wrap_future(running)

    def lingering(self) -> int:
        """Plain handlers still running in their threads (a thread cannot be stopped)."""
        return sum(1 for f in list(self._running) if not f.done())

    def shutdown(self) -> None:
        for executor in self._pools:
            executor.shutdown(wait=False, cancel_futures=True)
        self._pools = []


@dataclasses.dataclass(frozen=True)
class ProcessTask:
    """What a plain ``def`` handler gets with ``pool="processes"``: the task by value, and
    the steps :meth:`update` and :meth:`extend`, which the worker's own process sends for it
    (each blocks until the hub has it). Return the result, or raise (``Retry`` and
    ``Reject`` work as elsewhere)."""

    id: str
    action: str
    attempt: int
    group: str
    publisher: str
    created_at: float
    payload: Any
    previous_result: Any = None
    # This task's line to the worker's process (one pipe per delivery), None outside a pool.
    steps: PipeEnd | None = dataclasses.field(default=None, repr=False, compare=False)

    def get_payload(self) -> Any:
        return self.payload

    def update(self, data: Any) -> None:
        """Progress, relayed to the publisher; blocks until the hub has stored it."""
        self._step("update", data)

    def extend(self, duration: float | dt.timedelta | str) -> None:
        """The task must now finish within ``duration`` from now (``"10m"``), or by its
        earlier deadline if that is later; blocks until the hub has it."""
        self._step("extend", duration)

    def _step(self, op: str, arg: Any) -> None:
        if self.steps is None:
            raise RuntimeError(
                f"task.{op}() of a ProcessTask works in a worker's process pool only"
            )
        self.steps.send((op, arg))
        error = self.steps.recv()  # None once the hub has it, else what went wrong
        if error is not None:
            raise TaskHubError(f"task.{op}() of {self.action} {self.id}: {error}")


class ProcessPool:
    """One process pool for every ``pool="processes"`` task of a worker, ``size`` processes.

    Each delivery gets a pipe to its process: the handler's ``update`` and ``extend`` come
    back through it to the connection's loop, which sends them and answers once the hub has
    them (the handler waits for that, so nothing it sends can come after its result)."""

    def __init__(self, size: int) -> None:
        # spawn, not fork: this process has threads (a fork would copy their locks held).
        self._mp = multiprocessing.get_context("spawn")
        self._pool: multiprocessing.pool.Pool = self._mp.Pool(size)

    async def run(self, fn: Callable[[ProcessTask], Any], ctx: TaskContext) -> Any:
        """On the connection's loop: ``fn`` on the delivery's task, in a process."""
        mine, theirs = self._mp.Pipe()
        task = ProcessTask(
            ctx.id,
            ctx.action,
            ctx.attempt,
            ctx.group,
            ctx.publisher,
            ctx.created_at,
            ctx.payload,
            ctx.previous_result,
            steps=theirs,
        )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        loop.add_reader(mine.fileno(), _take_step, mine, ctx)

        def done(value: Any) -> None:  # on the pool's result thread
            ctx.return_from_thread(value)  # the hub has it before the connection wakes
            loop.call_soon_threadsafe(_settle, fut, value, None)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, fut, None, exc)

        self._pool.apply_async(_call_in_process, (fn, task), callback=done, error_callback=failed)
        try:
            return await fut
        finally:
            loop.remove_reader(mine.fileno())
            mine.close()
            theirs.close()

    def terminate(self) -> None:
        self._pool.terminate()


def _call_and_return(fn: Callable[[Any], Any], task: Any, ctx: TaskContext) -> Any:
    """A plain handler in its pool thread; its result leaves from this thread at once."""
    result = fn(task)
    ctx.return_from_thread(result)
    return result


def _take_step(pipe: PipeEnd, ctx: TaskContext) -> None:
    """On the connection's loop: a process handler asks for a step; answer once it is done."""
    try:
        op, arg = pipe.recv()
    except (EOFError, OSError):  # the handler's process is gone; run() cleans up
        return
    step = ctx.update(arg) if op == "update" else ctx.extend(arg)
    asyncio.ensure_future(step).add_done_callback(functools.partial(_answer_step, pipe))


def _answer_step(pipe: PipeEnd, step: asyncio.Future[None]) -> None:
    if step.cancelled():
        answer: str | None = "not sent: the worker is stopping"
    else:
        error = step.exception()
        answer = None if error is None else f"{type(error).__name__}: {error}"
    with contextlib.suppress(OSError):
        pipe.send(answer)


def _call_in_process(fn: Callable[[ProcessTask], Any], task: ProcessTask) -> Any:
    return fn(task)


def _call_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for fn, args in calls:
        fn(*args)


def _cancel_started(running: list[asyncio.Task[Any]]) -> None:
    for t in running:
        t.cancel()


async def _call(fn: Callable[..., Any], task: Any) -> Any:
    """A handler's call on the handler loop (its asyncio task is named for the watchdog)."""
    out = fn(task)
    if inspect.isawaitable(out):
        out = await out
    return out


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
