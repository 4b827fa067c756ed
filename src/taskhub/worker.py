"""The worker runtime: tasks declared where they run, run by ``taskhub worker MODULE``.

```python
from taskhub import Worker, Retry, Reject
worker = Worker()            # url/name/key: arguments, else TASKHUB_URL/TASKHUB_NAME/TASKHUB_KEY

@worker.task("email:send", concurrency=8, retries=3, backoff="10s", timeout="5m")
async def send(task): ...    # raise Retry(delay="30s") / Reject("why")

@worker.task("img:resize")   # a plain def runs in a thread (or a process: pool="processes")
def resize(task): ...
```

Where code runs (docs/workers.md):

- **the connection thread**: an event loop holding the async :class:`~taskhub.Client` (the
  WebSocket, its keepalive, offers, results). No user code runs there, so a handler that
  blocks cannot lose the connection or delay another handler's result.
- **the handler thread**: an event loop where ``async def`` handlers run (and plain ones with
  ``pool="async"``). A handler that blocks it for more than a second is named in a warning.
- **thread pools** (``pool="threads"``, the default for plain ``def``; one per task declared,
  sized to its concurrency) or **one process pool** (``pool="processes"``, for CPU-bound work:
  the handler gets a :class:`ProcessTask` and its result is passed back by value).

Stopping (:meth:`Worker.stop`, SIGTERM or Ctrl-C under :meth:`Worker.run`): take nothing new,
let running handlers finish within the grace, hand back the rest (offered again elsewhere
without counting a try), flush, close.
"""

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
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Literal, TypeVar, Unpack

from taskhub.client import Client, TaskContext
from taskhub.client.control import Reject, Retry, handler_tb
from taskhub.names import validate_action
from taskhub.options_table import WorkerArgs, worker_options

log = logging.getLogger("taskhub.worker")

Pool = Literal["async", "threads", "processes"]
POOLS: tuple[str, ...] = ("async", "threads", "processes")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
# How long a handler may hold the handler loop before the watchdog names it.
BLOCKED_AFTER = 1.0
_BEAT = 0.1  # the handler loop's heartbeat, seconds

__all__ = ["POOLS", "ProcessTask", "Reject", "Retry", "SyncTask", "Task", "Worker"]


@dataclasses.dataclass
class _Spec:
    """One ``@worker.task`` declaration."""

    action: str
    fn: Callable[..., Any]
    concurrency: int | None
    group: str | None
    durable: bool
    options: dict[str, Any]
    pool: Pool | None
    is_async: bool

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's where installed (as ``taskhub serve`` and the benchmarks use), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Bridge:
    """Hands calls from one event loop to another in batches: everything queued during one
    turn of the sending loop crosses in one ``call_soon_threadsafe`` (one wake-up of the
    other thread), instead of one per task.

    ``put`` may be called from any thread; the list swap and the flag are single bytecode
    steps under the GIL, and a put that races a drain either lands in the batch being taken
    or schedules the next drain.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._scheduled = False

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed: the worker is gone
                self._scheduled = False

    def _drain(self) -> None:
        self._scheduled = False
        calls, self._calls = self._calls, []
        for fn, args in calls:
            fn(*args)


class _Loop:
    """An event loop running in a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = _new_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a blocking taskhub call from the worker's connection thread would wait "
                "forever (a callback given to .on()?); do it from the handler"
            )
        return self.run(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(_cancel_all()).result(2)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class _TaskBase:
    """The fields every handler's task has."""

    def __init__(self, ctx: TaskContext, conn: _Loop) -> None:
        self._ctx = ctx
        self._conn = conn
        self.id = ctx.id
        self.action = ctx.action
        self.attempt = ctx.attempt
        self.group = ctx.group
        self.publisher = ctx.publisher
        self.created_at = ctx.created_at
        self.previous_result = ctx.previous_result
        self.payload: Any = ctx.payload  # fetched before the handler was called

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
        ``revoke``. It runs on the worker's connection thread: keep it short, never block."""
        relay = functools.partial(_relay, callback, self)
        self._conn.loop.call_soon_threadsafe(self._ctx.on, event, relay)
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.action} {self.id} attempt {self.attempt}>"


class Task(_TaskBase):
    """What an ``async def`` handler gets. Its steps are sent by the worker's connection
    thread; awaiting one waits for the hub's answer."""

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self._conn.run(coro))

    async def get_payload(self) -> Any:
        return self.payload

    async def update(self, data: Any) -> None:
        """Progress: relayed to the publisher and the other services holding the task."""
        await self._call(self._ctx.update(data))

    async def extend(self, duration: float | dt.timedelta | str) -> None:
        """The task must now finish within ``duration`` from now (``"10m"``), or by its
        earlier deadline if that is later; see docs/workers.md."""
        await self._call(self._ctx.extend(duration))

    async def success(self, result: Any = None) -> None:
        """Send ``result`` now; the handler's return value is then ignored."""
        await self._call(self._ctx.success(result))

    async def drop(self) -> None:
        """Done without a result."""
        await self._call(self._ctx.drop())

    async def pickup(self) -> None:
        """Idempotent: the worker picked the task up before calling the handler."""
        await self._call(self._ctx.pickup())

    start = pickup


class SyncTask(_TaskBase):
    """What a plain ``def`` handler gets (``pool="threads"`` or ``"async"``): blocking steps."""

    def get_payload(self) -> Any:
        return self.payload

    def update(self, data: Any) -> None:
        """Progress; blocks until the hub has stored and relayed it."""
        self._conn.call(self._ctx.update(data))

    def extend(self, duration: float | dt.timedelta | str) -> None:
        """As :meth:`Task.extend`, blocking."""
        self._conn.call(self._ctx.extend(duration))

    def success(self, result: Any = None) -> None:
        self._conn.call(self._ctx.success(result))

    def drop(self) -> None:
        self._conn.call(self._ctx.drop())

    def pickup(self) -> None:
        self._conn.call(self._ctx.pickup())

    start = pickup


@dataclasses.dataclass(frozen=True)
class ProcessTask:
    """What a plain ``def`` handler gets with ``pool="processes"``: the task by value. It
    runs in another process, so it has no steps (update, extend): return the result, or
    raise (``Retry`` and ``Reject`` work as elsewhere)."""

    id: str
    action: str
    attempt: int
    group: str
    publisher: str
    created_at: float
    payload: Any
    previous_result: Any = None

    def get_payload(self) -> Any:
        return self.payload


def _call_in_process(fn: Callable[[ProcessTask], Any], task: ProcessTask) -> Any:
    return fn(task)


class Worker:
    """Tasks declared with :meth:`task`, run by :meth:`run` (or ``taskhub worker MODULE``).

    ``url``, ``name`` and ``key`` default to ``TASKHUB_URL`` (else ``ws://127.0.0.1:8080``),
    ``TASKHUB_NAME`` (else ``worker``) and ``TASKHUB_KEY``, read when the worker starts.
    ``concurrency`` is the default for tasks that do not set theirs; ``pool`` says where plain
    ``def`` handlers run (``threads``, ``processes`` or ``async``: on the handler loop);
    ``grace`` is how long :meth:`stop` lets running handlers finish. Other keyword arguments go
    to :class:`~taskhub.Client` (``max_backoff``, ``ping_interval``, ``ssl``...).
    """

    def __init__(
        self,
        url: str | list[str] | None = None,
        *,
        name: str | None = None,
        key: str | None = None,
        concurrency: int = 1,
        pool: Pool = "threads",
        grace: float = 30.0,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.name = name
        self.key = key
        self.concurrency = concurrency
        self.pool: Pool = pool
        self.grace = grace
        self.client_options = client_options
        self.specs: list[_Spec] = []
        self.client: Client | None = None  # while running, on the connection thread
        self._conn: _Loop | None = None
        self._handlers: _Loop | None = None
        self._to_handlers: _Bridge | None = None  # conn loop -> handler loop, batched
        self._to_conn: _Bridge | None = None  # and back
        self._threads: list[concurrent.futures.ThreadPoolExecutor] = []
        self._in_threads: set[concurrent.futures.Future[Any]] = set()  # plain handlers running
        self._processes: multiprocessing.pool.Pool | None = None
        self._stopped = threading.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._stop_now: asyncio.Event | None = None
        self._beat_at = 0.0
        self._blocked_warned = False
        self._signals = 0
        self.lingering = 0  # after stop: plain handlers still running in their threads

    # --- declaring ---------------------------------------------------------------------------
    def task(
        self,
        action: str,
        *,
        concurrency: int | None = None,
        group: str | None = None,
        durable: bool = False,
        pool: Pool | None = None,
        **defaults: Unpack[WorkerArgs],
    ) -> Callable[[F], F]:
        """Run the decorated function for tasks of ``action``; the function is returned
        unchanged (call it directly in tests).

        ``retries``, ``backoff``, ``backoff_max``, ``timeout`` (``None``: no end timeout) and
        ``max_attempts`` are defaults for the tasks this worker takes: the hub applies them
        where the publisher did not set the option (publisher > worker > hub config > hub
        default). ``concurrency`` (default: the worker's), ``group`` and ``durable`` are as in
        ``Client.sub``. ``pool`` overrides the worker's for this plain ``def``.
        """
        validate_action(action)
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        options = worker_options(defaults)

        def register(fn: F) -> F:
            if any(s.action == action for s in self.specs):
                raise ValueError(f"this worker already has a task for {action!r}")
            is_async = inspect.iscoroutinefunction(fn)
            spec = _Spec(action, fn, concurrency, group, durable, options, pool, is_async)
            self.specs.append(spec)
            return fn

        return register

    def include(self, other: Worker) -> None:
        """Run ``other``'s tasks in this worker too (``taskhub worker a b`` does this)."""
        for spec in other.specs:
            if any(s.action == spec.action for s in self.specs):
                raise ValueError(f"two workers declare a task for {spec.action!r}")
            self.specs.append(spec)

    # --- running -----------------------------------------------------------------------------
    def run(self, *, grace: float | None = None) -> None:
        """Start, then run until SIGTERM or Ctrl-C (from the main thread) or :meth:`stop`.

        The first signal stops gracefully (nothing new, running handlers get ``grace``
        seconds, the rest is handed back); a second one stops at once (handing back).
        """
        if grace is not None:
            self.grace = grace
        main = threading.current_thread() is threading.main_thread()
        previous: dict[signal.Signals, Any] = {}
        if main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self._stopped.wait(0.5):
                pass
            self._cleanup()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self) -> None:
        """Connect and subscribe every declared task; returns once the hub accepted them
        (raises what went wrong: ``AuthenticationFailed``, ``PermissionDenied``, OSError)."""
        if not self.specs:
            raise ValueError("this worker has no tasks: declare some with @worker.task(...)")
        if self._conn is not None:
            raise RuntimeError("the worker is already running")
        self._stopped.clear()
        self._conn = _Loop("taskhub-worker-connection")
        self._handlers = _Loop("taskhub-worker-handlers")
        self._to_handlers = _Bridge(self._handlers.loop)
        self._to_conn = _Bridge(self._conn.loop)
        self._handlers.run(self._beat())
        try:
            self._conn.call(self._open())
        except BaseException:
            self._cleanup()
            raise
        log.info(
            "worker %s ready: %s",
            self.client.name if self.client else "",
            ", ".join(f"{s.action} -> {s.name}" for s in self.specs),
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully and wait until stopped: take nothing new, let running handlers
        finish within ``grace`` seconds (default: the worker's), hand back the rest,
        flush and close. Thread-safe."""
        self.request_stop(grace=grace)
        self._stopped.wait()
        self._cleanup()

    def request_stop(self, *, now: bool = False, grace: float | None = None) -> None:
        """Begin stopping without waiting (safe from a signal handler or any thread);
        ``now=True`` hands back running handlers at once."""
        conn = self._conn
        if conn is None or conn.loop.is_closed():
            self._stopped.set()
            return
        try:
            conn.loop.call_soon_threadsafe(self._begin_stop, now, grace)
        except RuntimeError:  # the loop closed meanwhile
            self._stopped.set()

    async def __aenter__(self) -> Worker:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        what = signal.Signals(signum).name
        if self._signals == 1:
            log.warning(
                "%s: stopping; running tasks have %gs to finish (Ctrl-C again to stop now)",
                what,
                self.grace,
            )
            self.request_stop()
        else:
            log.warning("%s again: stopping now, handing back the running tasks", what)
            self.request_stop(now=True)

    # --- on the connection thread ------------------------------------------------------------
    async def _open(self) -> None:
        url = self.url or os.environ.get("TASKHUB_URL") or "ws://127.0.0.1:8080"
        name = self.name or os.environ.get("TASKHUB_NAME") or "worker"
        key = self.key if self.key is not None else os.environ.get("TASKHUB_KEY", "")
        self._stop_now = asyncio.Event()
        n_proc = sum(
            s.concurrency or self.concurrency
            for s in self.specs
            if not s.is_async and (s.pool or self.pool) == "processes"
        )
        if n_proc:
            # spawn, not fork: this process has threads (a fork would copy their locks held).
            self._processes = multiprocessing.get_context("spawn").Pool(n_proc)
        client = Client(url, name=name, key=key, **self.client_options)
        await client.connect()
        subs = []
        for spec in self.specs:
            concurrency = spec.concurrency or self.concurrency
            pool = spec.pool or self.pool
            if not spec.is_async and pool == "threads":
                executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=concurrency, thread_name_prefix=f"taskhub-{spec.action}"
                )
                self._threads.append(executor)
                runner = functools.partial(self._run_thread, spec, executor)
            elif not spec.is_async and pool == "processes":
                runner = functools.partial(self._run_process, spec)
            else:
                runner = functools.partial(self._run_async, spec)
            subs.append(
                client.sub(
                    spec.action,
                    functools.partial(self._handle, spec, runner),
                    group=spec.group,
                    concurrency=concurrency,
                    durable=spec.durable,
                    **spec.options,
                )
            )
        try:
            await asyncio.gather(*subs)
        except BaseException:
            await client.close()
            raise
        self.client = client  # running: what stopping drains and closes
        asyncio.get_running_loop().call_later(0.25, self._watchdog)

    async def _handle(
        self,
        spec: _Spec,
        runner: Callable[[TaskContext], Coroutine[Any, Any, Any]],
        ctx: TaskContext,
    ) -> Any:
        log.info("received %s %s (attempt %d)", ctx.action, ctx.id, ctx.attempt)
        started = time.monotonic()
        try:
            await ctx.get_payload()  # so task.payload never blocks
            result = await runner(ctx)
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
                spec.name,
                exc_info=(type(exc), exc, handler_tb(exc)),
            )
            raise
        log.info("%s %s succeeded in %.3fs", ctx.action, ctx.id, time.monotonic() - started)
        return result

    async def _run_async(self, spec: _Spec, ctx: TaskContext) -> Any:
        assert self._to_handlers is not None and self._conn is not None
        task: Task | SyncTask = (
            Task(ctx, self._conn) if spec.is_async else SyncTask(ctx, self._conn)
        )
        name = f"{spec.name} ({ctx.action} {ctx.id})"
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        running: list[asyncio.Task[Any]] = []  # the handler's task, once it started
        # The handler runs in this delivery's context (its process span is current there):
        # the batched hand-over to the handler loop would otherwise lose it.
        context = contextvars.copy_context()
        self._to_handlers.put(self._start_handler, spec, task, name, done, running, context)
        try:
            return await done
        except asyncio.CancelledError:
            # Revoked, or the worker stops past its grace: cancel the handler too.
            self._to_handlers.put(_cancel_started, running)
            raise

    def _start_handler(
        self,
        spec: _Spec,
        task: Task | SyncTask,
        name: str,
        done: asyncio.Future[Any],
        running: list[asyncio.Task[Any]],
        context: contextvars.Context,
    ) -> None:
        """On the handler loop: run the handler; its outcome crosses back in a batch."""
        if done.cancelled():
            return
        assert self._handlers is not None
        t = self._handlers.loop.create_task(_call(spec.fn, task), name=name, context=context)
        running.append(t)
        t.add_done_callback(functools.partial(self._handler_done, done))

    def _handler_done(self, done: asyncio.Future[Any], t: asyncio.Task[Any]) -> None:
        assert self._to_conn is not None
        if t.cancelled():
            self._to_conn.put(done.cancel)
        elif t.exception() is not None:
            self._to_conn.put(_settle, done, None, t.exception())
        else:
            self._to_conn.put(_settle, done, t.result(), None)

    async def _run_thread(
        self, spec: _Spec, executor: concurrent.futures.Executor, ctx: TaskContext
    ) -> Any:
        assert self._conn is not None
        # In the delivery's context, as asyncio.to_thread does (its process span is current).
        call = contextvars.copy_context().run
        running = executor.submit(call, spec.fn, SyncTask(ctx, self._conn))
        self._in_threads.add(running)
        running.add_done_callback(self._in_threads.discard)
        return await asyncio.wrap_future(running)

    async def _run_process(self, spec: _Spec, ctx: TaskContext) -> Any:
        assert self._processes is not None
        task = ProcessTask(
            ctx.id,
            ctx.action,
            ctx.attempt,
            ctx.group,
            ctx.publisher,
            ctx.created_at,
            ctx.payload,
            ctx.previous_result,
        )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(value: Any) -> None:
            loop.call_soon_threadsafe(_settle, fut, value, None)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, fut, None, exc)

        self._processes.apply_async(
            _call_in_process, (spec.fn, task), callback=done, error_callback=failed
        )
        return await fut

    def _watchdog(self) -> None:
        """Every 0.25 s on the connection loop: is the handler loop blocked?"""
        if self._handlers is None or self._handlers.loop.is_closed():
            return
        stalled = time.monotonic() - self._beat_at
        if stalled > BLOCKED_AFTER and not self._blocked_warned:
            self._blocked_warned = True
            current = asyncio.current_task(self._handlers.loop)
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
        asyncio.get_running_loop().call_later(0.25, self._watchdog)

    async def _beat(self) -> None:
        while True:
            self._beat_at = time.monotonic()
            await asyncio.sleep(_BEAT)

    def _begin_stop(self, now: bool, grace: float | None) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._shutdown(self.grace if grace is None else grace)
            )
        if now and self._stop_now is not None:
            self._stop_now.set()

    async def _shutdown(self, grace: float) -> None:
        client = self.client
        try:
            if client is None:
                return
            await client.drain()
            running = client.working
            if running:
                log.info("waiting up to %gs for %d running task(s)", grace, running)
            deadline = time.monotonic() + grace
            assert self._stop_now is not None
            while client.working and time.monotonic() < deadline:
                # Checked every 50 ms; a second Ctrl-C (stop_now) ends the wait at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_now.wait(), 0.05)
                    break
            handed = await client.hand_back()
            if handed:
                log.warning("handed back %d unfinished task(s) to the hub", handed)
            self.lingering = sum(1 for f in list(self._in_threads) if not f.done())
            await client.close()
            log.info("worker stopped")
        except Exception:
            log.exception("stopping the worker failed")
        finally:
            self._stopped.set()

    def _cleanup(self) -> None:
        """After stopping (or a failed start): end the loops and pools."""
        for executor in self._threads:
            executor.shutdown(wait=False, cancel_futures=True)
        self._threads = []
        if self._processes is not None:
            self._processes.terminate()
            self._processes = None
        if self._handlers is not None:
            self._handlers.stop()
            self._handlers = None
        if self._conn is not None:
            self._conn.stop()
            self._conn = None
        self.client = None
        self._stopping = None
        self._signals = 0


async def _cancel_all() -> None:
    """Cancel every other task of the running loop and let them end (before it stops)."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=1) if tasks else None


def _relay(callback: Callable[[Any], Any], target: Any, _source: Any) -> Any:
    """Give the callback the handler's task instead of the context it was fired for."""
    return callback(target)


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
