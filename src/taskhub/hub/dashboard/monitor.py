"""What the dashboard shows of the past and of the live tasks (docs/dashboard.md).

:class:`Monitor` keeps the rates of the last minute and the most recent ended tasks, feeds the
charts' :class:`~taskhub.hub.dashboard.series.Series`, and reads the rest from the hub's
metrics (:mod:`taskhub.hub.http.metrics`): the totals of ended tasks and the live task and
queue numbers come from there, computed once for both. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from taskhub.hub.dashboard.rows import (
    Snapshot,
    kind_matches,
    row,
    snapshot,
    summary,
)
from taskhub.hub.dashboard.series import Series, series_counts
from taskhub.hub.http.metrics import for_hub, live_tasks
from taskhub.hub.http.search import INTERNAL_PREFIX
from taskhub.hub.hub import Hub
from taskhub.lifecycle import EventKey, Lifecycle
from taskhub.records import TaskRecord

RATE_WINDOW = 60  # seconds the rates are counted over
RECENT_TASKS = 1000  # ended tasks kept (as small summaries) for the task list

# The rate kinds, in the order of a bucket's count lists.
KINDS = ("published", "started", "succeeded", "failed", "ended")
# Event type -> (index in KINDS, counted per group); other types are not counted.
_COUNTED: dict[str, tuple[int, bool]] = {
    "init": (0, False),
    "start": (1, True),  # a task's first pickup
    "pickup": (1, True),  # any later one: each is one delivery picked up by its group
    "retry": (3, True),  # a try failed and will be retried
    "delivery_fail": (3, True),  # a try failed for good
    "success": (2, False),
    "fail": (3, False),
    "end": (4, False),
}


class Monitor:
    """Keeps what the dashboard shows of the past: the lifecycle's event counts of the last
    ``RATE_WINDOW`` seconds (for the rates), the charts' :class:`Series` and the most recent
    ended tasks. What the hub's metrics already count it reads from them (``metrics``): the
    totals of ended tasks, the live tasks and their deliveries.

    It adds nothing per event: the lifecycle counts events per second (``lc.counts``) and hands
    each complete second here; ended tasks come through ``lc.batch_listeners``, one call per
    batch (its readers call ``lc.settle()`` first, to see the batch under way too).

    Memory: at most ``RATE_WINDOW + 1`` seconds of (action, event type, group) counters, the
    series (at most 1.6 MB), plus ``RECENT_TASKS`` snapshots of a few hundred bytes each.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = for_hub(hub)
        self._clock = hub.clock
        self.started_at = hub.clock()
        self._seconds: deque[tuple[int, dict[EventKey, int]]] = deque()
        self._recent: deque[Snapshot] = deque(maxlen=RECENT_TASKS)
        self._series = Series()
        hub.each_lifecycle(self._listen)  # every partition's, as it comes to be led here

    def _listen(self, lc: Lifecycle) -> None:
        lc.second_listeners.append(self._on_second)
        lc.batch_listeners.append(self._on_batch)

    def _on_second(self, second: int, counts: dict[EventKey, int]) -> None:
        seconds = self._seconds
        seconds.append((second, counts))
        since = int(self._clock()) - RATE_WINDOW  # no window from now on reaches back further
        while seconds and seconds[0][0] <= since:
            seconds.popleft()
        self._series.add_counts(second, *series_counts(counts))

    @property
    def recent(self) -> deque[Snapshot]:
        """The most recent ended tasks (``RECENT_TASKS`` at most), oldest first."""
        for lc in self.hub.lifecycles:
            lc.settle()
        return self._recent

    @property
    def series(self) -> Series:
        """The charts' series, up to the batch under way."""
        for lc in self.hub.lifecycles:
            lc.settle()
        return self._series

    @property
    def ended(self) -> dict[str, int]:
        """Tasks ended since the hub started, by how (success, fail, end)."""
        return self.metrics.ended()

    def _on_batch(self, started: list[TaskRecord], ended: list[TaskRecord]) -> None:
        if ended:
            # Only the last RECENT_TASKS of a batch would stay in the list.
            self._recent.extend(map(snapshot, ended[-RECENT_TASKS:]))
            self._series.add_tasks(ended)

    def chart(self, span: int) -> dict[str, Any]:
        lc = self.hub.lc
        live = (lc.counts_second, *series_counts(lc.counts)) if lc.counts_second >= 0 else None
        return self.series.view(self._clock(), span, live, since=self.started_at)

    def rates(self) -> list[dict[str, Any]]:
        """One row per action: its tasks published, succeeded, failed and ended in the last
        minute, and its deliveries started and failed, in all and per group."""
        since = int(self._clock()) - RATE_WINDOW
        current = [(lc.counts_second, lc.counts) for lc in self.hub.lifecycles]
        total: dict[tuple[str, str | None], list[int]] = {}
        for second, counts in (*self._seconds, *current):
            if second <= since:
                continue
            for (action, type_, group), n in counts.items():
                counted = _COUNTED.get(type_)
                if counted is None or action.startswith(INTERNAL_PREFIX):
                    continue
                kind, per_group = counted
                if not per_group:
                    group = None
                elif group is None:
                    continue
                sums = total.get((action, group))
                if sums is None:
                    sums = total[action, group] = [0, 0, 0, 0, 0]
                sums[kind] += n
        rows: dict[str, dict[str, Any]] = {}
        for action, group in sorted(total, key=lambda k: (k[0], k[1] or "")):
            r = rows.setdefault(
                action,
                {"action": action, **dict.fromkeys(KINDS, 0), "failed_tries": 0, "groups": []},
            )
            published, started, succeeded, failed, ended = total[action, group]
            if group is None:
                r.update(published=published, succeeded=succeeded, failed=failed, ended=ended)
            else:
                r["started"] += started
                r["failed_tries"] += failed
                r["groups"].append({"group": group, "started": started, "failed": failed})
        return list(rows.values())

    def live(
        self, lcs: Sequence[Lifecycle] | None = None
    ) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Live task counts and every group queue (of the partitions whose lifecycles are
        ``lcs``, default all this hub leads), from one pass over the live tasks (the
        metrics' :func:`live_tasks`; the per-queue view of the lifecycle walks all tasks once
        per queue)."""
        lcs = self.hub.lifecycles if lcs is None else lcs
        live = live_tasks(*lcs)
        running = live.by_state.get("start", 0)
        counts = {
            "waiting": sum(live.by_state.values()) - running,
            "running": running,
            "chains": sum(live.chains.values()),
        }
        queues = []
        for (action, group), q in sorted(kv for lc in lcs for kv in lc.queues.items()):
            waiting, in_flight = live.deliveries.get((action, group), (0, 0))
            queues.append(
                {
                    "action": action,
                    "group": group,
                    "durable": q.durable,
                    "workers": len(q.workers),
                    "credit": sum(s.concurrency for s in q.workers),
                    "inflight": sum(s.inflight for s in q.workers),
                    "waiting": waiting,
                    "in_flight": in_flight,
                }
            )
        return counts, queues

    def tasks(
        self,
        action: str | None,
        state: str | None,
        kind: str | None,
        limit: int | None,
        lcs: Sequence[Lifecycle] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first: the live tasks (of ``lcs``, default every partition this hub leads),
        then the recently ended ones, ``limit`` at most (None: all). ``kind`` is ``task``
        (the default: user tasks), ``chain`` (chains and groups) or ``all``."""
        recent = self.recent  # first: it settles the batch under way
        lcs = self.hub.lifecycles if lcs is None else lcs
        rows = {t.id: summary(t.rec) for lc in lcs for t in lc.tasks.values()}
        for snap in reversed(recent):  # newest first: a task's last snapshot wins
            if snap[0] not in rows:
                rows[snap[0]] = row(snap)
        picked = [
            r
            for r in rows.values()
            if (action is None or r["action"] == action)
            and (state is None or r["state"] == state)
            and kind_matches(kind, r["action"])
        ]
        picked.sort(key=lambda r: r["id"], reverse=True)
        return picked[:limit]
