"""What a handler running off the connection's event loop gets: the task's fields, and the
steps as blocking calls handed to that loop.

One definition for ``taskhub.worker``'s tasks (``Task``, ``SyncTask``) and the blocking
client's ``taskhub.sync.Task``: the fields are read from the delivery's
:class:`~taskhub.client.task.TaskContext`, which lives on the connection's loop; a step is a
coroutine of that context run there (``call``). Internal: applications get these objects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from taskhub.client.task import TaskContext

T = TypeVar("T")
# Runs a coroutine on the connection's loop from another thread and returns its result.
BlockingCall = Callable[[Coroutine[Any, Any, Any]], Any]


class TaskFields:
    """The fields every handler's task has; ``loop`` is the connection's (where the
    delivery's :class:`TaskContext` lives), or a function that returns it."""

    def __init__(
        self,
        ctx: TaskContext,
        loop: asyncio.AbstractEventLoop | Callable[[], asyncio.AbstractEventLoop],
    ) -> None:
        self._ctx = ctx
        self._loop = loop
        self.id = ctx.id
        self.action = ctx.action
        self.attempt = ctx.attempt
        self.group = ctx.group
        self.publisher = ctx.publisher
        self.created_at = ctx.created_at
        self.previous_result = ctx.previous_result
        self.payload: Any = ctx.payload  # fetched before the handler was called

    def get_payload(self) -> Any:
        return self.payload

    @property
    def revoked(self) -> str | None:
        """Why the hub took the task away (``cancelled``, ``timeout``, ``released``...), or
        None. A plain function cannot be interrupted: check it in long loops."""
        return self._ctx.revoked

    @property
    def last_update(self) -> Any:
        """The latest update of the task (from any service)."""
        return self._ctx.last_update

    def on(self, event: str, callback: Callable[[Any], Any]) -> Any:
        """Call ``callback(task)`` on ``update`` or ``success`` from other services, or on
        ``revoke``. It runs on the connection's thread: keep it short, never block."""
        loop = self._loop if isinstance(self._loop, asyncio.AbstractEventLoop) else self._loop()
        relay = functools.partial(_relay, callback, self)
        loop.call_soon_threadsafe(self._ctx.on, event, relay)
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.action} {self.id} attempt {self.attempt}>"


class BlockingTask(TaskFields):
    """A task whose steps block the calling thread until the hub has them (``call`` runs
    the step on the connection's loop and waits)."""

    def __init__(
        self,
        ctx: TaskContext,
        loop: asyncio.AbstractEventLoop | Callable[[], asyncio.AbstractEventLoop],
        call: BlockingCall,
    ) -> None:
        super().__init__(ctx, loop)
        self._call = call

    def update(self, data: Any) -> None:
        """Progress: blocks until the hub has stored and relayed it."""
        self._call(self._ctx.update(data))

    def extend(self, duration: float | dt.timedelta | str) -> None:
        """The task must now finish within ``duration`` from now (``"10m"``), or by its
        earlier deadline if later; blocks until the hub has it (docs/workers.md §6)."""
        self._call(self._ctx.extend(duration))

    def success(self, result: Any = None) -> None:
        """Done, with ``result``: blocks until the hub has it. The function's return value
        is then ignored, and an exception it raises afterwards is logged, not sent as a
        failure. At most once: a second call, or one after :meth:`drop`, raises
        ``NotHolding`` and sends nothing."""
        self._call(self._ctx.success(result))

    def drop(self) -> None:
        """Done without a result; the function's return value is then ignored (raises
        ``NotHolding`` after :meth:`success`)."""
        self._call(self._ctx.drop())

    def pickup(self) -> None:
        """Idempotent: the library picked the task up before calling the function."""
        self._call(self._ctx.pickup())

    start = pickup


def _relay(callback: Callable[[Any], Any], target: Any, _source: Any) -> Any:
    """Give the callback the handler's task instead of the context it was fired for."""
    return callback(target)
