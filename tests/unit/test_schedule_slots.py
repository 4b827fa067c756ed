"""A schedule's slot whose task another partition holds (docs/scheduling.md, "Schedules across
partitions and hubs"), on the pure core with a fake clock: the slot is recorded as fired only
once its task is stored, a restart before that fires the same slot again, and the task's id,
made from the schedule and the slot, is the same wherever it is made."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from taskhub.hub.firing import slot_task_id
from taskhub.ids import named_id
from taskhub.lifecycle import Credentials, Lifecycle
from taskhub.lifecycle.schedules import SCHEDULE_META, Scheduler, Slot
from taskhub.partitions import partition_of_id
from tests.unit.test_lifecycle import ACTION, Counter, FakeClock, Hub, NoJitter
from tests.unit.test_scheduling import meta, spec

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class Elsewhere:
    """Fires that keeps each slot until the test says its task is stored (as the hub's
    Firing does while it sends the slot to another partition's leader)."""

    def __init__(self) -> None:
        self.slots: list[tuple[Slot, Callable[[], None]]] = []

    def fire(self, home: Lifecycle, slot: Slot, stored: Callable[[], None]) -> None:
        self.slots.append((slot, stored))


def scheduler(now: float) -> tuple[Hub, Scheduler, Elsewhere]:
    clock = FakeClock(now)
    lc = Lifecycle(clock=clock, new_id=Counter(), rng=NoJitter())
    fires = Elsewhere()
    return Hub(lc=lc, clock=clock), Scheduler(lc, fires), fires


def test_a_slot_is_recorded_as_fired_once_its_task_is_stored() -> None:
    h, s, fires = scheduler(T0 + 10)
    s.put(Credentials("ops"), spec(payload={"x": 1}, options={"priority": 2}))
    h.lc.take_writes()
    h.tick(290)
    [(slot, stored)] = fires.slots
    assert slot == Slot("ops", ACTION, {"x": 1}, {"priority": 2}, slot.extra)
    assert slot.extra == {"schedule": "every5", "slot": T0 + 300}
    assert meta(h.lc.take_writes(), SCHEDULE_META) == {}  # not yet: its task is not stored
    assert s.views()[0]["last_slot"] is None
    assert s.next_at["every5"] == T0 + 600  # the next slot is armed all the same
    stored()
    assert meta(h.lc.take_writes(), SCHEDULE_META)["every5"]["last_slot"] == T0 + 300
    stored()  # a second word of the same slot changes nothing
    assert meta(h.lc.take_writes(), SCHEDULE_META) == {}


def test_a_restart_before_the_task_is_stored_fires_the_same_slot_again() -> None:
    h, s, fires = scheduler(T0 + 10)
    s.put(Credentials("ops"), spec())
    kept = meta(h.lc.take_writes(), SCHEDULE_META)["every5"]
    h.tick(290)
    [(slot, _)] = fires.slots  # the hub dies before its task is stored (or before it knew)
    _, s2, fires2 = scheduler(T0 + 300 + 7)
    assert s2.restore([kept]) == 1
    [(again, _)] = fires2.slots
    assert again == slot  # the same slot, so the same task id: published once (hub/firing.py)
    assert slot_task_id(again, 3) == slot_task_id(slot, 3)


def test_a_slot_stored_after_its_schedule_changed_is_not_recorded() -> None:
    h, s, fires = scheduler(T0 + 10)
    s.put(Credentials("ops"), spec())
    s.put(Credentials("ops"), spec(name="other"))
    h.tick(290)
    stored = {slot.schedule: done for slot, done in fires.slots}
    removed, retimed = stored["every5"], stored["other"]
    s.remove(Credentials("ops"), "every5")
    s.put(Credentials("ops"), spec(name="other", cron="*/10 * * * *"))
    h.lc.take_writes()
    removed()  # would bring the removed schedule back
    retimed()  # another timing starts afresh: no slot of the old one
    assert meta(h.lc.take_writes(), SCHEDULE_META) == {}
    assert [v["last_slot"] for v in s.views()] == [None]


def test_a_named_id_is_a_ulid_of_its_partition_and_time_made_the_same_everywhere() -> None:
    at = T0 + 300
    one = named_id(at, "every5", 7)
    assert one == named_id(at, "every5", 7)
    assert len(one) == 26 and partition_of_id(one) == 7
    assert named_id(at, "every5", 8) != one
    assert named_id(at, "other", 7) != one
    assert named_id(at + 60, "every5", 7) > one  # sorts by its time
    ms = 0
    for digit in one[:10]:  # its 48 bits of time: the slot's millisecond
        ms = ms * 32 + CROCKFORD.index(digit)
    assert ms == int(at * 1000)
    with pytest.raises(ValueError, match="partition"):
        named_id(at, "x", 1024)
