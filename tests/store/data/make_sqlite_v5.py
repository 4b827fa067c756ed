"""Writes ``sqlite_v5.db``, a file of sqlite schema version 5, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/5/src python tests/store/data/make_sqlite_v5.py

As ``make_sqlite_v4``: the batches of :func:`contents` but the last folded into the tables,
the last one still in the journal (a row of layout 1, schema 4's and 5's) because the hub was
killed before its next fold. The migration test opens a copy with today's engine and expects
:func:`contents` back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from tests.store.data import killed_hub, make_sqlite_v4

FILE = Path(__file__).parent / "sqlite_v5.db"
VERSION = 5


def contents() -> list[WriteBatch]:
    """The batches the file was made of, in order (deterministic): schema 4's, then one in
    the journal only that ends a task, writes another twice over, deletes one, and changes
    metadata."""
    ended = TaskRecord(id="t4", action="img.resize", publisher="p", created_at=1004.0)
    ended.state, ended.ended_at, ended.result = "fail", 1040.0, None
    ended.error = {"reason": "error", "type": "ValueError", "message": "bad"}
    new = TaskRecord(id="t6", action="mail.send", publisher="p", created_at=1035.0)
    newer = TaskRecord(id="t6", action="mail.send", publisher="p", created_at=1035.0)
    newer.state = "start"
    last = WriteBatch(
        tasks=[ended, new, newer],
        events=[
            EventRecord(task_id="t4", seq=2, at=1040.0, type="fail", data={"why": "bad"}),
            EventRecord(task_id="t6", seq=1, at=1035.0, type="init"),
            EventRecord(task_id="t6", seq=2, at=1036.0, type="start"),
        ],
        deleted=["t1"],
        meta=[MetaRecord(kind="queue", key="mail.send/g", value={"credit": 3})],
        meta_deleted=[("dead", "t3")],
    )
    return [*make_sqlite_v4.contents(), last]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FILE
    killed_hub.write(out, "tests.store.data.make_sqlite_v5")
