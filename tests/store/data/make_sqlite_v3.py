"""Writes ``sqlite_v3.db``, a file of sqlite schema version 3, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/3/src python tests/store/data/make_sqlite_v3.py

The migration test opens a copy with today's engine and expects :func:`contents` back.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from taskhub.records import EventRecord, MetaRecord, TaskRecord, WriteBatch

FILE = Path(__file__).parent / "sqlite_v3.db"


def contents() -> list[WriteBatch]:
    """The batches the file was made of, in order (deterministic)."""
    tasks = [
        TaskRecord(id=f"t{i}", action="img.resize", publisher="p", created_at=1000.0 + i)
        for i in range(6)
    ]
    tasks[1].state = "start"
    tasks[2].state, tasks[2].ended_at, tasks[2].result = "success", 1010.0, {"ok": "ü"}
    tasks[3].state, tasks[3].ended_at = "fail", 1020.0
    events = [
        EventRecord(task_id=t.id, seq=s, at=1000.0 + s, type=kind)
        for t in tasks
        for s, kind in enumerate(["init", "offer", "start"][: 1 + int(t.id[1:]) % 3])
    ]
    later = [  # appended in a later batch, out of seq order, one replacing an earlier seq
        EventRecord(task_id="t2", seq=4, at=1009.0, type="end", data={"n": [1, 2]}),
        EventRecord(task_id="t2", seq=3, at=1008.0, type="success"),
        EventRecord(task_id="t0", seq=0, at=1001.0, type="init", service="again"),
    ]
    return [
        WriteBatch(tasks=tasks, events=events, meta=[MetaRecord("queue", "q g", {"a": 1})]),
        WriteBatch(events=later, deleted=["t5"], meta=[MetaRecord("dead", "t3", {"id": "t3"})]),
    ]


async def main(path: Path) -> None:
    from taskhub.store.sqlite import SCHEMA_VERSION, SqliteStore

    assert SCHEMA_VERSION == 3, f"run with a TaskHub of sqlite schema 3, not {SCHEMA_VERSION}"
    store = SqliteStore(str(path))
    await store.open()
    for batch in contents():
        await store.apply(batch)
    await store.close()


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FILE
    out.unlink(missing_ok=True)
    asyncio.run(main(out))
