"""The lifecycle's timers: fixed-delay lanes and the heap fire earliest first, and a cancelled
lane timer is gone at once (no dead timers piling up until their deadline)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskhub.timers import MAX_LANES, Timers


def fire(t: Timers, now: float) -> list[tuple[str, str, str, int]]:
    return list(t.pop_due(now))


def test_a_lane_fires_in_arming_order_and_only_when_due() -> None:
    t = Timers()
    t.after(0.0, 10.0, "pickup", "a", "g", 1)
    t.after(1.0, 10.0, "pickup", "b", "g", 1)
    assert t.next_deadline() == 10.0
    assert fire(t, 9.9) == []
    assert fire(t, 10.0) == [("pickup", "a", "g", 1)]
    assert t.next_deadline() == 11.0
    assert fire(t, 100.0) == [("pickup", "b", "g", 1)]
    assert t.next_deadline() is None
    assert len(t) == 0


def test_cancel_removes_a_lane_timer_at_once() -> None:
    t = Timers()
    for i in range(1000):
        t.after(float(i), 60.0, "end", f"t{i}")
    for i in range(1000):
        t.cancel("end", 60.0, f"t{i}")
    assert len(t) == 0
    assert t.next_deadline() is None
    assert fire(t, 10_000.0) == []


def test_rearming_replaces_the_timer_and_moves_it_back() -> None:
    t = Timers()
    t.after(0.0, 10.0, "pickup", "a", "g", 1)
    t.after(1.0, 10.0, "pickup", "b", "g", 1)
    t.after(2.0, 10.0, "pickup", "a", "g", 2)  # offered again: a new attempt
    assert len(t) == 2
    assert fire(t, 100.0) == [("pickup", "b", "g", 1), ("pickup", "a", "g", 2)]


def test_lanes_and_heap_interleave_earliest_first() -> None:
    t = Timers()
    t.at(5.0, "due", "h1")
    t.after(0.0, 3.0, "pickup", "p1", "g", 1)
    t.after(0.0, 7.0, "end", "e1")
    t.at(6.0, "retry", "h2", "g", 2)
    t.after(1.0, 3.0, "pickup", "p2", "g", 1)
    assert t.next_deadline() == 3.0
    kinds = [(kind, task) for kind, task, _, _ in fire(t, 10.0)]
    assert kinds == [
        ("pickup", "p1"),
        ("pickup", "p2"),
        ("due", "h1"),
        ("retry", "h2"),
        ("end", "e1"),
    ]


def test_too_many_distinct_delays_go_to_the_heap() -> None:
    t = Timers()
    for i in range(MAX_LANES + 5):
        t.after(0.0, float(i + 1), "end", f"t{i}")
    assert len(t._lanes) == MAX_LANES
    assert len(t) == MAX_LANES + 5
    # a heap timer cannot be cancelled; it still fires (the lifecycle then finds nothing to do)
    t.cancel("end", float(MAX_LANES + 5), f"t{MAX_LANES + 4}")
    assert [task for _, task, _, _ in fire(t, 1000.0)] == [f"t{i}" for i in range(MAX_LANES + 5)]


def test_handlers_may_arm_while_timers_fire() -> None:
    t = Timers()
    t.after(0.0, 1.0, "pickup", "a", "g", 1)
    out = []
    for _kind, task, group, attempt in t.pop_due(5.0):
        out.append((task, attempt))
        if attempt == 1:
            t.after(5.0, 1.0, "pickup", task, group, attempt + 1)  # re-offered: not due yet
    assert out == [("a", 1)]
    assert fire(t, 6.0) == [("pickup", "a", "g", 2)]


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from([1.0, 2.5, 10.0]),
            st.floats(min_value=0, max_value=50, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_everything_fires_in_deadline_order(arms: list[tuple[bool, float, float]]) -> None:
    """With a clock that only moves forward, the firing order is the deadline order."""
    t = Timers()
    now = 0.0
    deadlines = {}
    for i, (lane, delay, step) in enumerate(arms):
        now += step
        if lane:
            t.after(now, delay, "k", f"t{i}")
        else:
            t.at(now + delay, "k", f"t{i}")
        deadlines[f"t{i}"] = now + delay
    fired = [task for _, task, _, _ in fire(t, now + 100)]
    assert sorted(fired) == sorted(deadlines)
    assert [deadlines[x] for x in fired] == sorted(deadlines[x] for x in fired)
