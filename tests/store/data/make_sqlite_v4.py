"""Writes ``sqlite_v4.db``, a file of sqlite schema version 4, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/4/src python tests/store/data/make_sqlite_v4.py

The file holds :func:`contents` as that TaskHub left it: every batch but the last folded into
the tables, the last one still in the journal (the hub was killed before its next fold). The
migration test opens a copy with today's engine and expects :func:`contents` back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taskhub.records import EventRecord, TaskRecord, WriteBatch
from tests.store.data import killed_hub, make_sqlite_v3

FILE = Path(__file__).parent / "sqlite_v4.db"
VERSION = 4


def contents() -> list[WriteBatch]:
    """The batches the file was made of, in order (deterministic): schema 3's, then one
    that ends a task and starts another (in the journal only)."""
    ended = TaskRecord(id="t0", action="img.resize", publisher="p", created_at=1000.0)
    ended.state, ended.ended_at, ended.result = "success", 1030.0, [1, "two"]
    started = TaskRecord(id="t4", action="img.resize", publisher="p", created_at=1004.0)
    started.state = "start"
    last = WriteBatch(
        tasks=[ended, started],
        events=[
            EventRecord(task_id="t0", seq=1, at=1029.0, type="start"),
            EventRecord(task_id="t0", seq=2, at=1030.0, type="success"),
            EventRecord(task_id="t4", seq=1, at=1029.5, type="start"),
        ],
    )
    return [*make_sqlite_v3.contents(), last]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FILE
    killed_hub.write(out, "tests.store.data.make_sqlite_v4")
