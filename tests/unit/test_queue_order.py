"""A group queue gives its deliveries out by priority, then publish order, whatever mix of
priorities and re-queued deliveries it holds: the FIFO lane of the common case (priority 0,
pushed in publish order) and the heap of the rest answer as one queue."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskhub.lifecycle import Credentials, Peer, Task
from taskhub.lifecycle.queues import Queue
from taskhub.lifecycle.state import Delivery, Subscription
from taskhub.records import DeliveryRecord, DeliveryState, TaskRecord

GROUP = "g"
# ("pub", priority) publishes a task; ("requeue", i) puts the i-th delivery offered so far back
# (it keeps its place: its publish order is older than what waits); ("take", 0) frees one credit.
Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("pub"), st.sampled_from([0, 0, 0, 0, 1, 5, -1])),
        st.tuples(st.just("requeue"), st.integers(0, 50)),
        st.tuples(st.just("take"), st.just(0)),
    ),
    max_size=80,
)


def _queue() -> tuple[Queue, Subscription, list[Delivery]]:
    offered: list[Delivery] = []

    def offer(d: Delivery, sub: Subscription) -> None:
        d.rec.state = DeliveryState.OFFERED
        sub.inflight += 1
        offered.append(d)

    q = Queue("a:b", GROUP, offer)
    sub = Subscription(Peer("c1", Credentials("w")), "a:b", GROUP, concurrency=0, observe=False)
    q.workers.append(sub)
    return q, sub, offered


@given(steps)
def test_deliveries_go_by_priority_then_publish_order(plan: list[Step]) -> None:
    q, sub, offered = _queue()
    waiting: list[tuple[int, int]] = []  # the model: (-priority, publish order) per delivery
    held: list[Delivery] = []
    seq = 0
    for kind, n in plan:
        if kind == "pub":
            seq += 1
            options = {"priority": n} if n else {}
            task = Task(f"t{seq}", TaskRecord(f"t{seq}", "a:b", "p", 0.0, options=options), seq)
            d = task.deliveries[GROUP] = Delivery(task, DeliveryRecord(GROUP))
            d.rec.state = DeliveryState.PENDING
            q.push(d)
            waiting.append((-n, seq))
        elif kind == "requeue" and held:
            d = held.pop(n % len(held))
            d.rec.state = DeliveryState.PENDING
            sub.inflight -= 1  # no credit is freed: only a "take" offers
            sub.concurrency -= 1
            q.push(d)
            waiting.append((-int(d.task.rec.options.get("priority", 0)), d.task.seq))
        elif kind == "take":
            before = len(offered)
            sub.concurrency += 1
            q.dispatch()
            if waiting:
                first = min(waiting)
                waiting.remove(first)
                got = offered[-1]
                held.append(got)
                assert len(offered) == before + 1
                assert (-int(got.task.rec.options.get("priority", 0)), got.task.seq) == first
            else:
                assert len(offered) == before
                sub.concurrency -= 1  # unused: only a "take" offers
    assert sorted(waiting) == sorted((e[0], e[1]) for e in q.entries())


def test_a_requeued_delivery_goes_ahead_of_later_ones() -> None:
    q, sub, offered = _queue()
    tasks = []
    for i in range(1, 4):
        task = Task(f"t{i}", TaskRecord(f"t{i}", "a:b", "p", 0.0), i)
        d = task.deliveries[GROUP] = Delivery(task, DeliveryRecord(GROUP))
        d.rec.state = DeliveryState.PENDING
        tasks.append(task)
        q.push(d)
    sub.concurrency = 1
    q.dispatch()
    [first] = offered
    assert first.task is tasks[0]
    first.rec.state = DeliveryState.PENDING  # taken back: waits ahead of t2 and t3 again
    sub.inflight = 0
    q.push(first)
    q.dispatch()
    assert [d.task.id for d in offered] == ["t1", "t1"]
    sub.concurrency = 3
    q.dispatch()
    assert [d.task.id for d in offered] == ["t1", "t1", "t2", "t3"]
    assert list(q.entries()) == []
