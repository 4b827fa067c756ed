"""Writes a file of an old sqlite schema as a hub killed before its next fold left it: every
batch but the last folded into the tables, the last one still in the journal. Shared by
``make_sqlite_v4``, ``_v5`` and ``_v6``, run with the TaskHub that had that schema; the
kill is a real one (a subprocess that ends with ``os._exit``, no fold, no close)."""

from __future__ import annotations

import asyncio
import importlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from taskhub.records import WriteBatch


async def _write(path: Path, version: int, batches: list[WriteBatch], folded: bool) -> None:
    from taskhub.store.sqlite import SCHEMA_VERSION, SqliteStore

    assert version == SCHEMA_VERSION, (
        f"run with a TaskHub of sqlite schema {version}, not {SCHEMA_VERSION}"
    )
    store = SqliteStore(str(path))
    store.fold_after = 3600.0
    await store.open()
    if folded:
        for batch in batches[:-1]:
            await store.apply(batch)
        await store.close()
        return
    await store.apply(batches[-1])
    os._exit(0)  # killed: no fold, no close


def write(out: Path, maker: str) -> None:
    """Write ``out`` from the module ``maker`` (its ``VERSION`` and ``contents()``)."""
    made = importlib.import_module(maker)
    out.unlink(missing_ok=True)
    asyncio.run(_write(out, made.VERSION, made.contents(), folded=True))
    subprocess.run([sys.executable, "-c", _KILLED, str(out), maker], check=True)
    with sqlite3.connect(out) as raw:  # the last connection to close checkpoints the WAL
        assert raw.execute("SELECT count(*) FROM journal").fetchone() == (1,)
    raw.close()
    assert not Path(f"{out}-wal").exists()


_KILLED = (
    "import asyncio, importlib, sys; from pathlib import Path;"
    "from tests.store.data.killed_hub import _write;"
    "made = importlib.import_module(sys.argv[2]);"
    "asyncio.run(_write(Path(sys.argv[1]), made.VERSION, made.contents(), folded=False))"
)
