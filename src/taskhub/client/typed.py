"""The hub's hottest messages decoded into structs for the client's own use (docs/decisions.md,
"The clients' per-task Python, fourth pass"): a frame that is one ``offers`` message (a
worker's), a frame of task events that no watch reads and the answer to a ``pubs`` (a
publisher's). A struct is made in less work than a dict of the same fields, and fields no
consumer reads are skipped unparsed.

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


class Event(msgspec.Struct, tag_field="op", tag="event"):
    """A task ``event`` (docs/protocol.md §4) as a handle and a handler's task read it:
    ``at``, ``group``, ``service`` and ``seq`` are skipped unparsed. A watched event (its
    ``watched``, ``true``, is not null) does not fit: it goes to a watch, as a dict, so its
    frame is read as dicts (found by the decoder, not by a search of the frame's bytes)."""

    task: str
    type: str
    state: str
    data: Any = None
    watched: None = None


class PubAnswer(msgspec.Struct):
    """One item of the ``ok`` answering a ``pubs`` (docs/protocol.md, "Batched messages"):
    the task accepted (``created``, ``pooled``), or refused with ``error``."""

    task: str | None = None
    created: bool | None = None
    pooled: bool = False
    error: dict[str, Any] | None = None


class PubsAnswer(msgspec.Struct):
    """The ``ok`` answering a ``pubs`` (its ``op`` known from the frame's first bytes)."""

    ref: int
    items: list[PubAnswer]


OnOffers = Callable[[list[Offer]], None]
OnEvents = Callable[[list[Event]], None]
# Takes a pubs' answer if its request is a pubs (False: it is to be read as a dict).
OnAnswer = Callable[[PubsAnswer], bool]
_answer_decoder = msgspec.json.Decoder(PubsAnswer)
_events_decoder = msgspec.json.Decoder(list[Event])
_event_decoder = msgspec.json.Decoder(Event)
_HEAD = len(OFFERS_PREFIX)
# How a frame of one event, or of events, starts (the hub writes `op` first).
_EVENT = b'{"op":"event",'
_EVENTS = b'[{"op":"event",'
_OK = b'{"op":"ok","ref":'
_ITEMS = b'"items":['


class Reader:
    """Reads the frames that fit a struct, for :meth:`Connection._dispatch`: ``on_offers``
    gets the items of a frame that is one ``offers`` message, ``on_events`` the events of a
    frame of task events none of which is watched, ``on_answer`` a frame that is one ``ok``
    with ``items`` (a publisher's pubs answered)."""

    __slots__ = ("on_answer", "on_events", "on_offers")

    def __init__(self, on_offers: OnOffers, on_events: OnEvents, on_answer: OnAnswer) -> None:
        self.on_offers = on_offers
        self.on_events = on_events
        self.on_answer = on_answer

    def took(self, frame: bytes | bytearray | memoryview | str) -> bool:
        """Whether ``frame`` was read here; False: it is to be read as dicts."""
        if not isinstance(frame, bytes | bytearray):  # websockets gives bytes
            return False
        head = frame[:_HEAD]
        items: list[Any]
        try:
            if head == OFFERS_PREFIX:
                items = offers_decoder.decode(frame).items
                take: Callable[[Any], None] = self.on_offers
            elif head[:15] == _EVENTS:
                items = _events_decoder.decode(frame)
                take = self.on_events
            elif head[:14] == _EVENT:
                items = [_event_decoder.decode(frame)]
                take = self.on_events
            elif head[:17] == _OK and _ITEMS in frame:
                return self.on_answer(_answer_decoder.decode(frame))
            else:
                return False
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False  # another message with them, a field of another type: as dicts
        try:
            take(items)
        except Exception:
            log.exception("handling messages from the hub failed")
        return True
