"""How evenly partitions spread over hubs, and how many move when a hub joins or leaves:
plain rendezvous hashing against the bounded-load variant the hubs use (taskhub.hub.assign).

    .venv/bin/python benchmarks/assign_balance.py [--trials 300]

Deterministic counts (random member ids, so figures vary a little between runs), no timing.
"""

from __future__ import annotations

import argparse
import os
import statistics

from taskhub.hub.assign import assign, rendezvous

GRID = [(12, 3), (12, 4), (16, 3), (64, 3), (64, 5), (256, 7), (1024, 10)]


def moved(before: dict[int, str], after: dict[int, str]) -> int:
    return sum(1 for p in before if before[p] != after.get(p))


def ids(k: int) -> list[str]:
    return [os.urandom(8).hex() for _ in range(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    for partitions, k in GRID:
        trials = args.trials if partitions < 256 else max(args.trials // 10, 10)
        largest: list[int] = []
        joins: dict[str, list[int]] = {"plain": [], "bounded": []}
        leaves: dict[str, list[int]] = {"plain": [], "bounded": []}
        for _ in range(trials):
            hubs = ids(k)
            plain, bounded = rendezvous(partitions, hubs), assign(partitions, hubs)
            largest.append(max(list(plain.values()).count(h) for h in hubs))
            grown, shrunk = [*hubs, *ids(1)], hubs[1:]
            joins["plain"].append(moved(plain, rendezvous(partitions, grown)))
            joins["bounded"].append(moved(bounded, assign(partitions, grown)))
            leaves["plain"].append(moved(plain, rendezvous(partitions, shrunk)))
            leaves["bounded"].append(moved(bounded, assign(partitions, shrunk)))
        ceiling = -(-partitions // k)
        over = sum(n > ceiling for n in largest) / trials
        print(
            f"P={partitions} k={k}: plain largest share median {statistics.median(largest)} "
            f"(max {max(largest)}, > ceil(P/k)={ceiling} in {over:.0%}); bounded always "
            f"<= {ceiling}. moved on a join: plain {statistics.mean(joins['plain']):.1f}, "
            f"bounded {statistics.mean(joins['bounded']):.1f} (ideal {partitions / (k + 1):.1f});"
            f" on a leave: plain {statistics.mean(leaves['plain']):.1f}, bounded "
            f"{statistics.mean(leaves['bounded']):.1f} (ideal {partitions / k:.1f})"
        )


if __name__ == "__main__":
    main()
