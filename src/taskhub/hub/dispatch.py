"""The WebSocket protocol's messages applied to the hub: one method per kind of message.

Each message runs the lifecycle (or the hub's topics, watches, chains or admin operations)
synchronously and queues its answer; the commit pipeline sends it once what it changed is
stored. Reads (``get``, ``follow``, ``payload``) and admin operations may need the store:
they return an awaitable, and the connection applies its next message after it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, get_args

from taskhub import protocol as p
from taskhub.errors import (
    PermissionDenied,
    ProtocolError,
    StoreUnavailable,
    TaskHubError,
    TaskNotFound,
)
from taskhub.hub.views import task_view
from taskhub.lifecycle import Peer, Task
from taskhub.lifecycle.options import worker_options

if TYPE_CHECKING:
    from taskhub.hub.partition import LocalPartition

log = logging.getLogger("taskhub.hub")

Msg = p.Inbound | p.Bad
Op = Callable[[Peer, Any], Awaitable[None] | None]


class Dispatcher:
    """Applies one connection message at a time (:meth:`handle`) to one partition's lifecycle
    (with one partition, the hub's). An error in the message is answered with its code, a bug
    with ``internal``; either way the connection goes on."""

    def __init__(self, hub: LocalPartition) -> None:
        self.hub = hub
        self.lc = hub.lc
        self.answer = hub.answer
        self.send = hub.lc.send  # the per-task answers (pub, pickup, return) queue their ok here
        # By exact type: a dict lookup instead of a chain of isinstance checks per message.
        self.ops: dict[type, Op] = {
            p.Ack: self._ack,
            p.Return: self._return,
            p.Pub: self._pub,
            p.Pickup: self._pickup,
            p.Update: self._update,
            p.Drop: self._drop,
            p.Fail: self._fail,
            p.Release: self._release,
            p.Extend: self._extend,
            p.Sub: self._sub,
            p.Unsub: self._unsub,
            p.Cancel: self._cancel,
            p.Get: self.read,
            p.Follow: self.read,
            p.GetPayload: self.read,
            p.Subscribe: self._subscribe,
            p.Unsubscribe: self._unsubscribe,
            p.Emit: self._emit,
            p.Watch: self._watch,
            p.Unwatch: self._unwatch,
            p.Chain: self._chain,
            p.Hello: self._hello,
            p.Bad: self._bad,
            p.Pubs: self._pubs,
            p.Acks: self._steps,
            p.Pickups: self._steps,
            p.Returns: self._returns,
        }
        for admin_op in get_args(p.Admin):
            self.ops[admin_op] = self._admin

    def _admin(self, peer: Peer, msg: Any) -> Awaitable[None] | None:
        return self.hub.admin.answer(peer, msg)  # the hub's: built after its partitions

    def handle(self, peer: Peer, msg: Msg) -> Awaitable[None] | None:
        """Apply one message. Returns an awaitable when it needs the store (reads)."""
        try:
            op = self.ops.get(type(msg))
            return None if op is None else op(peer, msg)
        except TaskHubError as exc:
            ref = getattr(msg, "ref", None)
            self.lc.send(peer, p.error_msg(exc, ref, **_task_of(msg)))
            return None
        except Exception:
            # A bug, not bad input: said loudly here, answered without its details (as the
            # HTTP API's 500), and the connection and the rest of its frame go on.
            log.exception("handling a %s message from %s failed", type(msg).__name__, peer.service)
            ref = getattr(msg, "ref", None)
            self.lc.send(peer, p.error_msg(RuntimeError("internal error; the hub logged it"), ref))
            return None

    # --- a worker's steps ------------------------------------------------------------------
    def _ack(self, peer: Peer, msg: p.Ack) -> None:
        self.lc.ack(peer, msg.task, msg.attempt)

    def _return(self, peer: Peer, msg: p.Return) -> None:
        try:  # _result's kept(), inline: a call less per task
            result = p.kept(msg.result, "result")
        except ProtocolError as exc:
            self._unkept(peer, msg, exc)
            raise
        self.lc.complete(peer, msg.task, msg.attempt, result)
        if msg.ref is not None:  # answer()'s, inline (a message per task): two calls less
            self.send(peer, {"op": "ok", "ref": msg.ref})

    def _pickup(self, peer: Peer, msg: p.Pickup) -> None:
        self.lc.pickup(peer, msg.task, msg.attempt)
        if msg.ref is not None:
            self.send(peer, {"op": "ok", "ref": msg.ref})

    def _update(self, peer: Peer, msg: p.Update) -> None:
        self.lc.update(peer, msg.task, msg.attempt, msg.data)
        self.answer(peer, msg.ref)

    def _drop(self, peer: Peer, msg: p.Drop) -> None:
        self.lc.drop(peer, msg.task, msg.attempt)
        self.answer(peer, msg.ref)

    def _fail(self, peer: Peer, msg: p.Fail) -> None:
        err = p.error_of(msg.error)
        self.lc.fail(peer, msg.task, msg.attempt, err, retry=msg.retry, delay=msg.delay)
        self.answer(peer, msg.ref)

    def _release(self, peer: Peer, msg: p.Release) -> None:
        self.lc.release(peer, msg.task, msg.attempt)
        self.answer(peer, msg.ref)

    def _extend(self, peer: Peer, msg: p.Extend) -> None:
        self.lc.extend(peer, msg.task, msg.attempt, msg.seconds)
        self.answer(peer, msg.ref)

    def _unkept(self, peer: Peer, msg: p.Return, exc: ProtocolError) -> None:
        """A ``return`` whose result the hub cannot keep (JSON msgspec cannot read, such as
        the number ``1e400``) fails the delivery with why, as a handler's error would, before
        the worker is told: a return usually has no ``ref``, and the task would otherwise
        wait, started, for its end timeout."""
        # Not this worker's delivery (any more): then there is nothing to fail.
        with contextlib.suppress(TaskHubError):
            error = {"type": "ProtocolError", "message": exc.message}
            self.lc.fail(peer, msg.task, msg.attempt, error, retry=False)

    # --- subscriptions and publishing ------------------------------------------------------
    def _sub(self, peer: Peer, msg: p.Sub) -> None:
        if not self.hub.draining:  # draining: ok, but no offers (see Hub.drain)
            self.lc.subscribe(
                peer,
                msg.action,
                group=msg.group,
                concurrency=msg.concurrency,
                observe=msg.observe,
                durable=msg.durable,
                options=worker_options(msg.options),
            )
        self.answer(peer, msg.ref)

    def _unsub(self, peer: Peer, msg: p.Unsub) -> None:
        self.lc.unsubscribe(peer, msg.action)
        self.answer(peer, msg.ref)

    def _pub(self, peer: Peer, msg: p.Pub) -> None:
        lc = self.lc
        task, created = lc.publish(
            peer.creds, msg.action, p.kept(msg.payload, "payload"), msg.options, peer=peer
        )
        if not isinstance(task, Task):  # an id: a task ended within its idempotency window
            self.answer(peer, msg.ref, task=task, created=False)
            return
        if msg.ref is None:
            return
        ok = {
            "op": "ok",
            "ref": msg.ref,
            "task": task.id,
            "state": task.rec.state,
            "created": created,
        }
        pool = lc.pooled.get(msg.action) if not task.deliveries else None
        if pool and pool[-1] is task:  # pooled just now: no group subscribes
            # A hint for the publisher (a typo waits forever): docs/protocol.md.
            ok["pooled"] = True
        self.send(peer, ok)

    def _cancel(self, peer: Peer, msg: p.Cancel) -> None:
        self.lc.cancel(peer.creds, msg.task)
        self.answer(peer, msg.ref)

    def _chain(self, peer: Peer, msg: p.Chain) -> None:
        chains = self.hub.chains
        chain = chains.start(
            peer.creds,
            msg.steps,
            mode=msg.mode,
            merge_input=msg.merge_input,
            peer=peer,
            begin=False,
            trace=msg.trace,
        )
        self.answer(peer, msg.ref, task=chain.id, state=chain.rec.state)
        chains.begin(chain)  # after the ok: its events follow the chain's id

    # --- batched messages (docs/protocol.md, "Batched messages") ---------------------------
    def _pubs(self, peer: Peer, msg: p.Pubs) -> None:
        """Each item published as a ``pub`` would be; one ``ok`` answers them all, in order,
        each with its task or its own error (the others are published all the same)."""
        items = batch_items(msg)
        answers = self._pubs_together(peer, items)
        if answers is not None:
            self.answer(peer, msg.ref, items=answers)
            return
        answers = []
        publish, ref = self._publish, msg.ref
        for i, item in enumerate(items):  # pub_item's, inline: a call less per task
            try:
                if isinstance(item, p.Bad):
                    raise item.error
                answers.append(publish(peer, item))
            except Exception as exc:
                answers.append(self._pub_error(peer, exc, i, ref))
        self.answer(peer, ref, items=answers)

    def _pubs_together(self, peer: Peer, items: list[Any]) -> list[dict[str, Any]] | None:
        """The answers of a ``pubs`` whose items are all of one action, without options and
        with payloads the hub can keep, published together (``Lifecycle.publish_many``: what
        is the same for every item done once); None, having published nothing, when its
        items go one by one (any other batch, or an item that is refused: each then gets its
        own answer)."""
        if not items:
            return None
        action = items[0].action if type(items[0]) is p.Pub else None
        for item in items:
            if type(item) is not p.Pub or item.options is not None or item.action != action:
                return None
        assert action is not None
        try:
            payloads = [p.kept(item.payload, "payload") for item in items]
            done = self.lc.publish_many(peer.creds, action, payloads, peer)
        except TaskHubError:
            return None  # one by one: each item refused with its index
        if done is None:
            return None
        tasks, routed = done
        if routed:
            return [{"task": t.id, "state": t.rec.state, "created": True} for t in tasks]
        # No group subscribes: pooled, with a hint for the publisher (a typo waits forever).
        return [
            {"task": t.id, "state": t.rec.state, "created": True, "pooled": True} for t in tasks
        ]

    def pub_item(self, peer: Peer, item: p.Pub | p.Bad, i: int, ref: int | None) -> dict[str, Any]:
        """Item ``i`` of a ``pubs`` published: its answer, or its error (said on its own when
        the batch has no ``ref`` whose ``ok`` would carry it)."""
        try:
            if isinstance(item, p.Bad):
                raise item.error
            return self._publish(peer, item)
        except Exception as exc:
            return self._pub_error(peer, exc, i, ref)

    def _pub_error(self, peer: Peer, exc: Exception, i: int, ref: int | None) -> dict[str, Any]:
        err = _item_error(exc, i, peer, "pub")
        if ref is None:
            self.lc.send(peer, p.error_msg(err))
        return {"error": err.to_wire()}

    def _publish(self, peer: Peer, item: p.Pub) -> dict[str, Any]:
        """One item of ``pubs`` published: its answer (as a ``pub``'s ``ok``, without op)."""
        lc = self.lc
        task, created = lc.publish(
            peer.creds, item.action, p.kept(item.payload, "payload"), item.options, peer=peer
        )
        if not isinstance(task, Task):  # an id: a task ended within its idempotency window
            return {"task": task, "created": False}
        answer = {"task": task.id, "state": task.rec.state, "created": created}
        pool = lc.pooled.get(item.action) if not task.deliveries else None
        if pool and pool[-1] is task:  # pooled just now: a hint, as for pub
            answer["pooled"] = True
        return answer

    def _steps(self, peer: Peer, msg: p.Acks | p.Pickups | p.Returns) -> None:
        """Each item applied as its single message would be, with its own answer: an error
        names the item's index (``details.index``) besides its task and ``ref``."""
        ops = self.ops
        for i, item in enumerate(batch_items(msg)):  # step_item's, inline: a call less per task
            try:
                if isinstance(item, p.Bad):
                    raise item.error
                ops[type(item)](peer, item)
            except Exception as exc:
                self._step_error(peer, exc, item, i)
        self.answer(peer, msg.ref)  # the batch itself, after its items' own answers

    def _returns(self, peer: Peer, msg: p.Returns) -> None:
        """:meth:`_steps` for a ``returns``, with :meth:`_return` inline (a call less per
        task) and the credit the returns give back offered once, after the last item,
        instead of after each (docs/performance.md, "hub: sixteenth pass"): the worker
        hears the same offers in the same order, before the batch's ``ok``."""
        items = batch_items(msg)
        lc = self.lc
        complete, send, kept = lc.complete, self.send, p.kept
        lc.hold_dispatch()
        try:
            for i, item in enumerate(items):
                try:
                    if type(item) is not p.Return:  # a Bad item
                        raise item.error
                    try:
                        result = kept(item.result, "result")
                    except ProtocolError as exc:
                        self._unkept(peer, item, exc)
                        raise
                    complete(peer, item.task, item.attempt, result)
                    if item.ref is not None:
                        send(peer, {"op": "ok", "ref": item.ref})
                except Exception as exc:
                    self._step_error(peer, exc, item, i)
        finally:
            lc.dispatch_held()
        self.answer(peer, msg.ref)  # the batch itself, after its items' own answers

    def step_item(self, peer: Peer, item: Any, i: int) -> None:
        """Item ``i`` of an ``acks``, ``pickups`` or ``returns``, applied as its single
        message would be; an error names the item's index besides its task and ``ref``."""
        try:
            if isinstance(item, p.Bad):
                raise item.error
            self.ops[type(item)](peer, item)
        except Exception as exc:
            self._step_error(peer, exc, item, i)

    def _step_error(self, peer: Peer, exc: Exception, item: Any, i: int) -> None:
        err = _item_error(exc, i, peer, type(item).__name__.lower())
        self.lc.send(peer, p.error_msg(err, item.ref, **_task_of(item)))

    # --- topics and watches ----------------------------------------------------------------
    def _subscribe(self, peer: Peer, msg: p.Subscribe) -> None:
        self.hub.topics.subscribe(peer, msg.topic)
        self.answer(peer, msg.ref)

    def _unsubscribe(self, peer: Peer, msg: p.Unsubscribe) -> None:
        self.hub.topics.unsubscribe(peer, msg.topic)
        self.answer(peer, msg.ref)

    def _emit(self, peer: Peer, msg: p.Emit) -> None:
        n = self.hub.topics.emit(peer.creds, msg.topic, msg.data, sender=peer)
        self.answer(peer, msg.ref, receivers=n)

    def _watch(self, peer: Peer, msg: p.Watch) -> None:
        self.hub.watches.watch(peer, msg.pattern)
        self.answer(peer, msg.ref)

    def _unwatch(self, peer: Peer, msg: p.Unwatch) -> None:
        self.hub.watches.unwatch(peer, msg.pattern)
        self.answer(peer, msg.ref)

    # --- the connection itself -------------------------------------------------------------
    def _hello(self, peer: Peer, msg: p.Hello) -> None:
        said = {"client": msg.client, "version": msg.version, "host": msg.host, "pid": msg.pid}
        peer.hello = {k: v for k, v in said.items() if v is not None}
        peer.batch = msg.batch
        peer.starts = msg.starts
        self.hub.hub.hello_again(peer)
        self.answer(peer, msg.ref)

    def _bad(self, peer: Peer, msg: p.Bad) -> None:
        raise msg.error

    # --- reads -----------------------------------------------------------------------------
    async def read(self, peer: Peer, msg: p.Get | p.Follow | p.GetPayload) -> None:
        """``get``, ``follow`` or ``payload``: from the lifecycle, the batches not yet
        written, or the store (:meth:`Hub.find`)."""
        try:
            rec = await self.hub.find(msg.task)
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
                self.answer(peer, msg.ref, payload=rec.payload)
            else:
                if isinstance(msg, p.Follow):
                    self.lc.follow(peer, msg.task)
                self.answer(peer, msg.ref, task=task_view(rec))
        except TaskHubError as exc:
            self.lc.send(peer, p.error_msg(exc, msg.ref, task=msg.task))
        except Exception:  # the store failed: say so, keep the connection
            log.exception("reading task %s failed", msg.task)
            err = StoreUnavailable(f"could not read task {msg.task} from the store; try again")
            self.lc.send(peer, p.error_msg(err, msg.ref, task=msg.task))
        self.hub.kick()


def batch_items(msg: p.Pubs | p.Acks | p.Pickups | p.Returns) -> list[Any]:
    """The items of a batched message (some may be :class:`~taskhub.protocol.Bad`); a batch
    over the limit is refused whole, naming the limit."""
    items: list[Any] = msg.items
    if len(items) > p.MAX_BATCH:
        op = msg.__struct_config__.tag
        raise ProtocolError(
            f"{op} message of {len(items)} items is over the limit of {p.MAX_BATCH} items "
            "per batched message (welcome.max_batch); none of them was applied",
            limit=p.MAX_BATCH,
        )
    return items


def _item_error(exc: Exception, index: int, peer: Peer, op: str) -> TaskHubError:
    """The error of one item of a batched message, naming the item (``details.index``)."""
    if isinstance(exc, TaskHubError):
        if "index" in exc.details:  # decoding named it already
            return exc
        return type(exc)(f"item {index}: {exc.message}", **exc.details, index=index)
    log.exception("handling item %d of a batched %s from %s failed", index, op, peer.service)
    return _Internal(f"item {index}: internal error; the hub logged it", index=index)


class _Internal(TaskHubError):
    """A bug while applying one item of a batched message (as ``error_msg`` says of any)."""

    code = "internal"


def _task_of(msg: object) -> dict[str, Any]:
    task = getattr(msg, "task", None)
    return {"task": task} if isinstance(task, str) else {}
