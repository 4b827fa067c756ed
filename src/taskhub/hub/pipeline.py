"""The commit pipeline and the lifecycle's timer: nothing leaves before it is durable.

Every input runs the lifecycle synchronously and then calls :meth:`Pipeline.kick`, which wakes
the flusher and re-arms one asyncio timer for the lifecycle's next deadline. The flusher takes
the lifecycle's writes and messages at the same instant, writes the batch to the store, and
only then hands the messages to their connections: a publisher never hears of a task that a
crash could lose. While a batch is written, new inputs build the next one (group commit).

A store whose write needs no I/O (memory://, :class:`~taskhub.store.base.AppliesNow`) is
committed inside :meth:`Pipeline.kick` itself when no round is under way: the input's changes
are written and sent in the turn that read it, without waking the flusher task a turn later
(a sequential round trip crosses the hub twice; docs/decisions.md, "A memory store's round
committed in the input's turn").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from taskhub.errors import StoreFenced, StoreUnavailable
from taskhub.lifecycle import Clock, Lifecycle, Message, Peer
from taskhub.records import TaskRecord, WriteBatch
from taskhub.store import Store
from taskhub.store.base import AppliesNow

log = logging.getLogger("taskhub.hub")

Deliver = Callable[[Iterable[tuple[Peer, list[Message]]]], None]

# A store write this quick (seconds) is cheap enough to make mid-frame (Pipeline.commit_now).
QUICK_APPLY = 0.0005


class Pipeline:
    """Writes what the lifecycle changed, then sends what it caused (``deliver``)."""

    def __init__(self, lc: Lifecycle, store: Store, deliver: Deliver, clock: Clock) -> None:
        self.lc = lc
        self.store = store
        self.deliver = deliver
        self.clock = clock
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # The records of the batch being written, indexed by id only when someone reads one
        # (rare: a `get` of a task in it): an index per batch cost a dict entry per record.
        self._applying: Sequence[TaskRecord] = ()
        self._applying_by_id: dict[str, TaskRecord] | None = None
        # flush()'s waiters: (the round count that answers it, its future)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._apply_now = _applies_now(store)
        self._generation = 0  # batches fully written
        # Set when stop() ends the pipeline. The flusher checks it besides being cancelled: a
        # store client can swallow a cancellation that lands while it waits on the network
        # (seen with redis-py during a partition), and a flusher that lives on waiting for a
        # wake-up that never comes held a cluster's step-down forever.
        self._stopping = False
        self._in_round = False
        self._last_apply = 0.0  # seconds the last store write took
        self.quick_apply = QUICK_APPLY
        self.fenced = False  # set once the store refused a write: another hub leads
        self.store_ok = True  # False while a batch write is failing and being retried
        # See every written batch and how long the store took (hub/http/metrics.py).
        self.apply_hooks: list[Callable[[WriteBatch, float], None]] = []
        # What a fired timer kicks: this pipeline, or with several partitions the hub's every
        # pipeline (a timer's effects, a chain's next step, may land in another partition).
        self.after_timer: Callable[[], None] = self.kick

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="taskhub-flusher")
        self._flusher.add_done_callback(_flusher_ended)
        self.kick()

    @property
    def running(self) -> bool:
        """The flusher runs: frames taken are answered."""
        return self._flusher is not None and not self._flusher.done()

    async def stop(self, timeout: float) -> None:
        """End the flusher (waiting at most ``timeout`` for a store write under way) and the
        timer. Call :meth:`flush` first for what is pending to be written."""
        if self._flusher is not None:
            self._stopping = True
            self._wake.set()
            self._flusher.cancel()
            # A write the flusher was waiting on may not unwind while the store is out of
            # reach (a partition): what it held was never acknowledged, so do not wait on it.
            done, _ = await asyncio.wait({self._flusher}, timeout=timeout)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("the commit pipeline had failed", exc_info=task.exception())
            if not done:
                log.error("the commit pipeline did not stop within %.0fs; left behind", timeout)
        if self._timer is not None:
            self._timer.cancel()

    @property
    def rounds(self) -> int:
        """Commit rounds done so far (a round takes what the lifecycle has, maybe nothing)."""
        return self._generation

    def kick(self) -> None:
        """Something changed: write it, then send what it caused; re-arm the timer."""
        if not self._commit_here():
            self._wake.set()
        self._arm()

    def kick_if_changed(self) -> None:
        """:meth:`kick` where the lifecycle has something to write or send (else only the
        timer is re-armed): the hub's kick after an input that may have reached any of its
        partitions wakes only those it changed."""
        if self.lc.changed and not self._commit_here():
            self._wake.set()
        self._arm()

    def _commit_here(self) -> bool:
        """Commit and send now, in the caller's turn, where the store writes without I/O
        and the flusher is idle (no round under way, none woken: what they hold goes
        first); False where the flusher must do it."""
        apply_now = self._apply_now
        if apply_now is None or self._in_round or self._wake.is_set() or not self.running:
            return False
        self._in_round = True
        try:
            batch = self.lc.take_writes()
            output = self.lc.take_output()
            if batch:
                started = time.perf_counter()
                apply_now(batch)
                self._last_apply = time.perf_counter() - started
                self._applied(batch, self._last_apply)
            self.deliver(output)
        except Exception:
            # As the flusher's round: a bug must not stop the hub from answering.
            log.critical("a commit round failed; the hub goes on", exc_info=True)
        finally:
            self._in_round = False
            self._round_done()
        return True

    def _round_done(self) -> None:
        """Count a finished round and answer the flush() waiters it was for."""
        self._generation = done = self._generation + 1
        if self._waiters:
            waiting = []
            for target, fut in self._waiters:
                if done < target:
                    waiting.append((target, fut))
                elif not fut.done():
                    fut.set_result(None)
            self._waiters = waiting

    def _arm(self) -> None:
        """Re-arm the timer if the lifecycle's next deadline is earlier than the armed one."""
        deadline = self.lc.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            loop = asyncio.get_running_loop()
            self._timer_at = deadline
            self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.lc.advance()
        self.after_timer()

    async def flush(self) -> None:
        """Wait until everything the lifecycle has produced so far is written and sent."""
        if not self.running:
            return
        # A round in progress may have taken its batch before now: then wait for the next.
        target = self._generation + (2 if self._in_round else 1)
        self.kick()
        if self._generation < target:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((target, fut))
            await fut

    @property
    def commit_now(self) -> bool:
        """Whether a reader in the middle of a long frame should let the flusher commit and
        send what it has applied so far: yes when the flusher is idle and the last write took
        under :attr:`quick_apply` seconds (memory://). For sqlite:// and redis:// a write costs a
        transaction and a thread or network round trip, and more, smaller ones measured
        slower than one for the whole frame."""
        return not self._in_round and self._last_apply < self.quick_apply

    def writing(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` in the batch being written, if it is in it."""
        if not self._applying:
            return None
        by_id = self._applying_by_id
        if by_id is None:
            by_id = self._applying_by_id = {rec.id: rec for rec in self._applying}
        return by_id.get(task_id)

    def all_writing(self) -> dict[str, TaskRecord]:
        """The records of the batch being written, by id (a copy)."""
        return {rec.id: rec for rec in self._applying}

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            if self._stopping:
                return
            self._wake.clear()
            self._in_round = True
            try:
                batch = self.lc.take_writes()
                output = self.lc.take_output()
                if batch and not await self._apply(batch):
                    output = []  # fenced: this state was never stored, so it must not be told
                self.deliver(output)
            except Exception:
                # A bug. The flusher must outlive it: without it the hub would take frames
                # and never answer again, looking alive. Say so, loudly, and go on.
                log.critical("a commit round failed; the hub goes on", exc_info=True)
            finally:
                self._in_round = False
                self._round_done()

    async def _apply(self, batch: WriteBatch) -> bool:
        """Write ``batch``, retrying while the store is down (50 ms, doubling to 2 s; nothing
        is answered meanwhile); False if this hub may no longer write (another hub leads)."""
        self._applying = batch.tasks
        delay = 0.05
        failures = 0
        try:
            while True:
                try:
                    started = time.perf_counter()
                    await self.store.apply(batch)
                except StoreFenced:
                    log.error("another hub leads the cluster now; this hub's writes are refused")
                    self.fenced = True
                    return False
                except (StoreUnavailable, OSError, ConnectionError):
                    # The store is down: keep the batch and retry.
                    self.store_ok = False
                    if self._stopping:  # stopping: what was not written was not acknowledged
                        return False
                    log.exception("store write failed; retrying in %.2fs", delay)
                except Exception:
                    failures += 1
                    if _give_up(batch, failures):
                        return True
                    log.exception("store write failed; retrying in %.2fs", delay)
                else:
                    self.store_ok = True
                    self._last_apply = time.perf_counter() - started
                    self._applied(batch, self._last_apply)
                    return True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            self._applying = ()
            self._applying_by_id = None

    def _applied(self, batch: WriteBatch, seconds: float) -> None:
        for hook in self.apply_hooks:
            try:
                hook(batch, seconds)
            except Exception:  # an observer must never stop the commit pipeline
                log.exception("an apply hook failed")


def _applies_now(store: Store) -> Callable[[WriteBatch], None] | None:
    """``store.apply_now`` where the engine has one and its ``apply`` is still the one
    written beside it: a subclass that overrides ``apply`` alone (to count or wrap the
    writes) must see every batch, so it keeps the flusher."""
    if not isinstance(store, AppliesNow):
        return None
    cls = type(store)
    owner = next(c for c in cls.__mro__ if "apply_now" in vars(c))
    return store.apply_now if getattr(cls, "apply", None) is getattr(owner, "apply", None) else None


def _give_up(batch: WriteBatch, failures: int) -> bool:
    """Not the store's health but the batch itself: retrying forever would stall every
    connection, so after a few tries it is given up, loudly (and its messages sent)."""
    if failures < 3:
        return False
    log.critical(
        "giving up writing a batch of %d task(s): %s",
        len(batch.tasks),
        [rec.id for rec in batch.tasks],
        exc_info=True,
    )
    return True


def _flusher_ended(task: asyncio.Task[None]) -> None:
    """The flusher ends only when the hub stops; anything else is said at once, not when the
    task is collected (the hub is then deaf: /readyz answers 503)."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("the hub's flusher died; the hub no longer answers", exc_info=task.exception())
