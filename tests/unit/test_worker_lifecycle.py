"""The hub's side of the worker runtime (issue 16), on the pure lifecycle: options a worker
declares with its subscription, Retry's delay, handing a delivery back, extending the end
timeout."""

from __future__ import annotations

import pytest

from taskhub.errors import InvalidOption
from taskhub.lifecycle.options import worker_options
from taskhub.protocol import WorkerOptions
from tests.unit.test_lifecycle import ACTION, Hub, delivery

ERR = {"type": "ValueError", "message": "boom"}


def declared(**opts: object) -> dict[str, object]:
    return worker_options(WorkerOptions(**opts))  # type: ignore[arg-type]


def test_worker_declared_retries_apply_when_the_publisher_set_none() -> None:
    h = Hub(retries=0, max_attempts=10)
    w = h.worker("a", options=declared(retries=2, backoff=3.0))
    task = h.pub()
    for attempt in (1, 2):
        assert h.offers(w) == [(task.id, attempt)]
        h.lc.pickup(w, task.id, attempt)
        h.lc.fail(w, task.id, attempt, ERR)
        h.tick(3.0 * 2 ** (attempt - 1))  # the worker's backoff, doubled
    assert h.offers(w) == [(task.id, 3)]
    h.lc.pickup(w, task.id, 3)
    h.lc.fail(w, task.id, 3, ERR)
    assert h.stored(task).state == "fail"  # 2 retries, then it failed


def test_the_publishers_option_beats_the_workers() -> None:
    h = Hub(retries=0, max_attempts=10)
    w = h.worker("a", options=declared(retries=5))
    task = h.pub(retries=0)
    [(tid, attempt)] = h.offers(w)
    h.lc.pickup(w, tid, attempt)
    h.lc.fail(w, tid, attempt, ERR)
    assert h.stored(task).state == "fail"


def test_worker_timeout_applies_and_none_means_no_end_timeout() -> None:
    h = Hub(task_end_timeout=60.0)
    w = h.worker("a", options=declared(timeout=5.0))
    t1 = h.pub()
    h.lc.pickup(w, t1.id, 1)
    assert h.stored(t1).options["timeout"] == 5.0
    h.tick(5.0)
    assert h.stored(t1).state == "fail"
    assert h.stored(t1).error["reason"] == "timeout"

    w2 = h.worker("b", action="x:y", options=declared(timeout=None))
    t2 = h.pub("x:y")
    h.lc.pickup(w2, t2.id, 1)
    h.tick(3600)
    assert h.stored(t2).state == "start"

    w3 = h.worker("c", action="x:z", options=declared(timeout=5.0))
    t3 = h.pub("x:z", timeout=100.0)  # the publisher's wins
    h.lc.pickup(w3, t3.id, 1)
    h.tick(50)
    assert h.stored(t3).state == "start"


def test_worker_max_attempts_applies_to_a_lost_connection() -> None:
    h = Hub(max_attempts=5)
    w = h.worker("a", options=declared(max_attempts=1))
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    h.lc.disconnect(w)
    assert h.stored(task).state == "fail"
    assert h.stored(task).error["reason"] == "attempts"


def test_bad_worker_options_are_refused_naming_the_option() -> None:
    with pytest.raises(InvalidOption, match="retries"):
        declared(retries=-1)
    with pytest.raises(InvalidOption, match="max_attempts"):
        declared(max_attempts=0)
    with pytest.raises(InvalidOption, match="timeout"):
        declared(timeout=-1.0)


def test_retry_with_delay_counts_a_try_ignores_retries_and_stops_at_max_attempts() -> None:
    h = Hub(retries=0, max_attempts=2)
    w = h.worker("a")
    task = h.pub()
    assert h.offers(w) == [(task.id, 1)]
    h.lc.pickup(w, task.id, 1)
    h.lc.fail(w, task.id, 1, {"type": "Retry", "message": ""}, delay=30.0)
    assert delivery(task, "a").tries == 1
    h.tick(29.0)
    assert h.offers(w) == []
    h.tick(1.0)
    assert h.offers(w) == [(task.id, 2)]
    h.lc.pickup(w, task.id, 2)
    h.lc.fail(w, task.id, 2, {"type": "Retry", "message": ""}, delay=30.0)
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error["reason"] == "attempts"


def test_reject_fails_at_once_into_the_dead_letters() -> None:
    h = Hub(retries=3)
    w = h.worker("a")
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    h.lc.fail(w, task.id, 1, {"type": "Reject", "message": "bad"}, retry=False)
    assert task.id in h.lc.pending_meta("dead")[0]  # the dead-letter list
    assert h.stored(task).state == "fail"
    assert h.stored(task).error["reason"] == "error"


def test_release_hands_back_without_counting_a_try_to_another_connection() -> None:
    h = Hub(max_attempts=1)
    w1 = h.worker("a")
    task = h.pub()
    w2 = h.worker("a")
    assert h.offers(w1) == [(task.id, 1)]
    h.lc.pickup(w1, task.id, 1)
    h.lc.unsubscribe(w1, ACTION)
    h.lc.release(w1, task.id, 1)
    assert h.offers(w2) == [(task.id, 2)]
    assert delivery(task, "a").tries == 0
    h.lc.complete(w2, task.id, 2, "ok")
    assert h.stored(task).state == "success"


def test_extend_pushes_the_end_deadline_and_never_shortens_it() -> None:
    h = Hub(task_end_timeout=10.0)
    w = h.worker("a")
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    h.tick(8.0)
    h.lc.extend(w, task.id, 1, 60.0)  # now 68 s after the start
    h.lc.extend(w, task.id, 1, 1.0)  # shorter: ignored
    h.tick(50.0)
    assert h.stored(task).state == "start"
    h.tick(10.0)
    assert h.stored(task).state == "fail"
    assert h.stored(task).error["reason"] == "timeout"
