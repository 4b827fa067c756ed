"""Action names, permissions and topic patterns (taskhub.names)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskhub.errors import InvalidAction
from taskhub.names import (
    allowed,
    permits,
    topic_matches,
    validate_action,
    validate_permission,
    validate_topic,
)

WORD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
words = st.text(alphabet=WORD_ALPHABET, min_size=1, max_size=12)


@st.composite
def actions(draw: st.DrawFn) -> str:
    noun = draw(words)
    if draw(st.booleans()):
        noun = f"{noun}/{draw(words)}"
    return f"{noun}:{draw(words)}"


# --- actions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action", ["a:b", "a/b.c:d", "email:send", "email/bulk:send", "geo-1_x.y:v_2-.z"]
)
def test_valid_actions(action: str) -> None:
    assert validate_action(action) == action


@pytest.mark.parametrize(
    ("action", "culprit"),
    [
        ("email:se nd", "' '"),
        ("em@il:send", "'@'"),
        ("email/bu*lk:send", "'*'"),
        ("émail:send", "'é'"),
        ("email:send!", "'!'"),
    ],
)
def test_bad_character_is_named(action: str, culprit: str) -> None:
    with pytest.raises(InvalidAction) as info:
        validate_action(action)
    assert culprit in info.value.message
    assert info.value.details["character"] == culprit.strip("'")


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ("email", "no ':verb'"),
        ("a:b:c", "':' twice"),
        ("a/b/c:d", "'/' twice"),
        (":send", "empty"),
        ("email:", "empty"),
        ("email/:send", "empty"),
        ("/bulk:send", "empty"),
        ("", "1 to 255"),
        ("a:" + "b" * 300, "1 to 255"),
    ],
)
def test_bad_shape_is_explained(action: str, problem: str) -> None:
    with pytest.raises(InvalidAction, match=problem):
        validate_action(action)


def test_non_string_action_rejected() -> None:
    with pytest.raises(InvalidAction, match="string"):
        validate_action(42)


def test_invalid_action_is_a_value_error_with_wire_code() -> None:
    with pytest.raises(ValueError) as info:
        validate_action("a b:c")
    assert isinstance(info.value, InvalidAction)
    assert info.value.to_wire()["code"] == "invalid_action"


# --- permissions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("perm", "name", "expected"),
    [
        ("weather", "weather:forecast", True),
        ("weather", "weather/metno:forecast", True),
        ("weather", "weatherman:x", False),
        ("weather", "weather", True),
        ("weather:forecast", "weather:forecast", True),
        ("weather:forecast", "weather:forecaster", False),
        ("weather:forecast", "weather/metno:forecast", False),
        ("email:", "email:send", True),
        ("email:", "email/bulk:send", False),  # the prefix ends at ':'
        ("email/", "email/bulk:send", True),
        ("email/", "email:send", False),
        ("email/bulk", "email/bulk:send", True),
        ("email/bulk", "email/bulky:send", False),
        ("*", "anything:at_all", True),
        ("*", "a/b:c", True),
        ("geo", "weather:forecast", False),
    ],
)
def test_permits(perm: str, name: str, expected: bool) -> None:
    assert permits(perm, name) is expected


def test_allowed_any_of() -> None:
    assert allowed(["email:send", "weather"], "weather/metno:forecast")
    assert not allowed(["email:send", "weather"], "weatherman:x")
    assert not allowed([], "email:send")


def test_validate_permission() -> None:
    assert validate_permission("*") == "*"
    assert validate_permission("email:") == "email:"
    assert validate_permission("email/bulk:send") == "email/bulk:send"
    with pytest.raises(InvalidAction, match="'#'"):
        validate_permission("email#")
    with pytest.raises(InvalidAction):
        validate_permission("")


@given(actions())
def test_every_generated_action_validates_and_permits_itself(action: str) -> None:
    assert validate_action(action) == action
    assert permits(action, action)
    assert permits("*", action)
    noun = action.partition(":")[0]
    assert permits(noun, action)  # a prefix ending at ':' (or at '/' for the main noun)
    assert permits(noun.partition("/")[0], action)


@given(actions(), st.data())
def test_prefix_not_at_a_boundary_never_permits(action: str, data: st.DataObject) -> None:
    # cut inside a word: the next character is a word character, not '/' or ':'
    cuts = [i for i in range(1, len(action)) if action[i] not in "/:" and action[i - 1] not in "/:"]
    if not cuts:
        return
    cut = data.draw(st.sampled_from(cuts))
    assert not permits(action[:cut], action)


@given(actions(), st.text(alphabet="/: *@#!é\n", min_size=1, max_size=1), st.data())
def test_a_bad_character_anywhere_is_rejected(action: str, bad: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(action)))
    broken = action[:pos] + bad + action[pos:]
    # '/' and ':' are separators: inserting one may still leave a valid shape ("ab:c" -> "a/b:c")
    if bad in "/:" and broken.count(":") == 1 and broken.count("/") <= 1:
        return
    with pytest.raises(InvalidAction):
        validate_action(broken)


# --- topics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("email:send", "email:send", True),
        ("email:*", "email:send", True),
        ("email:*", "email:send.more", False),  # '*' is one whole segment
        ("*:send", "email:send", True),
        ("*:send", "email/bulk:send", False),
        ("email/>", "email/bulk:send", True),
        ("email/>", "email", False),  # '>' needs at least one segment
        ("email.>", "email.a.b.c", True),
        (">", "anything/at:all", True),
        ("email:send", "email:sender", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
    ],
)
def test_topic_matches(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize("pattern", ["email:*", "email/>", "*", ">", "a.*.c"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_topic(pattern, pattern=True) == pattern


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("email:se*", "whole segment"),
        ("email/>/x", "whole segment"),
        ("a>", "whole segment"),
        ("a..b", "empty segment"),
        ("a b", "' '"),
    ],
)
def test_bad_patterns(pattern: str, problem: str) -> None:
    with pytest.raises(InvalidAction, match=problem):
        validate_topic(pattern, pattern=True)


def test_wildcards_are_not_allowed_in_plain_topics() -> None:
    with pytest.raises(InvalidAction, match=r"'\*'"):
        validate_topic("email:*")


@given(actions())
def test_actions_are_topics_and_match_themselves(action: str) -> None:
    if any(seg == "" for seg in action.replace("/", ".").replace(":", ".").split(".")):
        return  # '.' splits topic segments: "a..b" is a valid action but not a valid topic
    assert validate_topic(action) == action
    assert topic_matches(action, action)
    assert topic_matches(">", action)
