"""The worker side of a client: its subscriptions, the deliveries it holds and the handlers
running them (credit, pickups, results and failures, draining and handing back).

:class:`Client` (client/client.py) owns one :class:`Handlers` and feeds it the hub's offers,
revokes and task events; the façade's ``sub``, ``drain``, ``hand_back`` and ``working`` call
it. Internal: applications use :class:`Client`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from taskhub.client import tracing as tracing_
from taskhub.client.connection import UNSENDABLE, Message, encode_return
from taskhub.client.control import Reject, Retry, handler_traceback
from taskhub.client.link import Link
from taskhub.client.task import TaskContext
from taskhub.client.typed import Offer
from taskhub.protocol import bounded_traceback

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from taskhub.client.client import Subscription

log = logging.getLogger("taskhub.client")
# A handler's error message is cut to this many characters: a fail must fit in a frame.
MAX_ERROR_MESSAGE = 64 * 1024


class Slots:
    """The handler slots of one subscription: ``concurrency`` handlers run at once, the other
    deliveries wait for a slot in the order they came. What ``asyncio.Semaphore`` does, but
    a free slot is taken without a coroutine or a call (:meth:`take`): in a burst every
    delivery finds one, as the hub offers no more than the subscription's credit. A slot
    given back goes straight to the first delivery still waiting."""

    __slots__ = ("free", "waiting")

    def __init__(self, concurrency: int) -> None:
        self.free = concurrency  # slots nobody holds
        # Deliveries waiting for a slot, in the order they came (:meth:`take`'s futures).
        self.waiting: deque[asyncio.Future[None]] = deque()

    def take(self) -> asyncio.Future[None] | None:
        """None: a slot is the caller's now. Else the future to pass to :meth:`wait`."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        return fut

    async def wait(self, fut: asyncio.Future[None]) -> None:
        """Until :meth:`give` hands the caller a slot. Cancelled after it was handed one (in
        the same loop turn), the caller gives it on; cancelled before, it never gets one."""
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()
            raise

    def give(self) -> None:
        """A slot taken is free again: to the first delivery waiting, if one still does."""
        waiting = self.waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():  # a waiter cancelled meanwhile (a revoke) is skipped
                fut.set_result(None)
                return
        self.free += 1


class Handlers:
    """A client's subscriptions and the handlers running their deliveries."""

    def __init__(
        self,
        link: Link,
        *,
        tracing: tracing_.Tracing | None = None,
        late_tracing: Callable[[], tracing_.Tracing | None] | None = None,
    ) -> None:
        self._link = link
        # Link.send's own target, without its call per pickup and per result.
        self._send = link.conn.send
        # The client's tracing (docs/tracing.md): None while OpenTelemetry is not imported.
        # The client sets it when it loads tracing late; ``late_tracing`` is the client's
        # check, made when an offer comes while it is still None.
        self.tracing = tracing
        self._late_tracing = late_tracing
        self.subs: dict[str, Subscription[Any]] = {}  # by action
        self.working: dict[str, TaskContext] = {}  # deliveries held, by task id
        # The asyncio task running each delivery's handler (kept referenced until it ends).
        self.running: dict[TaskContext, asyncio.Task[Any]] = {}
        self.draining = False  # drain(): no handler starts any more

    def cancel_all(self) -> None:
        """The client closes: stop every handler."""
        for task in list(self.running.values()):
            task.cancel()

    def event(self, task_id: str, kind: str, data: Any) -> None:
        """A task event: the handler holding the task hears it too (``task.on``)."""
        ctx = self.working.get(task_id)
        if ctx is None and self._link.started:  # not a worker's handler loop's: no call
            ctx = self._link.holding(task_id)
        if ctx is not None:
            ctx.feed_event(kind, data)

    def revoke(self, msg: Message) -> None:
        """The hub took a delivery away (cancelled, timed out): stop its handler."""
        ctx = self.working.get(msg["task"]) or self._link.holding(msg["task"])
        if ctx is not None and ctx.attempt == msg.get("attempt", ctx.attempt):
            ctx.feed_revoke(str(msg.get("reason", "revoked")))

    def offered_all(self, offers: list[Offer]) -> None:
        """The items of an ``offers`` message decoded as structs (client/typed.py)."""
        for offer in offers:
            self.offered(offer)

    def offered(self, msg: Message | Offer) -> None:
        # Picked up already if a worker's handler loop started it as it read the offer: it
        # runs on, draining or not.
        link = self._link
        ctx = link.context(msg) if link.started else TaskContext(link, msg)  # no call if none
        sub = self.subs.get(ctx.action)
        if sub is None or (self.draining and not ctx.observe and not ctx.picked_up):
            # Unsubscribed meanwhile, or stopping: hand it back (offered again elsewhere,
            # no try counted). An observer's copy needs no answer.
            if not ctx.observe:
                self._send({"op": "release", "task": ctx.id, "attempt": ctx.attempt}, own=True)
            return
        if ctx.observe or ctx.picked_up:
            pass
        elif sub.claimed >= sub.concurrency:
            # No free slot: the handler waits, so receipt is acknowledged now (the pickup
            # window no longer applies); `_work` picks it up when a slot frees.
            self._send({"op": "ack", "task": ctx.id, "attempt": ctx.attempt}, own=True)
        else:
            # A free slot: picked up now, which acknowledges it too (one message less per
            # task). This pickup's flush is scheduled before the handler's first step (the
            # asyncio task made below), so the pickups of a frame's offers leave in one
            # message before any of their handlers runs: a handler that blocks the event loop
            # is known to the hub as started, and if its connection is then lost (the
            # keepalive went unanswered) that counts a try toward max_attempts (issue 15,
            # item 11). Without a loop turn of its own per delivery for that.
            ctx.picked_up = True
            self._send({"op": "pickup", "task": ctx.id, "attempt": ctx.attempt}, own=True)
        sub.claimed += 1
        self.working[ctx.id] = ctx
        work = self._work(sub, ctx)
        tracer = self.tracing
        # The late check only once OpenTelemetry is imported: no calls per task before.
        if tracer is None and self._late_tracing is not None and tracing_.imported_now():
            tracer = self._late_tracing()
        if tracer is not None:
            span = tracer.process(ctx, msg.trace if isinstance(msg, Offer) else msg.get("trace"))
            if span is not None:  # else nothing to record or pass on
                work = self._traced(work, ctx, tracer, span)
        # The task becomes ctx's runner at its first step (`_work`), not here: see there.
        ctx.runner = None
        loop = link.conn.loop  # known once connected: Link.create_task's steps without its call
        self.running[ctx] = link.create_task(work) if loop is None else loop.create_task(work)

    async def _traced(
        self, work: Awaitable[None], ctx: TaskContext, tracer: tracing_.Tracing, span: Span
    ) -> None:
        """``work`` inside the delivery's ``process`` span, the child of the offer's ``trace``
        (the publisher's span); a failure sent for it marks it (``_send_fail``)."""
        with tracer.current(span):
            await work
            if ctx.revoked:
                tracer.revoked(span, ctx.revoked)

    async def _work(self, sub: Subscription[Any], ctx: TaskContext) -> None:
        # What a revoke cancels, from this first step on. A revoke read before it (in the
        # offer's own loop turn) finds no runner to cancel, so this step runs, sees
        # ctx.revoked, and the `finally` below ends the delivery's books: a task cancelled
        # before its first step never runs its coroutine, and so needed a done callback (a
        # loop callback) per delivery to end them.
        ctx.runner = self.running[ctx]
        slots = sub.slots
        try:
            if slots.free > 0 and not slots.waiting:  # Slots.take's common case, no call
                slots.free -= 1
            elif (wait := slots.take()) is not None:
                await slots.wait(wait)
            try:
                if ctx.revoked:
                    return
                if self.draining and not ctx.observe and not ctx.picked_up:
                    ctx.released = True
                    self._send({"op": "release", "task": ctx.id, "attempt": ctx.attempt}, own=True)
                    return
                try:
                    if not ctx.observe and not ctx.picked_up:  # it waited for a slot
                        ctx.picked_up = True
                        self._send(
                            {"op": "pickup", "task": ctx.id, "attempt": ctx.attempt}, own=True
                        )
                        # One loop turn, in which the queued pickups leave, before the
                        # handler's code runs (as for a delivery picked up when offered). Flushed
                        # only after the handler's first step, it never left if that step
                        # blocked, and the task was offered again forever.
                        await asyncio.sleep(0)
                    result = sub.handler(ctx)
                    if type(result) is CoroutineType or inspect.isawaitable(result):
                        result = await result
                except asyncio.CancelledError:
                    if ctx.revoked:
                        return  # the hub took it away (cancelled, timed out): nothing to say
                    raise
                except Exception as exc:
                    self._raised(ctx, exc)
                    return
                if ctx.dropped or ctx.returned or ctx.observe or ctx.revoked:
                    return  # nothing (more) to send: the return value is ignored
                try:  # the result checked alone (encode_return): no message dict to check
                    self._send(encode_return(ctx.id, ctx.attempt, result))
                except UNSENDABLE as exc:
                    # Not JSON, or too large: the result cannot go, so the delivery fails
                    # with why (at once, not at its end timeout). Retrying would not help.
                    self._send_fail(ctx, exc, what="its result could not be sent: ", retry=False)
            finally:
                if slots.waiting:
                    slots.give()
                else:  # Slots.give's common case, without its call
                    slots.free += 1
        finally:
            sub.claimed -= 1
            if self.working.get(ctx.id) is ctx:
                del self.working[ctx.id]
            self.running.pop(ctx, None)

    def _raised(self, ctx: TaskContext, exc: Exception) -> None:
        """The handler raised ``exc`` (called in the except block): what to say of it."""
        if ctx.observe:
            self._observer_raised(ctx, exc)
        elif ctx.returned or ctx.dropped:
            _log_after_end(ctx)
        elif isinstance(exc, Retry):
            self._send_fail(ctx, exc, delay=exc.delay)
        elif isinstance(exc, Reject):
            self._send_fail(ctx, exc, retry=False)
        else:
            self._send_fail(ctx, exc, trace=True)

    def _observer_raised(self, ctx: TaskContext, exc: BaseException) -> None:
        log.exception("observer of %s raised", ctx.action)  # called in the except block
        if self.tracing is not None:
            self.tracing.failed(None, exc)  # the observer's process span is the current one

    def _send_fail(
        self,
        ctx: TaskContext,
        exc: BaseException,
        *,
        what: str = "",
        retry: bool = True,
        delay: float | None = None,
        trace: bool = False,
    ) -> None:
        message = what + str(exc)
        if len(message) > MAX_ERROR_MESSAGE:  # it must fit in a frame, whatever the handler did
            message = f"{message[:MAX_ERROR_MESSAGE]}... ({len(message)} characters in all)"
        error: Message = {"type": type(exc).__name__, "message": message}
        if trace:
            error["traceback"] = bounded_traceback(handler_traceback(exc))
        msg: Message = {"op": "fail", "task": ctx.id, "attempt": ctx.attempt, "error": error}
        if not retry:
            msg["retry"] = False
        if delay is not None:
            msg["delay"] = delay
        self._send(msg)
        if self.tracing is not None:
            self.tracing.failed(None, exc)  # the delivery's process span is the current one

    # --- stopping a worker -------------------------------------------------------------------
    def held(self) -> int:
        """Deliveries this client holds whose handler has not finished (running or waiting
        for a slot)."""
        return sum(1 for ctx in self.working.values() if not ctx.observe)

    async def drain(self) -> None:
        """Take nothing new: unsubscribe every action (the hub stops offering), and hand back
        at once what arrives meanwhile and what waits for a slot. Running handlers go on."""
        self.draining = True
        actions = [a for a, s in self.subs.items() if not s.observe]
        if self._link.connected:
            replies = [self._link.request({"op": "unsub", "action": a}) for a in actions]
            await asyncio.gather(*replies, return_exceptions=True)

    async def hand_back(self) -> int:
        """Hand every unfinished delivery back to the hub (offered again elsewhere, no try
        counted) and stop its handler; returns how many. Called when stopping past the
        grace: a thread running a plain function cannot be stopped, its result is ignored."""
        held = [
            ctx
            for ctx in self.working.values()
            if not (ctx.observe or ctx.returned or ctx.dropped or ctx.released or ctx.revoked)
        ]
        replies = []
        for ctx in held:
            ctx.released = True
            if self._link.connected:
                msg = {"op": "release", "task": ctx.id, "attempt": ctx.attempt}
                replies.append(self._link.request(msg))
            ctx.feed_revoke("released")
        if replies:
            await asyncio.gather(*replies, return_exceptions=True)
        return len(held)


def _log_after_end(ctx: TaskContext) -> None:
    """A handler raised after ``task.success()`` or ``task.drop()``: its delivery is already
    over, so the exception is logged (from inside the ``except`` block), never sent as a
    failure the hub would only refuse."""
    log.exception(
        "the handler of %s (task %s, attempt %d) raised after task.%s(); the delivery "
        "already ended, the exception is not sent",
        ctx.action,
        ctx.id,
        ctx.attempt,
        "success" if ctx.returned else "drop",
    )
