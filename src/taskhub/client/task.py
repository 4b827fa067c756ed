"""What a handler gets (:class:`TaskContext`) and what a publisher holds (:class:`Handle`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskhub.errors import (
    ConnectionClosed,
    NoResult,
    TaskCancelled,
    TaskFailed,
    TaskHubError,
    TaskTimeout,
)

if TYPE_CHECKING:
    from taskhub.client.client import Client

log = logging.getLogger("taskhub.client")
_MISSING: Any = object()
_NO_TASKS: set[asyncio.Task[Any]] = set()  # stands for the empty set until on() is called


class _Emitter:
    def __init__(self) -> None:
        # Made on first use: most handles never get a callback, and a publisher may hold
        # many thousands of handles (fewer objects for the garbage collector to walk).
        self._listeners: dict[str, list[Callable[[Any], Any]]] | None = None
        self._background: set[asyncio.Task[Any]] = _NO_TASKS

    def on(self, event: str, callback: Callable[[Any], Any]) -> Any:
        """Call ``callback(self)`` on ``event``; returns ``self`` so calls chain."""
        if self._listeners is None:
            self._listeners = {}
            self._background = set()
        self._listeners.setdefault(event, []).append(callback)
        return self

    def _emit(self, event: str) -> None:
        if self._listeners is None:
            return
        for cb in self._listeners.get(event, ()):
            try:
                out = cb(self)
                if inspect.isawaitable(out):
                    t = asyncio.ensure_future(out)
                    self._background.add(t)
                    t.add_done_callback(self._background.discard)
            except Exception:
                log.exception("a %r callback raised", event)


class TaskContext(_Emitter):
    """One delivery of a task to this worker (or a copy for an observer)."""

    def __init__(self, client: Client, offer: dict[str, Any]) -> None:
        super().__init__()
        self._client = client
        self.id: str = offer["task"]
        self.action: str = offer["action"]
        self.attempt: int = offer["attempt"]
        self.group: str = offer["group"]
        self.publisher: str = offer["publisher"]
        self.created_at: float = offer["created_at"]
        self.observe: bool = bool(offer.get("observe"))
        self.previous_result: Any = offer.get("previous_result")
        self.last_update: Any = None
        self.revoked: str | None = None  # why the hub took the task away, if it did
        self.succeeded = False  # another service returned a result
        self.dropped = False
        self.picked_up = False
        self._has_payload = "payload" in offer
        self._payload: Any = offer.get("payload")
        self._runner: asyncio.Task[Any] | None = None

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
            reply = await self._client._conn.request({"op": "payload", "task": self.id})
            self._payload = reply.get("payload")
            self._has_payload = True
        return self._payload

    async def update(self, data: Any) -> None:
        """Progress: relayed to the publisher and the other services holding the task."""
        await self._step("update", data=data)

    async def drop(self) -> None:
        """Done, without a result; the handler's return value is then ignored."""
        self.dropped = True
        if not self.observe:
            await self._step("drop")

    async def _step(self, op: str, **fields: Any) -> None:
        attempt = 0 if self.observe else self.attempt
        await self._client._conn.request({"op": op, "task": self.id, "attempt": attempt, **fields})

    def _event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "update":
            self.last_update = msg.get("data")
            self._emit("update")
        elif kind == "success":
            self.succeeded = True
            self._emit("success")
        elif kind in ("fail", "end"):
            self._emit(kind)

    def _revoke(self, reason: str) -> None:
        self.revoked = reason
        self._emit("revoke")
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()


class Handle(_Emitter):
    """A published task: its id once accepted, its events, and its result."""

    def __init__(self, client: Client, action: str) -> None:
        super().__init__()
        self._client = client
        self.action = action
        self.id: str | None = None
        self.state = "init"
        self.last_update: Any = None
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self._accepted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._accepted.add_done_callback(_consume)
        self._done.add_done_callback(_consume)

    async def accepted(self) -> str:
        """The task id, once the hub has stored the task."""
        return await asyncio.shield(self._accepted)

    async def get_result(self, default: Any = _MISSING, *, timeout: float | None = None) -> Any:
        """The result. Raises :class:`TaskFailed`, :class:`TaskTimeout`, :class:`NoResult`,
        or returns ``default`` instead when one is given."""
        try:
            if timeout is None:
                # One wait: a refused or lost task fails `_done` with the same exception as
                # `_accepted`, and `_done` only ends after the task was accepted.
                await asyncio.shield(self._done)
            else:
                await self.accepted()
                await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except (TaskHubError, TimeoutError):
            if default is not _MISSING:
                return default
            raise
        if self.state == "success":
            return self.result
        if default is not _MISSING:
            return default
        raise self.exception()

    def __await__(self) -> Any:
        return self.get_result().__await__()

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
        await self._client._conn.request({"op": "cancel", "task": task_id})

    @property
    def done(self) -> bool:
        return self._done.done()

    def _accept(self, task_id: str) -> None:
        self.id = task_id
        if not self._accepted.done():
            self._accepted.set_result(task_id)

    def _refuse(self, exc: BaseException) -> None:
        if not self._accepted.done():
            self._accepted.set_exception(exc)
        if not self._done.done():
            self._done.set_exception(exc)

    def _event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type", "")
        self.state = msg.get("state", self.state)
        if kind == "update":
            self.last_update = msg.get("data")
        elif kind == "success":
            self.result = msg.get("data")
        elif kind == "fail":
            self.error = msg.get("data")
        self._emit(kind)
        if self.state in ("success", "fail", "end"):
            self._finish()

    def _snapshot(self, view: dict[str, Any]) -> None:
        """A task as the hub has it (after a reconnect): catch up with what was missed."""
        self.state = view["state"]
        if view.get("last_update") is not None:
            self.last_update = view["last_update"]
        self.result = view.get("result")
        self.error = view.get("error")
        if self.state in ("success", "fail", "end"):
            self._emit(self.state)
            self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        self._client._handles.pop(self.id or "", None)

    def _lost(self) -> None:
        if not self._accepted.done():
            self._refuse(
                ConnectionClosed(
                    f"the connection dropped before the hub confirmed the {self.action} task; it "
                    "may or may not have been accepted (publish with key= to retry safely)"
                )
            )


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: an unawaited handle must not log "never retrieved"
