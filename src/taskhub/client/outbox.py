"""What a connection has queued in one loop turn, made into messages at the flush: several
``pub``, ``ack``, ``pickup`` or ``return`` in a row leave as one batched message (``pubs``,
``acks``, ``pickups``, ``returns``; docs/protocol.md, "Batched messages") when the hub's
``welcome`` says it takes them, each as before otherwise.

Messages are encoded as they are queued (a message that cannot be sent raises at once); the
batching works on those bytes: an item is its message without the ``"op"`` it starts with.
A ``pub`` is queued without a ``ref``: it gets one at the flush, its own or its batch's.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from taskhub.client.retry import later, retryable

if TYPE_CHECKING:
    from taskhub.client.connection import Connection, Message, PubReceiver, Receiver, Waiter
    from taskhub.client.typed import PubAnswer

log = logging.getLogger("taskhub.client")

# Items per batched message the client sends (at most the hub's max_batch). The hub applies a
# long frame in chunks of 32 messages, an item counting as one (hub/ws/feed.py), but never
# splits a message: a batch of this size keeps those chunks short while the per-message costs
# are already spread over many tasks.
BATCH_ITEMS = 64
# The room a batch's own bytes take besides its items: {"op":"pubs","ref":N,"items":[...]}.
_OVERHEAD = 64

_PUB = b'{"op":"pub",'  # how a pub's JSON starts (the clients put op first)
# The single kinds a worker sends in runs, by the bytes their messages start with.
_STEPS: dict[bytes, bytes] = {
    b'{"op":"ack",': b"acks",
    b'{"op":"pickup",': b"pickups",
    b'{"op":"return",': b"returns",
}


# A ``pub`` waiting for the flush, then for its answer: its JSON without a ``ref``, who gets
# its answer, and how often it was sent again (client/retry.py). A tuple, not an object of a
# class: made per task, it costs no Python call to make (and less for the collector to walk).
QueuedPub = tuple[bytes, "PubReceiver", int]
Entry = bytes | QueuedPub


class BatchAnswer:
    """The receiver of a ``pubs``: hands each item's answer (the ``ok``'s ``items``, in order)
    to that item's own receiver, or the batch's error or loss to all of them. An item answered
    ``partition_unavailable`` is sent again, alone (client/retry.py)."""

    __slots__ = ("receivers",)

    def __init__(self, receivers: list[QueuedPub]) -> None:
        self.receivers = receivers

    def feed_answer(self, reply: Message, conn: Connection | None = None) -> None:
        items = reply.get("items") if reply.get("op") == "ok" else None
        if not isinstance(items, list):  # the batch was refused as a whole: each hears why
            for queued in self.receivers:
                _tell(queued[1], reply)
            return
        for queued, item in zip(self.receivers, items, strict=False):
            error = item.get("error")
            if error is None:
                item["op"] = "ok"
                try:  # _tell's steps, without a call per task
                    queued[1].feed_answer(item)
                except Exception:
                    log.exception("handling the answer to a pub failed")
            elif conn is not None and retryable(error, queued[2]):
                later(conn, queued, {"op": "error", **error})
            else:
                _tell(queued[1], {"op": "error", **error})
        if len(items) != len(self.receivers):
            self._missing(len(items))

    def feed_items(self, items: list[PubAnswer], conn: Connection) -> None:
        """:meth:`feed_answer` for an ``ok`` read as structs (client/typed.py)."""
        for queued, item in zip(self.receivers, items, strict=False):
            error = item.error
            try:
                if error is None and item.task is not None:
                    queued[1].feed_accepted(item.task, item.created, item.pooled)
                elif error is None:  # a hub bug: the receiver says what is missing
                    queued[1].feed_answer({"op": "ok"})
                elif retryable(error, queued[2]):
                    later(conn, queued, {"op": "error", **error})
                else:
                    queued[1].feed_answer({"op": "error", **error})
            except Exception:
                log.exception("handling the answer to a pub failed")
        if len(items) != len(self.receivers):
            self._missing(len(items))

    def _missing(self, answered: int) -> None:
        """The hub answered fewer items than were sent (a hub bug): say so, and fail the rest
        rather than let them wait forever."""
        log.error("the hub answered %d of %d pubs", answered, len(self.receivers))
        from taskhub.errors import ProtocolError

        missing = ProtocolError("the hub's answer to a batch of pubs left this one out")
        for queued in self.receivers[answered:]:
            queued[1].feed_unanswered(missing)

    def feed_unanswered(self, exc: BaseException) -> None:
        for queued in self.receivers:
            try:
                queued[1].feed_unanswered(exc)
            except Exception:
                log.exception("failing a request without an answer failed")


def _tell(receiver: Receiver, reply: Message) -> None:
    try:
        receiver.feed_answer(reply)
    except Exception:
        log.exception("handling the answer to a pub failed")


def take(
    entries: list[Entry],
    *,
    batch: int,
    limit: int,
    refs: itertools.count[int],
    pending: MutableMapping[int, Waiter],
) -> list[bytes]:
    """The messages to send for ``entries``, in order: runs of one batchable kind as one
    batched message of at most ``batch`` items (0: the hub takes none) and ``limit`` bytes;
    every ``pub`` given its ``ref`` and its receiver entered in ``pending``."""
    out: list[bytes] = []
    i, n = 0, len(entries)
    room = limit - _OVERHEAD
    while i < n:
        entry = entries[i]
        j = i + 1
        if type(entry) is tuple:  # a pub
            size = len(entry[0])
            while j < n and j - i < batch:
                nxt = entries[j]
                if type(nxt) is not tuple:
                    break
                size += len(nxt[0]) + 1
                if size > room:
                    break
                j += 1
            out.append(_pubs(entries[i:j], refs, pending))  # type: ignore[arg-type]
            i = j
            continue
        assert isinstance(entry, bytes)
        prefix = entry[: entry.find(b",") + 1] if batch > 1 else b""  # '{"op":"return",'
        kind = _STEPS.get(prefix)
        if kind is not None:
            size = len(entry)
            while j < n and j - i < batch:
                nxt = entries[j]
                if type(nxt) is not bytes or not nxt.startswith(prefix):
                    break
                size += len(nxt) + 1
                if size > room:
                    break
                j += 1
        if kind is None or j == i + 1:
            out.append(entry)
        else:  # the items: each message from its first field on, after a '{' of its own
            cut = len(prefix)
            items = b",{".join([part[cut:] for part in entries[i:j]])  # type: ignore[misc]
            out.append(b'{"op":"' + kind + b'","items":[{' + items + b"]}")
        i = j
    return out


def _pubs(
    run: list[QueuedPub], refs: itertools.count[int], pending: MutableMapping[int, Waiter]
) -> bytes:
    ref = next(refs)
    if len(run) == 1:
        item = run[0]
        pending[ref] = item
        return item[0][:-1] + b',"ref":%d}' % ref
    pending[ref] = BatchAnswer(run)
    cut = len(_PUB)  # each item from its first field on, after a '{' of its own
    items = b",{".join([item[0][cut:] for item in run])
    return b'{"op":"pubs","ref":%d,"items":[{' % ref + items + b"]}"
