"""Event loops on threads of their own, and batched calls from one to another: the plumbing
under :class:`taskhub.Worker` (its connection loop and its handler loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's where installed (as ``taskhub serve`` and the benchmarks use), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Bridge:
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


class LoopThread:
    """An event loop running in a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = new_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()
        # Called on the calling thread before call() blocks it (the worker's handler loop
        # then lets this loop read for it).
        self.on_block: Callable[[], None] | None = None

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this loop and wait for its result (from another thread)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a blocking taskhub call from the worker's connection thread would wait "
                "forever (a callback given to .on()?); do it from the handler"
            )
        if self.on_block is not None:
            self.on_block()
        return self.run(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(cancel_all()).result(2)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


async def cancel_all() -> None:
    """Cancel every other task of the running loop and let them end (before it stops)."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=1) if tasks else None
