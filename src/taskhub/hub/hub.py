"""The running hub: one lifecycle, one store, the commit pipeline and the timer.

Every input (a WebSocket frame, an HTTP call, a timer) runs the lifecycle synchronously and
then :meth:`Hub.kick` wakes the flusher. The flusher writes the lifecycle's batch to the store
and only then hands the queued messages to their connections, so a publisher never hears
of a task that a crash could lose (group commit: many frames share one store transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from taskhub import protocol as p
from taskhub.errors import PermissionDenied, StoreUnavailable, TaskHubError, TaskNotFound
from taskhub.hub.auth import Registry
from taskhub.ids import new_id
from taskhub.lifecycle import Clock, Defaults, Lifecycle, Message, Peer, Task
from taskhub.store import Store, TaskRecord, WriteBatch

log = logging.getLogger("taskhub.hub")

Sender = Callable[[bytes], None]


@dataclass
class Limits:
    """Per-connection limits. Memory a connection may hold is about ``max_frame`` (one frame
    being decoded) plus ``max_send_queue`` encoded frames waiting for a slow reader."""

    max_frame: int = 1024 * 1024
    max_send_queue: int = 1024  # frames; a reader this far behind is disconnected
    ping_interval: float = 5.0  # a dead peer is noticed within ping_interval + ping_timeout
    ping_timeout: float = 5.0


def task_view(rec: TaskRecord, *, payload: bool = False) -> dict[str, Any]:
    """The public shape of a task (protocol, HTTP and CLI)."""
    out: dict[str, Any] = {
        "id": rec.id,
        "action": rec.action,
        "state": rec.state,
        "publisher": rec.publisher,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "options": {k: v for k, v in rec.options.items() if k != "previous_result"},
        "updates": rec.updates,
        "last_update": rec.last_update,
        "result": rec.result,
        "error": rec.error,
        "deliveries": [
            {"group": d.group, "state": d.state, "attempt": d.attempt, "tries": d.tries}
            for d in rec.deliveries
        ],
    }
    if payload:
        out["payload"] = rec.payload
    return out


class Hub:
    def __init__(
        self,
        store: Store,
        *,
        registry: Registry | None = None,
        defaults: Defaults | None = None,
        limits: Limits | None = None,
        clock: Clock = time.time,
        name: str = "hub",
    ) -> None:
        self.store = store
        self.registry = registry or Registry()
        self.limits = limits or Limits()
        self.name = name
        self.lc = Lifecycle(clock=clock, defaults=defaults, new_id=new_id)
        self.senders: dict[Peer, Sender] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._applying: dict[str, TaskRecord] = {}  # records of the batch being written
        self._flushed = asyncio.Condition()
        self._generation = 0  # batches fully written
        self._closing = False
        self._in_round = False
        self.clock = clock

    # --- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        restored = self.lc.restore(await self.store.load_active())
        if restored:
            log.info("restored %d unfinished task(s) from %s", restored, self.store.url)
        self._flusher = asyncio.create_task(self._flush_loop(), name="taskhub-flusher")
        self.kick()

    async def stop(self) -> None:
        self._closing = True
        await self.flush()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._timer is not None:
            self._timer.cancel()
        await self.store.close()

    # --- the commit pipeline -----------------------------------------------------------------
    def kick(self) -> None:
        """Something changed: write it, then send what it caused; re-arm the timer."""
        self._wake.set()
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
        self.kick()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._in_round = True
            batch = self.lc.take_writes()
            output = self.lc.take_output()
            if batch:
                await self._apply(batch)
            for peer, msgs in output:
                sender = self.senders.get(peer)
                if sender is not None:
                    sender(p.encode(msgs))
            self._generation += 1
            self._in_round = False
            async with self._flushed:
                self._flushed.notify_all()

    async def _apply(self, batch: WriteBatch) -> None:
        self._applying = {rec.id: rec for rec in batch.tasks}
        delay = 0.05
        while True:
            try:
                await self.store.apply(batch)
                break
            except Exception:  # the store is down: keep the batch, retry, never drop it
                log.exception("store write failed; retrying in %.2fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._applying = {}

    async def flush(self) -> None:
        """Wait until everything the lifecycle has produced so far is written and sent."""
        if self._flusher is None or self._flusher.done():
            return
        # A round in progress may have taken its batch before now: then wait for the next.
        target = self._generation + (2 if self._in_round else 1)
        self.kick()
        async with self._flushed:
            await self._flushed.wait_for(lambda: self._generation >= target)

    # --- connections -------------------------------------------------------------------------
    def attach(self, peer: Peer, sender: Sender) -> None:
        self.senders[peer] = sender
        self.lc.connect(peer)

    def detach(self, peer: Peer) -> None:
        self.senders.pop(peer, None)
        self.lc.disconnect(peer)
        self.registry.release_connection(peer.creds)
        self.kick()

    # --- reading tasks -----------------------------------------------------------------------
    async def find(self, task_id: str) -> TaskRecord | None:
        task = self.lc.get(task_id)
        if task is not None:
            return task.rec
        rec = self.lc._dirty.get(task_id) or self._applying.get(task_id)
        if rec is not None:
            return rec
        return await self.store.get_task(task_id)

    # --- messages from a WebSocket connection ------------------------------------------------
    def handle(self, peer: Peer, msg: p.Inbound | p.Bad) -> Awaitable[None] | None:
        """Apply one message. Returns an awaitable when it needs the store (reads)."""
        ref = getattr(msg, "ref", None)
        try:
            result = self._handle(peer, msg)
        except TaskHubError as exc:
            self.lc.send(peer, p.error_msg(exc, ref, **_task_of(msg)))
            return None
        return result

    def _handle(self, peer: Peer, msg: p.Inbound | p.Bad) -> Awaitable[None] | None:
        lc = self.lc
        match msg:
            case p.Ack():
                lc.ack(peer, msg.task, msg.attempt)
            case p.Return():
                lc.complete(peer, msg.task, msg.attempt, msg.result)
                self._ok(peer, msg.ref)
            case p.Pub():
                task, created = lc.publish(
                    peer.creds, msg.action, msg.payload, msg.options, peer=peer
                )
                if isinstance(task, Task):
                    self._ok(peer, msg.ref, task=task.id, state=task.rec.state, created=created)
                else:
                    self._ok(peer, msg.ref, task=task, created=False)
            case p.Pickup():
                lc.pickup(peer, msg.task, msg.attempt)
                self._ok(peer, msg.ref)
            case p.Update():
                lc.update(peer, msg.task, msg.attempt, msg.data)
                self._ok(peer, msg.ref)
            case p.Drop():
                lc.drop(peer, msg.task, msg.attempt)
                self._ok(peer, msg.ref)
            case p.Fail():
                err = {"type": msg.error.type, "message": msg.error.message}
                lc.fail(peer, msg.task, msg.attempt, err, retry=msg.retry)
                self._ok(peer, msg.ref)
            case p.Sub():
                lc.subscribe(
                    peer,
                    msg.action,
                    group=msg.group,
                    concurrency=msg.concurrency,
                    observe=msg.observe,
                    durable=msg.durable,
                )
                self._ok(peer, msg.ref)
            case p.Unsub():
                lc.unsubscribe(peer, msg.action)
                self._ok(peer, msg.ref)
            case p.Cancel():
                lc.cancel(peer.creds, msg.task)
                self._ok(peer, msg.ref)
            case p.Get() | p.Follow() | p.GetPayload():
                return self._read(peer, msg)
            case p.Bad():
                raise msg.error
        return None

    def _ok(self, peer: Peer, ref: int | None, **fields: Any) -> None:
        if ref is not None:
            self.lc.send(peer, {"op": "ok", "ref": ref, **fields})

    async def _read(self, peer: Peer, msg: p.Get | p.Follow | p.GetPayload) -> None:
        try:
            rec = await self.find(msg.task)
            if rec is None:
                raise TaskNotFound(f"no task {msg.task}", task=msg.task)
            if (
                not self.lc.may_read(peer.creds, rec)
                and msg.task not in peer.holding
                and (msg.task not in peer.observing)
            ):
                raise PermissionDenied(
                    f"{peer.service!r} may not read task {msg.task} ({rec.action})",
                    action=rec.action,
                )
            if isinstance(msg, p.GetPayload):
                self._ok(peer, msg.ref, payload=rec.payload)
            else:
                if isinstance(msg, p.Follow):
                    self.lc.follow(peer, msg.task)
                self._ok(peer, msg.ref, task=task_view(rec))
        except TaskHubError as exc:
            self.lc.send(peer, p.error_msg(exc, msg.ref, task=msg.task))
        except Exception:  # the store failed: say so, keep the connection
            log.exception("reading task %s failed", msg.task)
            err = StoreUnavailable(f"could not read task {msg.task} from the store; try again")
            self.lc.send(peer, p.error_msg(err, msg.ref, task=msg.task))
        self.kick()


def _task_of(msg: object) -> dict[str, Any]:
    task = getattr(msg, "task", None)
    return {"task": task} if isinstance(task, str) else {}


def welcome(hub: Hub, peer: Peer) -> Message:
    return {
        "op": "welcome",
        "protocol": p.PROTOCOL_VERSION,
        "hub": hub.name,
        "connection": peer.id,
        "service": peer.service,
        "max_frame": hub.limits.max_frame,
    }
