"""Partition keys: within a group, one delivery per key in flight, in publish order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from taskhub.lifecycle import Credentials, Peer, Task
from tests.unit.test_lifecycle import ACTION, Hub


def pub(h: Hub, key: str | None, **options: Any) -> Task:
    opts = SimpleNamespace(**options, **({"partition_key": key} if key else {}))
    task, _ = h.lc.publish(Credentials("publisher"), ACTION, None, opts)
    assert isinstance(task, Task)
    return task


def started(h: Hub, peer: Peer) -> list[str]:
    """Pick up every offer ``peer`` got; return their task ids."""
    ids = []
    for task_id, attempt in h.offers(peer):
        h.lc.pickup(peer, task_id, attempt)
        ids.append(task_id)
    return ids


def test_one_task_per_key_at_a_time_in_publish_order() -> None:
    h = Hub()
    w = h.worker("w", concurrency=10)
    a1, b1, a2, a3, free = pub(h, "a"), pub(h, "b"), pub(h, "a"), pub(h, "a"), pub(h, None)
    assert started(h, w) == [a1.id, b1.id, free.id]  # other keys and unkeyed tasks go on
    h.lc.complete(w, a1.id, 1, "done")
    assert started(h, w) == [a2.id]
    h.lc.drop(w, a2.id, 1)
    assert started(h, w) == [a3.id]
    assert h.offers(w) == []


def test_each_group_orders_on_its_own() -> None:
    h = Hub()
    alpha, beta = h.worker("alpha", concurrency=5), h.worker("beta", concurrency=5)
    t1, t2 = pub(h, "k"), pub(h, "k")
    assert started(h, alpha) == [t1.id] and started(h, beta) == [t1.id]
    h.lc.drop(beta, t1.id, 1)
    assert started(h, beta) == [t2.id]  # beta is free of the key; alpha still works on t1
    assert started(h, alpha) == []


def test_a_retry_keeps_its_place_ahead_of_later_tasks() -> None:
    h = Hub(retry_backoff=1.0)
    w = h.worker("w", concurrency=5)
    t1, t2 = pub(h, "k", retries=1), pub(h, "k")
    assert started(h, w) == [t1.id]
    h.lc.fail(w, t1.id, 1, {"type": "E", "message": "later"})
    assert started(h, w) == []  # t1 waits out its backoff, t2 still waits behind it
    h.tick(1.0)
    assert started(h, w) == [t1.id]
    h.lc.fail(w, t1.id, 2, {"type": "E", "message": "again"})  # no retry left: it fails
    assert started(h, w) == [t2.id]


def test_a_lost_worker_hands_the_key_on_to_the_same_task() -> None:
    h = Hub()
    w1 = h.worker("g", concurrency=5)
    t1, _t2 = pub(h, "k"), pub(h, "k")
    assert started(h, w1) == [t1.id]
    w2 = h.worker("g", concurrency=5)
    h.lc.disconnect(w1)
    assert started(h, w2) == [t1.id]  # re-offered first; the second task still waits


def test_cancel_frees_the_key_even_while_it_waits_for_a_retry() -> None:
    h = Hub(retry_backoff=5.0)
    w = h.worker("w", concurrency=5)
    t1, t2 = pub(h, "k", retries=3), pub(h, "k")
    assert started(h, w) == [t1.id]
    h.lc.fail(w, t1.id, 1, {"type": "E", "message": "x"})
    h.lc.cancel(Credentials("publisher"), t1.id)
    assert started(h, w) == [t2.id]


def test_parked_tasks_that_end_are_skipped() -> None:
    h = Hub()
    w = h.worker("w", concurrency=5)
    t1, t2, t3 = pub(h, "k"), pub(h, "k"), pub(h, "k")
    assert started(h, w) == [t1.id]
    h.lc.cancel(Credentials("publisher"), t2.id)
    h.lc.complete(w, t1.id, 1, None)
    assert started(h, w) == [t3.id]
    assert t1.rec.options["partition_key"] == "k"
