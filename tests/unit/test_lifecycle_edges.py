"""Edges of the lifecycle rules that the main suite (test_lifecycle.py) leaves out: a second
publisher following a repeated key, offers of large payloads, repeated subscriptions, extend on
a task without an end timeout, listeners and timers registered by the hub, pruning of keys.

Observed from the outside, as test_lifecycle.py does: the messages queued for peers and the
records written, with a fake clock.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from taskhub.errors import InvalidOption, NotHolding, StaleAttempt
from taskhub.lifecycle import Credentials, Task
from taskhub.protocol import PubOptions
from taskhub.store.base import EventRecord
from tests.unit.test_lifecycle import ACTION, Hub


def publish(h: Hub, peer: Any = None, **options: Any) -> tuple[Task | str, bool]:
    creds = peer.creds if peer is not None else Credentials("publisher")
    return h.lc.publish(creds, ACTION, {"n": 1}, PubOptions(**options), peer=peer)


# --- a repeated key: the second publisher follows the first task -----------------------------
def test_a_repeated_idempotency_key_makes_its_publisher_a_follower() -> None:
    h = Hub()
    w = h.worker("a")
    first_pub, second_pub = h.peer("p1"), h.peer("p2")
    task, created = publish(h, first_pub, key="k")
    again, created_again = publish(h, second_pub, key="k")
    assert created and not created_again and again is task
    assert isinstance(task, Task)
    h.msgs(first_pub), h.msgs(second_pub)
    h.lc.complete(w, task.id, 1, "done")
    # Both publishers hear the end: the second is told as if it had published the task.
    for peer in (first_pub, second_pub):
        ev = h.msgs(peer, "event")[-1]
        assert (ev["task"], ev["type"], ev["data"]) == (task.id, "success", "done")


def test_a_repeated_debounce_key_makes_its_publisher_a_follower() -> None:
    h = Hub()
    first_pub, second_pub = h.peer("p1"), h.peer("p2")
    task, _ = publish(h, first_pub, key="user-1", once_every=60)
    again, created = publish(h, second_pub, key="user-1", once_every=60)
    assert again is task and not created
    assert isinstance(task, Task)
    h.tick(60)
    w = h.worker("a")
    h.lc.complete(w, task.id, 1, "sent once")
    for peer in (first_pub, second_pub):
        assert [e["type"] for e in h.msgs(peer, "event")] == ["start", "success"]


def test_a_debounce_key_stops_standing_for_pubs_once_its_task_started() -> None:
    h = Hub()
    w = h.worker("a")
    task, _ = publish(h, key="user-1", once_every=1)
    h.tick(1)
    assert h.offers(w) == [(task.id if isinstance(task, Task) else task, 1)]
    assert isinstance(task, Task)
    h.lc.pickup(w, task.id, 1)
    # The waiting task is running now: a new pub with the key is a new task, not this one.
    later, created = publish(h, key="user-1", once_every=1)
    assert created and later is not task


# --- offers ----------------------------------------------------------------------------------
def test_an_offer_of_a_large_payload_carries_its_size_not_the_payload() -> None:
    h = Hub(inline_payload_limit=100)
    w = h.worker("a", concurrency=2)
    small = h.pub(payload="x" * 10)
    big = h.pub(payload="x" * 200)
    offers = {m["task"]: m for m in h.msgs(w, "offer")}
    assert offers[small.id]["payload"] == "x" * 10
    assert "payload_size" not in offers[small.id]
    assert "payload" not in offers[big.id]
    assert offers[big.id]["payload_size"] == 202  # the JSON string, quotes included


def test_an_offer_carries_the_task_trace_context() -> None:
    h = Hub()
    w = h.worker("a", concurrency=2)
    traced = h.pub(trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    plain = h.pub()
    offers = {m["task"]: m for m in h.msgs(w, "offer")}
    assert offers[traced.id]["trace"] == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    }
    assert "trace" not in offers[plain.id]


@pytest.mark.parametrize(
    ("trace", "says"),
    [
        ("00-abc", "must be an object of strings"),
        ({"traceparent": 1}, "must be an object of strings"),
        ({f"k{i}": "v" for i in range(20)}, "has 20 fields"),
        ({"traceparent": "x" * 9000}, "characters; at most"),
    ],
)
def test_a_bad_trace_context_is_refused_naming_the_option(trace: Any, says: str) -> None:
    h = Hub()
    with pytest.raises(InvalidOption, match=says) as err:
        h.lc.publish(Credentials("p"), ACTION, None, PubOptions(trace=trace))
    assert err.value.details == {"option": "trace"}
    assert h.lc.take_writes().tasks == []  # nothing stored


def test_an_empty_trace_context_is_not_stored() -> None:
    h = Hub()
    task = h.pub(trace={})
    assert "trace" not in h.stored(task).options


# --- subscriptions ---------------------------------------------------------------------------
def test_subscribing_again_in_another_group_or_as_observer_is_refused() -> None:
    h = Hub()
    w = h.worker("a", group="jobs")
    with pytest.raises(InvalidOption, match="already subscribes to 'email:send' as group 'jobs'"):
        h.lc.subscribe(w, ACTION, group="other")
    with pytest.raises(InvalidOption, match="as group 'jobs'"):
        h.lc.subscribe(w, ACTION, group="jobs", observe=True)
    # The first subscription stands: the task still goes to group jobs.
    task = h.pub()
    assert h.offers(w) == [(task.id, 1)]


def test_unsubscribing_an_action_never_subscribed_changes_nothing() -> None:
    h = Hub()
    w = h.worker("a")
    h.lc.unsubscribe(w, "other:action")
    task = h.pub()
    assert h.offers(w) == [(task.id, 1)]


# --- extend ----------------------------------------------------------------------------------
def test_extend_of_a_task_without_end_timeout_arms_nothing() -> None:
    h = Hub(task_end_timeout=None)
    w = h.worker("a")
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    h.lc.extend(w, task.id, 1, 30)
    h.tick(10_000)
    assert task.rec.state == "start"  # still running: no deadline was made up


def test_extend_with_negative_seconds_is_refused() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    with pytest.raises(InvalidOption, match="seconds must be >= 0") as err:
        h.lc.extend(w, task.id, 1, -1)
    assert err.value.details == {"option": "seconds"}


def test_an_end_deadline_moved_later_by_extend_does_not_fail_the_task_early() -> None:
    h = Hub(task_end_timeout=10)
    w = h.worker("a")
    task = h.pub()
    h.lc.pickup(w, task.id, 1)
    h.tick(5)
    h.lc.extend(w, task.id, 1, 20)  # now due at 25 s from the start
    h.tick(6)  # the first end timer fires at 10 s: no longer due
    assert task.rec.state == "start"
    h.tick(15)
    assert h.stored(task).state == "fail"
    assert h.stored(task).error == {
        "reason": "timeout",
        "message": "the task did not finish in time",
    }


# --- listeners and timers the hub registers ---------------------------------------------------
def test_listen_adds_a_listener_once_and_removes_it() -> None:
    h = Hub()
    seen: list[str] = []

    def listener(task: Task, ev: EventRecord) -> None:
        seen.append(ev.type)

    h.lc.listen(listener, True)
    h.lc.listen(listener, True)  # idempotent: still called once per event
    h.pub()
    assert seen == ["init"]
    h.lc.listen(listener, False)
    h.lc.listen(listener, False)  # removing an absent listener is fine
    h.pub()
    assert seen == ["init"]


def test_a_timer_of_a_registered_kind_calls_its_handler_when_due() -> None:
    h = Hub()
    fired: list[tuple[str, float]] = []
    h.lc.timer_handlers["sweep"] = lambda key, now: fired.append((key, now))
    start = h.clock.now
    h.lc.arm(start + 5, "sweep", "k1")
    assert h.lc.next_deadline() == start + 5
    h.tick(4.9)
    assert fired == []
    h.tick(0.1)
    assert fired == [("k1", start + 5)]
    assert h.lc.next_deadline() is None


def test_arming_a_timer_of_an_unknown_kind_is_an_error() -> None:
    h = Hub()
    with pytest.raises(ValueError, match="no handler for timer kind 'nope'"):
        h.lc.arm(h.clock.now + 1, "nope", "k")


# --- followers, disconnects ------------------------------------------------------------------
def test_follow_makes_a_second_connection_hear_the_end() -> None:
    h = Hub()
    w = h.worker("a")
    pub, watcher = h.peer("p"), h.peer("watcher")
    task = h.pub(peer=pub)
    assert h.lc.follow(watcher, task.id) is task
    assert h.lc.follow(watcher, "no-such-task") is None
    assert h.lc.get(task.id) is task
    h.msgs(pub), h.msgs(watcher)
    h.lc.complete(w, task.id, 1, 7)
    assert [e["type"] for e in h.msgs(watcher, "event")] == ["start", "success"]
    assert h.lc.get(task.id) is None  # ended: in the store only


def test_a_follower_that_disconnects_is_no_longer_told() -> None:
    h = Hub()
    w = h.worker("a")
    pub, watcher = h.peer("p"), h.peer("watcher")
    task = h.pub(peer=pub)
    h.lc.follow(watcher, task.id)
    h.lc.disconnect(watcher)
    h.msgs(pub), h.msgs(watcher)
    h.lc.complete(w, task.id, 1, 7)
    assert h.msgs(watcher) == []
    assert [e["type"] for e in h.msgs(pub, "event")] == ["start", "success"]


def test_a_follower_that_takes_starts_hears_them_in_one_message_per_output() -> None:
    """A connection whose hello said ``starts`` hears its tasks started as one ``starts``
    message per output, where the first start was (docs/protocol.md, "starts"); another
    follower of the same task still gets the ``start`` event."""
    h = Hub()
    w = h.worker("a", concurrency=3)
    pub, other = h.peer("p"), h.peer("other")
    pub.starts = True
    tasks = [h.pub(peer=pub) for _ in range(3)]
    h.lc.follow(other, tasks[0].id)
    h.msgs(pub), h.msgs(other), h.msgs(w)
    h.lc.pickup(w, tasks[0].id, 1)
    h.lc.complete(w, tasks[0].id, 1, 7)
    h.lc.pickup(w, tasks[1].id, 1)
    got = h.msgs(pub)
    assert [m["op"] for m in got] == ["starts", "event"]
    assert got[0]["tasks"] == [tasks[0].id, tasks[1].id] and got[1]["type"] == "success"
    assert [e["type"] for e in h.msgs(other, "event")] == ["start", "success"]
    h.lc.complete(w, tasks[1].id, 1, 8)
    h.lc.pickup(w, tasks[2].id, 1)  # the next output: a message of its own
    got = h.msgs(pub)
    assert [m["op"] for m in got] == ["event", "starts"] and got[1]["tasks"] == [tasks[2].id]


# --- keys are pruned a window after they were made --------------------------------------------
def test_keys_expire_one_by_one_as_their_window_passes() -> None:
    h = Hub(idempotency_window=100.0)
    old, _ = publish(h, key="old")
    h.tick(60)
    young, _ = publish(h, key="young")
    h.tick(45)  # the prune timer fired at 25, 50, 75, 100: "old" is 105 s old, "young" 45
    again_old, created_old = publish(h, key="old")
    again_young, created_young = publish(h, key="young")
    assert created_old and again_old is not old
    assert not created_young and again_young is young
    h.tick(60)  # and "young" goes in its turn
    last, created = publish(h, key="young")
    assert created and last is not young


# --- recovery after a restart -----------------------------------------------------------------
def restarted(h: Hub) -> Hub:
    """A new lifecycle on the same clock that took back what ``h`` had stored."""
    h.drain()
    h2 = Hub(clock=h.clock)
    h2.lc.restore(h.records.values())
    return h2


def test_a_restored_waiting_task_keeps_its_start_timeout() -> None:
    h = Hub()
    task = h.pub(start_timeout=30)
    h.tick(10)
    h2 = restarted(h)
    h2.tick(19.9)
    assert h2.lc.get(task.id) is not None
    h2.tick(0.1)  # 30 s after it was published, not 30 s after the restart
    rec = h2.stored(task)
    assert rec.state == "fail"
    assert rec.error == {"reason": "start_timeout", "message": "no worker started the task in time"}


def test_a_restored_delivery_waiting_for_its_retry_waits_out_its_backoff() -> None:
    h = Hub()
    w = h.worker("a")
    task = h.pub(retries=1, backoff=10)
    h.lc.pickup(w, task.id, 1)
    h.lc.fail(w, task.id, 1, {"type": "Boom", "message": "once"})
    h2 = restarted(h)
    w2 = h2.worker("a")
    assert h2.offers(w2) == []
    h2.tick(9.9)
    assert h2.offers(w2) == []
    h2.tick(0.1)
    assert h2.offers(w2) == [(task.id, 2)]


# --- operators' views and tools over group queues ---------------------------------------------
def test_a_queue_view_counts_waiting_and_in_flight_of_its_own_action_only() -> None:
    h = Hub()
    w = h.worker("w", group="g", concurrency=1)
    h.worker("w", "other:action", group="g", concurrency=5)
    held = h.pub()
    h.pub(), h.pub()
    h.pub("other:action")
    assert h.offers(w) == [(held.id, 1)]
    views = {v["action"]: v for v in h.lc.queue_views()}
    assert (views[ACTION]["waiting"], views[ACTION]["in_flight"]) == (2, 1)
    assert (views["other:action"]["waiting"], views["other:action"]["in_flight"]) == (0, 1)
    assert views[ACTION]["credit"] == 1 and views["other:action"]["credit"] == 5


def test_purge_with_forget_removes_a_group_nobody_subscribes_to() -> None:
    h = Hub()
    w = h.worker("w", group="g", durable=True)
    h.lc.disconnect(w)
    h.pub()
    assert [(v["group"], v["waiting"]) for v in h.lc.queue_views()] == [("g", 1)]
    assert h.lc.purge(Credentials("ops"), ACTION, "g", forget=True) == 1
    assert h.lc.queue_views() == []
    # The group is gone: a new task waits in the pool until a group subscribes.
    task = h.pub()
    assert task.rec.deliveries == []


# --- options checked when published -----------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"backoff": -1}, "option 'backoff' must be >= 0 seconds"),
        ({"backoff_max": -0.5}, "option 'backoff_max' must be >= 0 seconds"),
        ({"once_every": -1}, "option 'once_every' must be >= 0 seconds"),
    ],
)
def test_negative_durations_are_refused_naming_the_option(
    options: dict[str, Any], says: str
) -> None:
    h = Hub()
    with pytest.raises(InvalidOption, match=says) as err:
        h.lc.publish(Credentials("p"), ACTION, None, PubOptions(**options))
    assert err.value.details == {"option": next(iter(options))}
    assert h.lc.take_writes().tasks == []


def test_a_waiting_once_every_task_cancelled_lets_the_next_pub_make_a_new_one() -> None:
    h = Hub()
    task, _ = publish(h, key="user-1", once_every=60)
    assert isinstance(task, Task)
    h.lc.cancel(Credentials("publisher"), task.id)
    assert h.stored(task).state == "fail"
    later, created = publish(h, key="user-1", once_every=60)
    assert created and later is not task


# --- who holds, who may read -------------------------------------------------------------------
def test_a_step_on_a_task_the_connection_never_held_is_refused() -> None:
    h = Hub()
    h.worker("a")
    stranger = h.worker("b", "other:action")
    task = h.pub()
    with pytest.raises(NotHolding, match=f"does not hold task {task.id} \\(attempt 1\\)"):
        h.lc.pickup(stranger, task.id, 1)
    assert task.rec.state == "init"


def test_take_back_gives_a_held_delivery_to_another_connection_of_the_group() -> None:
    h = Hub()
    a = h.worker("g")
    task = h.pub()
    assert h.offers(a) == [(task.id, 1)]
    b = h.worker("g")
    h.lc.take_back(a, task.id, 1, "lease_expired", count_try=False)
    told_a, told_b = h.msgs(a), h.msgs(b)
    assert told_a[0] == {"op": "revoke", "task": task.id, "attempt": 1, "reason": "lease_expired"}
    offers = [(m["task"], m["attempt"]) for m in told_a[1:] + told_b if m["op"] == "offer"]
    assert offers == [(task.id, 2)]  # offered again, to the group
    assert delivery_tries(h, task) == 0  # not counted as a try
    with pytest.raises(StaleAttempt):  # attempt 1 is over, whoever holds attempt 2
        h.lc.take_back(a, task.id, 1, "lease_expired", count_try=False)


def delivery_tries(h: Hub, task: Task) -> int:
    [d] = h.stored(task).deliveries
    return d.tries


def test_a_task_is_readable_by_its_publisher_and_by_who_may_work_on_it() -> None:
    h = Hub()
    rec = h.stored(h.pub(creds=Credentials("billing")))
    assert h.lc.may_read(Credentials("billing", sub_permissions=(), pub_permissions=()), rec)
    assert h.lc.may_read(Credentials("worker", ("email",), ()), rec)
    assert h.lc.may_read(Credentials("shop", (), ("email",)), rec)
    assert not h.lc.may_read(Credentials("other", ("sms",), ("sms",)), rec)


def test_a_raw_json_payload_is_measured_as_it_is() -> None:
    h = Hub(inline_payload_limit=10)
    w = h.worker("a")
    raw = msgspec.Raw(b'{"text": "longer than ten bytes"}')
    task = h.pub(payload=raw)
    [offer] = h.msgs(w, "offer")
    assert offer["task"] == task.id
    assert offer["payload_size"] == len(raw)
