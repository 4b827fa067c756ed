"""The charts' time series (docs/dashboard.md): tasks published, succeeded and failed per
second, and wait and run time percentiles, for the last 15 minutes at one point a second and
the last 24 hours at one point a minute. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import math
import random
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from taskhub.hub.http.search import INTERNAL_PREFIX
from taskhub.lifecycle import EventKey
from taskhub.records import TaskRecord

SECOND_POINTS = 900  # 15 minutes at one point a second
MINUTE_POINTS = 1440  # 24 hours at one point a minute
# Durations go into log-scale bins, two per octave from 0.1 ms: bin b > 0 holds values up to
# BIN_BASE * 2 ** (b / 2), so a percentile is known within a factor of √2 (about ±19 %). The
# last bin holds everything from 2 ** 27 * 0.1 ms (3.7 hours) up.
BIN_BASE = 0.0001
BINS = 56
PERCENTILES = (50, 90, 99)
SAMPLE = 500  # ended tasks binned a second at each sampling rate (Series.add_tasks)


def bin_upper(b: int) -> float:
    """The largest value bin ``b`` holds (what a percentile in that bin is reported as)."""
    return BIN_BASE * 2 ** (b / 2)


_EDGES = [bin_upper(b) for b in range(BINS - 1)]  # above the last edge: the last bin


def duration_bin(seconds: float) -> int:
    return bisect_left(_EDGES, seconds)  # bin b holds edge[b - 1] < value <= edge[b]


def percentile(hist: array[int], q: float) -> float | None:
    total = sum(hist)
    if total == 0:
        return None
    rank = math.ceil(total * q / 100)
    seen = 0
    for b, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return bin_upper(b)
    return bin_upper(BINS - 1)  # not reached: the ranks add up to the total


class Bucket:
    """One point of a series: task counts and, once a task ended in it, duration bins."""

    __slots__ = ("failed", "published", "run", "succeeded", "wait")

    def __init__(self) -> None:
        self.published = 0
        self.succeeded = 0
        self.failed = 0
        self.wait: array[int] | None = None  # started_at - max(created_at, not_before)
        self.run: array[int] | None = None  # ended_at - started_at


def _bins() -> array[int]:
    return array("I", bytes(4 * BINS))


class Series:
    """Two rings of buckets, by second and by minute. Memory: at most SECOND_POINTS +
    MINUTE_POINTS buckets of two 56-bin histograms (4-byte counters): about 700 bytes each,
    1.6 MB in all, and only for seconds and minutes in which something happened."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.seconds: dict[int, Bucket] = {}
        self.minutes: dict[int, Bucket] = {}
        # The second tasks last ended in, and its (second, minute) histograms: most ends fall
        # in the same second as the one before.
        self._second = -1
        self._hists: tuple[array[int], array[int], array[int], array[int]] | None = None
        # Sampling (see add_task): every _every-th ended task is binned, with weight _every;
        # _taken samples at this weight so far this second, _skip tasks to pass over first.
        self._every = 1
        self._taken = 0
        self._skip = 0
        self._rng = rng or random.Random()

    @staticmethod
    def _bucket(ring: dict[int, Bucket], key: int, keep: int) -> Bucket:
        b = ring.get(key)
        if b is None:
            b = ring[key] = Bucket()
            # Keys arrive almost in order (a second's counts come after the next second's
            # first task end), so the oldest are at the front of the dict.
            while len(ring) > keep:
                del ring[next(iter(ring))]
        return b

    def buckets(self, at: float) -> tuple[Bucket, Bucket]:
        second = int(at)
        return (
            self._bucket(self.seconds, second, SECOND_POINTS),
            self._bucket(self.minutes, second // 60, MINUTE_POINTS),
        )

    def add_counts(self, second: int, published: int, succeeded: int, failed: int) -> None:
        for b in self.buckets(second):
            b.published += published
            b.succeeded += succeeded
            b.failed += failed

    def add_task(self, rec: TaskRecord) -> None:
        """One ended task's wait and run times (see :meth:`add_tasks`)."""
        self.add_tasks((rec,))

    def add_tasks(self, recs: Sequence[TaskRecord]) -> None:
        """Ended tasks' wait and run times, each in the buckets of the second it ended.

        Called once per batch of ended tasks, so it bounds its work: in each second the first
        ``SAMPLE`` tasks are binned, then every 2nd for the next ``SAMPLE`` samples, then every
        4th, and so on (on average: the gaps are drawn at random, so a periodic pattern in the
        tasks cannot line up with them), each sample counted with the weight of the tasks it
        stands for. The histograms stay an estimate of all tasks' times (exact below
        ``SAMPLE`` a second), and a busy hub bins about ``SAMPLE * log2(rate / SAMPLE)`` tasks
        a second. A binned task costs two bisects and four increments; a passed one nothing
        (the gap is stepped over in the batch).
        """
        i, n = 0, len(recs)
        while i < n:
            skip = self._skip
            if skip:
                if skip >= n - i:
                    self._skip = skip - (n - i)
                    return
                i += skip
                self._skip = 0
            self._bin(recs[i])
            i += 1

    def _bin(self, rec: TaskRecord) -> None:
        started, ended = rec.started_at, rec.ended_at
        if started is None or ended is None:
            return  # it never started (start timeout, cancelled while waiting)
        second = int(ended)
        hists = self._hists
        if second != self._second or hists is None:
            hists = self._hists = self._histograms(second)
            self._second = second
            self._every, self._taken = 1, 0
        wait = bisect_left(_EDGES, started - max(rec.created_at, rec.not_before))
        run = bisect_left(_EDGES, ended - started)
        weight = self._every
        hists[0][wait] += weight
        hists[1][run] += weight
        hists[2][wait] += weight
        hists[3][run] += weight
        self._taken += 1
        if self._taken == SAMPLE:
            self._taken = 0
            self._every = weight * 2
        every = self._every
        self._skip = self._rng.randrange(2 * every - 1) if every > 1 else 0  # mean every - 1

    def _histograms(self, second: int) -> tuple[array[int], array[int], array[int], array[int]]:
        out: list[array[int]] = []
        for b in self.buckets(second):
            if b.wait is None or b.run is None:
                b.wait, b.run = _bins(), _bins()
            out += (b.wait, b.run)
        return out[0], out[1], out[2], out[3]

    def view(
        self,
        now: float,
        span: int,
        live: tuple[int, int, int, int] | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """Columns for a chart of the last ``span`` seconds, from ``since`` at the earliest
        (the hub's start: nothing was counted before) unless that leaves fewer than 60
        points: one point a second up to 15 minutes,
        one a minute beyond. Counts are per second (a minute's divided by 60). ``live`` is
        (second, published, succeeded, failed) of the second still being counted."""
        step = 1 if span <= SECOND_POINTS else 60
        ring = self.seconds if step == 1 else self.minutes
        last = int(now) // step
        first = last - span // step + 1
        if since is not None:  # a young hub: from its start, but at least a minute's points
            first = min(max(first, int(since) // step), last - min(span // step, 60) + 1)
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "t",
                "published",
                "succeeded",
                "failed",
                *(f"{kind}_p{q}" for kind in ("wait", "run") for q in PERCENTILES),
            )
        }
        for key in range(first, last + 1):
            b = ring.get(key)
            counts = [b.published, b.succeeded, b.failed] if b else [0, 0, 0]
            if live is not None and live[0] // step == key:
                counts = [c + n for c, n in zip(counts, live[1:], strict=True)]
            cols["t"].append(key * step)
            for name, n in zip(("published", "succeeded", "failed"), counts, strict=True):
                cols[name].append(n if step == 1 else round(n / step, 3))
            for kind in ("wait", "run"):
                hist = getattr(b, kind) if b else None
                for q in PERCENTILES:
                    value = percentile(hist, q) if hist is not None else None
                    cols[f"{kind}_p{q}"].append(value)
        return {"step": step, "span": span, **cols}


def series_counts(counts: dict[EventKey, int]) -> tuple[int, int, int]:
    """(published, succeeded, failed) of user tasks in one second's event counts."""
    published = succeeded = failed = 0
    for (action, type_, _group), n in counts.items():
        if action.startswith(INTERNAL_PREFIX):
            continue  # a chain's steps are counted as the tasks they are
        if type_ == "init":
            published += n
        elif type_ == "success":
            succeeded += n
        elif type_ == "fail":
            failed += n
    return published, succeeded, failed
