"""Writes ``sqlite_v6.db``, a file of sqlite schema version 6, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/6/src python tests/store/data/make_sqlite_v6.py

As ``make_sqlite_v5``, with the same batches: all but the last folded into the tables, the
last one still in the journal (a row of layout 2, schema 6's) because the hub was killed
before its next fold. The migration test opens a copy with today's engine and expects
:func:`contents` back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taskhub.records import WriteBatch
from tests.store.data import killed_hub, make_sqlite_v5

FILE = Path(__file__).parent / "sqlite_v6.db"
VERSION = 6


def contents() -> list[WriteBatch]:
    """The batches the file was made of, in order: schema 5's file's."""
    return make_sqlite_v5.contents()


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FILE
    killed_hub.write(out, "tests.store.data.make_sqlite_v6")
