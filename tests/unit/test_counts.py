"""Task events counted per second by the lifecycle, and what the dashboard's rates and the
metrics' counters and histograms make of them, with a fake clock driven by hand."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskhub.hub.dashboard.monitor import RATE_WINDOW, RECENT_TASKS, Monitor
from taskhub.hub.http.metrics import TASK_BUCKETS, Metrics, for_hub
from taskhub.hub.hub import Hub
from taskhub.lifecycle import Credentials, EventKey, Peer
from taskhub.store import open_store

ACTION = "report:build"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _hub(clock: FakeClock) -> tuple[Hub, Peer, Credentials]:
    hub = Hub(open_store("memory://"), clock=clock)
    worker = Peer("w1", Credentials("builder"))
    hub.lc.connect(worker)
    hub.lc.subscribe(worker, ACTION, concurrency=100)
    return hub, worker, Credentials("web")


def _run(hub: Hub, worker: Peer, publisher: Credentials, n: int = 1) -> None:
    """Publish n tasks and have the worker pick each up and return it."""
    for _ in range(n):
        task, _created = hub.lc.publish(publisher, ACTION, {"x": 1})
        assert not isinstance(task, str)
        hub.lc.pickup(worker, task.id, 1)
        hub.lc.complete(worker, task.id, 1, "done")


def test_events_are_counted_per_second_and_each_complete_second_is_told() -> None:
    clock = FakeClock(1000.2)
    hub, worker, publisher = _hub(clock)
    told: list[tuple[int, dict[EventKey, int]]] = []
    hub.lc.second_listeners.append(lambda second, counts: told.append((second, counts)))
    _run(hub, worker, publisher)
    clock.now = 1000.9
    _run(hub, worker, publisher)
    assert told == []  # the second is not over as far as the hub knows
    assert hub.lc.counts_second == 1000
    assert hub.lc.counts[ACTION, "init", None] == 2
    assert hub.lc.counts[ACTION, "start", "builder"] == 2
    assert hub.lc.counts[ACTION, "success", None] == 2
    clock.now = 1004.5  # seconds without events are skipped, not told
    _run(hub, worker, publisher)
    assert [second for second, _ in told] == [1000]
    assert told[0][1][ACTION, "init", None] == 2
    assert hub.lc.counts_second == 1004
    assert hub.lc.counts[ACTION, "init", None] == 1


def test_each_event_counts_in_the_second_int_gives_its_time_whichever_way_the_clock_goes() -> None:
    clock = FakeClock(5.99)
    hub, worker, publisher = _hub(clock)
    told: list[tuple[int, dict[EventKey, int]]] = []
    hub.lc.second_listeners.append(lambda second, counts: told.append((second, dict(counts))))
    _run(hub, worker, publisher)  # second 5
    clock.now = 0.5  # a clock set back, to second 0 (which int() gives (-1, 1) to)
    _run(hub, worker, publisher)
    clock.now = 0.75  # still second 0
    _run(hub, worker, publisher)
    clock.now = 5.0  # back in second 5, a new run of it
    _run(hub, worker, publisher)
    clock.now = 6.0  # the first reading of second 6
    _run(hub, worker, publisher)
    assert [(second, counts[ACTION, "init", None]) for second, counts in told] == [
        (5, 1),
        (0, 2),
        (5, 1),
    ]
    assert hub.lc.counts_second == 6
    assert hub.lc.counts == {
        (ACTION, "init", None): 1,
        (ACTION, "offer", "builder"): 1,
        (ACTION, "start", "builder"): 1,
        (ACTION, "success", None): 1,
    }


def test_rates_count_the_last_window_only() -> None:
    clock = FakeClock(2000.5)
    hub, worker, publisher = _hub(clock)
    monitor = Monitor(hub)
    _run(hub, worker, publisher, 3)  # second 2000
    clock.now = 2030.1
    _run(hub, worker, publisher, 2)  # second 2030
    clock.now = 2059.9
    _run(hub, worker, publisher, 1)  # second 2059, still under way
    [row] = monitor.rates()  # one row per action, its groups inside it
    assert row["action"] == ACTION
    assert (row["published"], row["started"], row["succeeded"]) == (6, 6, 6)
    assert row["groups"] == [{"group": "builder", "started": 6, "failed": 0}]
    clock.now = 2000 + RATE_WINDOW + 0.5  # second 2000 has left the window
    [row] = monitor.rates()
    assert row["published"] == 3
    assert row["groups"] == [{"group": "builder", "started": 3, "failed": 0}]
    clock.now = 2059 + RATE_WINDOW + 0.5  # so has everything
    assert monitor.rates() == []
    assert monitor.ended["success"] == 6
    assert [snap[2] for snap in monitor.recent] == ["success"] * 6
    # Complete seconds are kept only while a window can still need them.
    clock.now = 2100.0
    _run(hub, worker, publisher)
    assert [second for second, _ in monitor._seconds] == [2059]
    # the charts keep each second, from the hub's start, the second under way included
    series = monitor.chart(300)
    assert series["t"][0] == 2000 and series["t"][-1] == 2100
    published = dict(zip(series["t"], series["published"], strict=True))
    assert (published[2000], published[2030], published[2059], published[2100]) == (3, 2, 1, 1)
    assert sum(series["published"]) == 7 and sum(series["succeeded"]) == 7


def test_metrics_add_complete_seconds_and_the_one_under_way() -> None:
    clock = FakeClock(3000.0)
    hub, worker, publisher = _hub(clock)
    metrics = Metrics(hub)
    _run(hub, worker, publisher, 2)
    clock.now = 3001.5
    task, _ = hub.lc.publish(publisher, ACTION, None)
    assert not isinstance(task, str)
    clock.now = 3003.0
    hub.lc.pickup(worker, task.id, 1)  # waited 1.5 s
    clock.now = 3007.0
    hub.lc.complete(worker, task.id, 1, None)  # ran 4 s, 5.5 s in all
    text = metrics.exposition().decode()
    assert f'taskhub_task_events_total{{action="{ACTION}",type="init"}} 3.0' in text
    assert f'taskhub_task_events_total{{action="{ACTION}",type="success"}} 3.0' in text
    assert f'taskhub_task_wait_seconds_sum{{action="{ACTION}"}} 1.5' in text
    assert f'taskhub_task_run_seconds_sum{{action="{ACTION}"}} 4.0' in text
    assert f'taskhub_task_duration_seconds_count{{action="{ACTION}"}} 3.0' in text
    assert f'taskhub_task_duration_seconds_sum{{action="{ACTION}"}} 5.5' in text


def test_the_dashboard_reads_what_the_metrics_count() -> None:
    # One source: the dashboard's totals of ended tasks and its live counts are the metrics'.
    clock = FakeClock(4000.0)
    hub, worker, publisher = _hub(clock)
    monitor = Monitor(hub)
    assert monitor.metrics is for_hub(hub)  # the hub's one Metrics, not a second feed
    _run(hub, worker, publisher, 3)
    task, _ = hub.lc.publish(publisher, ACTION, None)
    assert not isinstance(task, str)
    clock.now = 4001.5
    hub.lc.pickup(worker, task.id, 1)  # running
    hub.lc.publish(publisher, ACTION, None)  # offered to the worker, not started: waiting
    assert monitor.ended == monitor.metrics.ended() == {"success": 3, "fail": 0, "end": 0}
    counts, [queue] = monitor.live()
    assert counts == {"waiting": 1, "running": 1, "chains": 0}
    assert (queue["waiting"], queue["in_flight"]) == (0, 2)
    text = monitor.metrics.exposition().decode()
    assert 'taskhub_tasks{state="init"} 1.0' in text
    assert 'taskhub_tasks{state="start"} 1.0' in text


def _samples(registry_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(registry_text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_a_burst_in_one_batch_is_counted_as_task_by_task() -> None:
    # The histograms and the recent list are fed once per batch (lc.batch_listeners); a
    # burst of tasks of two actions, ended in one batch, must count as observing each task's
    # times one by one does: a cancelled task has no wait or run time, a clock stepped back
    # counts as 0, and the recent list keeps the last RECENT_TASKS in order.
    clock = FakeClock(5000.0)
    hub, worker, publisher = _hub(clock)
    hub.lc.subscribe(worker, "report:mail", concurrency=100)
    monitor = Monitor(hub)
    # The oracle: prometheus_client's own histograms, fed one task at a time.
    one_by_one, wait, run = _reference_histograms()
    ids = []
    for i in range(RECENT_TASKS + 200):
        action = ACTION if i % 3 else "report:mail"
        task, _ = hub.lc.publish(publisher, action, None)
        assert not isinstance(task, str)
        ids.append(task.id)
        if i % 10 == 0:  # cancelled while waiting: a duration, no wait or run time
            hub.lc.cancel(publisher, task.id)
            continue
        clock.now += 0.0007 * (i % 50)
        hub.lc.pickup(worker, task.id, 1)
        clock.now += 0.01 * (i % 40) - (0.5 if i % 17 == 0 else 0.0)  # sometimes back
        hub.lc.complete(worker, task.id, 1, None)
        rec = task.rec
        assert rec.started_at is not None and rec.ended_at is not None
        wait.labels(action).observe(rec.started_at - rec.created_at)
        run.labels(action).observe(max(0.0, rec.ended_at - rec.started_at))
    assert len(hub.lc.take_writes().tasks) == len(ids)  # one batch: listeners told once
    got = _samples(monitor.metrics.exposition().decode())
    want = _samples(generate_latest(one_by_one).decode())
    assert len(want) == 2 * 2 * (len(TASK_BUCKETS) + 3)  # 2 histograms, 2 actions
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key  # sums: added in another order
    durations = {k[1]: v for k, v in got.items() if k[0] == "taskhub_task_duration_seconds_count"}
    assert durations == {(("action", ACTION),): 800, (("action", "report:mail"),): 400}
    assert [snap[0] for snap in monitor.recent] == ids[-RECENT_TASKS:]


def _reference_histograms() -> tuple[CollectorRegistry, Histogram, Histogram]:
    """prometheus_client's own wait and run histograms, fed one task at a time by a test."""
    registry = CollectorRegistry()
    wait, run = (
        Histogram(name, "", ["action"], buckets=TASK_BUCKETS, registry=registry)
        for name in ("taskhub_task_wait_seconds", "taskhub_task_run_seconds")
    )
    return registry, wait, run


def test_tasks_ended_one_batch_each_are_counted_as_task_by_task() -> None:
    # Sequential tasks: each batch holds one task's start or end (a histogram's one-value
    # path), with times on a bucket's bound, between bounds, and a clock stepped back.
    clock = FakeClock(5000.0)
    hub, worker, publisher = _hub(clock)
    monitor = Monitor(hub)
    one_by_one, wait, run = _reference_histograms()
    steps = [*TASK_BUCKETS[:6], 0.0, 0.0003, 0.02, -0.25, 7.5]
    for i, step in enumerate(steps):
        task, _ = hub.lc.publish(publisher, ACTION, None)
        assert not isinstance(task, str)
        hub.lc.take_writes()
        clock.now += abs(steps[-1 - i])
        hub.lc.pickup(worker, task.id, 1)
        hub.lc.take_writes()
        clock.now += step
        hub.lc.complete(worker, task.id, 1, None)
        hub.lc.take_writes()
        rec = task.rec
        assert rec.started_at is not None and rec.ended_at is not None
        wait.labels(ACTION).observe(rec.started_at - rec.created_at)
        run.labels(ACTION).observe(max(0.0, rec.ended_at - rec.started_at))
        clock.now += 1.0
    got = _samples(monitor.metrics.exposition().decode())
    want = _samples(generate_latest(one_by_one).decode())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_a_batch_of_times_all_in_the_lowest_or_all_past_the_highest_bucket() -> None:
    # A histogram stops bisecting once every value of a batch is counted (a burst's run
    # times fill the first bucket): the buckets above still export their cumulative counts,
    # and a batch wholly past the last bound still lands in +Inf.
    clock = FakeClock(5000.0)
    hub, worker, publisher = _hub(clock)
    monitor = Monitor(hub)
    one_by_one, wait, run = _reference_histograms()
    for gap in (0.0002, TASK_BUCKETS[-1] + 5.0):  # one batch of each
        tasks = []
        for _ in range(20):
            task, _ = hub.lc.publish(publisher, ACTION, None)
            assert not isinstance(task, str)
            tasks.append(task)
        clock.now += gap
        for task in tasks:
            hub.lc.pickup(worker, task.id, 1)
        clock.now += gap
        for task in tasks:
            hub.lc.complete(worker, task.id, 1, None)
            rec = task.rec
            assert rec.started_at is not None and rec.ended_at is not None
            wait.labels(ACTION).observe(rec.started_at - rec.created_at)
            run.labels(ACTION).observe(rec.ended_at - rec.started_at)
        assert len(hub.lc.take_writes().tasks) == 20  # one batch
    got = _samples(monitor.metrics.exposition().decode())
    want = _samples(generate_latest(one_by_one).decode())
    assert len(want) == 2 * (len(TASK_BUCKETS) + 3)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
