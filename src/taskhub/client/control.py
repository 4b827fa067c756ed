"""What a handler raises to steer its delivery: :class:`Retry` and :class:`Reject`."""

from __future__ import annotations

import datetime as dt

from taskhub.intervals import parse_interval


class Retry(Exception):
    """End this try and have the task offered again after ``delay`` (seconds, a
    ``timedelta`` or an interval such as ``"30s"``; default 0).

    It counts as a try, like any failure: the delivery fails with reason ``attempts`` once
    ``max_attempts`` tries are used. ``retries`` (the automatic retries after an error) and
    the backoff do not apply to it: the handler chose the delay.
    """

    def __init__(self, delay: float | dt.timedelta | str = 0, message: str = "") -> None:
        self.delay = parse_interval(delay, option="delay")
        super().__init__(message or f"retry in {self.delay:g}s")

    def __reduce__(self) -> tuple[type[Retry], tuple[float, str]]:
        # From a process pool's child: rebuilt from its delay, not from its message alone.
        return (Retry, (self.delay, str(self)))


class Reject(Exception):
    """Fail this delivery at once with ``reason``: no further tries, whatever ``retries``
    and ``max_attempts`` allow; the task goes to the dead-letter list."""

    def __init__(self, reason: str = "rejected") -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self) -> tuple[type[Reject], tuple[str]]:
        return (Reject, (self.reason,))
