"""Which hub leads which partition: rendezvous hashing with bounded loads (pure, no I/O).

Every hub computes the same answer from the same member list, so no hub has to hand out the
partitions. Plain rendezvous (highest random weight) hashing gives partition p to the member
with the highest ``weight(p, member)``: deterministic, and when a member joins or leaves
only the partitions it wins or held move. But its shares are random: with 12 partitions and 3
members the largest share is 6 or more in about 1 case out of 5 (docs/decisions.md, measured),
and the hub that leads most partitions sets the cluster's pace. So shares are *bounded*: the
(partition, member) pairs are taken in order of falling weight, and a pair is granted when the
partition is still free and the member is under its bound, ``P // k`` for every member and one
more for ``P % k`` of them (the first to get there). Every member ends within one of P/k, and
a partition still goes to its top-ranked member unless that member is full; a join or a leave
moves the partitions the new member wins plus a few that cascade over full members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(partition: int, member: str) -> int:
    """The pair's random weight: 64 bits of BLAKE2b, the same in every process (unlike
    Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{partition}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(partition: int, members: Iterable[str]) -> list[str]:
    """The members by falling weight for ``partition`` (ties, which need a 64-bit collision,
    by id)."""
    return sorted(set(members), key=lambda m: (-weight(partition, m), m))


def rendezvous(partitions: int, members: Iterable[str]) -> dict[int, str]:
    """Plain rendezvous hashing: each partition to its top-ranked member (unbalanced; kept
    to measure against, docs/decisions.md)."""
    live = sorted(set(members))
    if not live:
        return {}
    return {p: ranking(p, live)[0] for p in range(partitions)}


def assign(partitions: int, members: Iterable[str]) -> dict[int, str]:
    """Every partition's leader among ``members`` (empty when there is none): bounded-load
    rendezvous, each member leading ``P // k`` or ``P // k + 1`` partitions."""
    live = sorted(set(members))
    if not live:
        return {}
    if partitions < 0:
        raise ValueError(f"partitions must be >= 0, got {partitions}")
    base, extra = divmod(partitions, len(live))
    pairs = sorted(
        ((weight(p, m), p, m) for p in range(partitions) for m in live),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    owner: dict[int, str] = {}
    count = dict.fromkeys(live, 0)
    for _, p, m in pairs:
        if p in owner:
            continue
        if count[m] == base:
            if extra == 0:
                continue  # full
            extra -= 1  # this member is one of the P % k that lead one more
        elif count[m] > base:
            continue
        owner[p] = m
        count[m] += 1
        if len(owner) == partitions:
            break
    return dict(sorted(owner.items()))


def share(partitions: int, members: Iterable[str], member: str) -> set[int]:
    """The partitions ``member`` should lead (:func:`assign`)."""
    return {p for p, m in assign(partitions, members).items() if m == member}
