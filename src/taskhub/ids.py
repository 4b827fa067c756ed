"""Sortable task ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(120, -1, -10))


class UlidFactory:
    """Monotonic within a millisecond, so ids sort in creation order on one hub."""

    __slots__ = ("_last_ms", "_last_rand")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = self._last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        self._last_ms, self._last_rand = ms, rand
        value = (ms << 80) | (rand & ((1 << 80) - 1))
        # 26 digits (130 bits, the top two zero), two digits (10 bits) per table lookup.
        return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


new_id = UlidFactory()
