"""What the dashboard shows of the past and of the connections (docs/dashboard.md).

:class:`Monitor` keeps the rates of the last minute, the totals and the most recent ended
tasks; :class:`Series` keeps the time series the charts draw (tasks published, succeeded and
failed per second, wait and run time percentiles) for the last 15 minutes at one point a
second and the last 24 hours at one point a minute. Both are fed by the lifecycle's per-second
counts and its end listener, so they add nothing per event. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import math
import random
from array import array
from bisect import bisect_left
from collections import deque
from typing import Any

from taskhub.hub.hub import Hub
from taskhub.lifecycle import EventKey, Peer, Task
from taskhub.records import TERMINAL_STATES, EventRecord, TaskRecord

RATE_WINDOW = 60  # seconds the rates are counted over
RECENT_TASKS = 1000  # ended tasks kept (as small summaries) for the task list
INTERNAL_PREFIX = "taskhub:"  # the hub's own tasks: chains and groups (chains.py)

# --- time series ----------------------------------------------------------------------------
SECOND_POINTS = 900  # 15 minutes at one point a second
MINUTE_POINTS = 1440  # 24 hours at one point a minute
# Durations go into log-scale bins, two per octave from 0.1 ms: bin b > 0 holds values up to
# BIN_BASE * 2 ** (b / 2), so a percentile is known within a factor of √2 (about ±19 %). The
# last bin holds everything from 2 ** 27 * 0.1 ms (3.7 hours) up.
BIN_BASE = 0.0001
BINS = 56
PERCENTILES = (50, 90, 99)
SAMPLE = 500  # ended tasks binned a second at each sampling rate (Series.add_task)


def bin_upper(b: int) -> float:
    """The largest value bin ``b`` holds (what a percentile in that bin is reported as)."""
    return BIN_BASE * 2 ** (b / 2)


_EDGES = [bin_upper(b) for b in range(BINS - 1)]  # above the last edge: the last bin


def duration_bin(seconds: float) -> int:
    return bisect_left(_EDGES, seconds)  # bin b holds edge[b - 1] < value <= edge[b]


def percentile(hist: array[int], q: float) -> float | None:
    total = sum(hist)
    if total == 0:
        return None
    rank = math.ceil(total * q / 100)
    seen = 0
    for b, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return bin_upper(b)
    return bin_upper(BINS - 1)  # not reached: the ranks add up to the total


class Bucket:
    """One point of a series: task counts and, once a task ended in it, duration bins."""

    __slots__ = ("failed", "published", "run", "succeeded", "wait")

    def __init__(self) -> None:
        self.published = 0
        self.succeeded = 0
        self.failed = 0
        self.wait: array[int] | None = None  # started_at - max(created_at, not_before)
        self.run: array[int] | None = None  # ended_at - started_at


def _bins() -> array[int]:
    return array("I", bytes(4 * BINS))


class Series:
    """Two rings of buckets, by second and by minute. Memory: at most SECOND_POINTS +
    MINUTE_POINTS buckets of two 56-bin histograms (4-byte counters): about 700 bytes each,
    1.6 MB in all, and only for seconds and minutes in which something happened."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.seconds: dict[int, Bucket] = {}
        self.minutes: dict[int, Bucket] = {}
        # The second tasks last ended in, and its (second, minute) histograms: most ends fall
        # in the same second as the one before.
        self._second = -1
        self._hists: tuple[array[int], array[int], array[int], array[int]] | None = None
        # Sampling (see add_task): every _every-th ended task is binned, with weight _every;
        # _taken samples at this weight so far this second, _skip tasks to pass over first.
        self._every = 1
        self._taken = 0
        self._skip = 0
        self._rng = rng or random.Random()

    @staticmethod
    def _bucket(ring: dict[int, Bucket], key: int, keep: int) -> Bucket:
        b = ring.get(key)
        if b is None:
            b = ring[key] = Bucket()
            # Keys arrive almost in order (a second's counts come after the next second's
            # first task end), so the oldest are at the front of the dict.
            while len(ring) > keep:
                del ring[next(iter(ring))]
        return b

    def buckets(self, at: float) -> tuple[Bucket, Bucket]:
        second = int(at)
        return (
            self._bucket(self.seconds, second, SECOND_POINTS),
            self._bucket(self.minutes, second // 60, MINUTE_POINTS),
        )

    def add_counts(self, second: int, published: int, succeeded: int, failed: int) -> None:
        for b in self.buckets(second):
            b.published += published
            b.succeeded += succeeded
            b.failed += failed

    def add_task(self, rec: TaskRecord) -> None:
        """An ended task's wait and run times, in the buckets of the second it ended.

        Called once per ended task, so it bounds its work: in each second the first
        ``SAMPLE`` tasks are binned, then every 2nd for the next ``SAMPLE`` samples, then every
        4th, and so on (on average: the gaps are drawn at random, so a periodic pattern in the
        tasks cannot line up with them), each sample counted with the weight of the tasks it
        stands for. The histograms stay an estimate of all tasks' times (exact below
        ``SAMPLE`` a second), and a busy hub bins about ``SAMPLE * log2(rate / SAMPLE)`` tasks
        a second. A binned task costs two bisects and four increments (0.7 µs), a passed one
        a decrement (0.18 µs a task on average at 200,000 tasks in a second).
        """
        if self._skip:
            self._skip -= 1
            return
        started, ended = rec.started_at, rec.ended_at
        if started is None or ended is None:
            return  # it never started (start timeout, cancelled while waiting)
        second = int(ended)
        hists = self._hists
        if second != self._second or hists is None:
            hists = self._hists = self._histograms(second)
            self._second = second
            self._every, self._taken = 1, 0
        wait = bisect_left(_EDGES, started - max(rec.created_at, rec.not_before))
        run = bisect_left(_EDGES, ended - started)
        weight = self._every
        hists[0][wait] += weight
        hists[1][run] += weight
        hists[2][wait] += weight
        hists[3][run] += weight
        self._taken += 1
        if self._taken == SAMPLE:
            self._taken = 0
            self._every = weight * 2
        every = self._every
        self._skip = self._rng.randrange(2 * every - 1) if every > 1 else 0  # mean every - 1

    def _histograms(self, second: int) -> tuple[array[int], array[int], array[int], array[int]]:
        out: list[array[int]] = []
        for b in self.buckets(second):
            if b.wait is None or b.run is None:
                b.wait, b.run = _bins(), _bins()
            out += (b.wait, b.run)
        return out[0], out[1], out[2], out[3]

    def view(
        self,
        now: float,
        span: int,
        live: tuple[int, int, int, int] | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """Columns for a chart of the last ``span`` seconds, from ``since`` at the earliest
        (the hub's start: nothing was counted before) unless that leaves fewer than 60
        points: one point a second up to 15 minutes,
        one a minute beyond. Counts are per second (a minute's divided by 60). ``live`` is
        (second, published, succeeded, failed) of the second still being counted."""
        step = 1 if span <= SECOND_POINTS else 60
        ring = self.seconds if step == 1 else self.minutes
        last = int(now) // step
        first = last - span // step + 1
        if since is not None:  # a young hub: from its start, but at least a minute's points
            first = min(max(first, int(since) // step), last - min(span // step, 60) + 1)
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "t",
                "published",
                "succeeded",
                "failed",
                *(f"{kind}_p{q}" for kind in ("wait", "run") for q in PERCENTILES),
            )
        }
        for key in range(first, last + 1):
            b = ring.get(key)
            counts = [b.published, b.succeeded, b.failed] if b else [0, 0, 0]
            if live is not None and live[0] // step == key:
                counts = [c + n for c, n in zip(counts, live[1:], strict=True)]
            cols["t"].append(key * step)
            for name, n in zip(("published", "succeeded", "failed"), counts, strict=True):
                cols[name].append(n if step == 1 else round(n / step, 3))
            for kind in ("wait", "run"):
                hist = getattr(b, kind) if b else None
                for q in PERCENTILES:
                    value = percentile(hist, q) if hist is not None else None
                    cols[f"{kind}_p{q}"].append(value)
        return {"step": step, "span": span, **cols}


def series_counts(counts: dict[EventKey, int]) -> tuple[int, int, int]:
    """(published, succeeded, failed) of user tasks in one second's event counts."""
    published = succeeded = failed = 0
    for (action, type_, _group), n in counts.items():
        if action.startswith(INTERNAL_PREFIX):
            continue  # a chain's steps are counted as the tasks they are
        if type_ == "init":
            published += n
        elif type_ == "success":
            succeeded += n
        elif type_ == "fail":
            failed += n
    return published, succeeded, failed


# --- the task list --------------------------------------------------------------------------
# An ended task as the recent list keeps it: id, action, state, publisher, created_at,
# started_at, ended_at, updates, error, (group, delivery state) per delivery, and its chain
# (chain task id and step index) when it is a step. Taken when the terminal event fires; the
# row dict is only built when the task list is read.
Snapshot = tuple[
    str,
    str,
    str,
    str,
    float,
    float | None,
    float | None,
    int,
    dict[str, Any] | None,
    list[tuple[str, str]],
    tuple[str, int] | None,
]


def _chain_of(rec: TaskRecord) -> tuple[str, int] | None:
    chain = rec.options.get("chain_task")
    return (str(chain), int(rec.options.get("chain_step", 0))) if chain else None


def snapshot(rec: TaskRecord) -> Snapshot:
    return (
        rec.id,
        rec.action,
        rec.state,
        rec.publisher,
        rec.created_at,
        rec.started_at,
        rec.ended_at,
        rec.updates,
        rec.error,  # replaced on change, never mutated: the reference is a snapshot
        [(d.group, d.state) for d in rec.deliveries],
        _chain_of(rec),
    )


def short_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error cut for a list row: the task page has all of it (tracebacks too)."""
    if error is None:
        return None
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in error.items() if k != "traceback"}


def row(snap: Snapshot) -> dict[str, Any]:
    """A task list row: no payload, result or update data, so the recent list stays small."""
    (task_id, action, state, publisher, created_at, started_at, ended_at, updates, error, ds,
     chain) = snap  # fmt: skip
    return {
        "id": task_id,
        "action": action,
        "state": state,
        "publisher": publisher,
        "created_at": created_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "updates": updates,
        "error": short_error(error),
        "groups": {group: _delivery_state(state, d_state) for group, d_state in ds},
        "kind": _kind(action),
        "chain": {"task": chain[0], "step": chain[1]} if chain else None,
    }


def summary(rec: TaskRecord) -> dict[str, Any]:
    return row(snapshot(rec))


def _kind(action: str) -> str:
    if action == "taskhub:chain":
        return "chain"
    if action == "taskhub:group":
        return "group"
    return "task"


def _delivery_state(task_state: str, state: str) -> str:
    # The terminal event comes before the lifecycle closes the deliveries: close them here
    # as it is about to (whatever was still pending, offered or started becomes done).
    if task_state in TERMINAL_STATES and state in ("pending", "offered", "started"):
        return "done"
    return state


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
    ``RATE_WINDOW`` seconds (for the rates), the charts' :class:`Series`, totals of ended
    tasks, and the most recent ended tasks.

    It adds nothing per event: the lifecycle counts events per second (``lc.counts``) and hands
    each complete second here; ended tasks come through ``lc.end_listeners``, one call per task.

    Memory: at most ``RATE_WINDOW + 1`` seconds of (action, event type, group) counters, the
    series (at most 1.6 MB), plus ``RECENT_TASKS`` snapshots of a few hundred bytes each.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._clock = hub.clock
        self.started_at = hub.clock()
        self.ended: dict[str, int] = {"success": 0, "fail": 0, "end": 0}  # since the start
        self._seconds: deque[tuple[int, dict[EventKey, int]]] = deque()
        self.recent: deque[Snapshot] = deque(maxlen=RECENT_TASKS)
        self.series = Series()
        hub.lc.second_listeners.append(self._on_second)
        hub.lc.end_listeners.append(self._on_end)

    def _on_second(self, second: int, counts: dict[EventKey, int]) -> None:
        seconds = self._seconds
        seconds.append((second, counts))
        since = int(self._clock()) - RATE_WINDOW  # no window from now on reaches back further
        while seconds and seconds[0][0] <= since:
            seconds.popleft()
        self.series.add_counts(second, *series_counts(counts))

    def _on_end(self, task: Task, ev: EventRecord) -> None:
        self.ended[ev.type] += 1
        self.recent.append(snapshot(task.rec))
        self.series.add_task(task.rec)

    def chart(self, span: int) -> dict[str, Any]:
        lc = self.hub.lc
        live = (lc.counts_second, *series_counts(lc.counts)) if lc.counts_second >= 0 else None
        return self.series.view(self._clock(), span, live, since=self.started_at)

    def rates(self) -> list[dict[str, Any]]:
        """One row per action: its tasks published, succeeded, failed and ended in the last
        minute, and its deliveries started and failed, in all and per group."""
        since = int(self._clock()) - RATE_WINDOW
        lc = self.hub.lc
        total: dict[tuple[str, str | None], list[int]] = {}
        for second, counts in (*self._seconds, (lc.counts_second, lc.counts)):
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

    def live(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Live task counts and every group queue, in one pass over the live tasks (the
        per-queue view of the lifecycle walks all tasks once per queue)."""
        lc = self.hub.lc
        counts = {"waiting": 0, "running": 0, "chains": 0}
        per_queue: dict[tuple[str, str], list[int]] = {}
        for task in lc.tasks.values():
            if task.rec.action.startswith(INTERNAL_PREFIX):
                counts["chains"] += 1
                continue
            counts["running" if task.rec.state == "start" else "waiting"] += 1
            for group, d in task.deliveries.items():
                slot = per_queue.setdefault((task.rec.action, group), [0, 0])
                if d.rec.state == "pending":
                    slot[0] += 1
                elif d.rec.state in ("offered", "started"):
                    slot[1] += 1
        queues = []
        for (action, group), q in sorted(lc.queues.items()):
            waiting, in_flight = per_queue.get((action, group), (0, 0))
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

    def connections(self, pull: dict[str, Any]) -> list[dict[str, Any]]:
        """Every connection: WebSocket clients and pull consumers (``pull``: by id)."""
        now = self._clock()
        return [
            connection_view(peer, now, pull.get(peer.id))
            for peer in sorted(self.hub.senders, key=lambda p: (p.service, p.id))
        ]

    def tasks(
        self, action: str | None, state: str | None, kind: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first: the live tasks, then the recently ended ones. ``kind`` is ``task``
        (the default: user tasks), ``chain`` (chains and groups) or ``all``."""
        rows = {t.id: summary(t.rec) for t in self.hub.lc.tasks.values()}
        for snap in reversed(self.recent):  # newest first: a task's last snapshot wins
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


def kind_matches(kind: str | None, action: str) -> bool:
    if kind == "all":
        return True
    internal = action.startswith(INTERNAL_PREFIX)
    return internal if kind == "chain" else not internal


def connection_view(peer: Peer, now: float, consumer: Any = None) -> dict[str, Any]:
    hello = peer.hello or {}
    holding = sorted(peer.holding.values(), key=lambda d: d.task.id)
    view: dict[str, Any] = {
        "id": peer.id,
        "service": peer.service,
        "kind": "pull" if consumer is not None else "websocket",
        "host": hello.get("host"),
        "pid": hello.get("pid"),
        "client": hello.get("client"),
        "version": hello.get("version"),
        "remote": peer.remote,
        "connected_at": peer.connected_at,
        "uptime": max(0.0, now - peer.connected_at),
        "processed": peer.succeeded + peer.failed + peer.dropped,
        "succeeded": peer.succeeded,
        "failed": peer.failed,
        "dropped": peer.dropped,
        "holding": len(peer.holding),
        "current": [
            {
                "task": d.task.id,
                "action": d.task.rec.action,
                "group": d.rec.group,
                "state": d.rec.state,
                "attempt": d.rec.attempt,
                "started_at": d.task.rec.started_at,
            }
            for d in holding[:20]
        ],
        "subscriptions": [
            {
                "action": s.action,
                "group": s.group,
                "concurrency": s.concurrency,
                "inflight": s.inflight,
                "observe": s.observe,
            }
            for s in peer.subs.values()
        ],
    }
    if consumer is not None:
        view["last_seen"] = consumer.last_seen
        view["leases"] = len(consumer.leases)
    return view
