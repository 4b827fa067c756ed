"""A batch as the batch script takes it (``apply.lua``'s arguments: a header of its small fields
and its values, docs/redis.md "The batch script's arguments"), and a big batch cut into
pieces that are staged, committed and then applied one script call each (docs/redis.md, "Big
batches"), so no single call holds Redis long while the batch stays all or nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from taskhub.records import TERMINAL_STATES, EventRecord, WriteBatch

# A batch of more items than this (task records, events, deletes, metadata entries) is written
# in pieces of about this many. redis-server spends ~10 us per task record (~3 under
# redis_script_bench.py's small batches), so a piece holds Redis ~20-50 ms, and ~20 ms of the
# hub's loop to encode: far under a lease (3 s) even on a loaded machine, where one call for a
# subscription that routes 100,000 waiting tasks held it for 2-4 s.
PIECE_ITEMS = 5000
_NONE: list[Any] = []


_float_text = msgspec.json.Encoder().encode


def _score(value: float) -> str:
    """An end score as text: the shortest that reads back as the same double (Redis parses it
    with strtod), as repr gives, at ~1/5 of repr's cost (msgspec; ~0.5 us per task)."""
    text = _float_text(float(value)).decode()
    return text if text != "null" else repr(float(value))  # NaN, infinities: repr's words


def size(batch: WriteBatch) -> int:
    """The items of ``batch``, as :data:`PIECE_ITEMS` counts them."""
    return (
        len(batch.tasks)
        + len(batch.events)
        + len(batch.deleted)
        + len(batch.meta)
        + len(batch.meta_deleted)
    )


def batch_args(
    batch: WriteBatch,
    head: list[Any],
    encode: Callable[[Any], bytes],
    pack: Callable[[Any], bytes],
) -> list[Any]:
    """``apply.lua``'s arguments for ``batch`` after ``head`` (prefix, fence key, fence token,
    terminal states): the batch's header, packed with ``pack`` (MessagePack), then its values,
    encoded with ``encode``.

    The header is one flat array: ``"E"`` (this format: a piece staged by an older taskhub has
    none), then the batch's small fields in counted groups: tasks (id, state, action, ended
    score or ``''``, 1 if the task has events in the batch else 0), tasks whose events come
    without their record (id), deleted ids, meta (kind, key), meta deletes (kind, key). The
    values follow in the header's order: each task's record and then its events (one JSON
    array), the other tasks' events (an array each), each meta entry's value. One argument
    for all the small fields, and one for a task's events, cost the hub ~2k instructions an
    argument less to pack (hiredis), and redis-server less too (docs/performance.md).
    """
    # A task's events go into its hash in the same HSET as its record, as one field
    # (apply.lua): the list is encoded as it is, a JSON array.
    events: dict[str, list[EventRecord]] = {}
    for e in batch.events:
        task_id = e.task_id
        if task_id in events:
            events[task_id].append(e)
        else:
            events[task_id] = [e]
    tasks = batch.tasks  # a task given twice is indexed by its last record (apply.lua)
    fields: list[Any] = ["E", len(tasks)]
    values: list[Any] = [*head, b""]  # b"": the header's place, filled in last
    add_value, pop = values.append, events.pop
    for t in tasks:
        at = t.ended_at
        ended = _score(at) if at is not None and t.state in TERMINAL_STATES else ""
        add_value(encode(t))
        evs = pop(t.id, None)
        if evs is None:
            fields += (t.id, t.state, t.action, ended, 0)
        else:
            fields += (t.id, t.state, t.action, ended, 1)
            add_value(encode(evs))
    fields.append(len(events))
    for task_id, evs in events.items():
        fields.append(task_id)
        add_value(encode(evs))
    fields.append(len(batch.deleted))
    fields += batch.deleted
    fields.append(len(batch.meta))
    for m in batch.meta:
        fields += (m.kind, m.key)
        add_value(encode(m.value))
    fields.append(len(batch.meta_deleted))
    for kind, key in batch.meta_deleted:
        fields += (kind, key)
    values[len(head)] = pack(fields)
    return values


def pieces(batch: WriteBatch, items: int) -> Iterator[WriteBatch]:
    """``batch`` as consecutive batches of about ``items`` items each (a task's record goes
    with its events, so a piece may hold a few more), which written in order write what
    ``batch`` writes: the script's order is upserts, events, deletes, meta, meta deletes, and
    each piece keeps it for its part."""
    by_task: dict[str, list[EventRecord]] = {}
    for e in batch.events:
        by_task.setdefault(e.task_id, []).append(e)
    piece = WriteBatch([], [], sealed=batch.sealed)
    count = 0
    for t in batch.tasks:
        evs = by_task.pop(t.id, _NONE)
        piece.tasks.append(t)
        piece.events += evs
        count += 1 + len(evs)
        if count >= items:
            yield piece
            piece, count = WriteBatch([], [], sealed=batch.sealed), 0
    rest: list[tuple[str, Any]] = [("events", e) for evs in by_task.values() for e in evs]
    rest += [("deleted", d) for d in batch.deleted]
    rest += [("meta", m) for m in batch.meta]
    rest += [("meta_deleted", m) for m in batch.meta_deleted]
    for field, item in rest:
        getattr(piece, field).append(item)
        count += 1
        if count >= items:
            yield piece
            piece, count = WriteBatch([], [], sealed=batch.sealed), 0
    if piece:
        yield piece
