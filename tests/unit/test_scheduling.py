"""Scheduling on the pure core, with a fake clock: delays, once_every, per-action defaults and
backoff, dead letters, durable queues and cron schedules (docs/scheduling.md)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from taskhub.errors import InvalidOption, PermissionDenied, TaskNotFound
from taskhub.lifecycle import DEAD_META, QUEUE_META, Credentials, Lifecycle, Task, queue_key
from taskhub.lifecycle.schedules import SCHEDULE_META, Schedule, Scheduler, last_slot, next_slot
from taskhub.records import WriteBatch
from tests.unit.test_lifecycle import ACTION, Counter, FakeClock, Hub, NoJitter

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()


def meta(batch: WriteBatch, kind: str) -> dict[str, Any]:
    return {m.key: m.value for m in batch.meta if m.kind == kind}


def fail(h: Hub, peer: Any, task: Task) -> None:
    [(task_id, attempt)] = h.offers(peer)
    h.lc.pickup(peer, task_id, attempt)
    h.lc.fail(peer, task_id, attempt, {"type": "Boom", "message": "no"})


# --- delay and once_every ----------------------------------------------------------------------
def test_delay_as_an_interval_string() -> None:
    h = Hub()
    task, _ = h.lc.publish(Credentials("p"), ACTION, None, SimpleNamespace(delay="1h30m"))
    assert isinstance(task, Task)
    assert task.rec.not_before == h.clock.now + 5400
    with pytest.raises(InvalidOption, match="'soon'"):
        h.lc.publish(Credentials("p"), ACTION, None, SimpleNamespace(delay="soon"))


def test_once_every_returns_the_waiting_task_then_debounces_the_next() -> None:
    h = Hub()
    first = h.pub(key="user-1", once_every=60)
    assert first.rec.not_before == h.clock.now + 60
    again, created = h.lc.publish(
        Credentials("p"), ACTION, None, SimpleNamespace(key="user-1", once_every=60)
    )
    assert again is first and not created
    other = h.pub(key="user-2", once_every=60)  # another key: its own task
    assert other is not first
    w = h.worker("w", concurrency=5)
    h.tick(60)
    offered = dict(h.offers(w))
    h.lc.pickup(w, first.id, offered[first.id])  # started: no longer "waiting"
    later = h.pub(key="user-1", once_every=60)
    assert later is not first
    assert later.rec.not_before == h.clock.now + 60
    assert h.lc.debounce[f"{ACTION}\x00user-1"] == later.id


def test_once_every_state_survives_a_restart() -> None:
    h = Hub()
    first = h.pub(key="k", once_every="5m")
    h.drain()
    h2 = Hub(clock=h.clock)
    h2.lc.restore([h.records[first.id]])
    again, created = h2.lc.publish(
        Credentials("p"), ACTION, None, SimpleNamespace(key="k", once_every=300)
    )
    assert not created and isinstance(again, Task) and again.id == first.id


# --- retries: per-action defaults, backoff options -------------------------------------------
def test_action_defaults_sit_between_task_options_and_hub_defaults() -> None:
    h = Hub(actions={ACTION: {"retries": 2, "backoff": 5.0, "timeout": None}})
    task = h.pub()
    assert task.rec.options["retries"] == 2
    assert task.rec.options["backoff"] == 5.0
    assert task.rec.options["timeout"] is None
    assert h.pub(retries=0).rec.options["retries"] == 0  # the task's own option wins
    assert h.pub("other:do").rec.options["retries"] == 0  # the hub default


def test_task_backoff_and_cap() -> None:
    h = Hub()
    w = h.worker("w")
    task = h.pub(retries=3, backoff=10.0, backoff_max=15.0, timeout=None)
    ins: list[float] = []
    for _ in range(3):
        fail(h, w, task)
        h.drain()
        ins.append(next(e.data["in"] for e in reversed(h.events) if e.type == "retry"))
        h.tick(ins[-1])
    assert ins == [10.0, 15.0, 15.0]


# --- dead letters --------------------------------------------------------------------------------
def test_exhausted_task_goes_to_the_dead_letter_list_in_the_same_batch() -> None:
    h = Hub()
    w = h.worker("w")
    task = h.pub(payload={"n": 1}, retries=1, max_attempts=2)
    fail(h, w, task)
    h.tick(10)
    fail(h, w, task)
    batch = h.lc.take_writes()
    assert task.id in {t.id for t in batch.tasks}
    entry = meta(batch, DEAD_META)[task.id]
    assert entry["error"]["reason"] == "attempts"
    assert entry["payload"] == {"n": 1}
    assert entry["deliveries"][0]["tries"] == 2


def test_cancelled_and_timed_out_tasks_are_not_dead_letters() -> None:
    h = Hub()
    a = h.pub()
    h.lc.cancel(Credentials("publisher"), a.id)
    h.pub(start_timeout=1)
    h.tick(2)
    assert meta(h.lc.take_writes(), DEAD_META) == {}


def test_handler_failure_without_retries_is_a_dead_letter() -> None:
    h = Hub()
    w = h.worker("w")
    task = h.pub()
    fail(h, w, task)
    assert meta(h.lc.take_writes(), DEAD_META)[task.id]["error"]["reason"] == "error"


def test_requeue_publishes_a_fresh_copy_and_removes_the_entry() -> None:
    h = Hub()
    w = h.worker("w")
    task = h.pub(payload={"n": 1}, key="once", priority=3)
    fail(h, w, task)
    entry = meta(h.lc.take_writes(), DEAD_META)[task.id]
    copy = h.lc.requeue(Credentials("ops"), msgspec.json.decode(msgspec.json.encode(entry)))
    assert copy.id != task.id
    assert copy.rec.payload == {"n": 1}
    assert copy.rec.options["requeued_from"] == task.id
    assert copy.rec.options["priority"] == 3
    assert "key" not in copy.rec.options  # the key's window would hand back the dead task
    batch = h.lc.take_writes()
    assert (DEAD_META, task.id) in batch.meta_deleted
    assert h.offers(w) == [(copy.id, 1)]


def test_requeue_needs_pub_permission() -> None:
    h = Hub()
    entry = {"id": "t9", "action": ACTION, "payload": None, "options": {}}
    with pytest.raises(PermissionDenied):
        h.lc.requeue(Credentials("ops", pub_permissions=("other",)), entry)


# --- durable queues -------------------------------------------------------------------------
def test_durable_subscription_is_stored_and_restored() -> None:
    h = Hub()
    w = h.worker("w", group="mailers", durable=True)
    stored = meta(h.lc.take_writes(), QUEUE_META)
    assert stored == {queue_key(ACTION, "mailers"): {"action": ACTION, "group": "mailers"}}
    h.lc.disconnect(w)

    # a new hub: the group is subscribed again without any worker, tasks accumulate in it
    h2 = Hub(clock=h.clock)
    h2.lc.restore_queues(stored.values())
    h2.lc.restore([])
    tasks = [h2.pub() for _ in range(3)]
    assert all(t.rec.deliveries[0].group == "mailers" for t in tasks)
    assert h2.lc.queue_views()[0] | {} == {
        "action": ACTION,
        "group": "mailers",
        "durable": True,
        "workers": 0,
        "credit": 0,
        "waiting": 3,
        "in_flight": 0,
    }
    w2 = h2.worker("w", group="mailers", concurrency=3)
    assert sorted(t for t, _ in h2.offers(w2)) == sorted(t.id for t in tasks)


def test_restored_pooled_tasks_go_to_a_restored_durable_group() -> None:
    h = Hub()
    task = h.pub()  # no group at all: pooled, stored without deliveries
    h.drain()
    h2 = Hub(clock=h.clock)
    h2.lc.restore_queues([{"action": ACTION, "group": "g"}])
    h2.lc.restore([h.records[task.id]])
    assert [d.group for d in h2.lc.tasks[task.id].rec.deliveries] == ["g"]


def test_purge_fails_waiting_deliveries_and_forget_removes_the_group() -> None:
    h = Hub()
    w = h.worker("w", group="g", durable=True)
    held = h.pub()
    waiting = [h.pub(), h.pub()]
    assert h.offers(w) == [(held.id, 1)]
    assert h.lc.purge(Credentials("ops"), ACTION, "g") == 2
    assert all(t.rec.state == "fail" and t.rec.error["reason"] == "purged" for t in waiting)
    assert held.rec.state == "init"  # a worker holds it: left alone
    batch = h.lc.take_writes()
    assert meta(batch, DEAD_META) == {}  # purged on purpose: not a dead letter
    h.lc.purge(Credentials("ops"), ACTION, "g", forget=True)
    assert (QUEUE_META, queue_key(ACTION, "g")) in h.lc.take_writes().meta_deleted
    with pytest.raises(PermissionDenied):
        h.lc.purge(Credentials("x", sub_permissions=("other",)), ACTION, "g")
    with pytest.raises(TaskNotFound):
        h.lc.purge(Credentials("ops"), ACTION, "nope")


# --- cron schedules -------------------------------------------------------------------------
def scheduler(now: float = T0) -> tuple[Hub, Scheduler]:
    clock = FakeClock(now)
    lc = Lifecycle(clock=clock, new_id=Counter(), rng=NoJitter())
    h = Hub(lc=lc, clock=clock)
    return h, Scheduler(lc)


def spec(**kw: Any) -> Schedule:
    kw.setdefault("name", "every5")
    kw.setdefault("cron", "*/5 * * * *")
    kw.setdefault("action", ACTION)
    return Schedule(**kw)


def published(h: Hub) -> list[Task]:
    return sorted(h.lc.tasks.values(), key=lambda t: t.id)


def test_schedule_fires_at_every_slot_with_the_slot_recorded() -> None:
    h, s = scheduler(T0 + 10)
    s.put(Credentials("ops"), spec(payload={"x": 1}, options={"priority": 2}))
    assert s.next_at["every5"] == T0 + 300
    h.tick(289)
    assert published(h) == []
    h.tick(1)
    [task] = published(h)
    assert task.rec.payload == {"x": 1}
    assert task.rec.publisher == "ops"
    assert task.rec.options["schedule"] == "every5"
    assert task.rec.options["slot"] == T0 + 300
    assert task.rec.options["priority"] == 2
    batch = h.lc.take_writes()
    assert meta(batch, SCHEDULE_META)["every5"]["last_slot"] == T0 + 300
    assert task.id in {t.id for t in batch.tasks}  # the task and its slot: one batch
    h.tick(300)
    h.tick(300)
    assert len(published(h)) == 3


def test_late_timer_fires_one_slot_only() -> None:
    h, s = scheduler(T0)
    s.put(Credentials("ops"), spec())
    h.clock.now += 3600  # the event loop was blocked for an hour
    h.lc.advance()
    assert len(published(h)) == 1
    assert s.next_at["every5"] == T0 + 3600 + 300


def test_restart_fires_the_latest_missed_slot_once() -> None:
    h, s = scheduler(T0)
    s.put(Credentials("ops"), spec())
    h.tick(300)
    stored = meta(h.lc.take_writes(), SCHEDULE_META)["every5"]
    assert stored["last_slot"] == T0 + 300

    # down for a day; then a new hub restores the stored schedule
    h2, s2 = scheduler(T0 + 86400 + 7)
    assert s2.restore([stored]) == 1
    [task] = published(h2)
    assert task.rec.options["slot"] == T0 + 86400  # the latest missed slot, not the first
    assert s2.next_at["every5"] == T0 + 86400 + 300
    # and after another restart right away nothing is fired again
    again = meta(h2.lc.take_writes(), SCHEDULE_META)["every5"]
    h3, s3 = scheduler(T0 + 86400 + 8)
    assert s3.restore([again]) == 0
    assert published(h3) == []


def test_no_catch_up_for_slots_before_the_schedule_existed() -> None:
    h, s = scheduler(T0 + 1)
    s.put(Credentials("ops"), spec(cron="0 0 * * *"))
    stored = meta(h.lc.take_writes(), SCHEDULE_META)["every5"]
    _, s2 = scheduler(T0 + 2)
    assert s2.restore([stored]) == 0


def test_schedule_time_zone_and_dst() -> None:
    oslo = ZoneInfo("Europe/Oslo")
    start = dt.datetime(2024, 3, 30, 0, 0, tzinfo=oslo).timestamp()
    first = next_slot("0 9 * * *", oslo, start)
    assert dt.datetime.fromtimestamp(first, oslo).hour == 9
    second = next_slot("0 9 * * *", oslo, first)
    assert second - first == 23 * 3600  # the night clocks go forward
    assert last_slot("0 9 * * *", oslo, second) == second


def test_replace_and_remove() -> None:
    h, s = scheduler(T0)
    ops = Credentials("ops")
    s.put(ops, spec())
    s.put(ops, spec(cron="0 * * * *"))
    h.tick(300)
    assert published(h) == []  # the old timer found itself stale
    h.tick(3300)
    assert len(published(h)) == 1
    s.remove(ops, "every5")
    assert (SCHEDULE_META, "every5") in h.lc.take_writes().meta_deleted
    h.tick(7200)
    assert len(published(h)) == 1
    with pytest.raises(TaskNotFound):
        s.remove(ops, "every5")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"cron": "every day"}, "cron expression"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"name": "bad name"}, "schedule name"),
        ({"action": "no colon"}, "no colon"),
        ({"options": {"key": "k"}}, "'key'"),
        ({"options": {"retries": -1}}, "retries"),
    ],
)
def test_bad_schedules_are_refused_with_the_culprit_named(
    changes: dict[str, Any], fragment: str
) -> None:
    _, s = scheduler()
    with pytest.raises((InvalidOption, ValueError), match=fragment):
        s.put(Credentials("ops"), spec(**changes))


def test_schedule_needs_pub_permission() -> None:
    _, s = scheduler()
    with pytest.raises(PermissionDenied):
        s.put(Credentials("x", pub_permissions=("other",)), spec())
    with pytest.raises(PermissionDenied):
        s.put(Credentials("x"), spec(action="taskhub:chain"))


def test_config_schedules_are_added_updated_and_removed() -> None:
    _, s = scheduler(T0)
    s.configure([spec(name="a"), spec(name="b")])
    assert sorted(s.schedules) == ["a", "b"]
    assert s.schedules["a"].owner == "config"
    s.put(Credentials("ops"), spec(name="api"))
    s.configure([spec(name="a", cron="0 * * * *")])
    assert sorted(s.schedules) == ["a", "api"]  # b left the file; api was never in it
    assert s.schedules["a"].cron == "0 * * * *"
