"""Searching stored tasks: the filters of ``GET /v1/tasks`` and of the dashboard's search.

The store indexes tasks by id, action and state. Ids are ULIDs, whose first 48 bits are the
creation time in milliseconds, so a time range is an id range and costs no scan. The other
filters (publisher, error text, kind) are checked on the records a page reads: a call reads
at most ``SCAN_BUDGET`` stored records and then answers with what it found and a ``next``
cursor to go on from (docs/http.md, "Listing and searching tasks").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskhub.lifecycle import Credentials
from taskhub.records import TaskRecord

if TYPE_CHECKING:
    from taskhub.hub.hub import Hub

SCAN_BUDGET = 5000  # stored records one call reads at most
PAGE = 500  # records read from the store at a time
INTERNAL_PREFIX = "taskhub:"
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def id_at(ms: int, rand: int) -> str:
    """The ULID with time ``ms`` and random part ``rand`` (0 or all ones for a bound)."""
    value = (max(ms, 0) << 80) | rand
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


# An id and its task's created_at are read from the clock at nearly the same instant; the id
# bounds of a time range give this much room, and created_at itself is checked exactly.
ID_MARGIN_MS = 1000


def first_id_at(t: float) -> str:
    """An id below every id of a task created at time ``t`` (seconds) or later."""
    ms = math.floor(t * 1000) - ID_MARGIN_MS
    return id_at(ms - 1, (1 << 80) - 1) if ms > 0 else ""


def last_id_at(t: float) -> str:
    """An id above every id of a task created at time ``t`` (seconds) or earlier."""
    return id_at(math.floor(t * 1000) + ID_MARGIN_MS, (1 << 80) - 1)


@dataclass(frozen=True)
class TaskFilter:
    action: str | None = None
    state: str | None = None
    publisher: str | None = None
    since: float | None = None  # created at or after (Unix seconds)
    until: float | None = None  # created at or before
    error: str | None = None  # text in the task's error or any try's error (any case)
    kind: str | None = None  # "task" (no chains), "chain" (chains and groups only), None: all

    def store_side(self) -> bool:
        """Whether only the store's own indexes (action, state) are asked for."""
        return (
            self.publisher is None
            and self.since is None
            and self.until is None
            and self.error is None
            and self.kind is None
        )

    def matches(self, rec: TaskRecord) -> bool:
        if self.action is not None and rec.action != self.action:
            return False
        if self.state is not None and rec.state != self.state:
            return False
        if self.publisher is not None and rec.publisher != self.publisher:
            return False
        if self.since is not None and rec.created_at < self.since:
            return False
        if self.until is not None and rec.created_at > self.until:
            return False
        if self.kind is not None and (self.kind == "chain") != rec.action.startswith(
            INTERNAL_PREFIX
        ):
            return False
        return self.error is None or error_contains(rec, self.error.casefold())


def _texts(error: dict[str, Any] | None) -> list[str]:
    return [v for v in (error or {}).values() if isinstance(v, str)]


def error_contains(rec: TaskRecord, needle: str) -> bool:
    """Whether the task's error, or the error of any of its deliveries' last try (type,
    message, reason, traceback), holds ``needle`` (already case-folded)."""
    texts = _texts(rec.error)
    for d in rec.deliveries:
        texts.extend(_texts(d.error))
    return any(needle in text.casefold() for text in texts)


def _overlay(
    rows: list[TaskRecord], unwritten: list[TaskRecord], cursor: str, bound: str | None
) -> list[TaskRecord]:
    """A store page with the fresher in-memory records laid over it, by id: those after
    ``cursor`` and up to ``bound`` (``None``: no bound), where the page is complete."""
    merged = {rec.id: rec for rec in rows}
    for rec in unwritten:
        if rec.id > cursor and (bound is None or rec.id <= bound):
            merged[rec.id] = rec
    return sorted(merged.values(), key=lambda rec: rec.id)


async def search(
    hub: Hub,
    creds: Credentials,
    f: TaskFilter,
    *,
    after: str | None = None,
    limit: int = 100,
    budget: int = SCAN_BUDGET,
) -> tuple[list[TaskRecord], str | None]:
    """Tasks matching ``f`` that ``creds`` may read, by id (creation order), after ``after``.

    Returns at most ``limit`` tasks and the cursor to go on from (``None``: nothing more).
    A call may return fewer than ``limit`` tasks, even none, and still a cursor: it stops
    after reading ``budget`` stored records.
    """
    lower = after or ""
    if f.since is not None:
        lower = max(lower, first_id_at(f.since))
    upper = last_id_at(f.until) if f.until is not None else None
    # The store may lag the hub by a batch: fresher in-memory records are laid over each
    # store page (only ids up to the page's last one are complete, so only up to there).
    unwritten = sorted(
        (rec for rec in hub.unwritten().values() if f.action is None or rec.action == f.action),
        key=lambda rec: rec.id,
    )
    found: list[TaskRecord] = []
    scanned = 0
    cursor = lower
    while True:
        # Only the store's indexes asked for: every row (nearly) matches, read what is needed.
        want = limit - len(found) + 1 if f.store_side() else PAGE
        size = max(1, min(PAGE, want, budget - scanned))
        rows = await hub.list_tasks(
            action=f.action, state=f.state, after=cursor or None, limit=size
        )
        scanned += len(rows)
        full = len(rows) == size
        bound = rows[-1].id if full else None  # ids up to here are complete
        done = not full
        if upper is not None and (bound is None or bound >= upper):
            bound, done = upper, True
        ordered = _overlay(rows, unwritten, cursor, bound)
        for rec in ordered:
            if bound is not None and rec.id > bound:
                break
            if f.matches(rec) and hub.lc.may_read(creds, rec):
                found.append(rec)
                if len(found) == limit:
                    last = rec.id
                    rest = any(r.id > last and (bound is None or r.id <= bound) for r in ordered)
                    return found, last if rest or not done else None
        if done:
            return found, None
        assert bound is not None
        cursor = bound
        if scanned >= budget:
            return found, cursor
