"""Writes ``sqlite_v6.db``, a file of sqlite schema version 6, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/6/src python tests/store/data/make_sqlite_v6.py

As ``make_sqlite_v5``, with the same batches: all but the last folded into the tables, the
last one still in the journal (a row of layout 2, schema 6's) because the hub was killed
before its next fold. The migration test opens a copy with today's engine and expects
:func:`contents` back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from taskhub.records import WriteBatch
from tests.store.data import make_sqlite_v5

FILE = Path(__file__).parent / "sqlite_v6.db"


def contents() -> list[WriteBatch]:
    """The batches the file was made of, in order: schema 5's file's."""
    return make_sqlite_v5.contents()


async def _write(path: Path, folded: bool) -> None:
    from taskhub.store.sqlite import SCHEMA_VERSION, SqliteStore

    assert SCHEMA_VERSION == 6, f"run with a TaskHub of sqlite schema 6, not {SCHEMA_VERSION}"
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
        "from tests.store.data.make_sqlite_v6 import _write;"
        "asyncio.run(_write(Path(sys.argv[1]), folded=False))"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    with sqlite3.connect(out) as raw:  # the last connection to close checkpoints the WAL
        assert raw.execute("SELECT count(*) FROM journal").fetchone() == (1,)
    raw.close()
    assert not Path(f"{out}-wal").exists()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else FILE)
