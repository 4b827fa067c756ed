"""Requests sent again when the hub answers ``partition_unavailable`` (docs/client.md,
"When a partition has no leader").

A hub answers that code for a request that needs a partition no hub leads at the moment (one
hub hands it to another, or takes over a dead one's), after holding it up to a lease, and
*before applying anything*: nothing of the request was stored, so sending it again cannot
publish twice. The client does so for the kinds in :data:`RETRIED` (a task, a chain or group,
and the reads and subscriptions that only change what the connection is told), after the
hub's ``retry_after`` seconds, at most :data:`TRIES` times; then the error goes to the caller.
A worker's steps (results, acks) are not sent again: the hub answers them once it leads the
partition again, and their task is offered again if need be.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from taskhub.errors import TaskHubError, from_wire

if TYPE_CHECKING:
    from taskhub.client.connection import Connection, Message, Receiver
    from taskhub.client.outbox import QueuedPub

log = logging.getLogger("taskhub.client")

CODE = "partition_unavailable"
# Requests sent again (a pub also in a batched pubs, item by item): none was applied.
RETRIED = frozenset({"pub", "chain", "follow", "get", "payload", "sub", "unsub"})
TRIES = 5  # sends after the first: with a hub holding each up to a lease, ~20 s at most
_LONGEST = 10.0  # seconds between two sends, whatever the hub says


def retryable(reply: Message, tries: int) -> bool:
    """Whether a request answered ``reply`` after ``tries`` resends is sent again."""
    return reply.get("code") == CODE and tries < TRIES


def delay(reply: Message) -> float:
    """Seconds before the next send: the hub's ``retry_after`` (1 when it says none), spread
    over up to half again so that many clients do not come back at once."""
    details = reply.get("details") or {}
    try:
        after = float(details.get("retry_after", 1.0))
    except (TypeError, ValueError):
        after = 1.0
    return min(_LONGEST, max(0.0, after)) * (1.0 + random.random() / 2)


class Resend:
    """A request of a kind in :data:`RETRIED` that is not a ``pub``: the message (sent again
    with a new ``ref``) and who gets its answer."""

    __slots__ = ("msg", "tries", "waiter")

    def __init__(self, msg: Message, waiter: asyncio.Future[Message] | Receiver) -> None:
        self.msg = msg
        self.waiter = waiter
        self.tries = 0

    def wanted(self) -> bool:
        """Whether anyone still waits for the answer: a future cancelled meanwhile (a
        subscription's send that a reconnect's own send replaced) is not sent again."""
        waiter = self.waiter
        return not isinstance(waiter, asyncio.Future) or not waiter.done()

    def feed_answer(self, reply: Message) -> None:
        waiter = self.waiter
        if not isinstance(waiter, asyncio.Future):
            waiter.feed_answer(reply)
        elif not waiter.done():
            if reply.get("op") == "ok":
                waiter.set_result(reply)
            else:
                waiter.set_exception(from_wire(reply))

    def feed_unanswered(self, exc: BaseException) -> None:
        waiter = self.waiter
        if not isinstance(waiter, asyncio.Future):
            waiter.feed_unanswered(exc)
        elif not waiter.done():
            waiter.set_exception(exc)


def later(conn: Connection, waiter: QueuedPub | Resend, reply: Message) -> None:
    """Send ``waiter``'s request again after :func:`delay` (``reply`` said why)."""
    if isinstance(waiter, Resend):
        waiter.tries += 1
        op, tries = waiter.msg.get("op"), waiter.tries
    else:  # a queued pub (a tuple): queued again as a new one, its tries counted
        waiter = (waiter[0], waiter[1], waiter[2] + 1)
        op, tries = "pub", waiter[2]
    wait = delay(reply)
    log.info(
        "%s answered %s (%s); sending it again in %.1fs (%d of %d)",
        op,
        CODE,
        reply.get("message", ""),
        wait,
        tries,
        TRIES,
    )
    loop = conn.loop or asyncio.get_running_loop()
    loop.call_later(wait, _again, conn, waiter, reply)


def _again(conn: Connection, waiter: QueuedPub | Resend, reply: Message) -> None:
    if isinstance(waiter, Resend) and not waiter.wanted():
        return
    try:
        if isinstance(waiter, Resend):
            conn.post(waiter.msg, waiter)
        else:
            conn.requeue(waiter)
    except TaskHubError as exc:  # the client was closed meanwhile: the hub's answer stands
        log.debug("not sent again: %s", exc)
        (waiter if isinstance(waiter, Resend) else waiter[1]).feed_answer(reply)
