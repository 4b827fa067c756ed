"""Partitions: which partition a group queue and a task id belong to (taskhub.partitions)."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskhub.ids import UlidFactory
from taskhub.partitions import (
    MAX_PARTITIONS,
    check_partitions,
    partition_of,
    partition_of_id,
)

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def test_partition_of_is_the_documented_crc32() -> None:
    """Every hub and process must agree: the design's formula, not a salted hash."""
    for action, group in [("email:send", "emailer"), ("geo:geocode", "g"), ("a:b", "")]:
        want = zlib.crc32((action + "\x00" + group).encode()) % 7
        assert partition_of(action, group, 7) == want


def test_one_partition_is_always_zero() -> None:
    assert {partition_of(f"a{i}:run", f"g{i}", 1) for i in range(500)} == {0}
    f = UlidFactory()
    assert {partition_of_id(f()) for _ in range(2000)} == {0}


def test_group_queues_spread_over_the_partitions() -> None:
    """4,000 group queues over 8 partitions: every partition gets its share (within 20 %)."""
    counts = Counter(partition_of(f"job{i}:run", f"svc{i % 13}", 8) for i in range(4000))
    assert set(counts) == set(range(8))
    assert all(400 <= n <= 600 for n in counts.values()), counts


def test_the_group_is_part_of_the_key() -> None:
    """Two groups of one action may land in different partitions (each queue is its own)."""
    assert len({partition_of("email:send", f"group{i}", 16) for i in range(64)}) > 1


@pytest.mark.parametrize("partition", [0, 1, 3, 31, 32, 511, MAX_PARTITIONS - 1])
def test_ids_carry_their_partition(partition: int) -> None:
    f = UlidFactory(partition=partition)
    ids = [f() for _ in range(3000)]  # many per millisecond: the increment path too
    assert {partition_of_id(i) for i in ids} == {partition}
    assert {partition_of_id(i.lower()) for i in ids[:10]} == {partition}  # Crockford: any case
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # monotonic within a partition


def test_the_increment_never_reaches_the_partition_bits() -> None:
    """Within one millisecond the low bits count up; a carry out of them must not change the
    partition (the random start leaves 2**69 of headroom, here used up on purpose)."""
    f = UlidFactory(partition=5)
    f._last_ms = 10**15  # far in the future: every call stays in this millisecond
    f._last_rand = (5 << 70) | ((1 << 70) - 2)
    ids = [f(), f()]
    assert [partition_of_id(i) for i in ids] == [5, 5]


@given(st.integers(0, MAX_PARTITIONS - 1))
def test_id_round_trip(partition: int) -> None:
    assert partition_of_id(UlidFactory(partition=partition)()) == partition


@pytest.mark.parametrize(
    "bad", ["", "nope", "0" * 25, "0" * 27, "0123456789UU345678901234567"[:26]]
)
def test_partition_of_id_refuses_what_is_not_an_id(bad: str) -> None:
    with pytest.raises(ValueError, match="not a task id"):
        partition_of_id(bad)


@pytest.mark.parametrize("bad", [-1, MAX_PARTITIONS])
def test_factory_refuses_a_partition_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="partition must be from 0 to 1023"):
        UlidFactory(partition=bad)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "partitions must be from 1 to 1024, got 0"),
        (1025, "partitions must be from 1 to 1024, got 1025"),
        ("4", "partitions must be an integer from 1 to 1024, got '4'"),
        (True, "partitions must be an integer"),
        (2.0, "partitions must be an integer"),
    ],
)
def test_check_partitions(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_partitions(value)
    assert check_partitions(1) == 1 and check_partitions(1024) == 1024
