"""Task ids: ULIDs that sort in creation order, spelled as the ULID spec says."""

from __future__ import annotations

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
