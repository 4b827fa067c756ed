"""Sortable task ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32).

The top 10 bits of the random part hold the partition the id was made in
(:mod:`taskhub.partitions`); the other 70 are random, so ids stay valid ULIDs that sort in
creation order.
"""

from __future__ import annotations

import hashlib
import os
import time

from taskhub.partitions import MAX_PARTITIONS, PARTITION_BITS

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(120, -1, -10))
# The random part below the partition's bits: what increments within a millisecond.
_LOW_BITS = 80 - PARTITION_BITS
_LOW_MASK = (1 << _LOW_BITS) - 1


class UlidFactory:
    """Monotonic within a millisecond, so ids sort in creation order on one hub; every id
    names ``partition`` (:func:`taskhub.partitions.partition_of_id` reads it back)."""

    __slots__ = (
        "_head",
        "_head_key",
        "_low",
        "_ms",
        "_next_ns",
        "_rand",
        "_top",
        "partition",
    )

    def __init__(self, partition: int = 0) -> None:
        if not 0 <= partition < MAX_PARTITIONS:
            raise ValueError(f"partition must be from 0 to {MAX_PARTITIONS - 1}, got {partition}")
        self.partition = partition
        self._top = partition << _LOW_BITS
        self._ms = -1
        self._rand = self._top
        self._head_key = -1  # (ms << 70) | (rand >> 10) that _head spells
        self._head = ""
        # The fast path's state (docs/performance.md, "hub: sixteenth pass"): the last id's
        # ten low bits, and the first nanosecond after its millisecond.
        self._low = 1023
        self._next_ns = 0

    # The last id's millisecond and random part (what the next id increments within it).
    @property
    def _last_ms(self) -> int:
        return self._ms

    @_last_ms.setter
    def _last_ms(self, ms: int) -> None:
        self._rand = self._last_rand
        self._ms = ms
        self._next_ns = 0  # the next call takes the full path

    @property
    def _last_rand(self) -> int:
        return (self._rand & ~1023) | self._low if self._next_ns else self._rand

    @_last_rand.setter
    def _last_rand(self, rand: int) -> None:
        self._rand = rand
        self._next_ns = 0

    def __call__(self) -> str:
        # The common case, a burst: the same millisecond (or the clock stepped back) and no
        # carry out of the ten low bits: the id is the last one's head and the next pair.
        # One comparison and a small int instead of the division and 130-bit arithmetic.
        ns = time.time_ns()
        if ns < self._next_ns:
            low = self._low + 1
            if low < 1024:
                self._low = low
                return self._head + _PAIRS[low]
        return self._next(ns)

    def _next(self, ns: int) -> str:
        """The id after the last one, the whole way: a new millisecond, or a carry."""
        rand = self._last_rand
        ms = ns // 1_000_000
        if ms <= self._ms:
            ms = self._ms
            # The increment stays below the partition's bits (it has 2**69 of headroom).
            rand = self._top | ((rand + 1) & _LOW_MASK)
        else:
            # 69 random bits under the partition's; the 70th is zero: headroom for increments.
            rand = self._top | (int.from_bytes(os.urandom(9), "big") & (_LOW_MASK >> 1))
        self._ms, self._rand = ms, rand
        self._low = rand & 1023
        self._next_ns = (ms + 1) * 1_000_000
        # 26 digits (130 bits, the top two zero), two digits (10 bits) per table lookup. In a
        # burst only the last pair changes from one id to the next: the other 12 are reused.
        key = (ms << 70) | (rand >> 10)
        if key != self._head_key:
            value = (ms << 80) | rand
            self._head = "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS[:-1]])
            self._head_key = key
        return self._head + _PAIRS[rand & 1023]


def named_id(at: float, name: str, partition: int = 0) -> str:
    """The id of what ``name`` names at ``at`` (epoch seconds) in ``partition``: the same id
    wherever and however often it is made, so a copy sent again is known by it (a schedule's
    slot publishes its task once). A ULID like the others, whose time is ``at``; its 70 bits
    under the partition's are a hash of ``name``."""
    if not 0 <= partition < MAX_PARTITIONS:
        raise ValueError(f"partition must be from 0 to {MAX_PARTITIONS - 1}, got {partition}")
    ms = max(0, int(at * 1000)) & ((1 << 48) - 1)
    digest = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=9).digest(), "big")
    value = (ms << 80) | (partition << _LOW_BITS) | (digest & _LOW_MASK)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


new_id = UlidFactory()
