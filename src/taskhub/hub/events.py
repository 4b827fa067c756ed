"""Topic routing for broadcast events and task watches: who gets a message on a topic.

Pure and synchronous. The hub keeps one :class:`Router` for event subscriptions (keyed by
topic patterns) and one for watches (keyed by action patterns); both answer "which subscribers
match this name", each subscriber at most once however many of its patterns match.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from taskhub.names import topic_matches

S = TypeVar("S", bound=Hashable)


def is_pattern(topic: str) -> bool:
    return "*" in topic or ">" in topic


class Router(Generic[S]):
    """Subscribers by pattern.

    Exact topics are a dict lookup (the fast path: most subscriptions name one topic). Patterns
    with wildcards are checked one by one per message, so the cost of a message is
    O(1 + distinct wildcard patterns); each distinct pattern is compared once, however many
    subscribers share it.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[S, None]] = {}  # dicts as ordered sets
        self._wild: dict[str, dict[S, None]] = {}
        self._by_sub: dict[S, set[str]] = {}

    def __len__(self) -> int:
        """How many (subscriber, pattern) pairs there are."""
        return sum(len(p) for p in self._by_sub.values())

    def __bool__(self) -> bool:
        return bool(self._by_sub)

    def add(self, sub: S, pattern: str) -> bool:
        """Subscribe; returns False if ``sub`` already had this pattern."""
        mine = self._by_sub.setdefault(sub, set())
        if pattern in mine:
            return False
        mine.add(pattern)
        table = self._wild if is_pattern(pattern) else self._exact
        table.setdefault(pattern, {})[sub] = None
        return True

    def remove(self, sub: S, pattern: str) -> bool:
        """Unsubscribe; returns False if ``sub`` did not have this pattern."""
        mine = self._by_sub.get(sub)
        if mine is None or pattern not in mine:
            return False
        mine.discard(pattern)
        if not mine:
            del self._by_sub[sub]
        table = self._wild if is_pattern(pattern) else self._exact
        subs = table[pattern]
        del subs[sub]
        if not subs:
            del table[pattern]
        return True

    def remove_all(self, sub: S) -> None:
        """A connection is gone: drop every pattern it had."""
        for pattern in list(self._by_sub.get(sub, ())):
            self.remove(sub, pattern)

    def patterns(self, sub: S) -> set[str]:
        return set(self._by_sub.get(sub, ()))

    def match(self, topic: str) -> Iterable[S]:
        """Every subscriber with a pattern matching ``topic``, once each."""
        exact = self._exact.get(topic)
        if not self._wild:
            return exact.keys() if exact else ()
        out: dict[S, None] = dict(exact) if exact else {}
        for pattern, subs in self._wild.items():
            if topic_matches(pattern, topic):
                out.update(subs)
        return out.keys()
