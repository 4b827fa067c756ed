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
        return {"sent": len(task.payload)}   # or: task.success(result)

    handle = client.pub("email:send", ["a@example.com"])
    print(handle.get_result(timeout=30))
```

Callbacks given to :meth:`Handle.on`, :meth:`Handle.add_done_callback` and :meth:`Task.on`
run in the client's loop thread: they must return quickly and must not call this client's
blocking methods (that would wait on the very loop it blocks; such a call raises
``RuntimeError`` instead of hanging).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import copy
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar, Unpack, overload

from taskhub.client import Client as AsyncClient
from taskhub.client import Handle as AsyncHandle
from taskhub.client import TaskContext
from taskhub.client.client import PubItem, Step
from taskhub.client.handler_task import BlockingTask
from taskhub.client.watch import Event
from taskhub.client.watch import Watch as AsyncWatch
from taskhub.errors import ConnectionClosed, TaskHubError
from taskhub.options_table import PubArgs, WorkerArgs

T = TypeVar("T")
SyncHandler = Callable[["Task"], Any]
H = TypeVar("H", bound=SyncHandler)
SyncEventHandler = Callable[[Any, str], Any]  # (data, topic)
_MISSING: Any = object()
# close() gives the blocking calls of other threads this long to see ConnectionClosed.
CLOSE_SETTLE = 2.0
WATCH_QUEUE = 1000  # events a sync watch holds for its reader before dropping the oldest

log = logging.getLogger("taskhub.sync")

# Clients of this process, told when it forks: in the child their loop thread does not exist.
_clients: weakref.WeakSet[Client] = weakref.WeakSet()
# What a forked child's clients let go of: the parent's loop, connection and pools, copied
# without their threads. Kept, never closed or collected: closing them here would unregister
# the parent's sockets from the event-poll instance the two processes share.
_orphans: list[Any] = []


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Client", "Handle", "Task", "Watch"]


class _Loop:
    """An event loop running forever in a daemon thread; ``call`` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.calls: set[asyncio.Task[Any]] = set()  # blocking calls running on the loop
        self.stopped = False
        self._lock = threading.Lock()
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
        with self._lock:  # nothing is handed to the loop once stop() began
            if self.stopped:
                coro.close()
                raise ConnectionClosed("the client is closed")
            future = asyncio.run_coroutine_threadsafe(self._tracked(coro), self.loop)
        return future.result()

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro``, known to :meth:`settle` while it runs."""
        task = asyncio.current_task()
        assert task is not None
        self.calls.add(task)
        try:
            return await coro
        finally:
            self.calls.discard(task)

    async def settle(self, timeout: float) -> None:
        """Let the blocking calls of other threads finish (a closed client has just failed
        what they wait for), so that none is left waiting on a stopped loop."""
        others = self.calls - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True

        async def finish() -> None:
            # Every call handed over before is a task by now (they were scheduled first):
            # let them end, so no thread is left waiting on a stopped loop.
            await self.settle(CLOSE_SETTLE)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(finish(), self.loop)
        self.thread.join(10 + CLOSE_SETTLE)
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
        self._topic_pools: dict[str, list[concurrent.futures.ThreadPoolExecutor]] = {}
        self._watches: set[Watch] = set()
        self._reconnect = False  # forked: connect again on first use (in the child)
        self._closed = False  # close() was called (a later call raises ConnectionClosed)

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
        _clients.add(self)
        self._closed = False
        return self

    def _forked(self) -> None:
        """In a child after ``fork()``: the loop thread was not copied. Forget the parent's
        connection (without closing it: it is the parent's) and connect on first use.
        Subscriptions, watches and event handlers stay with the parent."""
        if self._runner is None:
            return
        _orphans.append((self._runner, self._client, self._pools, self._topic_pools))
        self._runner = self._client = None
        self._pools = []
        self._topic_pools = {}
        self._watches = set()
        self._reconnect = True

    def close(self) -> None:
        """Disconnect; running handlers are cancelled (their threads finish on their own).
        Everything other threads wait for ends with ``ConnectionClosed``: ``get_result`` of a
        task not yet ended, a watch's iteration (after the events already queued)."""
        runner, client = self._runner, self._client
        self._runner = self._client = None
        if runner is None or client is None:
            return
        self._closed = True
        try:
            runner.call(client.close())  # fails what other threads wait for: ConnectionClosed
        finally:
            runner.stop()
            for pool in self._pools:
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools.clear()
            self._topic_pools.clear()
            for w in list(self._watches):
                # a reader blocked in next() gets ConnectionClosed after the queued events
                w._end(ConnectionClosed(f"the client was closed while watching {w.pattern!r}"))
            self._watches.clear()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None and self._reconnect:
            self._reconnect = False
            self.connect()  # a forked child's first use
        runner = self._runner
        if runner is None:
            coro.close()
            if self._closed:
                raise ConnectionClosed("the client is closed")
            raise RuntimeError("the client is not connected: use `with Client(...)` or connect()")
        return runner.call(coro)

    def _async(self) -> AsyncClient:
        if self._client is None and self._reconnect:
            self._reconnect = False
            self.connect()  # a forked child's first use
        if self._client is None:
            raise RuntimeError("the client is not connected: use `with Client(...)` or connect()")
        return self._client

    # --- publishing and reading --------------------------------------------------------------
    def pub(self, action: str, payload: Any = None, **options: Unpack[PubArgs]) -> Handle:
        """Publish a task; returns once the hub has stored it (so ``.id`` is set and a refusal
        such as ``PermissionDenied`` raises here). The options are the async ``pub``'s; a
        misspelt one is a TypeError (and a type-check error).
        """
        client = self._async()
        return self._accepted(lambda: client.pub(action, payload, **options))

    def pub_many(self, items: Iterable[PubItem]) -> list[Handle]:
        """Publish a list of tasks (as the async ``pub_many``: ``(action, payload)`` or
        ``(action, payload, options)`` items, all checked before any is sent); returns once
        the hub has answered every one, their handles in order. A task the hub refused
        (``PermissionDenied``, say) does not raise here: its handle's ``id`` is empty and
        its ``get_result()`` raises the refusal; the others are published."""
        client = self._async()
        caller = contextvars.copy_context()

        async def answered() -> list[AsyncHandle]:
            handles = caller.run(client.pub_many, items)
            for handle in handles:
                with contextlib.suppress(TaskHubError):  # refused: its handle says so
                    await handle.accepted()
            return handles

        return [Handle(self, handle) for handle in self._call(answered())]

    def chain(self, steps: Sequence[Step], *, merge_input: bool = False) -> Handle:
        """Run ``steps`` (``(action, payload[, options])``) one after another, as the async
        ``chain``; the result is the last step's. Returns once the hub has stored it."""
        client = self._async()
        return self._accepted(lambda: client.chain(steps, merge_input=merge_input))

    def group(self, steps: Sequence[Step]) -> Handle:
        """Run ``steps`` at once, as the async ``group``; the result is the list of theirs."""
        client = self._async()
        return self._accepted(lambda: client.group(steps))

    def _accepted(self, publish: Callable[[], AsyncHandle]) -> Handle:
        # The caller's context variables (its current OpenTelemetry span, the parent of the
        # publish span) go with the call to the loop thread, which has its own.
        caller = contextvars.copy_context()

        async def accepted() -> AsyncHandle:
            handle = caller.run(publish)  # on the loop: the async handle binds futures to it
            await handle.accepted()
            return handle

        return Handle(self, self._call(accepted()))

    def get(self, task_id: str) -> dict[str, Any]:
        """The task as the hub has it (state, result, error, deliveries, ...)."""
        return self._call(self._async().get(task_id))

    def cancel(self, task_id: str) -> None:
        self._call(self._async().cancel(task_id))

    def emit(self, topic: str, data: Any = None) -> int:
        """Broadcast an event; returns how many connections it was sent to."""
        return self._call(self._async().emit(topic, data))

    def payload(self, task_id: str) -> Any:
        """A task's payload (``get`` leaves it out)."""
        return self._call(self._async().payload(task_id))

    # --- schedules, queues, dead letters -----------------------------------------------------
    def schedule(
        self,
        name: str,
        cron: str,
        action: str,
        payload: Any = None,
        *,
        timezone: str = "UTC",
        **options: Unpack[PubArgs],
    ) -> dict[str, Any]:
        """Create or replace the schedule ``name`` (as the async ``schedule``); returns it,
        with ``next_at``."""
        client = self._async()
        return self._call(
            client.schedule(name, cron, action, payload, timezone=timezone, **options)
        )

    def schedules(self) -> list[dict[str, Any]]:
        return self._call(self._async().schedules())

    def unschedule(self, name: str) -> None:
        self._call(self._async().unschedule(name))

    def queues(self) -> list[dict[str, Any]]:
        """Every group queue: action, group, durable, workers, waiting, in_flight."""
        return self._call(self._async().queues())

    def purge(self, action: str, group: str, *, forget: bool = False) -> int:
        """Fail the group's waiting deliveries; ``forget`` also drops a durable queue.
        Returns how many were purged."""
        return self._call(self._async().purge(action, group, forget=forget))

    def dead_letters(self, action: str | None = None) -> list[dict[str, Any]]:
        """The dead-letter list (without payloads), oldest first."""
        return self._call(self._async().dead_letters(action))

    def dead_letter(self, task_id: str) -> dict[str, Any]:
        """One dead letter, with its payload."""
        return self._call(self._async().dead_letter(task_id))

    def requeue(self, task_id: str) -> str:
        """Publish a fresh copy of a dead letter; returns the new task's id."""
        return self._call(self._async().requeue(task_id))

    # --- broadcast events and watching -------------------------------------------------------
    def subscribe(self, topic: str, handler: SyncEventHandler) -> None:
        """Call ``handler(data, topic)`` for every event on ``topic`` (``*``/``>`` patterns),
        in a thread of its own, in order. Returns once the hub has accepted (raises e.g.
        ``PermissionDenied``). A handler's exception is logged."""
        client = self._async()
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"taskhub-event-{topic}"
        )

        def relay(data: Any, event_topic: str) -> None:  # in the loop thread: hand it over
            try:
                future = pool.submit(handler, data, event_topic)
            except RuntimeError:
                return  # unsubscribed while the event was on its way
            future.add_done_callback(functools.partial(_log_event_failure, event_topic))

        try:
            self._call(client.subscribe(topic, relay))
        except BaseException:
            pool.shutdown(wait=False)
            raise
        self._pools.append(pool)
        self._topic_pools.setdefault(topic, []).append(pool)

    def unsubscribe(self, topic: str) -> None:
        """Stop every handler of ``topic`` (the string given to :meth:`subscribe`); events
        already handed to a handler's thread still run."""
        self._call(self._async().unsubscribe(topic))
        for pool in self._topic_pools.pop(topic, []):
            pool.shutdown(wait=False)
            self._pools.remove(pool)

    def watch(self, pattern: str, *, maxsize: int = WATCH_QUEUE) -> Watch:
        """Every task event of the actions matching ``pattern``, as a blocking iterator;
        returns once the hub has accepted the watch (raises e.g. ``PermissionDenied``).

        ``with client.watch("email:*") as events: for event in events: ...``; leaving the
        block (or :meth:`Watch.close`) unwatches. At most ``maxsize`` events wait for the
        reader: past that the oldest are dropped (counted in ``Watch.dropped``).
        """
        client = self._async()
        sync_watch = Watch(self, pattern, maxsize)

        async def start() -> AsyncWatch:
            w = client.watch(pattern)  # on the loop: the watch binds its queue to it
            try:
                await w.started()
            except BaseException:
                await w.aclose()
                raise
            pump = asyncio.ensure_future(_pump(w, sync_watch))
            sync_watch._pump = pump  # referenced: a bare task may be garbage-collected
            return w

        sync_watch._watch = self._call(start())
        self._watches.add(sync_watch)
        return sync_watch

    # --- working -----------------------------------------------------------------------------
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
    ) -> Callable[[H], H]: ...

    @overload
    def sub(
        self,
        action: str,
        handler: H,
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
        **defaults: Unpack[WorkerArgs],
    ) -> H: ...

    def sub(
        self,
        action: str,
        handler: H | None = None,
        *,
        group: str | None = None,
        concurrency: int = 1,
        observe: bool = False,
        durable: bool = False,
        **defaults: Unpack[WorkerArgs],
    ) -> H | Callable[[H], H]:
        """Work on tasks of ``action`` with a plain function: ``client.sub(action, fn)`` or
        ``@client.sub(action)``. The function gets a :class:`Task` and runs in a thread pool
        of ``concurrency`` threads; its return value is the result (or ``task.success(result)``
        sends it earlier, and the return value is then ignored), an exception fails the
        delivery. Returns once the hub has accepted the subscription (raises if refused).

        ``timeout``, ``retries``, ``max_attempts``, ``backoff`` and ``backoff_max`` are this
        worker's defaults, as in the async ``sub`` (docs/workers.md).

        A function cannot be interrupted: when the hub takes the task away (cancelled, timed
        out) ``task.revoked`` says why and its eventual return is ignored; check it in long
        loops.
        """
        client = self._async()
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")

        def register(fn: H) -> H:
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix=f"taskhub-{action}"
            )
            self._pools.append(pool)
            run = _in_threads(self, pool, fn)

            async def subscribe() -> None:
                await client.sub(
                    action,
                    run,
                    group=group,
                    concurrency=concurrency,
                    observe=observe,
                    durable=durable,
                    **defaults,
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

    @property
    def pooled(self) -> bool:
        """No worker group subscribed to the action when the hub stored the task: it waits
        until one does (the client logs a warning once per action)."""
        return self._handle.pooled

    def get_result(self, default: Any = _MISSING, *, timeout: float | None = None) -> Any:
        """Block for the result. Raises ``TaskFailed``, ``TaskTimeout``, ``TaskCancelled``,
        ``NoResult`` (or returns ``default`` when given); ``TimeoutError`` after ``timeout``
        seconds unless ``default`` is given."""
        h = self._handle
        if h.done:  # answered here, without the loop: also once the client is closed
            try:
                return h.outcome()
            except TaskHubError:
                if default is _MISSING:
                    raise
                return default
        if default is _MISSING:
            return self._client._call(h.get_result(timeout=timeout))
        return self._client._call(h.get_result(default, timeout=timeout))

    def on(self, event: str, callback: Callable[[Handle], Any]) -> Handle:
        """Call ``callback(handle)`` on ``event`` (``update``, ``success``, ``fail``, ...).

        :meth:`Client.pub` returns once the task is stored, so updates may arrive before this
        call: a listener added late is called at once for what already happened (``update``
        once, with the latest in ``last_update``; a final event if it is the one that
        happened), then for every later event. The callback runs in the client's loop
        thread: keep it short and non-blocking.
        """
        relay = functools.partial(_relay, callback, self)
        self._on_loop(lambda: self._handle.on(event, relay))
        return self

    def add_done_callback(self, fn: Callable[[Handle], Any]) -> None:
        """Call ``fn(handle)`` once the handle is :attr:`done` (the task ended, the hub refused
        it, or the connection was lost before the hub confirmed it); :meth:`outcome` then
        gives the result or raises why there is none. As with :meth:`on`, ``fn`` runs in the
        client's loop thread: keep it short, and hand slow work to a queue or a pool. Many
        results are collected this way without a blocked thread per handle."""
        relay = functools.partial(_relay, fn, self)
        self._on_loop(lambda: self._handle.add_done_callback(relay))

    def outcome(self) -> Any:
        """The result of a :attr:`done` handle, or raise why there is none (as
        :meth:`get_result` would); never blocks. Raises :class:`asyncio.InvalidStateError`
        before the handle is done."""
        return self._handle.outcome()

    def _on_loop(self, register: Callable[[], None]) -> None:
        """Run ``register`` on the client's loop thread, where the async handle lives, and
        return once it ran."""
        runner = self._client._runner
        if runner is None:
            raise RuntimeError("the client is not connected")
        if threading.current_thread() is runner.thread:
            register()
            return
        ran: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                register()
            except BaseException as exc:  # raised again in the caller's thread
                ran.set_exception(exc)
            else:
                ran.set_result(None)

        runner.loop.call_soon_threadsafe(call)
        ran.result()

    def cancel(self) -> None:
        self._client._call(self._handle.cancel())


class Task(BlockingTask):
    """What a sync handler gets: the task's fields and blocking versions of its steps
    (``update``, ``extend``, ``success``, ``drop``, ``pickup``); ``on`` callbacks run in the
    client's loop thread (keep them short)."""

    def __init__(self, client: Client, ctx: TaskContext) -> None:
        super().__init__(ctx, functools.partial(_loop_of, client), client._call)


def _loop_of(client: Client) -> asyncio.AbstractEventLoop:
    runner = client._runner
    if runner is None:
        raise RuntimeError("the client is not connected")
    return runner.loop


class Watch:
    """What :meth:`Client.watch` returns: a blocking iterator of event dicts (``task``,
    ``action``, ``type``, ``state``, ``at``, and when set ``data``, ``group``, ``service``) and
    a context manager that unwatches on exit. Live only, as the async watch."""

    def __init__(self, client: Client, pattern: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._client = client
        self.pattern = pattern
        self.dropped = 0  # events dropped because the reader fell ``maxsize`` behind
        self._maxsize = maxsize
        self._events: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False  # no event comes after the ones queued
        self._error: BaseException | None = None  # raised after them (the client closed)
        self._watch: AsyncWatch | None = None
        self._pump: asyncio.Future[None] | None = None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Event:
        return self.get()

    def get(self, timeout: float | None = None) -> Event:
        """The next event; ``TimeoutError`` after ``timeout`` seconds, ``StopIteration`` once
        the watch is closed and the events queued before that are read."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._events or self._closed, timeout):
                raise TimeoutError(f"no event of {self.pattern!r} within {timeout}s")
            if self._events:
                return self._events.popleft()
            if self._error is not None:
                raise copy.copy(self._error)
            raise StopIteration

    def close(self) -> None:
        """Stop watching (idempotent); a reader gets the events already queued, then the end."""
        w, self._watch = self._watch, None
        self._client._watches.discard(self)
        if w is None:
            return
        if self._client._runner is not None:
            self._client._call(w.aclose())  # the pump then ends the queue
        else:
            self._end()

    def _put(self, event: Event) -> None:
        with self._cond:
            if len(self._events) >= self._maxsize:
                self._events.popleft()
                self.dropped += 1
            self._events.append(event)
            self._cond.notify()

    def _end(self, error: BaseException | None = None) -> None:
        with self._cond:
            if not self._closed:
                self._closed = True
                self._error = error
            self._cond.notify_all()


async def _pump(w: AsyncWatch, sync_watch: Watch) -> None:
    error: BaseException | None = None
    try:
        async for event in w:
            sync_watch._put(event)
    except ConnectionClosed as exc:
        error = exc
    finally:
        sync_watch._end(error)


def _in_threads(
    client: Client, pool: concurrent.futures.ThreadPoolExecutor, fn: SyncHandler
) -> Callable[[TaskContext], Coroutine[Any, Any, Any]]:
    """The async handler of a blocking ``sub``: ``fn`` called in ``pool`` with a :class:`Task`."""

    async def run(ctx: TaskContext) -> Any:
        loop = asyncio.get_running_loop()
        task = Task(client, ctx)
        await ctx.get_payload()  # fetched here, so task.payload never blocks
        # In the handler's context (its process span is current there), as
        # asyncio.to_thread does: spans the function starts are that span's children.
        call = contextvars.copy_context().run
        return await loop.run_in_executor(pool, call, fn, task)

    return run


def _log_event_failure(topic: str, future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the handler of event %s raised", topic, exc_info=future.exception())


def _relay(callback: Callable[[Any], Any], target: Any, _source: Any) -> Any:
    """Give the callback the sync object instead of the async one it was fired for."""
    return callback(target)
