"""The lifecycle's deadlines: a heap, plus first-in-first-out lanes for fixed delays.

Most deadlines of a busy hub are "a fixed time from now": every offer's pickup window, every
started task's end timeout (nearly always the hub's default). Timers armed with the same delay
fire in the order they were armed, so such a lane needs no heap: it is an ordered dict, armed
at the end and fired from the front, and a timer that is no longer needed (the worker picked
the task up, the task ended) is removed at once. In the heap alone those timers stayed until
their deadline passed: at 10,000 tasks a second, 600,000 dead end-timeouts (~75 MiB) for a
60 s timeout, and a log-n push each.

Everything else (absolute times: delays, retries, restored tasks, schedules) goes into the
heap and is cancelled lazily: its handler checks that it is still due. A lane relies on the
clock not going backwards; if the wall clock is set back, timers armed after that fire no
earlier than the ones armed before them, that is, late by at most the step back.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator

# More distinct delays than this (say, every task with its own timeout) go into the heap: the
# earliest deadline is looked up over every lane, so their number must stay small.
MAX_LANES = 16

Key = tuple[str, str]  # (task id, group); group is "" when the timer is per task
Due = tuple[str, str, str, int]  # kind, task id, group, attempt


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, str, str, int]] = []
        self._seq = 0  # heap tie-breaker: equal deadlines fire in the order they were armed
        self._lanes: dict[tuple[str, float], OrderedDict[Key, tuple[float, int]]] = {}

    def __len__(self) -> int:
        return len(self._heap) + sum(len(lane) for lane in self._lanes.values())

    def at(self, at: float, kind: str, task_id: str, group: str = "", attempt: int = 0) -> None:
        """Fire at ``at``; never removed, the handler checks it is still due."""
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, task_id, group, attempt))

    def after(
        self,
        now: float,
        delay: float,
        kind: str,
        task_id: str,
        group: str = "",
        attempt: int = 0,
    ) -> None:
        """Fire ``delay`` seconds after ``now``, replacing this kind's timer of the same task
        and group; :meth:`cancel` removes it."""
        lane = self._lanes.get((kind, delay))
        if lane is None:
            if len(self._lanes) >= MAX_LANES:
                self.at(now + delay, kind, task_id, group, attempt)
                return
            lane = self._lanes[(kind, delay)] = OrderedDict()
        key = (task_id, group)
        if key in lane:
            del lane[key]  # re-armed: it moves to the back, in deadline order
        lane[key] = (now + delay, attempt)

    def cancel(self, kind: str, delay: float, task_id: str, group: str = "") -> None:
        """Remove a timer :meth:`after` armed (one that went to the heap stays, harmless)."""
        lane = self._lanes.get((kind, delay))
        if lane is not None:
            lane.pop((task_id, group), None)

    def next_deadline(self) -> float | None:
        best = self._heap[0][0] if self._heap else None
        for lane in self._lanes.values():
            if lane:
                at = next(iter(lane.values()))[0]
                if best is None or at < best:
                    best = at
        return best

    def pop_due(self, now: float) -> Iterator[Due]:
        """Remove and yield every timer due by ``now``, earliest first. Handlers may arm and
        cancel timers between two items."""
        heap = self._heap
        while True:
            best = heap[0][0] if heap and heap[0][0] <= now else None
            best_lane: OrderedDict[Key, tuple[float, int]] | None = None
            best_kind = ""
            for (kind, _), lane in self._lanes.items():
                if lane:
                    at = next(iter(lane.values()))[0]
                    if at <= now and (best is None or at < best):
                        best, best_lane, best_kind = at, lane, kind
            if best is None:
                return
            if best_lane is None:
                _, _, kind, task_id, group, attempt = heapq.heappop(heap)
                yield kind, task_id, group, attempt
            else:
                (task_id, group), (_, attempt) = best_lane.popitem(last=False)
                yield best_kind, task_id, group, attempt
