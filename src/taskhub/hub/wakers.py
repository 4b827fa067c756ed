"""HTTP long polls and event streams under way, woken when the hub shuts down."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Wakers:
    """A ``wake()`` per request that may wait minutes (a task's result, a consumer's fetch, an
    event stream). A shutdown calls them all, so such requests answer with what they have
    instead of holding the shutdown up, and none is cut off mid-answer."""

    def __init__(self) -> None:
        self.ended = False  # shutting down: new waits are woken at once
        self._wakers: set[Callable[[], None]] = set()

    def __len__(self) -> int:
        """How many requests are waiting."""
        return len(self._wakers)

    @contextlib.contextmanager
    def waiting(self, wake: Callable[[], None]) -> Iterator[None]:
        """Around a long poll or event stream: ``wake()`` is called by :meth:`end`, at once if
        it already was."""
        self._wakers.add(wake)
        try:
            if self.ended:
                wake()
            yield
        finally:
            self._wakers.discard(wake)

    def end(self) -> None:
        """Shutting down: every long poll and event stream answers now, and new ones at once."""
        self.ended = True
        for wake in list(self._wakers):
            wake()
