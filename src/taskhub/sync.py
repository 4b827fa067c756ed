"""A synchronous facade over the async :class:`taskhub.Client`, for code without an event loop.

The async client runs on a private event loop in one background thread; each call here hands a
coroutine to that loop and blocks until it is done. Handlers are plain functions run in a
thread pool, one pool per subscription sized to its ``concurrency``, so blocking code
(``time.sleep``, a database driver, ``requests``) works and one slow action cannot starve
another.

```python
from taskhub.sync import Client

with Client("ws://127.0.0.1:8080", name="emailer", key="...") as client:
    @client.sub("email:send", concurrency=4)
    def send(task):                 # runs in a worker thread
        task.update({"sent": 0})    # blocks until the hub has it
        return {"sent": len(task.payload)}

    handle = client.pub("email:send", ["a@example.com"])
    print(handle.get_result(timeout=30))
```

Callbacks given to :meth:`Handle.on` and :meth:`Task.on` run in the client's loop thread: they
must return quickly and must not call this client's blocking methods (that would wait on the
very loop it blocks; such a call raises ``RuntimeError`` instead of hanging).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from taskhub.client import Client as AsyncClient
from taskhub.client import Handle as AsyncHandle
from taskhub.client import TaskContext

T = TypeVar("T")
SyncHandler = Callable[["Task"], Any]
_MISSING: Any = object()

__all__ = ["Client", "Handle", "Task"]


class _Loop:
    """An event loop running forever in a daemon thread; ``call`` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="taskhub-sync-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a blocking taskhub.sync call from the client's own loop thread (an .on() "
                "callback?) would wait forever; do it from another thread"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class Client:
    """A blocking client for service ``name``; use it as a context manager, or call
    :meth:`connect` and :meth:`close`. ``**options`` go to the async client: ``max_backoff``,
    ``connect_timeout``, ``ping_interval``, ``ssl`` (an :class:`ssl.SSLContext` for wss://).

    Thread-safe: any thread may publish or read while handlers run in theirs.
    """

    def __init__(
        self,
        url: str | list[str] = "ws://127.0.0.1:8080",
        *,
        name: str = "anonymous",
        key: str = "",
        **options: Any,
    ) -> None:
        self.url = url
        self.name = name
        self._key = key
        self._options = options
        self._runner: _Loop | None = None
        self._client: AsyncClient | None = None
        self._pools: list[concurrent.futures.ThreadPoolExecutor] = []

    # --- life --------------------------------------------------------------------------------
    def connect(self) -> Client:
        """Connect (raising what went wrong, e.g. ``AuthenticationFailed``)."""
        if self._runner is not None:
            return self
        runner = _Loop()

        async def open_client() -> AsyncClient:
            # Created on its loop: the async client binds futures to the running loop.
            client = AsyncClient(self.url, name=self.name, key=self._key, **self._options)
            await client.connect()
            return client

        try:
            self._client = runner.call(open_client())
        except BaseException:
            runner.stop()
            raise
        self._runner = runner
        return self

    def close(self) -> None:
        """Disconnect; running handlers are cancelled (their threads finish on their own)."""
        runner, client = self._runner, self._client
        self._runner = self._client = None
        if runner is None or client is None:
            return
        try:
            runner.call(client.close())
        finally:
            runner.stop()
            for pool in self._pools:
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools.clear()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            coro.close()
            raise RuntimeError("the client is not connected: use `with Client(...)` or connect()")
        return self._runner.call(coro)

    def _async(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the client is not connected: use `with Client(...)` or connect()")
        return self._client

    # --- publishing and reading --------------------------------------------------------------
    def pub(self, action: str, payload: Any = None, **options: Any) -> Handle:
        """Publish a task; returns once the hub has stored it (so ``.id`` is set and a refusal
        such as ``PermissionDenied`` raises here). ``**options`` as in the async ``pub``:
        ``timeout``, ``start_timeout``, ``delay``, ``at``, ``priority``, ``key``, ``retries``,
        ``max_attempts``, ``once_every``, ...
        """
        client = self._async()

        async def publish() -> AsyncHandle:
            handle = client.pub(action, payload, **options)
            await handle.accepted()
            return handle

        return Handle(self, self._call(publish()))

    def get(self, task_id: str) -> dict[str, Any]:
        """The task as the hub has it (state, result, error, deliveries, ...)."""
        return self._call(self._async().get(task_id))

    def cancel(self, task_id: str) -> None:
        self._call(self._async().cancel(task_id))

    def emit(self, topic: str, data: Any = None) -> int:
        """Broadcast an event; returns how many connections it was sent to."""
        return self._call(self._async().emit(topic, data))

    # --- working -----------------------------------------------------------------------------
    def sub(
        self,
        action: str,
        handler: SyncHandler | None = None,
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
    ) -> Any:
        """Work on tasks of ``action`` with a plain function: ``client.sub(action, fn)`` or
        ``@client.sub(action)``. The function gets a :class:`Task` and runs in a thread pool
        of ``concurrency`` threads; its return value is the result, an exception fails the
        delivery. Returns once the hub has accepted the subscription (raises if refused).

        A function cannot be interrupted: when the hub takes the task away (cancelled, timed
        out) ``task.revoked`` says why and its eventual return is ignored; check it in long
        loops.
        """
        client = self._async()
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")

        def register(fn: SyncHandler) -> SyncHandler:
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix=f"taskhub-{action}"
            )
            self._pools.append(pool)

            async def run(ctx: TaskContext) -> Any:
                loop = asyncio.get_running_loop()
                task = Task(self, ctx)
                await ctx.get_payload()  # fetched here, so task.payload never blocks
                return await loop.run_in_executor(pool, fn, task)

            async def subscribe() -> None:
                await client.sub(
                    action,
                    run,
                    group=group,
                    concurrency=concurrency,
                    observe=observe,
                    durable=durable,
                )

            try:
                self._call(subscribe())
            except BaseException:
                pool.shutdown(wait=False)
                self._pools.remove(pool)
                raise
            return fn

        return register if handler is None else register(handler)

    def unsub(self, action: str) -> None:
        self._call(self._async().unsub(action))


class Handle:
    """A published task, seen from blocking code."""

    def __init__(self, client: Client, handle: AsyncHandle) -> None:
        self._client = client
        self._handle = handle
        self.id: str = handle.id or ""
        self.action = handle.action

    @property
    def state(self) -> str:
        return self._handle.state

    @property
    def last_update(self) -> Any:
        return self._handle.last_update

    @property
    def done(self) -> bool:
        return self._handle.done

    def get_result(self, default: Any = _MISSING, *, timeout: float | None = None) -> Any:
        """Block for the result. Raises ``TaskFailed``, ``TaskTimeout``, ``TaskCancelled``,
        ``NoResult`` (or returns ``default`` when given); ``TimeoutError`` after ``timeout``
        seconds unless ``default`` is given."""
        h = self._handle
        if default is _MISSING:
            return self._client._call(h.get_result(timeout=timeout))
        return self._client._call(h.get_result(default, timeout=timeout))

    def on(self, event: str, callback: Callable[[Handle], Any]) -> Handle:
        """Call ``callback(handle)`` on ``event`` (``update``, ``success``, ``fail``, ...).

        The callback runs in the client's loop thread: keep it short and non-blocking.
        """
        runner = self._client._runner
        if runner is None:
            raise RuntimeError("the client is not connected")
        relay = functools.partial(_relay, callback, self)
        if threading.current_thread() is runner.thread:
            self._handle.on(event, relay)
        else:
            # Registered on the loop thread, like every other touch of the async handle.
            done = threading.Event()

            def register() -> None:
                self._handle.on(event, relay)
                done.set()

            runner.loop.call_soon_threadsafe(register)
            done.wait()
        return self

    def cancel(self) -> None:
        self._client._call(self._handle.cancel())


class Task:
    """What a sync handler gets: the task's fields and blocking versions of its steps."""

    def __init__(self, client: Client, ctx: TaskContext) -> None:
        self._client = client
        self._ctx = ctx
        self.id = ctx.id
        self.action = ctx.action
        self.attempt = ctx.attempt
        self.group = ctx.group
        self.publisher = ctx.publisher
        self.created_at = ctx.created_at
        self.previous_result = ctx.previous_result

    @property
    def payload(self) -> Any:
        return self._ctx._payload  # fetched before the handler was called

    def get_payload(self) -> Any:
        return self.payload

    @property
    def revoked(self) -> str | None:
        """Why the hub took the task away (``cancelled``, ``timeout``, ...), or None."""
        return self._ctx.revoked

    @property
    def last_update(self) -> Any:
        return self._ctx.last_update

    def update(self, data: Any) -> None:
        """Progress: blocks until the hub has stored and relayed it."""
        self._client._call(self._ctx.update(data))

    def drop(self) -> None:
        """Done without a result; the function's return value is then ignored."""
        self._client._call(self._ctx.drop())

    def pickup(self) -> None:
        """Idempotent: the library picked the task up before calling the function."""
        self._client._call(self._ctx.pickup())

    start = pickup

    def on(self, event: str, callback: Callable[[Task], Any]) -> Task:
        """Call ``callback(task)`` on ``update`` or ``success`` from other services; runs in
        the client's loop thread (keep it short)."""
        runner = self._client._runner
        if runner is None:
            raise RuntimeError("the client is not connected")
        relay = functools.partial(_relay, callback, self)
        runner.loop.call_soon_threadsafe(self._ctx.on, event, relay)
        return self


def _relay(callback: Callable[[Any], Any], target: Any, _source: Any) -> Any:
    """Give the callback the sync object instead of the async one it was fired for."""
    return callback(target)
