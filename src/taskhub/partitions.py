"""Which partition a group queue or a task belongs to (pure: no I/O; docs/deployment.md,
"Partitions").

A deployment splits its work into ``partitions`` (P) partitions, fixed for its life. A group
queue (an action and a group) lives in one partition, chosen by :func:`partition_of`, so its
credit, round robin, per-key ordering and timers never span two. A task id carries the
partition it was made in (:class:`taskhub.ids.UlidFactory`), so anything addressed by id
alone (a result, an ack, a cancel, a read) is routed by :func:`partition_of_id`.
"""

from __future__ import annotations

import zlib

DEFAULT_PARTITIONS = 1  # one partition: the layout and behaviour of a hub before partitions
MAX_PARTITIONS = 1024  # 2 ** PARTITION_BITS: what a task id can name
PARTITION_BITS = 10  # the top bits of a ULID's 80-bit random part
PARTITION_SHIFT = 80 - PARTITION_BITS

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crockford base32 decoding is case-insensitive; the two digits after the 10 of the time.
_DIGIT = {c: i for i, c in enumerate(_CROCKFORD)} | {c.lower(): i for i, c in enumerate(_CROCKFORD)}


def check_partitions(value: object, *, where: str = "partitions") -> int:
    """``value`` as a partition count; ValueError naming ``where`` unless it is an integer
    from 1 to :data:`MAX_PARTITIONS`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where} must be an integer from 1 to {MAX_PARTITIONS}, got {value!r}")
    if not 1 <= value <= MAX_PARTITIONS:
        raise ValueError(f"{where} must be from 1 to {MAX_PARTITIONS}, got {value}")
    return value


def partition_of(action: str, group: str, partitions: int) -> int:
    """The partition of the group queue ``(action, group)``: the same on every hub and in
    every process (CRC-32, not Python's salted ``hash``)."""
    if partitions == 1:
        return 0
    return zlib.crc32((action + "\x00" + group).encode()) % partitions


def partition_of_id(task_id: str) -> int:
    """The partition a task id was made in (0 for ids of a one-partition hub).

    ValueError when ``task_id`` is not a ULID (26 Crockford base32 digits): nothing was made
    with it, so there is no partition to route it to.
    """
    if len(task_id) != 26:
        raise ValueError(f"not a task id (a 26-character ULID): {task_id!r}")
    try:
        # Digits 10 and 11 are the random part's top 10 bits (digits 0-9: the 50 bits of time).
        return (_DIGIT[task_id[10]] << 5) | _DIGIT[task_id[11]]
    except KeyError:
        raise ValueError(f"not a task id (a 26-character ULID): {task_id!r}") from None
