"""Topic routing (hub/events.py) and the permission rule for patterns (names.pattern_allowed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskhub.hub.events import Router
from taskhub.names import pattern_allowed, topic_matches


def test_exact_topics_take_the_fast_path() -> None:
    r: Router[str] = Router()
    assert r.add("a", "orders:new")
    assert not r.add("a", "orders:new")  # already there
    r.add("b", "orders:new")
    r.add("c", "orders:old")
    assert list(r.match("orders:new")) == ["a", "b"]
    assert list(r.match("orders:gone")) == []


def test_wildcards_and_one_delivery_per_subscriber() -> None:
    r: Router[str] = Router()
    r.add("a", "orders:*")
    r.add("a", "orders/>")
    r.add("a", "orders:new")  # three patterns match orders:new, but "a" gets it once
    r.add("b", ">")
    r.add("c", "orders/*:new")
    assert sorted(r.match("orders:new")) == ["a", "b"]
    assert sorted(r.match("orders/eu:new")) == ["a", "b", "c"]
    assert sorted(r.match("orders/eu/x:new")) == ["a", "b"]  # '*' is one segment only
    assert sorted(r.match("billing:new")) == ["b"]


def test_remove_and_remove_all() -> None:
    r: Router[str] = Router()
    r.add("a", "x:*")
    r.add("a", "x:y")
    r.add("b", "x:y")
    assert len(r) == 3
    assert r.remove("a", "x:y")
    assert not r.remove("a", "x:y")
    assert sorted(r.match("x:y")) == ["a", "b"]
    r.remove_all("a")
    assert list(r.match("x:y")) == ["b"]
    assert r.patterns("a") == set()
    r.remove_all("b")
    assert not r and len(r) == 0


@pytest.mark.parametrize(
    ("perms", "pattern", "ok"),
    [
        (["email"], "email:send", True),
        (["email"], "email:*", True),
        (["email"], "email/>", True),
        (["email"], "email.*", False),  # 'email' does not permit email.x topics either
        (["email:send"], "email:*", False),  # would cover more than it may see
        (["email:send"], "email:send", True),
        (["weather"], "weatherman:*", False),
        (["email"], ">", False),
        (["email"], "*:send", False),
        (["*"], ">", True),
        (["a", "email:"], "email:*", True),
        ([], "email:send", False),
    ],
)
def test_pattern_permissions(perms: list[str], pattern: str, ok: bool) -> None:
    assert pattern_allowed(perms, pattern) is ok


_seg = st.sampled_from(["a", "b", "c1", "x-y"])
_topic = st.lists(st.tuples(_seg, st.sampled_from(":/.")), min_size=1, max_size=4).map(
    lambda parts: "".join(s + sep for s, sep in parts)[:-1]
)


@given(_topic, st.lists(_topic, max_size=5), st.integers(0, 3))
def test_router_agrees_with_topic_matches(topic: str, others: list[str], cut: int) -> None:
    # Patterns made from real topics: some exact, some with a segment turned into '*' or '>'.
    r: Router[int] = Router()
    patterns = [topic, *others]
    segs = topic.replace(":", "/").replace(".", "/").split("/")
    if cut < len(segs):
        patterns.append(topic.replace(segs[cut], "*", 1) if segs[cut] else topic)
    patterns.append(">")
    for i, p in enumerate(patterns):
        r.add(i, p)
    expected = {i for i, p in enumerate(patterns) if topic_matches(p, topic)}
    assert set(r.match(topic)) == expected
