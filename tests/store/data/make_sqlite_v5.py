"""Writes ``sqlite_v5.db``, a file of sqlite schema version 5, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/5/src python tests/store/data/make_sqlite_v5.py

As ``make_sqlite_v4``: the batches of :func:`contents` but the last folded into the tables,
the last one still in the journal (a row of layout 1, schema 4's and 5's) because the hub was
killed before its next fold. The migration test opens a copy with today's engine and expects
:func:`contents` back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch
from tests.store.data import make_sqlite_v4

FILE = Path(__file__).parent / "sqlite_v5.db"


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


async def _write(path: Path, folded: bool) -> None:
    from taskhub.store.sqlite import SCHEMA_VERSION, SqliteStore

    assert SCHEMA_VERSION == 5, f"run with a TaskHub of sqlite schema 5, not {SCHEMA_VERSION}"
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await store.open()
    batches = contents()
    if folded:
        for batch in batches[:-1]:
            await store.apply(batch)
        await store.close()
        return
    await store.apply(batches[-1])
    os._exit(0)  # killed: no fold, no close


def main(out: Path) -> None:
    out.unlink(missing_ok=True)
    asyncio.run(_write(out, folded=True))
    code = (
        "import asyncio, sys; from pathlib import Path;"
        "from tests.store.data.make_sqlite_v5 import _write;"
        "asyncio.run(_write(Path(sys.argv[1]), folded=False))"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    with sqlite3.connect(out) as raw:  # the last connection to close checkpoints the WAL
        assert raw.execute("SELECT count(*) FROM journal").fetchone() == (1,)
    raw.close()
    assert not Path(f"{out}-wal").exists()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else FILE)
