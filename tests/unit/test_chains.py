"""Chains and groups (chains.py) on the pure lifecycle: steps, hand-over, failure, restore."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from taskhub.errors import InvalidAction, InvalidOption, PermissionDenied
from taskhub.lifecycle import HELD, Credentials, Lifecycle, Peer, Task
from taskhub.lifecycle.chains import Chains, step_payload
from taskhub.names import CHAIN_ACTION, GROUP_ACTION
from taskhub.protocol import ChainStep, PubOptions
from tests.unit.test_lifecycle import Counter, FakeClock, Hub, NoJitter


def steps(*items: tuple[str, Any] | tuple[str, Any, dict[str, Any]]) -> list[ChainStep]:
    return [
        ChainStep(i[0], i[1], msgspec.convert(i[2], PubOptions) if len(i) > 2 else None)
        for i in items
    ]


class Rig(Hub):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.chains = Chains(self.lc)

    def work(self, peer: Peer, result: Any = None, *, fail: bool = False) -> dict[str, Any]:
        """``peer`` takes its one pending offer and returns ``result`` (or fails)."""
        (offer,) = self.msgs(peer, "offer")
        self.lc.pickup(peer, offer["task"], offer["attempt"])
        if fail:
            err = {"type": "ValueError", "message": "bad input"}
            self.lc.fail(peer, offer["task"], offer["attempt"], err, retry=False)
        else:
            self.lc.complete(peer, offer["task"], offer["attempt"], result)
        return offer


def test_a_chain_runs_its_steps_in_order_and_passes_results_on() -> None:
    h = Rig()
    geo, wx = h.worker("geo", "geo:geocode"), h.worker("wx", "weather:forecast")
    pub = h.peer("web")
    chain = h.chains.start(
        pub.creds, steps(("geo:geocode", "Oslo"), ("weather:forecast", None)), peer=pub
    )
    assert chain.rec.action == CHAIN_ACTION and chain.rec.state == "start"
    assert h.msgs(wx, "offer") == []  # step 1 waits for step 0
    first = h.work(geo, {"lat": 59.9})
    assert first["payload"] == "Oslo" and "previous_result" not in first
    second = h.work(wx, "rain")
    assert second["payload"] == {"lat": 59.9}  # None: the previous result
    assert second["previous_result"] == {"lat": 59.9}
    assert chain.ended and chain.rec.result == "rain"
    done = [m for m in h.msgs(pub, "event") if m["task"] == chain.id]
    assert [m["type"] for m in done] == ["step", "step", "step", "step", "success"]
    assert done[-1]["data"] == "rain"


def test_declared_payloads_stay_and_merge_input_merges() -> None:
    assert step_payload({"a": 1, "b": 1}, {"b": 2}, merge=True) == {"a": 1, "b": 2}
    assert step_payload({"a": 1}, {"b": 2}, merge=False) == {"a": 1}
    assert step_payload(None, 5, merge=True) == 5
    assert step_payload("x", {"b": 2}, merge=True) == "x"
    h = Rig()
    w = h.worker("w", "job:run", concurrency=5)
    pub = h.peer("web")
    h.chains.start(
        pub.creds, steps(("job:run", {"n": 1}), ("job:run", {"n": 100, "k": 0})), merge_input=True
    )
    h.work(w, {"n": 2})
    assert h.work(w, "ok")["payload"] == {"n": 2, "k": 0}


def test_a_failing_step_fails_the_chain_naming_the_step() -> None:
    h = Rig()
    a, b = h.worker("a", "a:run"), h.worker("b", "b:run")
    chain = h.chains.start(Credentials("web"), steps(("a:run", 1), ("b:run", None), ("a:run", 3)))
    h.work(a, 2)
    offer = h.work(b, fail=True)
    assert chain.rec.state == "fail"
    err = chain.rec.error or {}
    assert err["step"] == 1 and err["action"] == "b:run" and err["task"] == offer["task"]
    assert err["message"] == "step 1 (b:run) failed: bad input"
    assert err["type"] == "ValueError"
    assert h.msgs(a, "offer") == []  # step 2 never ran


def test_a_group_runs_in_parallel_and_collects_results_in_order() -> None:
    h = Rig()
    a, b = h.worker("a", "a:run"), h.worker("b", "b:run")
    group = h.chains.start(Credentials("web"), steps(("a:run", 1), ("b:run", 2)), mode="group")
    assert group.rec.action == GROUP_ACTION
    ob = h.work(b, "B")
    assert "previous_result" not in ob
    assert not group.ended
    h.work(a, "A")
    assert group.rec.state == "success" and group.rec.result == ["A", "B"]


def test_a_failed_group_step_cancels_the_others() -> None:
    h = Rig()
    a, b = h.worker("a", "a:run"), h.worker("b", "b:run")
    group = h.chains.start(Credentials("web"), steps(("a:run", 1), ("b:run", 2)), mode="group")
    (offer_a,) = h.msgs(a, "offer")
    h.lc.pickup(a, offer_a["task"], offer_a["attempt"])
    h.work(b, fail=True)
    assert group.rec.state == "fail"
    revokes = h.msgs(a, "revoke")
    assert [(m["task"], m["reason"]) for m in revokes] == [(offer_a["task"], "cancelled")]


def test_cancelling_the_chain_cancels_its_running_step() -> None:
    h = Rig()
    a = h.worker("a", "a:run")
    pub = h.peer("web")
    chain = h.chains.start(pub.creds, steps(("a:run", 1), ("a:run", 2)))
    (offer,) = h.msgs(a, "offer")
    h.lc.cancel(pub.creds, chain.id)
    assert chain.rec.error and chain.rec.error["reason"] == "cancelled"
    assert [m["task"] for m in h.msgs(a, "revoke")] == [offer["task"]]


def test_a_dropped_step_has_no_result_and_the_chain_goes_on() -> None:
    h = Rig()
    a = h.worker("a", "a:run")
    chain = h.chains.start(Credentials("web"), steps(("a:run", 1), ("a:run", None)))
    (offer,) = h.msgs(a, "offer")
    h.lc.drop(a, offer["task"], offer["attempt"])
    second = h.work(a, "last")
    assert second["payload"] is None and second["previous_result"] is None
    assert chain.rec.result == "last"


@pytest.mark.parametrize(
    ("plan", "error", "text"),
    [
        ([], InvalidOption, "at least one step"),
        ([("a:run", 1), ("bad action", 2)], InvalidAction, "step 1 (bad action)"),
        ([("a:run", 1), ("secret:run", 2)], PermissionDenied, "step 1 (secret:run)"),
        ([("a:run", 1, {"timeout": -1})], InvalidOption, "step 0 (a:run): option 'timeout'"),
        ([("a:run", 1, {"key": "k"})], InvalidOption, "no idempotency 'key'"),
        ([("taskhub:chain", 1)], PermissionDenied, "step 0 (taskhub:chain)"),
    ],
)
def test_a_bad_plan_is_refused_whole(plan: list[Any], error: type[Exception], text: str) -> None:
    h = Rig()
    creds = Credentials("web", pub_permissions=("a", "taskhub"))
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        h.chains.start(creds, steps(*plan))
    h.drain()
    assert h.records == {}  # nothing stored


def test_the_hub_may_not_be_impersonated_with_a_reserved_action() -> None:
    h = Rig()
    with pytest.raises(PermissionDenied):
        h.pub("taskhub:chain")


def test_a_chain_resumes_after_a_restart() -> None:
    h = Rig()
    a = h.worker("a", "a:run")
    chain = h.chains.start(Credentials("web"), steps(("a:run", 1), ("a:run", None)))
    h.work(a, 2)
    (offer,) = h.msgs(a, "offer")
    h.lc.pickup(a, offer["task"], offer["attempt"])
    h.drain()
    stored = [h.records[i] for i in sorted(h.records) if h.records[i].state not in ("success",)]
    # A new hub process: a fresh lifecycle restores what the store holds.
    clock = FakeClock(h.clock.now + 5)
    ids = Counter()
    ids.n = 100  # ids of the new run must not collide with the stored ones
    lc = Lifecycle(clock=clock, new_id=ids, rng=NoJitter())
    h2 = Rig(lc=lc, clock=clock)
    assert h2.lc.restore(stored) == 2
    assert HELD in h2.lc.tasks[chain.id].rec.options
    assert h2.lc.pooled.get(CHAIN_ACTION) is None  # the chain itself is never offered
    a2 = h2.worker("a", "a:run")
    again = h2.work(a2, "done")
    assert again["task"] == offer["task"] and again["previous_result"] == 2
    restored = h2.lc.tasks.get(chain.id)
    assert restored is None  # ended
    h2.drain()
    assert h2.records[chain.id].state == "success" and h2.records[chain.id].result == "done"


def test_orphaned_steps_are_found_after_a_restore() -> None:
    h = Rig()
    h.worker("a", "a:run")
    chain = h.chains.start(Credentials("web"), steps(("a:run", 1), ("a:run", None)))
    h.drain()
    parent = h.records[chain.id]
    lc = Lifecycle(clock=h.clock, new_id=Counter())
    chains = Chains(lc)
    lc.restore([parent])  # the step's own record went missing
    (orphan,) = chains.orphans()
    restored, index, _ = orphan
    assert (restored.id, index) == (chain.id, 0)
    chains.step_ended(restored, index, None)
    assert isinstance(restored, Task) and restored.rec.state == "fail"
    assert "step 0 (a:run) failed: task lost" in (restored.rec.error or {})["message"]
