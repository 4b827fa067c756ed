"""Sortable task ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(120, -1, -10))
_RAND_MASK = (1 << 80) - 1


class UlidFactory:
    """Monotonic within a millisecond, so ids sort in creation order on one hub."""

    __slots__ = ("_head", "_head_key", "_last_ms", "_last_rand")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_rand = 0
        self._head_key = -1  # (ms << 70) | (rand >> 10) that _head spells
        self._head = ""

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = (self._last_rand + 1) & _RAND_MASK
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        self._last_ms, self._last_rand = ms, rand
        # 26 digits (130 bits, the top two zero), two digits (10 bits) per table lookup. In a
        # burst only the last pair changes from one id to the next: the other 12 are reused.
        key = (ms << 70) | (rand >> 10)
        if key != self._head_key:
            value = (ms << 80) | rand
            self._head = "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS[:-1]])
            self._head_key = key
        return self._head + _PAIRS[rand & 1023]


new_id = UlidFactory()
