"""Task events counted per second by the lifecycle, and what the dashboard's rates and the
metrics' counters and histograms make of them, with a fake clock driven by hand."""

from __future__ import annotations

from taskhub.hub.dashboard.monitor import RATE_WINDOW, Monitor
from taskhub.hub.http.metrics import Metrics, for_hub
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
