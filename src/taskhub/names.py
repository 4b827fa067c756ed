"""Action and topic names, and the permission rules over them.

An action is ``<noun>:<verb>`` or ``<noun>/<sub.noun>:<verb>``; nouns and verbs use
``[A-Za-z0-9_.-]``. A permission is an action, a prefix that ends at a ``/`` or ``:`` boundary,
or ``*``. Topics (broadcast events, watch patterns) use the same alphabet, with ``*`` as a
whole segment and a trailing ``>`` as wildcards, like NATS subjects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from taskhub.errors import InvalidAction

_WORD = re.compile(r"[A-Za-z0-9_.\-]+")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_NAME = 255


def _bad_char(name: str, allowed: frozenset[str]) -> str | None:
    for ch in name:
        if ch not in allowed:
            return ch
    return None


def _check_word(kind: str, word: str, whole: str) -> None:
    if not word:
        raise InvalidAction(f"{kind} {whole!r} has an empty noun or verb", name=whole)
    bad = _bad_char(word, _WORD_CHARS)
    if bad is not None:
        raise InvalidAction(
            f"{kind} {whole!r} contains {bad!r}; nouns and verbs use A-Z a-z 0-9 _ . -",
            name=whole,
            character=bad,
        )


@lru_cache(maxsize=4096)
def validate_action(action: object) -> str:
    """Return ``action`` if it is a valid action name, else raise :class:`InvalidAction`."""
    if not isinstance(action, str):
        raise InvalidAction(f"action must be a string, got {type(action).__name__}")
    if not action or len(action) > MAX_NAME:
        raise InvalidAction(f"action must be 1 to {MAX_NAME} characters", name=action)
    noun, sep, verb = action.partition(":")
    if not sep:
        raise InvalidAction(f"action {action!r} has no ':verb' (use <noun>:<verb>)", name=action)
    if ":" in verb:
        raise InvalidAction(f"action {action!r} contains ':' twice", name=action)
    main, slash, sub = noun.partition("/")
    _check_word("action", main, action)
    if slash:
        if "/" in sub:
            raise InvalidAction(f"action {action!r} contains '/' twice", name=action)
        _check_word("action", sub, action)
    _check_word("action", verb, action)
    return action


def validate_permission(perm: str) -> str:
    """A permission is ``*``, an action, or a prefix of one ending at a word boundary."""
    if perm == "*":
        return perm
    if not isinstance(perm, str) or not perm:
        raise InvalidAction("a permission must be a non-empty string")
    bad = _bad_char(perm, _WORD_CHARS | {"/", ":"})
    if bad is not None:
        raise InvalidAction(f"permission {perm!r} contains {bad!r}", name=perm, character=bad)
    return perm


def permits(perm: str, name: str) -> bool:
    """``weather`` permits ``weather:forecast`` and ``weather/metno:x``, not ``weatherman:x``."""
    if perm == "*" or perm == name:
        return True
    if not name.startswith(perm):
        return False
    if perm[-1] in "/:":
        return True
    return name[len(perm)] in "/:"


def allowed(perms: Iterable[str], name: str) -> bool:
    if isinstance(perms, tuple):  # credentials keep tuples: the answer can be cached
        return _allowed_cached(perms, name)
    return any(permits(p, name) for p in perms)


@lru_cache(maxsize=16384)
def _allowed_cached(perms: tuple[str, ...], name: str) -> bool:
    # Checked on every publish and subscribe; a credential has few permissions and a hub
    # sees few distinct actions, so the cache stays small and saves the hot path a scan.
    return any(permits(p, name) for p in perms)


# --- topics ------------------------------------------------------------------------------
# A topic is split into segments at '/', ':' and '.', so `*` and `>` work on any of them:
# `email:*` matches `email:send`, `email/>` matches `email/bulk:send`.
_SPLIT = re.compile(r"[/:.]")
_TOPIC_CHARS = _WORD_CHARS | {"/", ":"}


@lru_cache(maxsize=4096)
def validate_topic(topic: object, *, pattern: bool = False) -> str:
    """Validate a topic name, or with ``pattern=True`` a subscription pattern."""
    if not isinstance(topic, str):
        raise InvalidAction(f"topic must be a string, got {type(topic).__name__}")
    if not topic or len(topic) > MAX_NAME:
        raise InvalidAction(f"topic must be 1 to {MAX_NAME} characters", name=topic)
    allowed_chars = _TOPIC_CHARS | ({"*", ">"} if pattern else set())
    bad = _bad_char(topic, frozenset(allowed_chars))
    if bad is not None:
        raise InvalidAction(
            f"topic {topic!r} contains {bad!r}; topics use A-Z a-z 0-9 _ . - / :"
            + (" and the wildcards * and >" if pattern else ""),
            name=topic,
            character=bad,
        )
    segments = _SPLIT.split(topic)
    for i, seg in enumerate(segments):
        if seg == "":
            raise InvalidAction(f"topic {topic!r} has an empty segment", name=topic)
        if pattern and ("*" in seg or ">" in seg):
            if seg == ">" and i == len(segments) - 1:
                continue
            if seg == "*":
                continue
            raise InvalidAction(
                f"topic pattern {topic!r}: '*' must be a whole segment and '>' the last one",
                name=topic,
            )
    return topic


@lru_cache(maxsize=8192)
def _pattern_re(pattern: str) -> re.Pattern[str]:
    out = []
    pos = 0
    for m in _SPLIT.finditer(pattern + "/"):
        seg = pattern[pos : m.start()]
        sep = re.escape(pattern[m.start()]) if m.start() < len(pattern) else ""
        if seg == ">":
            out.append(r".+")
            break
        out.append(r"[A-Za-z0-9_\-]+" if seg == "*" else re.escape(seg))
        out.append(sep)
        pos = m.end()
    return re.compile("".join(out) + r"\Z")


def topic_matches(pattern: str, topic: str) -> bool:
    """NATS-like matching: ``*`` is one whole segment, a trailing ``>`` one or more."""
    if pattern == topic:
        return True
    if "*" not in pattern and ">" not in pattern:
        return False
    return _pattern_re(pattern).match(topic) is not None


def pattern_allowed(perms: Iterable[str], pattern: str) -> bool:
    """May a credential with ``perms`` subscribe to (or watch) ``pattern``?

    An exact topic needs a permission that permits it. A pattern with wildcards needs one that
    permits *every* topic it can match: one that permits its literal prefix up to and including
    the separator before the first wildcard (``email`` covers ``email:*`` and ``email/>``; it
    does not cover ``email.*``, whose topics it would not permit either). A pattern that starts
    with a wildcard (``>``, ``*:send``) needs ``*``.
    """
    perms = tuple(perms)
    start = 0
    for m in _SPLIT.finditer(pattern + "/"):
        seg = pattern[start : m.start()]
        if seg in ("*", ">"):
            prefix = pattern[:start]
            if not prefix:
                return "*" in perms
            return allowed(perms, prefix)
        start = m.end()
    return allowed(perms, pattern)


RESERVED_NOUN = "taskhub"  # actions the hub itself uses (taskhub:chain); nobody may pub them
# The actions of a chain's and a group's parent task, named once for the hub and the clients.
CHAIN_ACTION = "taskhub:chain"
GROUP_ACTION = "taskhub:group"


def reserved_action(action: str) -> bool:
    return action.startswith(RESERVED_NOUN) and action[len(RESERVED_NOUN)] in "/:"
