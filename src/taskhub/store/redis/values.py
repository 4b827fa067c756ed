"""How the Redis engine stores records and events (layout 4): MessagePack, and JSON read as
well (layouts 1-3 wrote JSON; a batch whose values MessagePack cannot carry is still written as
JSON). A stored value says which it is by its first byte: msgspec's JSON of a record starts
with ``{`` and of a list of events with ``[``, MessagePack's with a map or array marker."""

from __future__ import annotations

import msgspec

from taskhub.records import EventRecord, TaskRecord

_task_json = msgspec.json.Decoder(TaskRecord).decode
_task_msgpack = msgspec.msgpack.Decoder(TaskRecord).decode
_events_json = msgspec.json.Decoder(list[EventRecord]).decode
_events_msgpack = msgspec.msgpack.Decoder(list[EventRecord]).decode
_OPEN_BRACE, _OPEN_BRACKET = ord("{"), ord("[")

# A record or a batch's events of a task as stored: MessagePack is ~1/6 cheaper for the hub to
# encode than JSON (floats are copied, not formatted) and ~15 % shorter, and every byte of it
# goes through the batch script's Lua strings (docs/performance.md, "redis: sixteenth pass").
encode = msgspec.msgpack.Encoder().encode
# What a batch is written with when MessagePack cannot hold one of its values (an integer
# beyond 64 bits, which JSON carries): encode raises OverflowError for those.
encode_json = msgspec.json.Encoder().encode


def task(blob: bytes) -> TaskRecord:
    """A stored record, MessagePack or JSON."""
    return _task_json(blob) if blob[0] == _OPEN_BRACE else _task_msgpack(blob)


def events(blob: bytes) -> list[EventRecord]:
    """One batch's events of a task as stored (a ``g<n>`` field), MessagePack or JSON."""
    return _events_json(blob) if blob[0] == _OPEN_BRACKET else _events_msgpack(blob)
