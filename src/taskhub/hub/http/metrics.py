"""Prometheus metrics (``GET /metrics``) and the health endpoints (``/healthz``, ``/readyz``).

Each hub has its own :class:`~prometheus_client.CollectorRegistry`, not the process-global one,
so several hubs in one process (tests, embedded use) each report their own numbers. Counters
and histograms are fed by the lifecycle's per-second event counts, the tasks each batch started
and ended (``lc.batch_listeners``) and a store-apply hook; gauges (live tasks, queue depths,
connections) are read from the hub's in-memory state at scrape time, so they cost nothing
between scrapes. Labels are action, event type, group and service: names bounded by the
credentials' permissions, never task ids (one series per task would grow without bound).
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from operator import sub
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from taskhub.hub.auth import Registry
from taskhub.hub.http.deps import Caller, error_responses
from taskhub.hub.http.search import INTERNAL_PREFIX
from taskhub.hub.hub import Hub
from taskhub.lifecycle import EventKey, Lifecycle, Queue
from taskhub.records import TaskRecord, WriteBatch

# Task latencies span milliseconds (an echo) to hours (a durable queue waiting for its worker).
TASK_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600,
)  # fmt: skip
APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
_LIVE_STATES = ("init", "start")
TERMINAL_TYPES = ("success", "fail", "end")  # a task's last event: how it ended


class Metrics:
    """The metrics of one hub. Create it with :func:`for_hub` (once per hub)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Task events are counted by the lifecycle, per second (``lc.counts``); complete
        # seconds are added up here and the current one at scrape time. A labelled
        # prometheus child would cost a lookup and a lock per event.
        self.event_counts: dict[tuple[str, str], int] = {}
        r.register(_EventCollector(self))
        # The per-task histograms likewise: bucket counts in plain lists, exported at scrape
        # time (a prometheus Histogram child takes a lock per bucket, sum and count).
        self.wait = _Histogram(
            "taskhub_task_wait_seconds", "From publish to the first start, by action", TASK_BUCKETS
        )
        self.run = _Histogram(
            "taskhub_task_run_seconds",
            "From the first start to the end (success, fail or end), by action",
            TASK_BUCKETS,
        )
        self.total = _Histogram(
            "taskhub_task_duration_seconds",
            "From publish to the end (success, fail or end), by action",
            TASK_BUCKETS,
        )
        for histogram in (self.wait, self.run, self.total):
            r.register(histogram)
        # The store's per-batch histograms too: a sequential hub writes a batch per message.
        self.apply = _Histogram(
            "taskhub_store_apply_seconds",
            "Time the store took to make one batch durable (one transaction where it has them)",
            APPLY_BUCKETS,
            label=None,
        )
        self.batch_tasks = _Histogram(
            "taskhub_store_batch_tasks",
            "Task records per written batch (group commit: many frames share one batch)",
            BATCH_BUCKETS,
            label=None,
        )
        self.batch_events = _Histogram(
            "taskhub_store_batch_events", "Task events per written batch", BATCH_BUCKETS, label=None
        )
        for histogram in (self.apply, self.batch_tasks, self.batch_events):
            r.register(histogram)
        r.register(_StateCollector(hub))
        r.register(_AuthCollector(hub.registry))
        hub.each_lifecycle(self._listen)  # every partition's, as it comes to be led here
        hub.apply_hooks.append(self._on_apply)

    def _listen(self, lc: Lifecycle) -> None:
        lc.second_listeners.append(self._on_second)
        lc.batch_listeners.append(self._on_batch)

    def _on_second(self, second: int, counts: dict[EventKey, int]) -> None:
        add_counts(self.event_counts, counts)

    def _on_batch(self, started: list[TaskRecord], ended: list[TaskRecord]) -> None:
        """A batch's started and ended tasks into the histograms, a batch at a time (a
        listener call per task and an ``observe`` per value cost ~13,500 instructions per
        task: docs/performance.md). The fields are read with list displays: for msgspec
        structs, ``map(attrgetter(...))`` cost more than the bytecode's attribute reads."""
        # (``or 0.0`` for the type checker only: a started task has its ``started_at``, an
        # ended one its ``ended_at``.)
        if started:
            waits = [(r.started_at or 0.0) - r.created_at for r in started]
            self.wait.observe_each([r.action for r in started], waits)
        if ended:
            actions = [r.action for r in ended]
            ends = [r.ended_at or 0.0 for r in ended]
            self.total.observe_each(actions, [(r.ended_at or 0.0) - r.created_at for r in ended])
            starts = [r.started_at for r in ended]
            if None in starts:  # some never started (cancelled or timed out while waiting)
                ran = [
                    (a, e, s)
                    for a, e, s in zip(actions, ends, starts, strict=True)
                    if s is not None
                ]
                if not ran:
                    return
                actions, ends, starts = (list(column) for column in zip(*ran, strict=True))
            self.run.observe_each(actions, _since(ends, starts))

    def _on_apply(self, batch: WriteBatch, seconds: float) -> None:
        self.apply.observe("", seconds)
        self.batch_tasks.observe("", len(batch.tasks))
        self.batch_events.observe("", len(batch.events))

    def event_totals(self) -> dict[tuple[str, str], int]:
        """Task events since the hub started, per (action, type), the second under way too."""
        totals = dict(self.event_counts)
        for lc in self.hub.lifecycles:
            add_counts(totals, lc.counts)
        return totals

    def ended(self) -> dict[str, int]:
        """Tasks ended since the hub started, by how (``success``, ``fail``, ``end``): each
        task's terminal event is counted once, chains and groups included."""
        out = dict.fromkeys(TERMINAL_TYPES, 0)
        for (_action, type_), n in self.event_totals().items():
            if type_ in out:
                out[type_] += n
        return out

    def exposition(self) -> bytes:
        for lc in self.hub.lifecycles:  # the tasks of the batch under way too, every partition
            lc.settle()
        return generate_latest(self.registry)


def _since(later: Iterable[float], earlier: Iterable[float | None]) -> list[float]:
    """``later - earlier``, pairwise, without a Python call per pair (no ``None`` in
    ``earlier``: the caller leaves out the tasks that never started)."""
    return list(map(sub, later, earlier))


class _Series:
    """One label value's series of a :class:`_Histogram`."""

    __slots__ = ("buckets", "created", "sum")

    def __init__(self, size: int, created: float) -> None:
        self.buckets = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0
        self.created = created


class _Histogram(Collector):
    """A histogram counted in plain lists and exported at scrape time like a prometheus
    ``Histogram`` (buckets, count, sum, created), by one label (``action``) or none."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        label: str | None = "action",
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = [label] if label else []
        self.series: dict[str, _Series] = {}
        self._bounds = [float(b) for b in buckets]
        self._le = [repr(b) for b in self._bounds] + ["+Inf"]  # as prometheus writes them
        if label is None:  # exported from the start, zeros included, as prometheus does
            self.series[""] = _Series(len(self._le), time.time())

    def observe(self, key: str, value: float) -> None:
        """Count ``value`` in the series of label value ``key`` ("" without a label)."""
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series(len(self._le), time.time())
        series.buckets[bisect_left(self._bounds, value)] += 1  # a bucket counts value <= le
        series.sum += value

    def observe_each(self, keys: list[str], values: list[float]) -> None:
        """Count each ``values[i]`` in the series of ``keys[i]`` (a negative value as 0): a
        batch's tasks at once, sorted, then cut at each bucket's bound by bisection: C code
        per value (the sort) rather than a Python call per value."""
        if len(values) == 1:  # one task (a sequential task's batch): one bisection
            value = values[0]
            self.observe(keys[0], value if value > 0.0 else 0.0)
            return
        if keys.count(keys[0]) == len(keys):  # one action: the common case
            self._observe_sorted(keys[0], sorted(values))
            return
        by_key: dict[str, list[float]] = {}
        for key, value in zip(keys, values, strict=True):
            by_key.setdefault(key, []).append(value)
        for key, group in by_key.items():
            group.sort()
            self._observe_sorted(key, group)

    def _observe_sorted(self, key: str, values: list[float]) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series(len(self._le), time.time())
        buckets = series.buckets
        below = 0  # values counted so far: those <= the previous bound
        n = len(values)
        for b, bound in enumerate(self._bounds):
            # Once every value is counted the higher buckets get nothing: a burst's times
            # fill the first few of 18, and a bisection per bucket left cost ~0.4 µs a task.
            if below == n:
                break
            upto = bisect_right(values, bound, below)
            buckets[b] += upto - below
            below = upto
        buckets[-1] += n - below
        if values[0] < 0:  # a clock stepped back: counted as 0, as observe() would
            values = values[bisect_left(values, 0.0) :]
        series.sum += sum(values)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, series in list(self.series.items()):
            values = [key] if self.labels else []
            cumulative = list(accumulate(series.buckets))
            family.add_metric(values, list(zip(self._le, cumulative, strict=True)), series.sum)
            family.add_sample(
                self.name + "_created", dict(zip(self.labels, values, strict=True)), series.created
            )
        yield family


def add_counts(into: dict[tuple[str, str], int], counts: dict[EventKey, int]) -> None:
    """Add a second's event counts into totals per (action, type): groups summed."""
    for (action, type_, _group), n in counts.items():
        into[action, type_] = into.get((action, type_), 0) + n


class _EventCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "taskhub_task_events",
            "Task events (init, offer, start, update, success, fail, end, ...) by action",
            labels=["action", "type"],
        )
        for (action, type_), n in self.metrics.event_totals().items():
            family.add_metric([action, type_], n)
        yield family


class _AuthCollector(Collector):
    """What authentication cost: key checks (scrypt runs), failures, throttled attempts."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts = self.registry.counts
        for name, text, value in (
            (
                "taskhub_auth_key_checks",
                "Keys checked with scrypt (a cached key is not)",
                counts.key_checks,
            ),
            ("taskhub_auth_failures", "Unknown credential names and wrong keys", counts.failures),
            (
                "taskhub_auth_throttled",
                "Attempts refused without a key check (too many from one address, or the hub busy)",
                counts.throttled,
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)


@dataclass(slots=True)
class LiveTasks:
    """The unfinished tasks, counted in one pass: the gauges and the dashboard read these."""

    by_state: dict[str, int]  # user tasks by state (init, start)
    chains: dict[str, int]  # chains and groups (the hub's own tasks) by state
    # (action, group) -> [pending, offered or started] deliveries of user tasks
    deliveries: dict[tuple[str, str], list[int]]


def live_tasks(*lcs: Lifecycle) -> LiveTasks:
    """Count the unfinished tasks by state and their deliveries by queue and state (of every
    partition's lifecycle given)."""
    live = LiveTasks(dict.fromkeys(_LIVE_STATES, 0), {}, {})
    by_state, chains, deliveries = live.by_state, live.chains, live.deliveries
    for task in (t for lc in lcs for t in lc.tasks.values()):
        rec = task.rec
        if rec.action.startswith(INTERNAL_PREFIX):
            chains[rec.state] = chains.get(rec.state, 0) + 1
            continue
        by_state[rec.state] = by_state.get(rec.state, 0) + 1
        for group, d in task.deliveries.items():
            slot = deliveries.setdefault((rec.action, group), [0, 0])
            if d.rec.state == "pending":
                slot[0] += 1
            elif d.rec.state in ("offered", "started"):
                slot[1] += 1
    return live


class _StateCollector(Collector):
    """Gauges computed from the hub's live state at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        return []  # no fixed sample set: never collected at registration

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        lcs = hub.lifecycles
        tasks = GaugeMetricFamily("taskhub_tasks", "Unfinished tasks by state", labels=["state"])
        live = live_tasks(*lcs)
        counts = dict(live.by_state)
        for state, n in live.chains.items():
            counts[state] = counts.get(state, 0) + n
        for state, n in counts.items():
            tasks.add_metric([state], n)
        yield tasks

        pooled = GaugeMetricFamily(
            "taskhub_pooled_tasks",
            "Tasks waiting for any group to subscribe to their action",
            labels=["action"],
        )
        for action, waiting in (kv for lc in lcs for kv in lc.pooled.items()):
            pooled.add_metric([action], sum(1 for t in waiting if not t.ended))
        yield pooled

        depth = GaugeMetricFamily(
            "taskhub_queue_depth",
            "Deliveries waiting in a group's queue for a worker with free credit",
            labels=["action", "group"],
        )
        workers = GaugeMetricFamily(
            "taskhub_queue_workers",
            "Worker subscriptions (connections or pull consumers) of a group",
            labels=["action", "group"],
        )
        inflight = GaugeMetricFamily(
            "taskhub_queue_inflight",
            "Deliveries a group's workers hold (offered or started)",
            labels=["action", "group"],
        )
        for (action, group), q in sorted(kv for lc in lcs for kv in lc.queues.items()):
            depth.add_metric([action, group], _depth(q))
            workers.add_metric([action, group], len(q.workers))
            inflight.add_metric([action, group], sum(s.inflight for s in q.workers))
        yield depth
        yield workers
        yield inflight

        yield _connections(hub)
        yield from _partitions(hub)
        yield GaugeMetricFamily("taskhub_ready", "1 when /readyz answers 200", value=hub.ready)
        yield GaugeMetricFamily(
            "taskhub_draining", "1 while shutting down gracefully", value=hub.draining
        )


def _connections(hub: Hub) -> Metric:
    conns = GaugeMetricFamily(
        "taskhub_connections",
        "Open connections (WebSocket and pull consumers) by service",
        labels=["service"],
    )
    by_service: dict[str, int] = {}
    for peer in hub.connections.clients():  # another hub's clients are counted there
        by_service[peer.service] = by_service.get(peer.service, 0) + 1
    for service, n in sorted(by_service.items()):
        conns.add_metric([service], n)
    return conns


def _partitions(hub: Hub) -> Iterator[Metric]:
    """Each partition's numbers come from the hub that leads it (docs/operations.md): which
    ones this hub leads, and how many no hub leads as this hub sees them."""
    slots = hub.router.slots
    led = sum(1 for s in slots if s.local is not None)
    yield GaugeMetricFamily("taskhub_partitions_led", "Partitions this hub leads", value=led)
    leaderless = sum(1 for s in slots if s.local is None and not s.leader)
    yield GaugeMetricFamily(
        "taskhub_partitions_leaderless",
        "Partitions no hub leads right now, as this hub sees the leases",
        value=leaderless,
    )


def _depth(q: Queue) -> int:
    """Live entries of the queue (it drops ended or re-routed entries lazily), plus
    deliveries parked behind their partition key."""
    n = sum(
        1
        for _, _, d in q.entries()
        if not d.task.ended and d.rec.state == "pending" and d.task.deliveries.get(q.group) is d
    )
    return n + sum(len(parked) for parked in q.parked.values())


def for_hub(hub: Hub) -> Metrics:
    """The hub's metrics, created on first use (once: a second listener would count twice)."""
    # Kept on the hub, not in a module-level map keyed by it: a map's value would hold the
    # hub and keep every stopped hub alive (a WeakKeyDictionary whose value refers to its key).
    metrics = hub.metrics
    if metrics is None:
        metrics = Metrics(hub)
        hub.metrics = metrics
    return metrics


class Readiness(BaseModel):
    ready: bool = Field(description="Takes work: store open and writable, not draining.")
    draining: bool
    store_ok: bool
    fenced: bool = Field(description="The store refused a write: another hub leads.")


def install(app: FastAPI, hub: Hub) -> None:
    """Add ``GET /metrics`` and ``GET /readyz`` to the hub's app."""
    metrics = for_hub(hub)

    @app.get(
        "/metrics",
        tags=["operation"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}},
            401: error_responses()[401],
            429: error_responses()[429],
        },
    )
    async def get_metrics(caller: Caller) -> Response:
        """Prometheus text exposition of this hub's metrics (docs/operations.md). It names
        every action and service, so on a hub with credentials it needs one (any: a
        credential without permissions is enough for a scraper)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/readyz",
        tags=["operation"],
        response_model=Readiness,
        responses={
            503: {
                "model": Readiness,
                "description": "Not ready: starting, draining, or the store failing.",
            }
        },
    )
    async def readyz() -> Any:
        """200 when the hub takes work: store open and writable, flusher running, not
        draining. Load balancers should route by this, liveness probes by /healthz."""
        body = {
            "ready": hub.ready,
            "draining": hub.draining,
            "store_ok": hub.store_ok,
            "fenced": hub.fenced,
        }
        return JSONResponse(body, status_code=200 if hub.ready else 503)
