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
import logging
import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection as PipeEnd
from typing import Any

from taskhub.client import TaskContext
from taskhub.client.control import Reject, Retry, handler_tb
from taskhub.errors import TaskHubError

log = logging.getLogger("taskhub.worker")


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


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
