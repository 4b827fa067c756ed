"""Task ids: ULIDs that sort in creation order, spelled as the ULID spec says."""

from __future__ import annotations

import time

import pytest

from taskhub.ids import UlidFactory

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def spell(ms: int, rand: int) -> str:
    value = (ms << 80) | rand
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


def test_ids_are_unique_sorted_and_spelled_from_time_and_randomness() -> None:
    f = UlidFactory()
    ids = [f() for _ in range(5000)]  # many per millisecond: the increment path
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in ids)
    assert ids[-1] == spell(f._last_ms, f._last_rand)


def test_the_increment_carries_into_the_reused_digits() -> None:
    """Within a millisecond only the last two digits usually change; a carry must not be
    lost when the lower ten bits wrap."""
    f = UlidFactory()
    f._last_ms = 10**15  # far in the future: every call stays in this millisecond
    f._last_rand = (5 << 10) | 1022
    got = [f(), f(), f()]
    assert got == [
        spell(10**15, (5 << 10) | 1023),
        spell(10**15, 6 << 10),
        spell(10**15, (6 << 10) | 1),
    ]
    assert got == sorted(got)


def decode(ulid: str) -> tuple[int, int]:
    value = 0
    for c in ulid:
        value = value * 32 + CROCKFORD.index(c)
    return value >> 80, value & ((1 << 80) - 1)


def test_each_id_follows_the_clock_or_increments_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """The id after another: the clock's millisecond with fresh random bits when the clock
    moved past the last id's millisecond, else the last id's millisecond and its random
    part plus one (a step back of the clock included), carries out of the low ten bits
    too. The fast path (same millisecond, no carry) and the full one must agree on that."""
    f = UlidFactory(partition=3)
    ms0 = 1_800_000_000_000
    clock = iter(
        [ms0 * 10**6 + 5]  # a first millisecond
        + [ms0 * 10**6 + 999_999] * 1500  # the same one: fast, then a carry, fast again
        + [(ms0 - 7) * 10**6]  # the clock stepped back: still the last millisecond
        + [(ms0 + 1) * 10**6]  # the next millisecond: fresh random bits
        + [(ms0 + 1) * 10**6 + 1] * 3
    )
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    ids = [f() for _ in range(1 + 1500 + 1 + 1 + 3)]
    parts = [decode(i) for i in ids]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(rand >> 70 == 3 for _, rand in parts)  # the partition's bits
    assert [ms for ms, _ in parts] == [ms0] * 1502 + [ms0 + 1] * 4
    for (ms, rand), (prev_ms, prev_rand) in zip(parts[1:], parts, strict=False):
        if ms == prev_ms:
            assert rand == prev_rand + 1
    assert parts[-1] == (f._last_ms, f._last_rand)
    assert ids[-1] == spell(f._last_ms, f._last_rand)
