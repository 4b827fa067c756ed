"""The data model's states: enums whose values are the wire words, and the dashboard's labels
of the same states (one vocabulary, docs/lifecycle.md)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from taskhub.records import (
    ENDED_DELIVERY_STATES,
    TASK_LABELS,
    TASK_STATE_WORDS,
    TASK_STATES,
    TERMINAL_STATES,
    DeliveryRecord,
    DeliveryState,
    TaskRecord,
    TaskState,
)

STATIC = Path(__file__).resolve().parents[2] / "src/taskhub/hub/dashboard/static/js"


def test_state_values_are_the_wire_words() -> None:
    assert TASK_STATES == ("init", "start", "success", "fail", "end")
    assert {"success", "fail", "end"} == TERMINAL_STATES
    assert [s.value for s in DeliveryState] == [
        "pending", "offered", "started", "done", "dropped", "failed",
    ]  # fmt: skip
    assert {"done", "dropped", "failed"} == ENDED_DELIVERY_STATES


def test_records_encode_and_decode_states_as_plain_words() -> None:
    rec = TaskRecord("t1", "a:b", "p", 1.0, state=TaskState.START)
    rec.deliveries.append(DeliveryRecord("g", state=DeliveryState.STARTED))
    raw = msgspec.json.encode(rec)
    assert b'"state":"start"' in raw and b'"state":"started"' in raw
    back = msgspec.json.decode(raw, type=TaskRecord)
    # Decoded as the plain word, equal to the member: a StrEnum compares as its word.
    assert back.state == TaskState.START and back.deliveries[0].state == DeliveryState.STARTED
    assert back == rec


def test_labels_and_parse() -> None:
    assert {s.value: s.label for s in TaskState} == {
        "init": "waiting", "start": "running", "success": "success", "fail": "failed",
        "end": "ended",
    }  # fmt: skip
    for state in TaskState:
        assert TaskState.parse(state.value) is state
        assert TaskState.parse(state.label) is state
    assert set(TASK_STATE_WORDS) == {*TASK_STATES, *TASK_LABELS.values()}
    with pytest.raises(ValueError, match=r"unknown task state 'done'; one of init \(waiting\)"):
        TaskState.parse("done")


def test_the_dashboard_shows_the_same_labels() -> None:
    # The page's JavaScript spells the labels too (its task badges and its state filter):
    # checked here against the one declaration.
    dom = (STATIC / "dom.js").read_text()
    block = re.search(r"const STATE_LABEL = \{(.*?)\};", dom, re.S)
    assert block is not None
    shown = dict(re.findall(r"(\w+): \"(\w+)\"", block.group(1)))
    assert shown == {s.value: s.label for s in TaskState}
    views = (STATIC / "views.js").read_text()
    block = re.search(r"const STATES = \[(.*?)\];", views, re.S)
    assert block is not None
    pairs = dict(re.findall(r"\[\"(\w+)\", \"([\w ]+)\"\]", block.group(1)))
    assert {k: v for k, v in pairs.items() if k} == {s.value: s.label for s in TaskState}
