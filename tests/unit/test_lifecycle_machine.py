"""The lifecycle's rules under random sequences of steps (hypothesis's state machine).

Driven as a hub drives it (tests/unit/test_lifecycle.py): connections connect, subscribe with
credit and disconnect; tasks are published; workers ack, pick up, update, return, drop and fail
with the attempts they were offered (current or stale); a fake clock moves time on. After each
step everything the lifecycle wants written and sent is taken, and the rules are checked from
that output alone (DESIGN.md "Task lifecycle", docs/protocol.md "Attempts and fencing"):

- credit: a connection is never offered a task while it holds ``concurrency`` of the action;
- first return wins: a task's stored result never changes once it is ``success``;
- a task ends exactly once: one terminal event, and a task is gone from the lifecycle iff ended;
- a stale attempt never changes the outcome: ``ack``/``pickup``/``update``/``drop``/``fail``
  naming an older attempt are refused and change nothing; a late step on an ended task changes
  nothing;
- a batch is sealed: no record or event it handed over changes afterwards (the memory store
  keeps them as they are);
- what is written of a task is whole: its events in seq order without a gap, its record's
  ``seq`` that of its last event written, also while offers wait for the task's next change
  (``Lifecycle.defer_offers``, :class:`DeferredOffersMachine`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from taskhub.errors import NotHolding, StaleAttempt
from taskhub.lifecycle import Credentials, Defaults, Lifecycle, Message, Peer
from taskhub.protocol import PubOptions
from taskhub.records import EventRecord, TaskRecord

ACTIONS = ("mail:send",)
SERVICES = ("alpha", "beta")  # a service's connections form one group (fan-out across them)
TERMINAL = {"success", "fail", "end"}
PICKUP_WINDOW = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Conn:
    """A connection as its worker sees it: what it was offered and still holds."""

    peer: Peer
    open: bool = True
    credit: dict[str, int] = field(default_factory=dict)  # action -> concurrency
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # task -> (action, attempt)
    seen: list[tuple[str, int]] = field(default_factory=list)  # every offer: (task, attempt)


class LifecycleMachine(RuleBasedStateMachine):
    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        ids = iter(range(1, 1_000_000))
        self.lc = Lifecycle(
            clock=self.clock,
            defaults=Defaults(pickup_window=PICKUP_WINDOW),
            new_id=lambda: f"t{next(ids):05d}",
            rng=random.Random(0),
        )
        self.by_peer: dict[Peer, Conn] = {}
        self.publisher = Credentials("publisher")
        self.published: list[str] = []
        self.records: dict[str, TaskRecord] = {}
        self.terminal: dict[str, list[EventRecord]] = {}
        self.handed: list[tuple[TaskRecord | EventRecord, bytes]] = []  # (object, its JSON then)
        self.n = 0
        self.written_seq: dict[str, int] = {}  # task -> the seq of its last event written

    # --- output: taken after every step, as the hub's flusher does ---------------------------
    def drain(self) -> tuple[int, int]:
        """Take writes and messages; check them against the rules. Returns (writes, messages)."""
        batch = self.lc.take_writes()
        assert batch.sealed
        self.handed += [(r, msgspec.json.encode(r)) for r in (*batch.tasks, *batch.events)]
        for ev in batch.events:
            last = self.written_seq.get(ev.task_id, 0)
            assert ev.seq == last + 1, f"{ev.task_id}: event {ev.seq} written after {last}"
            self.written_seq[ev.task_id] = ev.seq
        for rec in batch.tasks:
            assert rec.seq == self.written_seq.get(rec.id, 0), (
                f"{rec.id} written with seq {rec.seq}, its events up to "
                f"{self.written_seq.get(rec.id, 0)}"
            )
        for rec in batch.tasks:
            # A copy, as a store would keep: later changes to the live record must show up
            # as a new write, not by aliasing.
            copy = msgspec.json.decode(msgspec.json.encode(rec), type=TaskRecord)
            old = self.records.get(rec.id)
            if old is not None and old.state in TERMINAL:
                assert (copy.state, copy.result, copy.error) == (
                    old.state,
                    old.result,
                    old.error,
                ), (
                    f"task {rec.id} ended {old.state} ({old.result!r}, {old.error!r}) and was "
                    f"written again as {copy.state} ({copy.result!r}, {copy.error!r})"
                )
            self.records[rec.id] = copy
        for ev in batch.events:
            if ev.type in TERMINAL:
                reason = (ev.data or {}).get("reason", "") if ev.type == "fail" else ""
                event(f"task ended: {ev.type} {reason}")
                self.terminal.setdefault(ev.task_id, []).append(ev)
                assert len(self.terminal[ev.task_id]) == 1, (
                    f"task {ev.task_id} ended twice: {[e.type for e in self.terminal[ev.task_id]]}"
                )
        n_msgs = 0
        for peer, msgs in self.lc.take_output():
            conn = self.by_peer[peer]
            for msg in msgs:
                n_msgs += 1
                self.receive(conn, msg)
        return len(batch.tasks) + len(batch.events) + len(batch.meta), n_msgs

    def receive(self, conn: Conn, msg: Message) -> None:
        op = msg["op"]
        if op == "offer":
            task, action, attempt = msg["task"], msg["action"], msg["attempt"]
            held = sum(1 for a, _ in conn.holds.values() if a == action)
            assert held < conn.credit.get(action, 0), (
                f"{conn.peer.id} offered {task} #{attempt} while holding {held} of {action} "
                f"with credit {conn.credit.get(action, 0)}"
            )
            assert task not in conn.holds, f"{conn.peer.id} offered {task} twice"
            conn.holds[task] = (action, attempt)
            conn.seen.append((task, attempt))
        elif op == "revoke":
            got = conn.holds.get(msg["task"])
            if got is not None and got[1] == msg["attempt"]:
                del conn.holds[msg["task"]]
        elif op == "event" and msg["type"] == "success":
            # Holders hear `success`, and their credit is given back.
            conn.holds.pop(msg["task"], None)

    def step(self, conn: Conn, fn: Any, task: str, attempt: int, *args: Any, **kw: Any) -> bool:
        """Run one worker step; a refused step must change nothing. True if accepted."""
        before = self.snapshot()
        try:
            fn(conn.peer, task, attempt, *args, **kw)
        except (NotHolding, StaleAttempt) as exc:
            assert self.snapshot() == before, f"refused step changed the lifecycle: {exc}"
            writes, msgs = self.drain()
            assert (writes, msgs) == (0, 0), f"refused step wrote or sent: {exc}"
            return False
        return True

    def snapshot(self) -> Any:
        return {
            tid: (
                t.rec.state,
                tuple(
                    (d.rec.group, d.rec.state, d.rec.attempt, d.rec.tries)
                    for d in t.deliveries.values()
                ),
                t.rec.updates,
            )
            for tid, t in self.lc.tasks.items()
        }

    def has_workers(self) -> bool:
        return bool(self.workers())

    def workers(self) -> list[Conn]:
        """Open connections that were offered something (a closed one sends nothing more)."""
        return [c for c in self.by_peer.values() if c.open and c.seen]

    def current_attempt(self, conn: Conn, task_id: str) -> int | None:
        task = self.lc.tasks.get(task_id)
        sub = conn.peer.subs.get(task.rec.action) if task else None
        d = task.deliveries.get(sub.group) if task and sub else None
        return d.rec.attempt if d else None

    # --- connections ------------------------------------------------------------------------
    @rule(target=conns, service=st.sampled_from(SERVICES))
    def connect(self, service: str) -> Conn:
        self.n += 1
        peer = Peer(f"c{self.n}", Credentials(service))
        self.lc.connect(peer)
        conn = Conn(peer)
        self.by_peer[peer] = conn
        self.drain()
        return conn

    @rule(conn=conns)
    def disconnect(self, conn: Conn) -> None:
        # Not `consumes(conns)`: hypothesis 6.100 (the floor) reports that as Flaky.
        if not conn.open:
            return
        self.lc.disconnect(conn.peer)
        conn.open = False
        conn.holds.clear()  # a closed connection holds nothing; nothing reaches it any more
        self.drain()

    @rule(conn=conns, action=st.sampled_from(ACTIONS), credit=st.integers(1, 3))
    def subscribe(self, conn: Conn, action: str, credit: int) -> None:
        if not conn.open:
            return
        self.lc.subscribe(conn.peer, action, concurrency=credit)
        conn.credit[action] = credit
        self.drain()

    # --- publishing ----------------------------------------------------------------------------
    @rule(
        action=st.sampled_from(ACTIONS),
        max_attempts=st.integers(1, 3),
        retries=st.integers(0, 2),
        timeout=st.sampled_from([None, 5.0, 30.0]),
        start_timeout=st.sampled_from([None, 20.0]),
    )
    def publish(
        self,
        action: str,
        max_attempts: int,
        retries: int,
        timeout: float | None,
        start_timeout: float | None,
    ) -> None:
        options = PubOptions(
            max_attempts=max_attempts,
            retries=retries,
            timeout=timeout,
            start_timeout=start_timeout,
            backoff=1.0,
        )
        task, created = self.lc.publish(self.publisher, action, None, options)
        assert created and not isinstance(task, str)
        self.published.append(task.id)
        self.drain()

    # --- worker steps, with any attempt the connection was offered --------------------------
    @precondition(lambda self: self.has_workers())
    @rule(data=st.data(), op=st.sampled_from(["ack", "pickup", "update", "drop", "fail"]))
    def worker_step(self, data: st.DataObject, op: str) -> None:
        conn = data.draw(st.sampled_from(self.workers()), label="conn")
        task, attempt = data.draw(st.sampled_from(conn.seen), label="offer")
        current = self.current_attempt(conn, task)
        stale = current is not None and attempt < current
        if op == "fail":
            retry = data.draw(st.booleans(), label="retry")
            accepted = self.step(
                conn, self.lc.fail, task, attempt, {"type": "Boom", "message": "x"}, retry=retry
            )
        elif op == "update":
            accepted = self.step(conn, self.lc.update, task, attempt, {"progress": 1})
        else:
            accepted = self.step(conn, getattr(self.lc, op), task, attempt)
        event(f"{op} {'stale' if stale else 'current'} {'accepted' if accepted else 'refused'}")
        if stale:
            assert not accepted, f"stale {op} of {task} #{attempt} (now #{current}) accepted"
        if accepted and op in ("drop", "fail"):
            conn.holds.pop(task, None)
        self.drain()

    @precondition(lambda self: self.has_workers())
    @rule(data=st.data(), result=st.integers(0, 3))
    def complete(self, data: st.DataObject, result: int) -> None:
        conn = data.draw(st.sampled_from(self.workers()), label="conn")
        task, attempt = data.draw(st.sampled_from(conn.seen), label="offer")
        was_live = task in self.lc.tasks
        current = self.current_attempt(conn, task)
        stale = current is not None and attempt < current
        accepted = self.step(conn, self.lc.complete, task, attempt, result)
        event(f"return {'stale' if stale else 'current'} {'accepted' if accepted else 'refused'}")
        if accepted and was_live:
            assert self.lc.tasks.get(task) is None
            conn.holds.pop(task, None)
        self.drain()
        if was_live and task in self.terminal:
            [ev] = self.terminal[task]
            if ev.type == "success":
                assert self.records[task].result == result

    # --- time ------------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from([0.5, 2.0, PICKUP_WINDOW, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.lc.advance()
        self.drain()

    # --- invariants -----------------------------------------------------------------------------
    @invariant()
    def a_task_is_live_until_it_ends_once(self) -> None:
        for tid in self.published:
            ends = self.terminal.get(tid, [])
            if tid in self.lc.tasks:
                assert ends == [], f"{tid} is live after {ends[0].type}"
            else:
                assert len(ends) == 1, f"{tid} left the lifecycle with {len(ends)} terminal events"
                assert self.records[tid].state == ends[0].type

    def teardown(self) -> None:
        # Once per run rather than an invariant after every step: each check encodes every
        # record and event handed over so far.
        for obj, was in self.handed:
            now = msgspec.json.encode(obj)
            assert now == was, f"handed over {was.decode()}, then changed to {now.decode()}"

    @invariant()
    def credit_is_accounted_per_subscription(self) -> None:
        # The lifecycle's own count agrees with what the connections were told they hold.
        for conn in self.by_peer.values():
            if not conn.open:
                continue
            for action, sub in conn.peer.subs.items():
                held = sum(1 for a, _ in conn.holds.values() if a == action)
                assert sub.inflight == held, (conn.peer.id, action, sub.inflight, conn.holds)


LifecycleMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
test_lifecycle_rules = LifecycleMachine.TestCase


class DeferredOffersMachine(LifecycleMachine):
    """The same rules with offers written at their task's next change, as the hub runs it;
    at the end, what :meth:`Lifecycle.write_deferred` writes completes every task's events."""

    def __init__(self) -> None:
        super().__init__()
        self.lc.defer_offers = True

    def teardown(self) -> None:
        self.lc.write_deferred()
        self.drain()
        for task_id, task in self.lc.tasks.items():
            assert self.written_seq.get(task_id, 0) == task.rec.seq, task_id
        super().teardown()


DeferredOffersMachine.TestCase.settings = LifecycleMachine.TestCase.settings
test_lifecycle_rules_with_deferred_offers = DeferredOffersMachine.TestCase
