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

This module declares tasks (:class:`Worker`) and what handlers get; :mod:`taskhub.worker_run`
runs a worker from start to stop, :mod:`taskhub.worker_pools` holds where handlers run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Literal, TypeVar, Unpack

from taskhub.client import Client, TaskContext
from taskhub.client.control import Reject, Retry
from taskhub.client.handler_task import BlockingTask, TaskFields
from taskhub.names import validate_action
from taskhub.options_table import WorkerArgs, worker_options
from taskhub.worker_loops import LoopThread
from taskhub.worker_pools import ProcessTask
from taskhub.worker_run import Run, Spec

log = logging.getLogger("taskhub.worker")

Pool = Literal["async", "threads", "processes"]
POOLS: tuple[str, ...] = ("async", "threads", "processes")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

__all__ = ["POOLS", "ProcessTask", "Reject", "Retry", "SyncTask", "Task", "Worker"]


class Task(TaskFields):
    """What an ``async def`` handler gets. Its steps are sent by the worker's connection
    thread; awaiting one waits for the hub's answer."""

    def __init__(self, ctx: TaskContext, conn: LoopThread) -> None:
        super().__init__(ctx, conn.loop)
        self._conn = conn

    async def _step(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self._conn.run(coro))

    async def get_payload(self) -> Any:  # awaited, as the async client's
        return self.payload

    async def update(self, data: Any) -> None:
        """Progress: relayed to the publisher and the other services holding the task."""
        await self._step(self._ctx.update(data))

    async def extend(self, duration: float | dt.timedelta | str) -> None:
        """The task must now finish within ``duration`` from now (``"10m"``), or by its
        earlier deadline if that is later; see docs/workers.md."""
        await self._step(self._ctx.extend(duration))

    async def success(self, result: Any = None) -> None:
        """Send ``result`` now; the handler's return value is then ignored."""
        await self._step(self._ctx.success(result))

    async def drop(self) -> None:
        """Done without a result."""
        await self._step(self._ctx.drop())

    async def pickup(self) -> None:
        """Idempotent: the worker picked the task up before calling the handler."""
        await self._step(self._ctx.pickup())

    start = pickup


class SyncTask(BlockingTask):
    """What a plain ``def`` handler gets (``pool="threads"`` or ``"async"``): blocking steps."""

    def __init__(self, ctx: TaskContext, conn: LoopThread) -> None:
        super().__init__(ctx, conn.loop, conn.call)


def _make_task(spec: Spec, ctx: TaskContext, conn: LoopThread) -> Task | SyncTask:
    return Task(ctx, conn) if spec.is_async else SyncTask(ctx, conn)


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
        self.specs: list[Spec] = []
        self._run: Run | None = None  # from start() to the end of stop()
        self._signals = 0
        self.lingering = 0  # after stop: plain handlers still running in their threads

    @property
    def client(self) -> Client | None:
        """The client while running (on the connection thread), once subscribed."""
        return self._run.client if self._run is not None else None

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
            spec = Spec(action, fn, concurrency, group, durable, options, pool, is_async)
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
            run = self.start()
            while not run.stopped.wait(0.5):
                pass
            self._cleanup()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self) -> Run:
        """Connect and subscribe every declared task; returns once the hub accepted them
        (raises what went wrong: ``AuthenticationFailed``, ``PermissionDenied``, OSError)."""
        if not self.specs:
            raise ValueError("this worker has no tasks: declare some with @worker.task(...)")
        if self._run is not None:
            raise RuntimeError("the worker is already running")
        self._run = run = Run(self, _make_task)
        try:
            run.open()
        except BaseException:
            self._cleanup()
            raise
        log.info(
            "worker %s ready: %s",
            run.client.name if run.client else "",
            ", ".join(f"{s.action} -> {s.name}" for s in self.specs),
        )
        return run

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully and wait until stopped: take nothing new, let running handlers
        finish within ``grace`` seconds (default: the worker's), hand back the rest,
        flush and close. Thread-safe."""
        run = self._run
        self.request_stop(grace=grace)
        if run is not None:
            run.stopped.wait()
        self._cleanup()

    def request_stop(self, *, now: bool = False, grace: float | None = None) -> None:
        """Begin stopping without waiting (safe from a signal handler or any thread);
        ``now=True`` hands back running handlers at once."""
        run = self._run
        if run is not None:
            run.request_stop(now, self.grace if grace is None else grace)

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

    def _cleanup(self) -> None:
        """After stopping (or a failed start): end the run's threads and pools."""
        run, self._run = self._run, None
        if run is not None:
            self.lingering = run.lingering
            run.close()
        self._signals = 0
