"""Sortable task ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


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
        out = []
        for _ in range(26):
            out.append(_ALPHABET[value & 31])
            value >>= 5
        return "".join(reversed(out))


new_id = UlidFactory()
