"""The dashboard's time series (hub/dashboard/series.py) and the search's id bounds
(hub/http/search.py): pure bookkeeping, no hub."""

from __future__ import annotations

import random
import time

from taskhub.hub.dashboard.series import (
    BINS,
    MINUTE_POINTS,
    SAMPLE,
    SECOND_POINTS,
    Series,
    bin_upper,
    duration_bin,
    series_counts,
)
from taskhub.hub.http.search import first_id_at, last_id_at
from taskhub.ids import new_id
from taskhub.records import TaskRecord

T0 = 1_800_000_000  # a whole minute


def _task(created: float, started: float, ended: float, not_before: float = 0.0) -> TaskRecord:
    return TaskRecord(
        id="x",
        action="a:b",
        publisher="p",
        created_at=created,
        started_at=started,
        ended_at=ended,
        not_before=not_before,
        state="success",
    )


def test_bins_hold_their_values_within_a_factor_of_root_two() -> None:
    for value in (0.0002, 0.001, 0.0137, 0.5, 2.0, 61.0, 3000.0):
        b = duration_bin(value)
        assert bin_upper(b - 1) < value <= bin_upper(b)
        assert bin_upper(b) / value < 2**0.5 + 1e-9
    assert duration_bin(0.0) == 0
    assert duration_bin(10**9) == BINS - 1  # everything past the last edge


def test_counts_and_percentiles_per_second() -> None:
    s = Series()
    s.add_counts(T0, published=5, succeeded=3, failed=1)
    # 100 tasks ended in T0 + 1: waits of 1 ms, runs of 10 ms for 98 of them, 2 s for 2
    for i in range(100):
        run = 2.0 if i < 2 else 0.010
        s.add_task(_task(T0 + 0.5, T0 + 0.501, T0 + 0.501 + run if run < 1 else T0 + 1.5))
    view = s.view(T0 + 2, 5)
    assert view["step"] == 1 and view["t"] == [T0 - 2, T0 - 1, T0, T0 + 1, T0 + 2]
    assert view["published"] == [0, 0, 5, 0, 0]
    assert view["succeeded"] == [0, 0, 3, 0, 0] and view["failed"] == [0, 0, 1, 0, 0]
    # T0 + 0.511 is still second T0 for the 98 quick tasks; the 2 slow ones end at T0 + 1.5
    p50 = view["run_p50"][2]
    assert p50 is not None and 0.010 <= p50 < 0.010 * 2**0.5
    assert view["run_p99"][2] == view["run_p50"][2]  # 98 quick ones: the 99th is quick too
    slow = view["run_p50"][3]
    assert slow is not None and 0.999 <= slow < 1.0 * 2**0.5 + 0.01
    wait = view["wait_p90"][2]
    assert wait is not None and 0.001 <= wait < 0.001 * 2**0.5 + 1e-6
    assert view["run_p50"][0] is None  # nothing ended then: no point, not a zero


def test_a_delayed_task_waits_from_the_end_of_its_delay() -> None:
    s = Series()
    s.add_task(_task(T0, T0 + 60.002, T0 + 60.003, not_before=T0 + 60.0))
    wait = s.view(T0 + 61, 5)["wait_p50"][-2]
    assert wait is not None and wait < 0.003


def test_minutes_beyond_fifteen_minutes_and_the_live_second() -> None:
    s = Series()
    s.add_counts(T0 + 5, 60, 30, 0)
    s.add_counts(T0 + 65, 120, 0, 0)
    view = s.view(T0 + 3599, 3600, live=(T0 + 3599, 6, 0, 0))
    assert view["step"] == 60 and len(view["t"]) == 60
    assert view["t"][0] == T0 and view["published"][:2] == [1.0, 2.0]  # per second
    assert view["succeeded"][0] == 0.5
    assert view["published"][-1] == 0.1  # the second still being counted is shown too


def test_memory_is_bounded() -> None:
    s = Series()
    for second in range(T0, T0 + 2 * SECOND_POINTS):
        s.add_counts(second, 1, 1, 0)
        s.add_task(_task(second, second + 0.1, second + 0.2))
    assert len(s.seconds) == SECOND_POINTS
    assert min(s.seconds) == T0 + SECOND_POINTS
    for minute in range(2 * MINUTE_POINTS):
        s.add_counts(T0 + 60 * minute, 1, 0, 0)
    assert len(s.minutes) == MINUTE_POINTS


def test_chains_are_counted_as_their_steps() -> None:
    counts = {
        ("a:b", "init", None): 2,
        ("taskhub:chain", "init", None): 1,
        ("a:b", "success", None): 1,
        ("taskhub:chain", "success", None): 1,
        ("a:b", "fail", None): 1,
        ("a:b", "start", "g"): 2,
    }
    assert series_counts(counts) == (2, 1, 1)


def test_a_time_is_an_id_range() -> None:
    # the bounds hold every id made at the time, with room for the clock reads between
    # making a task's id and its created_at (which the search then checks exactly)
    t = time.time()
    made = new_id()
    assert first_id_at(t) < made < last_id_at(t)
    assert first_id_at(t + 2) > made > last_id_at(t - 2)
    assert first_id_at(0) == ""  # no lower bound


def test_a_young_hub_charts_only_its_own_time() -> None:
    s = Series()
    view = s.view(T0 + 100.5, 300, since=T0 + 0.7)
    assert view["t"] == list(range(T0, T0 + 101))
    # but at least a minute's points, or the time axis would count milliseconds
    assert s.view(T0 + 10.5, 300, since=T0 + 0.7)["t"] == list(range(T0 - 49, T0 + 11))
    assert s.view(T0 + 7200, 3600, since=T0)["t"][0] == T0 + 3660  # an hour back, by minute


def test_a_busy_second_is_sampled_with_weights() -> None:
    s = Series(rng=random.Random(7))
    n = 20 * SAMPLE
    for i in range(n):  # one second; every 20th task is slow (100 ms), the rest take 1 ms
        run = 0.1 if i % 20 == 0 else 0.001
        s.add_task(_task(T0 + 0.1, T0 + 0.1, T0 + 0.1 + run))
    bucket = s.seconds[T0]
    assert bucket.run is not None
    total = sum(bucket.run)
    assert 0.9 * n <= total <= 1.1 * n  # each sample stands for the tasks it skipped
    view = s.view(T0 + 1, 5)
    p50, p90, p99 = view["run_p50"][-2], view["run_p90"][-2], view["run_p99"][-2]
    assert p50 is not None and 0.001 <= p50 < 0.0015
    assert p90 is not None and 0.001 <= p90 < 0.0015
    assert p99 is not None and 0.1 <= p99 < 0.15
    assert s.minutes[T0 // 60].run == bucket.run  # the minute got the same weights


def test_a_batch_is_binned_as_its_tasks_one_by_one() -> None:
    # The dashboard gets the ended tasks once per batch (Series.add_tasks): stepping over the
    # sampling's gaps within a batch must bin exactly the tasks add_task would, at the same
    # weights, whatever the batch sizes and across seconds.
    one, batched = Series(rng=random.Random(3)), Series(rng=random.Random(3))
    tasks = []
    for i in range(12 * SAMPLE):
        second = T0 + i // (4 * SAMPLE)  # three busy seconds
        run = 0.1 if i % 7 == 0 else 0.001 * (1 + i % 5)
        if i % 11 == 0:  # never started: not binned, and no gap drawn for it
            tasks.append(TaskRecord("x", "a:b", "p", second, state="fail", ended_at=second + 0.5))
        else:
            tasks.append(_task(second + 0.1, second + 0.2, second + 0.2 + run))
    for rec in tasks:
        one.add_task(rec)
    sizes = [1, 7, 64, 500, 3, 1000, 2]
    i = 0
    while i < len(tasks):
        size = sizes[i % len(sizes)]
        batched.add_tasks(tasks[i : i + size])
        i += size
    for second in (T0, T0 + 1, T0 + 2):
        a, b = one.seconds[second], batched.seconds[second]
        assert (a.wait, a.run) == (b.wait, b.run)
        assert a.run is not None and sum(a.run) > 2 * SAMPLE  # sampled with weights
    assert one.minutes[T0 // 60].run == batched.minutes[T0 // 60].run
