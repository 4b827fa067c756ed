"""What a handler gets (:class:`TaskContext`) and what a publisher holds (:class:`Handle`).

A handler ends its delivery in one of three ways: it returns a value (sent as the result), it
calls ``await task.success(result)`` (the result is sent at once; the later return value is
ignored), or it calls ``await task.drop()`` (done without a result). Raising fails the delivery,
unless ``success()`` or ``drop()`` already ended it: then the exception is only logged.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import inspect
import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from msgspec import UNSET

from taskhub.client.connection import UNSENDABLE, encode_return
from taskhub.client.typed import Offer
from taskhub.errors import (
    ConnectionClosed,
    NoResult,
    NotHolding,
    TaskCancelled,
    TaskFailed,
    TaskHubError,
    TaskTimeout,
    from_wire,
)
from taskhub.intervals import parse_interval

if TYPE_CHECKING:
    from taskhub.client.link import Link

log = logging.getLogger("taskhub.client")
_MISSING: Any = object()


class _Emitter:
    __slots__ = ("_background", "_listeners")

    def __init__(self) -> None:
        # Made on first use: most handles never get a callback, and a publisher may hold
        # many thousands of handles (fewer objects for the garbage collector to walk).
        self._listeners: dict[str, list[Callable[[Any], Any]]] | None = None
        # Tasks running async callbacks (kept referenced until done); made for the first.
        self._background: set[asyncio.Task[Any]] | None = None

    def on(self, event: str, callback: Callable[[Any], Any]) -> Any:
        """Call ``callback(self)`` on ``event``; returns ``self`` so calls chain.

        A listener added late is called at once for what already happened, as the seeds'
        client does: for ``update`` if an update arrived before (once, with the latest in
        ``last_update``), for a final event (``success``, ``fail``, ``end``, ``revoke``) if
        it is the one that happened. So ``h = client.pub(...); h.on("update", cb)`` misses
        nothing, however fast the updates come.
        """
        if self._listeners is None:
            self._listeners = {}
        self._listeners.setdefault(event, []).append(callback)
        if self._happened(event):
            self._call(event, callback)
        return self

    def _happened(self, event: str) -> bool:
        """Whether ``event`` already happened, so that a late listener is called at once."""
        return False

    def _emit(self, event: str) -> None:
        if self._listeners is None:
            return
        for cb in self._listeners.get(event, ()):
            self._call(event, cb)

    def _call(self, event: str, cb: Callable[[Any], Any]) -> None:
        try:
            out = cb(self)
            if inspect.isawaitable(out):
                t = asyncio.ensure_future(out)
                if self._background is None:
                    self._background = set()
                self._background.add(t)
                t.add_done_callback(self._background.discard)
        except Exception:
            log.exception("a %r callback raised", event)


class Runner(Protocol):
    """What runs a delivery's handler (an asyncio task, or a worker's record of a handler
    running on another loop): a revoke cancels it."""

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


class TaskContext(_Emitter):
    """One delivery of a task to this worker (or a copy for an observer).

    Steps: :meth:`pickup` (alias ``start``), :meth:`get_payload`, :meth:`update`, and one of
    :meth:`success` (a result) or :meth:`drop` (no result) to end the delivery before the
    handler returns; otherwise the handler's return value is the result.
    """

    def __init__(self, link: Link, offer: dict[str, Any] | Offer) -> None:
        self._listeners = None  # _Emitter's, set here to spare a call per delivery
        self._background = None
        self._link = link
        if isinstance(offer, Offer):  # decoded as a struct (client/typed.py): a worker's burst
            self.id: str = offer.task
            self.action: str = offer.action
            self.attempt: int = offer.attempt
            self.group: str = offer.group
            self.publisher: str = offer.publisher
            self.created_at: float = offer.created_at
            self.observe: bool = offer.observe
            self.previous_result: Any = offer.previous_result
            self._has_payload = offer.payload is not UNSET
            self._payload: Any = None if offer.payload is UNSET else offer.payload
        else:
            self.id = offer["task"]
            self.action = offer["action"]
            self.attempt = offer["attempt"]
            self.group = offer["group"]
            self.publisher = offer["publisher"]
            self.created_at = offer["created_at"]
            self.observe = bool(offer.get("observe"))
            self.previous_result = offer.get("previous_result")
            self._has_payload = "payload" in offer
            self._payload = offer.get("payload")
        self.last_update: Any = None
        self._updated = False  # an update arrived (its data may be None)
        self._final: str | None = None  # the final event that arrived: fail or end
        self.revoked: str | None = None  # why the hub took the task away, if it did
        self.succeeded = False  # another service returned a result
        self.dropped = False
        self.returned = False  # success() sent this delivery's result
        self.picked_up = False
        self.released = False  # handed back to the hub (the worker is stopping)
        # What runs the handler (set by the client, or by a worker's handler loop that
        # started it as it read the offer): revoking cancels it.
        self.runner: Runner | None = None

    async def pickup(self) -> None:
        """Tell the hub this worker is working on it (idempotent; the library does it)."""
        if self.picked_up or self.observe:
            return
        self.picked_up = True
        await self._step("pickup")

    start = pickup

    async def get_payload(self) -> Any:
        """The task's payload; a large one is fetched from the hub on first use."""
        if not self._has_payload:
            reply = await self._link.request({"op": "payload", "task": self.id})
            self._payload = reply.get("payload")
            self._has_payload = True
        return self._payload

    @property
    def payload(self) -> Any:
        """The payload once it is here: always for a small one, after :meth:`get_payload`
        for a large one (before, this raises: await :meth:`get_payload` instead)."""
        if not self._has_payload:
            raise RuntimeError(
                f"task {self.id} ({self.action}): the payload is large and not fetched yet; "
                "await task.get_payload()"
            )
        return self._payload

    async def update(self, data: Any) -> None:
        """Progress: relayed to the publisher and the other services holding the task."""
        await self._step("update", data=data)

    async def extend(self, duration: float | dt.timedelta | str) -> None:
        """Push the task's end timeout: it must now finish within ``duration`` (seconds, a
        ``timedelta`` or ``"10m"``) from now, or its earlier deadline if that is later.
        A task without an end timeout keeps none (docs/workers.md)."""
        seconds = parse_interval(duration, option="extend")
        await self._step("extend", seconds=seconds)

    async def success(self, result: Any = None) -> None:
        """Done, with ``result``: sent at once, as a returned value would be (the first
        result of any service completes the task). The handler's return value is then
        ignored, and an exception it raises afterwards is logged, not sent as a failure.

        At most once per delivery: a second call, or a call after :meth:`drop`, raises
        :class:`~taskhub.errors.NotHolding` and sends nothing. An observer cannot return a
        result (the hub refuses it with ``NotHolding``).
        """
        if self.returned or self.dropped:
            done = "success() was already called" if self.returned else "it was dropped"
            raise NotHolding(
                f"task {self.id} ({self.action}): {done} for this delivery (attempt "
                f"{self.attempt}); success() sends nothing more",
                task=self.id,
            )
        if not self.observe:
            self.returned = True  # before the await: a return racing it is not sent too
        try:
            await self._step("return", result=result)
        except UNSENDABLE:
            # Not sent (not JSON, or too large): the delivery has not returned, so the
            # handler's exception goes to the hub as a fail, not to the log.
            self.returned = False
            raise

    async def drop(self) -> None:
        """Done, without a result; the handler's return value is then ignored.

        Raises :class:`~taskhub.errors.NotHolding` after :meth:`success` (the delivery
        already returned its result).
        """
        if self.returned:
            raise NotHolding(
                f"task {self.id} ({self.action}): success() was already called for this "
                f"delivery (attempt {self.attempt}); drop() sends nothing more",
                task=self.id,
            )
        self.dropped = True
        if not self.observe:
            await self._step("drop")

    def return_from_thread(self, result: Any) -> bool:
        """From a thread other than the connection's (a worker's handler loop or pool, as the
        handler returns): send ``result`` at once, so that the hub has it without waiting
        for the connection's loop to wake (docs/performance.md). The handler's return is
        then not sent again. False if it cannot go so (the delivery already ended, frames
        wait to be written, TLS, not JSON): the connection's loop sends it as usual."""
        if self.returned or self.dropped or self.observe or self.revoked or self.released:
            return False
        self.returned = True  # before the write: the loop, woken later, sends nothing more
        if self._link.send_now(_return(self, result)):
            return True
        self.returned = False
        return False

    @staticmethod
    def return_all_from_thread(items: list[tuple[TaskContext, Any]]) -> None:
        """:meth:`return_from_thread` for several deliveries of one connection in one frame
        (a worker's handler loop, for the handlers that ended in one turn). Those that
        cannot go so are left to the connection's loop, as there."""
        msgs: list[dict[str, Any] | bytes] = []
        taken: list[TaskContext] = []
        for ctx, result in items:
            if ctx.returned or ctx.dropped or ctx.observe or ctx.revoked or ctx.released:
                continue
            ctx.returned = True  # before the write: the loop, woken later, sends nothing more
            msgs.append(_return(ctx, result))
            taken.append(ctx)
        if taken and not taken[0]._link.send_all_now(msgs):
            for ctx in taken:
                ctx.returned = False

    async def _step(self, op: str, **fields: Any) -> None:
        attempt = 0 if self.observe else self.attempt
        await self._link.request({"op": op, "task": self.id, "attempt": attempt, **fields})

    # --- fed by the client (internal) -------------------------------------------------------
    def feed_event(self, kind: str, data: Any) -> None:
        """A task event (its ``type`` and ``data``) from another service."""
        if kind == "update":
            self.last_update = data
            self._updated = True
            self._emit("update")
        elif kind == "success":
            self.succeeded = True
            self._emit("success")
        elif kind in ("fail", "end"):
            self._final = kind
            self._emit(kind)

    def _happened(self, event: str) -> bool:
        if event == "update":
            return self._updated
        if event == "success":
            return self.succeeded
        if event == "revoke":
            return self.revoked is not None
        return event == self._final

    def feed_revoke(self, reason: str) -> None:
        self.revoked = reason
        self._emit("revoke")
        runner = self.runner  # read once: a worker's handler loop may clear it meanwhile
        if runner is not None and not runner.done():
            runner.cancel()


def _return(ctx: TaskContext, result: Any) -> dict[str, Any] | bytes:
    """The ``return`` of ``ctx`` as checked bytes (``encode_return``), or as a message if it
    cannot be sent (``send_now`` then sends nothing and says so)."""
    try:
        return encode_return(ctx.id, ctx.attempt, result)
    except UNSENDABLE:
        return {"op": "return", "task": ctx.id, "attempt": ctx.attempt, "result": result}


_FINAL = frozenset(("success", "fail", "end"))
# A task's states only move forward (docs/lifecycle.md): init, start, then one final state.
_RANK = {"init": 0, "start": 1, "success": 2, "fail": 2, "end": 2}


def _older(state: str, than: str) -> bool:
    """Whether ``state`` is older than ``than`` (an unknown state is taken as it comes)."""
    return _RANK.get(state, 3) < _RANK.get(than, -1)


# A handle's done callbacks: none, one (the common case), or a list of them.
_Callbacks = Callable[["Handle"], Any] | list[Callable[["Handle"], Any]] | None
# Futures made for waiting calls: none, one (the common case), or a list of them.
_Waiters = asyncio.Future[Any] | list[asyncio.Future[Any]] | None


class Handle(_Emitter):
    """A published task: its id once accepted, its events, and its result.

    Cheap to hold by the thousand: a handle refers to nothing that refers back to it (it is
    freed by reference counting once its task has ended and you drop it), and a future is
    made only for a call that actually has to wait, one per waiting call, so cancelling that
    call (a time-out, a cancelled task) never touches the handle itself.
    """

    __slots__ = (
        "__dict__",  # made only if an application sets attributes of its own
        "__weakref__",
        "_accept_waiters",
        "_done_callbacks",
        "_end_waiters",
        "_ended",
        "_link",
        "_refused",
        "_updated",
        "action",
        "error",
        "id",
        "last_update",
        "pooled",
        "result",
        "state",
    )

    def __init__(self, link: Link, action: str) -> None:
        self._listeners = None  # _Emitter's, set here to spare a call per handle
        self._background = None
        self._link = link
        self.action = action
        self.id: str | None = None
        self.state = "init"
        self.last_update: Any = None
        self._updated = False  # an update arrived (its data may be None)
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        # The hub pooled it: no worker group subscribed to the action when it was published.
        self.pooled = False
        self._refused: BaseException | None = None  # the hub refused it, or its answer was lost
        self._ended = False  # a final event (or snapshot) arrived
        self._accept_waiters: _Waiters = None  # woken with the task id
        self._end_waiters: _Waiters = None  # woken with the result, or raise the failure
        # One callback as it is (the common case: no list per handle for the collector to
        # track while a burst's handles are held), several in a list.
        self._done_callbacks: _Callbacks = None

    async def accepted(self) -> str:
        """The task id, once the hub has stored the task."""
        if self.id is not None:
            return self.id
        if self._refused is not None:
            raise self._refusal()
        fut: asyncio.Future[str] = self._link.future()
        self._accept_waiters = _add(self._accept_waiters, fut)
        return await fut

    async def get_result(self, default: Any = _MISSING, *, timeout: float | None = None) -> Any:
        """The result. Raises :class:`TaskFailed`, :class:`TaskTimeout`, :class:`NoResult`,
        or returns ``default`` instead when one is given."""
        try:
            if self._ended or self._refused is not None:
                return self.outcome()
            if timeout is None:
                # One wait: a refused or lost task raises the refusal into it, and the task
                # only ends after it was accepted.
                return await self._wait_end()
            if self.id is None:
                await self.accepted()  # the time-out counts from acceptance
                if self._ended:  # it may have ended in the answer's very frame
                    return self.outcome()
            return await asyncio.wait_for(self._wait_end(), timeout)
        except (TaskHubError, TimeoutError):
            if default is not _MISSING:
                return default
            raise

    def __await__(self) -> Generator[Any, None, Any]:
        """``await handle``: as ``await handle.get_result()``, with one object less per wait."""
        if self._ended or self._refused is not None:
            return self.get_result().__await__()
        return self._wait_end().__await__()

    def add_done_callback(self, fn: Callable[[Handle], Any]) -> None:
        """Call ``fn(handle)`` once the handle is :attr:`done`: the task ended, or the hub
        refused it, or the connection was lost before the hub confirmed it. Then
        :meth:`outcome` returns the result or raises why there is none. Called in the loop
        turn that made the handle done (in a later one if it already is), like
        :meth:`asyncio.Future.add_done_callback`. Collecting thousands of results this way
        costs no task or coroutine per handle, as ``asyncio.gather(*handles)`` does."""
        callbacks = self._done_callbacks
        if self.done:
            self._link.call_soon(fn, self)
        elif callbacks is None:
            self._done_callbacks = fn
        elif type(callbacks) is list:
            callbacks.append(fn)
        else:
            self._done_callbacks = [callbacks, fn]  # type: ignore[list-item]

    def outcome(self) -> Any:
        """The result of a :attr:`done` handle, or raise why there is none (as
        :meth:`get_result` would). Raises :class:`asyncio.InvalidStateError` before."""
        if self._refused is not None:
            raise self._refusal()
        if not self._ended:
            raise asyncio.InvalidStateError(f"the {self.action} task has not ended yet")
        if self.state == "success":
            return self.result
        raise self.exception()

    def exception(self) -> TaskHubError:
        if self.state == "end":
            return NoResult(f"task {self.id} ({self.action}) ended without a result")
        err = self.error or {}
        reason = str(err.get("reason", "error"))
        message = str(err.get("message", "")) or reason
        cls: type[TaskFailed] = TaskFailed
        if reason in ("timeout", "start_timeout"):
            cls = TaskTimeout
        elif reason == "cancelled":
            cls = TaskCancelled
        etype = str(err.get("type", ""))
        text = f"task {self.id} ({self.action}) failed: " + (
            f"{etype}: {message}" if etype else message
        )
        return cls(text, reason=reason, error_type=etype, task_id=self.id or "")

    async def cancel(self) -> None:
        task_id = await self.accepted()
        await self._link.request({"op": "cancel", "task": task_id})

    @property
    def done(self) -> bool:
        return self._ended or self._refused is not None

    def _wait_end(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._link.future()
        self._end_waiters = _add(self._end_waiters, fut)
        return fut

    def _refusal(self) -> BaseException:
        """A fresh copy of the refusal to raise: the stored one, once raised, would hold a
        traceback whose frames hold this handle (a reference cycle only the collector frees)."""
        exc = self._refused
        assert exc is not None
        try:
            fresh: BaseException = copy.copy(exc)
        except Exception:
            return exc.with_traceback(None)
        return fresh

    # --- fed by the client and its connection (internal) -------------------------------------
    def feed_answer(self, reply: dict[str, Any]) -> None:
        """The hub's answer to the ``pub`` (``ok`` or ``error``), read before the rest of its
        frame: the task's first events may follow in the same frame."""
        if reply["op"] != "ok":
            self.feed_lost(from_wire(reply))
            return
        self.feed_accepted(reply["task"], reply.get("created"), bool(reply.get("pooled")))

    def feed_accepted(self, task_id: str, created: bool | None, pooled: bool) -> None:
        """The hub stored the task (an ``ok``'s ``task``, ``created`` and ``pooled``)."""
        self.id = task_id
        if self._accept_waiters is not None:
            self._accept(task_id)
        if pooled:
            self.pooled = True
        link = self._link
        # Link.accepted's common case without its call: a new task (created), not pooled,
        # the first handle of its id. Anything else is Link.accepted's (its setdefault then
        # finds this handle, or the other one, as here).
        if self.pooled or link.handles.setdefault(task_id, self) is not self or created is False:
            link.accepted(self, task_id, created)

    def feed_unanswered(self, exc: BaseException) -> None:
        """The ``pub`` will get no answer: the connection dropped, the client was closed, or
        the message could not be sent."""
        if isinstance(exc, ConnectionClosed):
            exc = ConnectionClosed(
                f"{exc} before the hub confirmed the {self.action} task; it may or may not "
                "have been accepted (publish with key= to retry safely)"
            )
        self.feed_lost(exc)

    def _accept(self, task_id: str) -> None:
        self.id = task_id
        waiters, self._accept_waiters = self._accept_waiters, None
        for fut in _waiting(waiters):
            fut.set_result(task_id)

    def feed_lost(self, exc: BaseException) -> None:
        """No result will come: the hub refused the task, its answer was lost, or the
        client was closed."""
        if self._refused is not None or self._ended:
            return
        self._refused = exc
        waiters = (self._accept_waiters, self._end_waiters)
        self._accept_waiters = self._end_waiters = None
        for some in waiters:
            for fut in _waiting(some):
                fut.set_exception(self._refusal())
        self._call_done()

    def feed_event(self, kind: str, state: str | None, data: Any) -> None:
        """A task event: its ``type``, ``state`` (None: not said) and ``data``."""
        if self._ended:  # a task ends once: what comes after (a duplicate) changes nothing
            return
        # _older's test without its call (per task): sent before what the handle saw (a
        # late follow), or not said, the handle keeps its state.
        if state is None or _RANK.get(state, 3) < _RANK.get(self.state, -1):
            state = self.state
        self.state = state
        if kind == "success":
            self.result = data
        elif kind == "update":
            self.last_update = data
            self._updated = True
        elif kind == "fail":
            self.error = data
        if self._listeners is not None:
            self._emit(kind)
        if state in _FINAL:
            self._finish()

    def feed_started(self) -> None:
        """The task started: its ``start`` event, read from a ``starts`` message."""
        self.state = "start"
        if self._listeners is not None:
            self._emit("start")

    def _happened(self, event: str) -> bool:
        if event == "update":
            return self._updated
        return event in _FINAL and event == self.state

    def feed_snapshot(self, view: dict[str, Any]) -> None:
        """A task as the hub has it (after a reconnect): catch up with what was missed. One
        that ended already keeps its end: a ``follow`` answered late (read from the store
        before the task ended there, or sent before a reconnect) would otherwise overwrite
        ``success`` with an older state, and :meth:`outcome` would raise "failed: error"; a
        running one does not go back to ``init`` either."""
        if self._ended:
            return
        if not _older(view["state"], self.state):  # read before events the handle has seen
            self.state = view["state"]
        if view.get("last_update") is not None:
            self.last_update = view["last_update"]
            self._updated = True
        self.result = view.get("result")
        self.error = view.get("error")
        if self.state in _FINAL:
            self._emit(self.state)
            self._finish()

    def _finish(self) -> None:
        self._ended = True
        waiters = self._end_waiters
        if waiters is not None:
            self._end_waiters = None
            for fut in _waiting(waiters):
                if self.state == "success":
                    fut.set_result(self.result)
                else:
                    fut.set_exception(self.exception())
        link, task_id = self._link, self.id or ""
        if not link.same_task and link.handles.get(task_id) is self:
            del link.handles[task_id]  # Link.ended's common case, without its call
        else:
            link.ended(self)
        callbacks = self._done_callbacks
        if callbacks is None:
            return
        self._done_callbacks = None
        if type(callbacks) is not list:  # one: _call_done's steps, without a call per task
            try:
                callbacks(self)  # type: ignore[operator]
            except Exception:
                log.exception("a done callback of a %s task raised", self.action)
            return
        self._call_done(callbacks)

    def _call_done(self, callbacks: _Callbacks = None) -> None:
        if callbacks is None:
            callbacks, self._done_callbacks = self._done_callbacks, None
        if callbacks is None:
            return
        for fn in callbacks if isinstance(callbacks, list) else [callbacks]:
            try:
                fn(self)
            except Exception:
                log.exception("a done callback of a %s task raised", self.action)


def _waiting(waiters: _Waiters) -> list[asyncio.Future[Any]]:
    """The futures still waiting (a caller that gave up, by a time-out, is skipped)."""
    if waiters is None:
        return []
    if isinstance(waiters, list):
        return [fut for fut in waiters if not fut.done()]
    return [] if waiters.done() else [waiters]


def _add(waiters: _Waiters, fut: asyncio.Future[Any]) -> _Waiters:
    """``waiters`` with ``fut`` added; waiters that gave up (time-outs) are dropped."""
    if waiters is None:
        return fut
    if not isinstance(waiters, list):
        return fut if waiters.done() else [waiters, fut]
    if len(waiters) >= 8:
        waiters[:] = [f for f in waiters if not f.done()]
    waiters.append(fut)
    return waiters
