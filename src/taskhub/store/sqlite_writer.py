"""The sqlite engine's writer: one thread fed by a queue, running calls one at a time in order."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# One call for the thread: what to run, and the future its caller awaits.
_Job = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class Writer:
    """A daemon thread that runs the calls handed to :meth:`submit` in the order they came.

    An executor's submit costs a concurrent Future, its lock and a chained asyncio Future per
    call; here a call is one put on a C queue and one ``call_soon_threadsafe`` back. A call's
    exception reaches its caller through its future, and the thread goes on with the next.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Calls handed to the thread and not finished there; counted down on the event loop
        # when the thread reports back, so a caller cancelled meanwhile does not make the
        # thread look idle while it still runs that call.
        self._busy = 0
        # A daemon: a hub that exits without closing its store must not hang on this thread.
        # Nothing acknowledged is lost by that: a write's future resolves only after its commit.
        threading.Thread(target=self._run, name=name, daemon=True).start()

    @property
    def idle(self) -> bool:
        """Nothing handed to the thread is unfinished (read on the event loop)."""
        return self._busy == 0

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the thread after every call submitted before; its result or error
        comes back through the future. A call whose future is cancelled before the thread
        reaches it is not run; one already running completes."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._busy += 1
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        """The thread ends after the calls already submitted."""
        self._jobs.put(None)

    def _run(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            fn, future = job
            result: Any = None
            error: BaseException | None = None
            if not future.cancelled():
                try:
                    result = fn()
                except BaseException as exc:  # handed to the caller, whatever it is
                    error = exc
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(self._finished, future, result, error)
            del job, fn, future, result, error  # drop references while waiting for the next

    def _finished(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self._busy -= 1
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
