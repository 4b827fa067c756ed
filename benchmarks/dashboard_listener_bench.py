"""The dashboard's lifecycle listener in isolation: µs per event, no hub, no sockets.

Calls ``Monitor._on_event`` the way the lifecycle does, with a realistic event mix (each task:
init, offer, start, two updates, success or fail; three actions, two groups each) and the
real clock, so the per-second buckets roll over as they would on a busy hub.

    .venv/bin/python benchmarks/dashboard_listener_bench.py            # 100,000 events
    .venv/bin/python benchmarks/dashboard_listener_bench.py --n 1000000
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

from taskhub.hub.dashboard import Monitor
from taskhub.lifecycle import Task
from taskhub.records import DeliveryRecord, EventRecord, TaskRecord

ACTIONS = ("email:send", "image:resize", "report:build")
GROUPS = ("workers", "audit")


def workload(n_events: int) -> list[tuple[Task, EventRecord]]:
    calls: list[tuple[Task, EventRecord]] = []
    i = 0
    while len(calls) < n_events:
        action = ACTIONS[i % len(ACTIONS)]
        group = GROUPS[i % len(GROUPS)]
        failed = i % 10 == 0
        rec = TaskRecord(
            id=f"{i:026d}",
            action=action,
            publisher="bench",
            created_at=0.0,
            state="fail" if failed else "success",
            started_at=0.1,
            ended_at=0.2,
            updates=2,
            error={"reason": "error", "message": "x" * 300} if failed else None,
            deliveries=[DeliveryRecord(g, "started") for g in GROUPS],
        )
        task = Task(rec=rec, seq=i)
        for seq, (type_, g) in enumerate(
            [
                ("init", None),
                ("offer", group),
                ("start", group),
                ("update", group),
                ("update", group),
                ("fail" if failed else "success", None),
            ]
        ):
            calls.append((task, EventRecord(rec.id, seq, 0.0, type_, g)))
        i += 1
    return calls[:n_events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="events per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; the best is printed")
    args = parser.parse_args()
    calls = workload(args.n)
    best = float("inf")
    for _ in range(args.runs):
        hub: Any = SimpleNamespace(clock=time.time, lc=SimpleNamespace(listeners=[]))
        listener = Monitor(hub)._on_event
        started = time.perf_counter()
        for task, ev in calls:
            listener(task, ev)
        best = min(best, time.perf_counter() - started)
    print(f"{args.n} events: {best * 1e6 / args.n:.3f} µs/event (best of {args.runs})")


if __name__ == "__main__":
    main()
