"""The task lifecycle rules (DESIGN.md "Task lifecycle" 1-8), on the pure state machine.

Everything is observed from the outside: the messages queued for peers (``take_output``) and
the records written (``take_writes``), with a fake clock driven by hand.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import msgspec
import pytest

from taskhub.errors import (
    InvalidAction,
    InvalidOption,
    NotHolding,
    PermissionDenied,
    StaleAttempt,
    TaskNotFound,
)
from taskhub.lifecycle import Credentials, Defaults, Lifecycle, Message, Peer, Task
from taskhub.protocol import PubOptions
from taskhub.records import EventRecord, TaskRecord

ACTION = "email:send"


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counter:
    """A sortable id factory: t0001, t0002, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"t{self.n:04d}"


class NoJitter(random.Random):
    """Backoff jitter multiplies by 0.5 + random()/2: 1.0 here, so backoffs are exact."""

    def random(self) -> float:
        return 1.0


class Hub:
    """A tiny stand-in for the hub: drives a Lifecycle and collects what it produces."""

    def __init__(
        self, lc: Lifecycle | None = None, clock: FakeClock | None = None, **defaults: Any
    ) -> None:
        self.clock = clock or FakeClock()
        defaults.setdefault("pickup_window", 10.0)
        self.lc = lc or Lifecycle(
            clock=self.clock, defaults=Defaults(**defaults), new_id=Counter(), rng=NoJitter()
        )
        self.inbox: dict[Peer, list[Message]] = defaultdict(list)
        self.events: list[EventRecord] = []
        self.records: dict[str, TaskRecord] = {}
        self._n = 0

    def peer(
        self, service: str, *, sub: tuple[str, ...] = ("*",), pub: tuple[str, ...] = ("*",)
    ) -> Peer:
        self._n += 1
        peer = Peer(f"c{self._n}", Credentials(service, sub_permissions=sub, pub_permissions=pub))
        self.lc.connect(peer)
        return peer

    def worker(self, service: str, action: str = ACTION, **kw: Any) -> Peer:
        peer = self.peer(service)
        self.lc.subscribe(peer, action, **kw)
        return peer

    def pub(
        self,
        action: str = ACTION,
        payload: Any = None,
        peer: Peer | None = None,
        creds: Credentials | None = None,
        **options: Any,
    ) -> Task:
        creds = creds or (peer.creds if peer else Credentials("publisher"))
        task, created = self.lc.publish(creds, action, payload, PubOptions(**options), peer=peer)
        assert isinstance(task, Task)
        assert created
        return task

    def drain(self) -> None:
        batch = self.lc.take_writes()
        self.events.extend(batch.events)
        for rec in batch.tasks:
            self.records[rec.id] = msgspec.json.decode(msgspec.json.encode(rec), type=TaskRecord)
        for peer, msgs in self.lc.take_output():
            self.inbox[peer].extend(msgs)

    def msgs(self, peer: Peer, op: str | None = None) -> list[Message]:
        """The messages queued for ``peer`` since the last look (optionally of one op)."""
        self.drain()
        got = self.inbox.pop(peer, [])
        return [m for m in got if op is None or m["op"] == op]

    def offers(self, peer: Peer) -> list[tuple[str, int]]:
        return [(m["task"], m["attempt"]) for m in self.msgs(peer, "offer")]

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.lc.advance()

    def event_types(self, task: Task) -> list[str]:
        self.drain()
        return [e.type for e in self.events if e.task_id == task.id]

    def stored(self, task: Task) -> TaskRecord:
        self.drain()
        return self.records[task.id]


def delivery(task: Task, group: str) -> Any:
    return next(d for d in task.rec.deliveries if d.group == group)


# --- rule 1: pub stores the task and offers it to every group; pooled when none ---------------


def test_pooled_task_waits_durably_then_is_offered_when_a_group_subscribes() -> None:
    h = Hub()
    pub = h.peer("publisher")
    task = h.pub(payload={"to": "x"}, peer=pub)
    rec = h.stored(task)
    assert rec.state == "init"
    assert rec.payload == {"to": "x"}
    assert rec.deliveries == []
    assert h.event_types(task) == ["init"]
    assert h.msgs(pub) == []  # nothing offered, nobody told
    h.tick(3600)  # no start timeout by default: it waits forever
    assert task.rec.state == "init"

    w = h.worker("emailer")
    [offer] = h.msgs(w)
    assert offer["op"] == "offer"
    assert offer["task"] == task.id
    assert offer["attempt"] == 1
    assert offer["action"] == ACTION
    assert offer["group"] == "emailer"
    assert offer["payload"] == {"to": "x"}
    assert offer["publisher"] == "publisher"
    assert "observe" not in offer
    assert [(d.group, d.state, d.attempt) for d in h.stored(task).deliveries] == [
        ("emailer", "offered", 1)
    ]


def test_fan_out_each_group_gets_one_delivery() -> None:
    h = Hub()
    a1, a2 = h.worker("a"), h.worker("a")
    b1, b2 = h.worker("b"), h.worker("b")
    task = h.pub()
    a_offers = h.offers(a1) + h.offers(a2)
    b_offers = h.offers(b1) + h.offers(b2)
    assert a_offers == [(task.id, 1)]
    assert b_offers == [(task.id, 1)]
    assert sorted(d.group for d in h.stored(task).deliveries) == ["a", "b"]


def test_inside_a_group_only_one_connection_gets_it() -> None:
    h = Hub()
    workers = [h.worker("a") for _ in range(3)]
    task = h.pub()
    offers = [o for w in workers for o in h.offers(w)]
    assert offers == [(task.id, 1)]


def test_named_group_competes_across_services() -> None:
    h = Hub()
    x = h.worker("svc-x", group="jobs")
    y = h.worker("svc-y", group="jobs")
    task = h.pub()
    assert len(h.offers(x) + h.offers(y)) == 1
    assert [d.group for d in task.rec.deliveries] == ["jobs"]


# --- rule 2: credit and round robin ----------------------------------------------------------


def test_credit_limits_offers_and_freed_credit_dispatches_the_next() -> None:
    h = Hub()
    w = h.worker("a", concurrency=2)
    t1, t2, t3 = h.pub(), h.pub(), h.pub()
    assert h.offers(w) == [(t1.id, 1), (t2.id, 1)]
    h.lc.pickup(w, t1.id, 1)
    h.lc.drop(w, t1.id, 1)
    assert h.offers(w) == [(t3.id, 1)]
    t4 = h.pub()
    assert h.offers(w) == []  # still two in flight
    h.lc.complete(w, t2.id, 1, "ok")
    assert h.offers(w) == [(t4.id, 1)]


def test_a_revoke_goes_before_the_offer_its_freed_credit_makes() -> None:
    # Found by tests/unit/test_lifecycle_machine.py: a task that ended by timeout or cancel
    # gave its holder's credit back (and offered the next task) before revoking it, so the
    # worker saw two offers held with a credit of 1, then the revoke.
    h = Hub()
    w = h.worker("a", concurrency=1)
    t1, t2 = h.pub(), h.pub()
    assert h.offers(w) == [(t1.id, 1)]
    h.lc.cancel(Credentials("publisher"), t1.id)
    assert [(m["op"], m["task"]) for m in h.msgs(w)] == [("revoke", t1.id), ("offer", t2.id)]
    t3 = h.pub(start_timeout=5)
    h.lc.pickup(w, t2.id, 1)
    h.tick(1)
    h.lc.drop(w, t2.id, 1)
    assert h.offers(w) == [(t3.id, 1)]
    t4 = h.pub()
    h.tick(10)  # t3's start timeout ends it while it is offered
    assert [(m["op"], m["task"]) for m in h.msgs(w)] == [("revoke", t3.id), ("offer", t4.id)]


def test_resubscribe_with_more_credit_dispatches_waiting() -> None:
    h = Hub()
    w = h.worker("a", concurrency=1)
    t1, t2 = h.pub(), h.pub()
    assert h.offers(w) == [(t1.id, 1)]
    h.lc.subscribe(w, ACTION, concurrency=2)
    assert h.offers(w) == [(t2.id, 1)]


def test_round_robin_between_two_workers() -> None:
    h = Hub()
    a = h.worker("a", concurrency=5)
    b = h.worker("a", concurrency=5)
    tasks = [h.pub() for _ in range(4)]
    assert [t for t, _ in h.offers(a)] == [tasks[0].id, tasks[2].id]
    assert [t for t, _ in h.offers(b)] == [tasks[1].id, tasks[3].id]


def test_round_robin_skips_a_worker_without_credit() -> None:
    h = Hub()
    a = h.worker("a", concurrency=1)
    b = h.worker("a", concurrency=3)
    tasks = [h.pub() for _ in range(3)]
    assert [t for t, _ in h.offers(a)] == [tasks[0].id]
    assert [t for t, _ in h.offers(b)] == [tasks[1].id, tasks[2].id]


def test_priority_order_when_credit_frees() -> None:
    h = Hub()
    w = h.worker("a", concurrency=1)
    busy = h.pub()
    low, high, mid = h.pub(priority=0), h.pub(priority=5), h.pub(priority=1)
    low2 = h.pub(priority=0)
    assert h.offers(w) == [(busy.id, 1)]
    order = []
    current = busy
    for _ in range(4):
        h.lc.drop(w, current.id, 1)
        [(tid, _)] = h.offers(w)
        order.append(tid)
        current = h.lc.tasks[tid]
    assert order == [high.id, mid.id, low.id, low2.id]  # then publish order among equals


def test_priority_order_of_pooled_tasks_when_a_worker_subscribes() -> None:
    h = Hub()
    low, high = h.pub(priority=0), h.pub(priority=9)
    w = h.worker("a", concurrency=1)
    assert h.offers(w) == [(high.id, 1)]
    h.lc.drop(w, high.id, 1)
    assert h.offers(w) == [(low.id, 1)]


# --- rule 3: the first return wins -----------------------------------------------------------


def test_first_return_wins_other_holder_told_later_return_ignored() -> None:
    h = Hub()
    pub = h.peer("publisher")
    a = h.worker("a")
    b = h.worker("b")
    task = h.pub(peer=pub)
    h.lc.pickup(a, task.id, 1)
    h.lc.pickup(b, task.id, 1)
    h.msgs(a), h.msgs(b), h.msgs(pub)

    h.lc.complete(a, task.id, 1, {"sent": 3})
    rec = h.stored(task)
    assert rec.state == "success"
    assert rec.result == {"sent": 3}
    assert rec.ended_at == h.clock.now
    [ev] = h.msgs(pub, "event")
    assert (ev["type"], ev["data"], ev["service"]) == ("success", {"sent": 3}, "a")
    [ev_b] = h.msgs(b)
    assert (ev_b["op"], ev_b["type"], ev_b["task"]) == ("event", "success", task.id)
    assert h.msgs(a) == []

    h.lc.complete(b, task.id, 1, {"sent": 99})  # later: ignored, not an error
    assert h.stored(task).result == {"sent": 3}
    assert h.msgs(pub) == []
    assert h.event_types(task).count("success") == 1
    assert [d.state for d in h.stored(task).deliveries] == ["done", "done"]
    # b's credit came back: it gets the next task
    nxt = h.pub()
    assert h.offers(b) == [(nxt.id, 1)]


def test_return_without_pickup_counts_as_started_and_done() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub()
    h.lc.complete(w, task.id, 1, 7)
    assert h.event_types(task) == ["init", "offer", "start", "success"]
    assert h.stored(task).deliveries[0].state == "done"


def test_return_from_a_connection_never_offered_is_refused() -> None:
    h = Hub()
    h.worker("a")
    other = h.worker("b", action="other:thing")
    task = h.pub()
    with pytest.raises(NotHolding):
        h.lc.complete(other, task.id, 1, "x")
    assert task.rec.state == "init"


# --- updates ---------------------------------------------------------------------------------


def test_updates_relayed_in_order_to_publisher_and_other_holders_not_sender() -> None:
    h = Hub()
    pub = h.peer("publisher")
    a = h.worker("a")
    b = h.worker("b")
    obs = h.worker("watcher", observe=True)
    task = h.pub(peer=pub)
    for p in (pub, a, b, obs):
        h.msgs(p)

    h.lc.update(a, task.id, 1, {"n": 1})
    h.lc.update(a, task.id, 1, {"n": 2})
    for p in (pub, b, obs):
        evs = [e for e in h.msgs(p) if e.get("type") != "start"]  # the first update starts it
        assert [(e["op"], e["type"], e["data"], e["service"]) for e in evs] == [
            ("event", "update", {"n": 1}, "a"),
            ("event", "update", {"n": 2}, "a"),
        ], p.service
    assert h.msgs(a) == []
    rec = h.stored(task)
    assert rec.updates == 2
    assert rec.last_update == {"n": 2}
    assert rec.state == "start"  # an update means the worker is on it


# --- rule 4: ends without a result, observers, the pickup window -----------------------------


def test_drop_by_all_ends_the_task_without_result() -> None:
    h = Hub()
    pub = h.peer("publisher")
    a, b = h.worker("a"), h.worker("b")
    task = h.pub(peer=pub)
    h.lc.pickup(a, task.id, 1)
    h.lc.drop(a, task.id, 1)
    assert task.rec.state == "start"  # b has not answered yet
    assert [e["type"] for e in h.msgs(pub, "event")] == ["start", "drop"]
    h.lc.drop(b, task.id, 1)
    rec = h.stored(task)
    assert rec.state == "end"
    assert rec.result is None and rec.error is None
    assert [d.state for d in rec.deliveries] == ["dropped", "dropped"]
    assert [e["type"] for e in h.msgs(pub, "event")] == ["drop", "end"]
    assert task.id not in h.lc.tasks


def test_failed_delivery_without_retries_fails_the_task_with_type_and_message() -> None:
    h = Hub()
    pub = h.peer("publisher")
    w = h.worker("a")
    task = h.pub(peer=pub)
    h.lc.pickup(w, task.id, 1)
    h.lc.fail(w, task.id, 1, {"type": "KeyError", "message": "'to'"})
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error is not None
    assert rec.error["type"] == "KeyError"
    assert rec.error["message"] == "'to'"
    assert rec.error["reason"] == "error"
    assert rec.deliveries[0].state == "failed"
    [ev] = h.msgs(pub, "event")[-1:]
    assert ev["type"] == "fail" and ev["data"]["type"] == "KeyError"


def test_one_group_failing_and_another_dropping_fails_the_task() -> None:
    h = Hub()
    a, b = h.worker("a"), h.worker("b")
    task = h.pub()
    h.lc.fail(a, task.id, 1, {"type": "E", "message": "m"})
    assert task.rec.state != "fail"  # b still holds it
    h.lc.drop(b, task.id, 1)
    assert h.stored(task).state == "fail"


def test_observer_gets_offer_and_the_hub_does_not_wait_for_it() -> None:
    h = Hub()
    pub = h.peer("publisher")
    obs = h.worker("auditor", observe=True)
    w = h.worker("a")
    task = h.pub(payload={"k": 1}, peer=pub)
    [offer] = h.msgs(obs)
    assert offer["observe"] is True
    assert offer["task"] == task.id
    assert offer["payload"] == {"k": 1}
    assert [d.group for d in task.rec.deliveries] == ["a"]  # an observer has no delivery

    h.lc.update(obs, task.id, 0, "seen")  # observers may update
    assert [(e["type"], e["data"]) for e in h.msgs(pub, "event")] == [("update", "seen")]
    assert [(e["type"], e["data"]) for e in h.msgs(w, "event")] == [("update", "seen")]
    assert h.msgs(obs) == []

    h.lc.drop(w, task.id, 1)
    assert h.stored(task).state == "end"
    assert [e["type"] for e in h.msgs(obs, "event")] == ["end"]


def test_observer_alone_does_not_take_a_pooled_task() -> None:
    h = Hub()
    obs = h.worker("auditor", observe=True)
    task = h.pub()
    assert h.msgs(obs, "offer")[0]["observe"] is True
    w = h.worker("a")
    assert h.offers(w) == [(task.id, 1)]
    assert h.msgs(obs) == []  # not offered twice


def test_unacked_offer_goes_to_another_connection_after_the_pickup_window() -> None:
    h = Hub(pickup_window=10.0)
    a = h.worker("g")
    b = h.worker("g")
    task = h.pub()
    assert h.offers(a) == [(task.id, 1)]
    h.tick(9.9)
    assert h.msgs(a) == [] and h.msgs(b) == []
    h.tick(0.1)
    [revoke] = h.msgs(a)
    assert revoke == {"op": "revoke", "task": task.id, "attempt": 1, "reason": "pickup_window"}
    assert h.offers(b) == [(task.id, 2)]
    d = h.stored(task).deliveries[0]
    assert (d.state, d.attempt, d.tries) == ("offered", 2, 0)  # not a started try


@pytest.mark.parametrize("step", ["ack", "pickup"])
def test_acked_or_picked_up_offer_stays_after_the_pickup_window(step: str) -> None:
    h = Hub(pickup_window=10.0)
    a = h.worker("g")
    b = h.worker("g")
    task = h.pub()
    h.msgs(a)
    getattr(h.lc, step)(a, task.id, 1)
    h.tick(50)  # several windows, but less than the end timeout (60 s)
    assert h.msgs(a) == []
    assert h.offers(b) == []
    assert task.rec.deliveries[0].attempt == 1


def test_pickup_window_prefers_another_connection_even_after_round_robin_moved_on() -> None:
    h = Hub(pickup_window=10.0)
    a = h.worker("g", concurrency=2)
    b = h.worker("g", concurrency=2)
    t1 = h.pub()  # -> a (unresponsive)
    h.tick(1)
    t2 = h.pub()  # -> b
    h.lc.ack(b, t2.id, 1)
    assert h.offers(a) == [(t1.id, 1)]
    assert h.offers(b) == [(t2.id, 1)]
    h.tick(9)
    assert h.offers(b) == [(t1.id, 2)]
    assert h.offers(a) == []


def test_pickup_is_idempotent() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    h.lc.pickup(w, task.id, 1)
    assert h.event_types(task) == ["init", "offer", "start"]


# --- rule 5: timeouts ------------------------------------------------------------------------


def test_start_timeout_fails_a_pooled_task() -> None:
    h = Hub()
    pub = h.peer("publisher")
    task = h.pub(peer=pub, start_timeout=5)
    h.tick(4.9)
    assert task.rec.state == "init"
    h.tick(0.1)
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error is not None and rec.error["reason"] == "start_timeout"
    [ev] = h.msgs(pub, "event")
    assert ev["type"] == "fail" and ev["data"]["reason"] == "start_timeout"
    w = h.worker("a")  # a worker arriving later does not get the failed task
    assert h.offers(w) == []


def test_start_timeout_revokes_an_offer_not_started() -> None:
    h = Hub(pickup_window=100)
    w = h.worker("a")
    task = h.pub(start_timeout=5)
    h.lc.ack(w, task.id, 1)
    h.msgs(w)
    h.tick(5)
    assert h.stored(task).error["reason"] == "start_timeout"  # type: ignore[index]
    assert h.msgs(w, "revoke") == [
        {"op": "revoke", "task": task.id, "attempt": 1, "reason": "start_timeout"}
    ]


def test_start_timeout_does_not_fire_once_started() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(start_timeout=5, timeout=None)
    h.lc.pickup(w, task.id, 1)
    h.tick(100)
    assert task.rec.state == "start"


def test_hub_default_start_timeout_applies() -> None:
    h = Hub(task_start_timeout=2.0)
    task = h.pub()
    h.tick(2)
    assert h.stored(task).error["reason"] == "start_timeout"  # type: ignore[index]


def test_end_timeout_fails_the_task_and_revokes_holders() -> None:
    h = Hub()
    pub = h.peer("publisher")
    a, b = h.worker("a"), h.worker("b")
    task = h.pub(peer=pub, timeout=10)
    h.lc.ack(b, task.id, 1)  # b holds it without starting
    h.tick(3)
    h.lc.pickup(a, task.id, 1)  # the end timeout counts from the start
    h.msgs(a), h.msgs(b), h.msgs(pub)
    h.tick(9.9)
    assert task.rec.state == "start"
    h.tick(0.1)
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error is not None and rec.error["reason"] == "timeout"
    for w in (a, b):
        assert h.msgs(w) == [{"op": "revoke", "task": task.id, "attempt": 1, "reason": "timeout"}]
    assert [e["type"] for e in h.msgs(pub)] == ["fail"]
    # a return after the timeout is ignored
    h.lc.complete(a, task.id, 1, "late")
    assert h.stored(task).state == "fail"


# --- rule 6: lost connections, handler failures, retries -------------------------------------


def test_disconnect_of_a_started_worker_reoffers_with_higher_attempt() -> None:
    h = Hub()
    a = h.worker("g")
    b = h.worker("g")
    task = h.pub()
    assert h.offers(a) == [(task.id, 1)]
    h.lc.pickup(a, task.id, 1)
    h.lc.disconnect(a)
    assert h.offers(b) == [(task.id, 2)]
    assert h.msgs(a) == []  # a is gone: nothing queued for it
    d = h.stored(task).deliveries[0]
    assert (d.state, d.attempt, d.tries) == ("offered", 2, 1)
    assert task.rec.state == "start"
    assert "requeue" in h.event_types(task)
    h.lc.complete(b, task.id, 2, "ok")
    assert h.stored(task).state == "success"


def test_disconnect_out_of_attempts_fails_with_reason_attempts() -> None:
    h = Hub()
    workers = [h.worker("g") for _ in range(2)]
    task = h.pub(max_attempts=2)
    for attempt, w in enumerate(workers, start=1):
        assert h.offers(w) == [(task.id, attempt)]
        h.lc.pickup(w, task.id, attempt)
        h.lc.disconnect(w)
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error is not None and rec.error["reason"] == "attempts"


def test_started_runs_lost_with_their_connection_fail_into_the_dead_letters() -> None:
    """Issue 15, item 11: each started run whose connection is lost (a keepalive that went
    unanswered, a kill) counts a try, and the last one fails the task (reason ``attempts``)
    into the dead letters, even when the same service reconnects each time and a stale
    step of an earlier run arrives late on the new connection."""
    h = Hub()
    task = h.pub(max_attempts=2)
    old = h.worker("w")
    for attempt in (1, 2):
        assert h.offers(old) == [(task.id, attempt)]
        h.lc.pickup(old, task.id, attempt)
        h.lc.disconnect(old)  # dropped by the keepalive: the handler blocked its loop
        assert task.rec.deliveries[0].tries == attempt
        if attempt == 1:
            old = h.worker("w")  # the same service reconnects
            with pytest.raises((NotHolding, StaleAttempt)):
                h.lc.pickup(old, task.id, 1)  # the blocked run's late pickup changes nothing
    batch = h.lc.take_writes()
    [rec] = [r for r in batch.tasks if r.id == task.id]
    assert rec.state == "fail"
    assert rec.error is not None and rec.error["reason"] == "attempts"
    assert rec.deliveries[0].tries == 2
    assert [(m.kind, m.key) for m in batch.meta] == [("dead", task.id)]


def test_disconnect_of_an_offered_not_started_worker_does_not_count_a_try() -> None:
    h = Hub()
    a, b = h.worker("g"), h.worker("g")
    task = h.pub(max_attempts=1)
    h.lc.disconnect(a)
    assert h.offers(b) == [(task.id, 2)]
    assert task.rec.deliveries[0].tries == 0


def test_retries_with_backoff() -> None:
    h = Hub(retry_backoff=1.0)
    pub = h.peer("publisher")
    w = h.worker("a")
    task = h.pub(peer=pub, retries=2)
    assert h.offers(w) == [(task.id, 1)]
    h.lc.fail(w, task.id, 1, {"type": "IOError", "message": "down"})
    assert task.rec.state != "fail"
    d = h.stored(task).deliveries[0]
    assert (d.state, d.tries) == ("pending", 1)
    assert h.event_types(task)[-1] == "retry"
    h.tick(0.99)
    assert h.offers(w) == []  # not before the backoff
    h.tick(0.01)
    assert h.offers(w) == [(task.id, 2)]
    h.lc.fail(w, task.id, 2, {"type": "IOError", "message": "down"})
    h.tick(1.99)  # the backoff doubles
    assert h.offers(w) == []
    h.tick(0.01)
    assert h.offers(w) == [(task.id, 3)]
    h.lc.fail(w, task.id, 3, {"type": "IOError", "message": "still down"})
    rec = h.stored(task)
    assert rec.state == "fail"  # two retries used up
    assert rec.error == {"reason": "error", "type": "IOError", "message": "still down"}
    assert rec.deliveries[0].tries == 3


def test_backoff_has_jitter_but_never_more_than_the_nominal_delay() -> None:
    h = Hub(retry_backoff=4.0)
    h.lc.rng = random.Random(7)
    w = h.worker("a")
    task = h.pub(retries=1)
    h.lc.fail(w, task.id, 1, {"type": "E", "message": ""})
    wait = task.rec.deliveries[0].not_before - h.clock.now
    assert 2.0 <= wait <= 4.0


def test_retry_disabled_by_the_worker() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(retries=3)
    h.lc.fail(w, task.id, 1, {"type": "Fatal", "message": "no"}, retry=False)
    assert h.stored(task).state == "fail"


def test_retries_stop_at_max_attempts_with_reason_attempts() -> None:
    h = Hub(retry_backoff=1.0)
    w = h.worker("a")
    task = h.pub(retries=10, max_attempts=2)
    h.lc.fail(w, task.id, 1, {"type": "E", "message": "one"})
    h.tick(1)
    assert h.offers(w) == [(task.id, 1), (task.id, 2)]
    h.lc.fail(w, task.id, 2, {"type": "E", "message": "two"})
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error is not None
    assert rec.error["reason"] == "attempts"
    assert rec.error["message"] == "two"
    h.tick(100)
    assert h.offers(w) == []


# --- rule 7: cancel --------------------------------------------------------------------------


def test_cancel_fails_the_task_and_revokes_holders() -> None:
    h = Hub()
    pub = h.peer("publisher", pub=("email",))
    a, b = h.worker("a"), h.worker("b")
    task = h.pub(peer=pub)
    h.lc.pickup(a, task.id, 1)
    h.msgs(a), h.msgs(b), h.msgs(pub)
    h.lc.cancel(pub.creds, task.id)
    rec = h.stored(task)
    assert rec.state == "fail"
    assert rec.error is not None and rec.error["reason"] == "cancelled"
    for w in (a, b):
        assert h.msgs(w) == [{"op": "revoke", "task": task.id, "attempt": 1, "reason": "cancelled"}]
    assert [e["type"] for e in h.msgs(pub)] == ["fail"]
    with pytest.raises(TaskNotFound):
        h.lc.cancel(pub.creds, task.id)


def test_cancel_of_a_pooled_or_retrying_task() -> None:
    h = Hub()
    pooled = h.pub()
    h.lc.cancel(Credentials("publisher"), pooled.id)
    assert h.stored(pooled).state == "fail"
    w = h.worker("a")
    assert h.offers(w) == []
    retrying = h.pub(retries=1)
    assert h.offers(w) == [(retrying.id, 1)]
    h.lc.fail(w, retrying.id, 1, {"type": "E", "message": ""})
    h.lc.cancel(Credentials("publisher"), retrying.id)
    assert h.stored(retrying).deliveries[0].state == "done"
    h.tick(1000)
    assert h.offers(w) == []  # the pending retry died with the task


def test_cancel_needs_to_be_the_publisher_or_allowed() -> None:
    h = Hub()
    task = h.pub(creds=Credentials("publisher"))
    stranger = Credentials("stranger", pub_permissions=("weather",))
    with pytest.raises(PermissionDenied) as info:
        h.lc.cancel(stranger, task.id)
    assert info.value.details["action"] == ACTION
    assert task.rec.state == "init"


# --- stale attempts --------------------------------------------------------------------------


def _stale_setup() -> tuple[Hub, Peer, Peer, Task]:
    h = Hub(pickup_window=10.0)
    a, b = h.worker("g"), h.worker("g")
    task = h.pub()
    h.tick(10)  # a never acked: the delivery went to b as attempt 2
    assert h.offers(b) == [(task.id, 2)]
    h.lc.pickup(b, task.id, 2)
    h.msgs(a), h.msgs(b)
    return h, a, b, task


@pytest.mark.parametrize("step", ["fail", "drop", "update"])
def test_old_attempt_raises_stale_attempt_and_changes_nothing(step: str) -> None:
    h, a, b, task = _stale_setup()
    h.drain()
    before = msgspec.json.encode(task.rec)
    args: dict[str, tuple[Any, ...]] = {
        "fail": ({"type": "E", "message": "old"},),
        "drop": (),
        "update": ("old",),
    }
    with pytest.raises(StaleAttempt) as info:
        getattr(h.lc, step)(a, task.id, 1, *args[step])
    assert "attempt 1" in info.value.message
    assert msgspec.json.encode(task.rec) == before
    batch = h.lc.take_writes()
    assert not batch
    assert h.lc.take_output() == []
    assert task.id in b.holding  # the current attempt is untouched
    h.lc.drop(b, task.id, 2)
    assert h.stored(task).state == "end"


def test_return_from_an_old_attempt_still_completes_the_task() -> None:
    h, a, b, task = _stale_setup()
    h.lc.complete(a, task.id, 1, "from a")
    rec = h.stored(task)
    assert rec.state == "success"
    assert rec.result == "from a"
    # b was working on the newer attempt: it is told that the task succeeded
    assert [(m["op"], m.get("type")) for m in h.msgs(b)] == [("event", "success")]
    assert h.stored(task).deliveries[0].state == "done"
    # b's credit is back: of the next two tasks, a and b get one each
    nxt = [h.pub(), h.pub()]
    assert len(h.offers(a)) == 1
    assert h.offers(b) in ([(nxt[0].id, 1)], [(nxt[1].id, 1)])


def test_observer_cannot_return_a_result() -> None:
    h = Hub()
    obs = h.worker("auditor", observe=True)
    w = h.worker("a")
    task = h.pub()
    with pytest.raises(NotHolding, match="observer"):
        h.lc.complete(obs, task.id, 0, "mine")
    assert task.rec.state == "init"
    h.lc.complete(w, task.id, 1, "ok")
    assert h.stored(task).result == "ok"


def test_steps_on_unknown_or_ended_tasks() -> None:
    h = Hub()
    w = h.worker("a")
    with pytest.raises(NotHolding):
        h.lc.drop(w, "nope", 1)
    task = h.pub()
    h.lc.complete(w, task.id, 1, None)
    h.lc.ack(w, task.id, 1)  # racing the end: harmless
    h.lc.pickup(w, task.id, 1)
    h.lc.complete(w, task.id, 1, "again")
    with pytest.raises(NotHolding):
        h.lc.update(w, task.id, 1, "late")


# --- permissions, names and options ----------------------------------------------------------


def test_publish_permission_denied_names_the_action() -> None:
    h = Hub()
    creds = Credentials("emailer", pub_permissions=("weather",))
    with pytest.raises(PermissionDenied) as info:
        h.lc.publish(creds, "weatherman:x", None)
    assert "'weatherman:x'" in info.value.message
    assert info.value.details == {"action": "weatherman:x"}
    task, created = h.lc.publish(creds, "weather/metno:forecast", None)
    assert created and isinstance(task, Task)
    assert not h.lc.take_writes().tasks[1:]  # only the permitted task was stored


def test_subscribe_permission_denied_names_the_action() -> None:
    h = Hub()
    peer = h.peer("emailer", sub=("email/bulk:send",))
    with pytest.raises(PermissionDenied) as info:
        h.lc.subscribe(peer, "email:send")
    assert "'email:send'" in info.value.message
    assert info.value.details["action"] == "email:send"
    assert peer.subs == {}
    h.lc.subscribe(peer, "email/bulk:send")
    assert "email/bulk:send" in peer.subs


def test_invalid_action_rejected_on_publish_and_subscribe() -> None:
    h = Hub()
    with pytest.raises(InvalidAction, match="'!'"):
        h.lc.publish(Credentials("p"), "email:send!", None)
    with pytest.raises(InvalidAction):
        h.lc.subscribe(h.peer("w"), "nocolon")


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"timeout": -1}, "timeout"),
        ({"start_timeout": -1}, "start_timeout"),
        ({"retries": -1}, "retries"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"delay": -5}, "delay"),
    ],
)
def test_invalid_options(options: dict[str, Any], name: str) -> None:
    h = Hub()
    with pytest.raises(InvalidOption, match=name):
        h.pub(**options)
    assert not h.lc.take_writes()


def test_invalid_concurrency() -> None:
    h = Hub()
    with pytest.raises(InvalidOption, match="concurrency"):
        h.lc.subscribe(h.peer("w"), ACTION, concurrency=0)


# --- idempotency and delay -------------------------------------------------------------------


def test_idempotency_key_returns_the_same_task() -> None:
    h = Hub()
    creds = Credentials("publisher")
    first, created = h.lc.publish(creds, ACTION, 1, PubOptions(key="k1"))
    assert created and isinstance(first, Task)
    h.drain()
    again, created = h.lc.publish(creds, ACTION, 2, PubOptions(key="k1"))
    assert again is first and not created
    assert not h.lc.take_writes()  # nothing new stored
    other, created = h.lc.publish(creds, ACTION, 3, PubOptions(key="k2"))
    assert created and other is not first
    other_action, created = h.lc.publish(creds, "email:other", 4, PubOptions(key="k1"))
    assert created and other_action is not first


def test_idempotency_key_of_an_ended_task_answers_its_id() -> None:
    h = Hub()
    w = h.worker("a")
    creds = Credentials("publisher")
    first, _ = h.lc.publish(creds, ACTION, 1, PubOptions(key="k"))
    assert isinstance(first, Task)
    h.lc.complete(w, first.id, 1, "done")
    again, created = h.lc.publish(creds, ACTION, 1, PubOptions(key="k"))
    assert (again, created) == (first.id, False)


def test_idempotency_key_expires_after_the_window() -> None:
    h = Hub(idempotency_window=60.0)
    creds = Credentials("publisher")
    first, _ = h.lc.publish(creds, ACTION, 1, PubOptions(key="k"))
    h.tick(61)
    again, created = h.lc.publish(creds, ACTION, 1, PubOptions(key="k"))
    assert created and again is not first


def test_delayed_task_not_offered_before_its_time() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(delay=30, start_timeout=5)
    assert task.rec.not_before == h.clock.now + 30
    assert h.offers(w) == []
    h.tick(29.9)
    assert h.offers(w) == []
    h.tick(0.1)
    assert h.offers(w) == [(task.id, 1)]
    h.tick(4.9)  # the start timeout counts from when the task is due
    assert task.rec.state == "init"
    h.tick(0.1)
    assert h.stored(task).error["reason"] == "start_timeout"  # type: ignore[index]


def test_task_at_a_time() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(at=h.clock.now + 100)
    h.tick(99)
    assert h.offers(w) == []
    h.tick(1)
    assert h.offers(w) == [(task.id, 1)]


# --- rule 8: events --------------------------------------------------------------------------


def test_every_transition_is_an_event_with_increasing_seq_and_clock_time() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub()
    h.tick(1)
    h.lc.pickup(w, task.id, 1)
    h.tick(1)
    h.lc.update(w, task.id, 1, "half")
    h.tick(1)
    h.lc.complete(w, task.id, 1, "ok")
    h.drain()
    evs = [e for e in h.events if e.task_id == task.id]
    t0 = 1_000.0
    assert [(e.type, e.seq, e.at) for e in evs] == [
        ("init", 1, t0),
        ("offer", 2, t0),
        ("start", 3, t0 + 1),
        ("update", 4, t0 + 2),
        ("success", 5, t0 + 3),
    ]
    assert evs[1].group == "a" and evs[1].data == {"attempt": 1}
    assert evs[4].data == "ok" and evs[4].service == "a"
    rec = h.stored(task)
    assert rec.seq == 5
    assert (rec.created_at, rec.started_at, rec.ended_at) == (t0, t0 + 1, t0 + 3)


def test_events_of_a_failing_flow() -> None:
    h = Hub(retry_backoff=1.0)
    w = h.worker("a")
    task = h.pub(retries=1)
    h.lc.pickup(w, task.id, 1)
    h.lc.fail(w, task.id, 1, {"type": "E", "message": "x"})
    h.tick(1)
    h.lc.pickup(w, task.id, 2)
    h.lc.fail(w, task.id, 2, {"type": "E", "message": "y"})
    types = h.event_types(task)
    assert types == ["init", "offer", "start", "retry", "offer", "pickup", "delivery_fail", "fail"]
    seqs = [e.seq for e in h.events if e.task_id == task.id]
    assert seqs == list(range(1, len(seqs) + 1))


def test_listeners_see_every_event() -> None:
    h = Hub()
    seen: list[tuple[str, str]] = []
    h.lc.listeners.append(lambda task, ev: seen.append((task.id, ev.type)))
    task = h.pub()
    h.lc.cancel(Credentials("publisher"), task.id)
    assert seen == [(task.id, "init"), (task.id, "fail")]


# --- restore ---------------------------------------------------------------------------------


def test_restore_keeps_state_reoffers_started_deliveries_and_continues_seq() -> None:
    h = Hub()
    w = h.worker("a")
    pooled = h.pub("other:thing", {"p": 1})
    started = h.pub(timeout=100)
    offered = h.pub()  # waits: w has credit 1
    h.lc.pickup(w, started.id, 1)
    h.lc.update(w, started.id, 1, "half")
    done = h.pub("other:thing")
    h.lc.cancel(Credentials("publisher"), done.id)
    h.drain()
    saved = [r for r in h.records.values() if r.state not in ("success", "fail", "end")]
    assert {r.id for r in saved} == {pooled.id, started.id, offered.id}
    seq_before = {r.id: r.seq for r in saved}

    clock = FakeClock(h.clock.now + 5)
    lc2 = Lifecycle(clock=clock, new_id=Counter(), defaults=Defaults(pickup_window=10.0))
    h2 = Hub(lc=lc2, clock=clock)
    assert lc2.restore(saved) == 3
    t_started = lc2.tasks[started.id]
    assert t_started.rec.state == "start"
    assert t_started.rec.last_update == "half"
    d = t_started.rec.deliveries[0]
    assert (d.state, d.tries) == ("pending", 1)  # the lost start counts as a try

    w2 = h2.worker("a", concurrency=5)
    assert sorted(h2.offers(w2)) == sorted([(started.id, 2), (offered.id, 1)])
    other = h2.worker("b", action="other:thing")
    assert h2.offers(other) == [(pooled.id, 1)]
    assert h2.msgs(other) == []
    h2.drain()
    new_events = [e for e in h2.events if e.task_id == started.id]
    assert new_events[0].seq == seq_before[started.id] + 1
    assert new_events[0].at == clock.now

    h2.lc.complete(w2, started.id, 2, "after restart")
    assert h2.stored(lc2_task := t_started).state == "success"
    assert lc2_task.rec.result == "after restart"


def test_restore_rearms_the_end_timeout_from_the_original_start() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(timeout=30)
    h.lc.pickup(w, task.id, 1)
    h.drain()
    saved = [h.records[task.id]]
    clock = FakeClock(h.clock.now + 20)
    lc2 = Lifecycle(clock=clock, new_id=Counter())
    lc2.restore(saved)
    lc2.advance(clock.now + 9.9)
    assert task.id in lc2.tasks
    clock.now += 10
    lc2.advance()
    assert task.id not in lc2.tasks
    [rec] = lc2.take_writes().tasks
    assert rec.error is not None and rec.error["reason"] == "timeout"


def test_restore_out_of_attempts_fails() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(max_attempts=1)
    h.lc.pickup(w, task.id, 1)
    h.drain()
    lc2 = Lifecycle(clock=FakeClock(h.clock.now), new_id=Counter())
    lc2.restore([h.records[task.id]])
    assert task.id not in lc2.tasks
    [rec] = lc2.take_writes().tasks
    assert rec.state == "fail"
    assert rec.error is not None and rec.error["reason"] == "attempts"


def test_restore_of_a_delayed_task_keeps_its_time() -> None:
    h = Hub()
    task = h.pub(delay=60)
    h.drain()
    clock = FakeClock(h.clock.now + 10)
    h2 = Hub(lc=Lifecycle(clock=clock, new_id=Counter()), clock=clock)
    h2.lc.restore([h.records[task.id]])
    w = h2.worker("a")
    assert h2.offers(w) == []
    h2.tick(50)
    assert h2.offers(w) == [(task.id, 1)]


def test_restore_keeps_idempotency_keys() -> None:
    h = Hub()
    creds = Credentials("publisher")
    task, _ = h.lc.publish(creds, ACTION, 1, PubOptions(key="k"))
    assert isinstance(task, Task)
    h.drain()
    lc2 = Lifecycle(clock=FakeClock(h.clock.now + 1), new_id=Counter())
    lc2.restore([h.records[task.id]])
    again, created = lc2.publish(creds, ACTION, 1, PubOptions(key="k"))
    assert not created and isinstance(again, Task) and again.id == task.id


def test_pickup_window_falls_back_to_the_same_connection_when_it_is_the_only_one() -> None:
    h = Hub(pickup_window=10.0)
    a = h.worker("g")
    task = h.pub()
    assert h.offers(a) == [(task.id, 1)]
    h.tick(10)
    assert [(m["op"], m["attempt"]) for m in h.msgs(a)] == [("revoke", 1), ("offer", 2)]


def test_durable_group_accumulates_tasks_while_no_worker_is_connected() -> None:
    h = Hub()
    first = h.worker("a", durable=True)
    h.lc.disconnect(first)
    t1, t2 = h.pub(), h.pub()
    assert [d.group for d in t1.rec.deliveries] == ["a"]  # not pooled: the queue holds it
    b = h.worker("b")
    assert h.offers(b) == []  # a group arriving later does not get tasks published before it
    w = h.worker("a", concurrency=2)
    assert h.offers(w) == [(t1.id, 1), (t2.id, 1)]


def test_unsubscribe_keeps_what_the_connection_holds_but_takes_no_more() -> None:
    h = Hub()
    a = h.worker("g")
    task = h.pub()
    h.lc.pickup(a, task.id, 1)
    h.lc.unsubscribe(a, ACTION)
    nxt = h.pub()
    h.lc.complete(a, task.id, 1, "ok")
    assert h.stored(task).state == "success"
    assert h.offers(a) == [(task.id, 1)]  # only the first offer, nothing after
    b = h.worker("g")
    assert h.offers(b) == [(nxt.id, 1)]


def test_disconnected_observer_is_forgotten() -> None:
    h = Hub()
    obs = h.worker("auditor", observe=True)
    w = h.worker("a")
    task = h.pub()
    h.lc.disconnect(obs)
    h.lc.update(w, task.id, 1, "x")
    assert obs not in task.observers
    assert h.msgs(obs, "event") == []


# --- what a finished task leaves behind (issue #7: memory and the garbage collector) ---------


def test_finished_tasks_leave_no_timers_behind() -> None:
    """Pickup windows and end timeouts are removed when the task no longer needs them, not
    kept until their deadline (at 10k tasks/s a 60 s timeout left 600k dead timers)."""
    h = Hub(task_end_timeout=60.0)
    w = h.worker("a", concurrency=100)
    tasks = [h.pub(payload=i) for i in range(50)]
    assert len(h.lc.timers) == 50  # one pickup window per offer
    for task, attempt in h.offers(w):
        h.lc.pickup(w, task, attempt)
    assert len(h.lc.timers) == 50  # pickup windows gone, end timeouts armed
    for task in tasks[:25]:
        h.lc.complete(w, task.id, 1, "ok")
    for task in tasks[25:]:
        h.lc.fail(w, task.id, 1, {"type": "E", "message": "no"}, retry=False)
    assert len(h.lc.timers) == 0
    h.tick(120)  # and nothing fires later
    assert all(h.stored(t).state in ("success", "fail") for t in tasks)


def test_an_acked_offer_drops_its_pickup_window_and_a_lapsed_one_still_fires() -> None:
    h = Hub()
    a = h.worker("a")
    b = h.worker("a")
    t1 = h.pub()
    [(task_id, attempt)] = h.offers(a) + h.offers(b)
    holder = a if task_id in a.holding else b
    h.lc.ack(holder, task_id, attempt)
    assert len(h.lc.timers) == 0
    t2 = h.pub()
    h.drain()
    h.tick(10.0)  # t2's offer was neither acked nor picked up: it goes back to the group
    assert h.stored(t2).deliveries[0].attempt == 2
    assert h.stored(t1).deliveries[0].attempt == 1


def test_an_ended_task_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle outlives a task: with the collector off, it is freed at once."""
    import gc
    import weakref

    h = Hub()
    pub = h.peer("publisher")
    w = h.worker("a")
    task = h.pub(payload={"x": 1}, peer=pub)
    ref = weakref.ref(task)
    [(task_id, attempt)] = h.offers(w)
    h.lc.pickup(w, task_id, attempt)
    del task
    gc.disable()
    try:
        h.lc.complete(w, task_id, attempt, {"ok": True})
        h.drain()
        assert ref() is None
    finally:
        gc.enable()
