"""The hub's hottest messages decoded into structs for the client's own use (docs/decisions.md,
"The clients' per-task Python, fourth pass"): a frame that is one ``offers`` message, read by
a worker. A struct is made in about half the work of a dict of the same fields, and fields
no consumer reads are skipped unparsed.

Only what the client reads itself is decoded so; what it hands to an application (a handler's
``TaskContext``, a watch's events, a request's reply) is what the dict path gives. A frame
that does not fit (another message with it, a field of another type, a missing field) is
decoded the usual way, as a dict per message, so what is accepted and how stays the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

log = logging.getLogger("taskhub.client")

# How a frame that is one `offers` message starts: the hub writes `op` first, then `items`.
OFFERS_PREFIX = b'{"op":"offers","items":['


class Offer(msgspec.Struct):
    """One item of an ``offers`` message (docs/protocol.md §4, ``offer``). The fields a
    :class:`~taskhub.client.task.TaskContext` reads; ``payload`` is UNSET when the offer
    carried only ``payload_size`` (fetched when the handler asks)."""

    task: str
    attempt: int
    action: str
    group: str
    publisher: str
    created_at: int | float
    payload: Any = msgspec.UNSET
    observe: bool = False
    previous_result: Any = None
    trace: Any = None


class Offers(msgspec.Struct):
    """An ``offers`` message (its ``op`` is known from the frame's first bytes)."""

    items: list[Offer]


offers_decoder = msgspec.json.Decoder(Offers)


# What takes the items of a frame that is one ``offers`` message (a worker's client).
OnOffers = Callable[[list[Offer]], None]
_OFFERS_LEN = len(OFFERS_PREFIX)


def took_offers(frame: bytes | bytearray | memoryview | str, on_offers: OnOffers) -> bool:
    """If ``frame`` is one ``offers`` message that fits :class:`Offers`, hand its items to
    ``on_offers`` and return True; else False: the frame is to be read as dicts."""
    if frame[:_OFFERS_LEN] != OFFERS_PREFIX:
        return False
    try:
        offers = offers_decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False  # another message with it, a field of another type: as dicts
    try:
        on_offers(offers.items)
    except Exception:
        log.exception("handling offers from the hub failed")
    return True
