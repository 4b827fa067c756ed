"""What a handler raises to steer its delivery (:class:`Retry`, :class:`Reject`), and how
its failure is reported (:func:`handler_traceback`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import traceback
import types

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


# Frames of these directories lead from the client to the handler: a handler's traceback
# starts after them (the user's code is what explains a failure).
_PLUMBING = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # taskhub/
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)) + os.sep,
)


def handler_tb(exc: BaseException) -> types.TracebackType | None:
    """``exc``'s traceback from the handler's first frame on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PLUMBING):
            break
        tb = tb.tb_next
    return tb


def handler_traceback(exc: BaseException) -> str:
    """``exc``'s traceback from the handler's first frame on, as text (with its chained
    causes, such as a process pool's remote traceback)."""
    return "".join(traceback.format_exception(type(exc), exc, handler_tb(exc)))
