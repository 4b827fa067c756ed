"""One run of a :class:`taskhub.Worker`, from start to stop: its connection loop (the async
client: WebSocket, keepalive, offers, results), where its handlers run, and the stop (take
nothing new, let running handlers finish within the grace, hand back the rest, flush, close).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from taskhub.client import Client, TaskContext
from taskhub.worker_handler_loop import Fast, HandlerLoop
from taskhub.worker_loops import LoopThread
from taskhub.worker_pools import ProcessPool, ThreadPools, logged

if TYPE_CHECKING:
    from taskhub.worker import Worker

log = logging.getLogger("taskhub.worker")
Runner = Callable[[TaskContext], Coroutine[Any, Any, Any]]
# What a handler gets, made on the connection's loop: (spec, delivery, connection) -> task.
TaskFactory = Callable[["Spec", TaskContext, LoopThread], Any]


@dataclasses.dataclass
class Spec:
    """One ``@worker.task`` declaration."""

    action: str
    fn: Callable[..., Any]
    concurrency: int | None
    group: str | None
    durable: bool
    options: dict[str, Any]
    pool: str | None  # async, threads or processes; None: the worker's
    is_async: bool

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


class Run:
    """A worker's run. :meth:`open` connects and subscribes (blocking); :meth:`request_stop`
    begins the stop from any thread; :attr:`stopped` is set once it is over; :meth:`close`
    then ends the threads and pools."""

    def __init__(self, worker: Worker, make_task: TaskFactory) -> None:
        self.worker = worker
        self.make_task = make_task
        self.client: Client | None = None  # once subscribed: what stopping drains and closes
        self.stopped = threading.Event()
        self.lingering = 0  # after the stop: plain handlers still running in their threads
        self.conn = LoopThread("taskhub-worker-connection")
        self.handlers = HandlerLoop(self.conn)
        self.conn.on_block = self.handlers.blocking
        self.threads = ThreadPools()
        self.processes: ProcessPool | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stop_now: asyncio.Event | None = None

    def open(self) -> None:
        """Connect and subscribe every declared task (raises what went wrong)."""
        self.conn.call(self._open())

    async def _open(self) -> None:
        w = self.worker
        url = w.url or os.environ.get("TASKHUB_URL") or "ws://127.0.0.1:8080"
        name = w.name or os.environ.get("TASKHUB_NAME") or "worker"
        key = w.key if w.key is not None else os.environ.get("TASKHUB_KEY", "")
        self._stop_now = asyncio.Event()
        n_proc = sum(
            s.concurrency or w.concurrency
            for s in w.specs
            if not s.is_async and (s.pool or w.pool) == "processes"
        )
        if n_proc:
            self.processes = ProcessPool(n_proc)
        client = Client(url, name=name, key=key, **w.client_options)
        # The handler loop reads the connection while it is free, and starts its handlers
        # itself as it reads their offers (worker_handler_loop.HandlerLoop).
        self.handlers.link = client.link
        self.handlers.tracer_provider = w.client_options.get("tracer_provider") is not None
        for spec in w.specs:
            if self._on_handler_loop(spec):
                self.handlers.fast[spec.action] = Fast(
                    spec.fn,
                    spec.name,
                    spec.concurrency or w.concurrency,
                    functools.partial(self._make_task, spec),
                )
        client.link.conn.share_reading(self.handlers)
        await client.connect()
        subs = []
        for spec in w.specs:
            concurrency = spec.concurrency or w.concurrency
            subs.append(
                client.sub(
                    spec.action,
                    functools.partial(self._handle, spec, self._runner(spec, concurrency)),
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
        self.client = client

    def _on_handler_loop(self, spec: Spec) -> bool:
        return spec.is_async or (spec.pool or self.worker.pool) == "async"

    def _make_task(self, spec: Spec, ctx: TaskContext) -> Any:
        return self.make_task(spec, ctx, self.conn)

    def _runner(self, spec: Spec, concurrency: int) -> Runner:
        """Where ``spec``'s handler runs: the handler loop, a thread pool or the processes."""
        pool = spec.pool or self.worker.pool
        if not spec.is_async and pool == "threads":
            executor = self.threads.pool(spec.action, concurrency)

            async def in_thread(ctx: TaskContext) -> Any:
                task = self.make_task(spec, ctx, self.conn)
                return await self.threads.run(executor, spec.fn, task, ctx)

            return in_thread
        if not spec.is_async and pool == "processes":
            processes = self.processes
            assert processes is not None
            return functools.partial(processes.run, spec.fn)

        async def on_handler_loop(ctx: TaskContext) -> Any:
            make = functools.partial(self._make_task, spec, ctx)
            return await self.handlers.run(spec.fn, spec.name, make, ctx)

        return on_handler_loop

    async def _handle(self, spec: Spec, runner: Runner, ctx: TaskContext) -> Any:
        return await logged(spec.name, ctx, functools.partial(runner, ctx))

    # --- stopping ----------------------------------------------------------------------------
    def request_stop(self, now: bool, grace: float) -> None:
        """Begin stopping (from any thread); ``now``: hand back running handlers at once."""
        try:
            self.conn.loop.call_soon_threadsafe(self._begin_stop, now, grace)
        except RuntimeError:  # the loop closed meanwhile
            self.stopped.set()

    def _begin_stop(self, now: bool, grace: float) -> None:
        self.handlers.taking = False  # the handler loop starts nothing more as it reads
        self.handlers.catch_up()  # and the client knows of every delivery it started
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown(grace))
        if now and self._stop_now is not None:
            self._stop_now.set()

    async def _shutdown(self, grace: float) -> None:
        client = self.client
        try:
            if client is None:
                return
            await client.drain()
            # Deliveries the handler loop started as it read their offers until it heard of
            # the stop are counted from here on (the watchdog also takes them in).
            self.handlers.catch_up()
            if client.working:
                log.info("waiting up to %gs for %d running task(s)", grace, client.working)
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
            self.lingering = self.threads.lingering()
            await client.close()
            log.info("worker stopped")
        except Exception:
            log.exception("stopping the worker failed")
        finally:
            self.stopped.set()

    def close(self) -> None:
        """After stopping (or a failed start): end the loops and pools."""
        self.threads.shutdown()
        if self.processes is not None:
            self.processes.terminate()
            self.processes = None
        self.handlers.stop()
        self.conn.stop()
        self.client = None
